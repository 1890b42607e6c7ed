// The registration benchmark: writers registering through a node's admin
// endpoint for a window, in alternating rounds over the stores and sizes;
// the cells' rates, latencies and CPU, and a CPU profile per store.

package main

import (
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// sample is one measured run of one cell.
type sample struct {
	rate     float64         // registrations/s
	lat      []time.Duration // of each registration in the window
	cpu      float64         // Caddy's CPU seconds in the window
	benchCPU float64         // this process's (clients, embedded etcd)
	other    float64         // cores used by processes this run did not start
	count    int
	errs     int
	firstErr string
}

// measure runs the writers against n for the duration after a short
// warm-up: each re-registers a random image of the registry with changed
// ports (the registry keeps its size).
func measure(n *node, seq *atomic.Uint64, window time.Duration) sample {
	const warmup = 500 * time.Millisecond
	var phase atomic.Int32 // 0 warm-up, 1 measured, 2 stop
	var mu sync.Mutex
	var s sample
	var wg sync.WaitGroup
	for w := range *writers {
		c := newClient(n.admin)
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
		wg.Go(func() {
			var lat []time.Duration
			errs := 0
			first := ""
			for {
				p := phase.Load()
				if p == 2 {
					break
				}
				id := rng.Int64N(int64(n.images)) + 1
				pa, pb := ports(id, seq.Add(1))
				req := registerReq(n, id, pa, pb)
				t0 := time.Now()
				_, err := do(c, req)
				d := time.Since(t0)
				if p == 1 && phase.Load() == 1 {
					if err != nil {
						errs++
						if first == "" {
							first = err.Error()
						}
					} else {
						lat = append(lat, d)
					}
				}
				if err != nil {
					time.Sleep(10 * time.Millisecond)
				}
			}
			mu.Lock()
			s.lat = append(s.lat, lat...)
			s.errs += errs
			if s.firstErr == "" {
				s.firstErr = first
			}
			mu.Unlock()
		})
	}
	time.Sleep(warmup)
	cpu0, self0 := cpuSeconds(n.pid()), cpuSeconds(os.Getpid())
	load := startLoad()
	t0 := time.Now()
	phase.Store(1)
	time.Sleep(window)
	phase.Store(2)
	el := time.Since(t0)
	s.cpu, s.benchCPU = cpuSeconds(n.pid())-cpu0, cpuSeconds(os.Getpid())-self0
	s.other = load.cores()
	wg.Wait()
	s.count = len(s.lat)
	s.rate = float64(s.count) / el.Seconds()
	return s
}

// cell is one configuration at one size, over the rounds.
type cell struct {
	store   string
	size    int
	samples []sample
	fill    fillInfo
}

func (c *cell) rates() []float64 {
	var r []float64
	for _, s := range c.samples {
		r = append(r, s.rate)
	}
	slices.Sort(r)
	return r
}

func (c *cell) median() float64 { return median(c.rates()) }

// median of sorted values; the mean of the middle two for an even count.
func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func (c *cell) latencies() []time.Duration {
	var all []time.Duration
	for _, s := range c.samples {
		all = append(all, s.lat...)
	}
	slices.Sort(all)
	return all
}

func (c *cell) cpuPerReg() (caddy, self float64) {
	var cpu, bcpu float64
	n := 0
	for _, s := range c.samples {
		cpu += s.cpu
		bcpu += s.benchCPU
		n += s.count
	}
	if n == 0 {
		return 0, 0
	}
	return cpu / float64(n), bcpu / float64(n)
}

func (c *cell) errors() (int, string) {
	n, first := 0, ""
	for _, s := range c.samples {
		n += s.errs
		if first == "" {
			first = s.firstErr
		}
	}
	return n, first
}

type regResults struct {
	cells    map[string]*cell // store + "@" + size
	stores   []string
	profiles []string // markdown sections
}

const (
	nameBefore = "before: whole-state JSON file (" + beforeCommit + ")"
	nameLocal  = "local (bbolt)"
	nameEtcd1  = "etcd, 1 member"
	nameEtcd3  = "etcd, 3 members"
)

func (b *bench) registrations(sizes []int, withBefore bool) (*regResults, error) {
	res := &regResults{cells: map[string]*cell{}}
	var names []string
	for _, f := range strings.Split(*storesFlag, ",") {
		switch strings.TrimSpace(f) {
		case "local":
			names = append(names, nameLocal)
		case "etcd1":
			names = append(names, nameEtcd1)
		case "etcd3":
			names = append(names, nameEtcd3)
		default:
			return nil, fmt.Errorf("-stores %q: use local, etcd1 and etcd3, comma-separated", *storesFlag)
		}
	}
	if withBefore {
		names = append([]string{nameBefore}, names...)
	}
	res.stores = names
	// one node per cell, each etcd node on a cluster of its own, so that
	// every cell takes part in every round (the sizes alternate too, and
	// drift in the machine's load hits them alike)
	type unit struct {
		n    *node
		c    *cluster
		size int
	}
	var units []unit
	for _, size := range sizes {
		for _, name := range names {
			if name == nameBefore && size > beforeMax {
				continue
			}
			u := unit{size: size}
			var err error
			switch name {
			case nameBefore:
				u.n, err = b.newNode(name, size, b.beforeBin, "", "")
			case nameLocal:
				u.n, err = b.newNode(name, size, b.caddy, "", "")
			default:
				members := 1
				if name == nameEtcd3 {
					members = 3
				}
				if u.c, err = startCluster(filepath.Join(b.root, fmt.Sprintf("etcd%d-%d", members, size)), members); err != nil {
					return nil, err
				}
				u.n, err = b.newNode(name, size, b.caddy, u.c.storeBlock(prefix), "a")
			}
			if err != nil {
				return nil, err
			}
			units = append(units, u)
		}
	}

	log.Printf("== filling: store local through the API; etcd and the JSON file directly")
	for _, u := range units {
		if u.n.name != nameLocal {
			continue
		}
		if err := u.n.startNode(); err != nil {
			return nil, err
		}
		if err := u.n.fillAPI(u.size); err != nil {
			return nil, err
		}
		log.Printf("%s, %d images: through the API in %s (%.0f/s)", u.n.name, u.size, u.n.fill.took.Round(time.Millisecond), float64(u.size)/u.n.fill.took.Seconds())
		u.n.stop()
	}
	if err := b.takeTemplate(); err != nil {
		return nil, err
	}
	for _, u := range units {
		var err error
		switch u.n.name {
		case nameEtcd1, nameEtcd3:
			err = b.fillEtcd(u.n, u.c, u.size)
		case nameBefore:
			err = b.fillJSON(u.n, u.size)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		log.Printf("%s, %d images: %s in %s", u.n.name, u.size, u.n.fill.how, u.n.fill.took.Round(time.Millisecond))
	}

	log.Printf("== starting %d nodes on their filled registries", len(units))
	// the first health round after a start probes every container: each
	// node is watched from its start until it is idle, and the rounds
	// begin once every node is
	var wg sync.WaitGroup
	for _, u := range units {
		if err := u.n.startNode(); err != nil {
			return nil, err
		}
		wg.Go(func() {
			u.n.fill.settled = waitIdle(u.n.pid(), 4*time.Minute)
			u.n.fill.settle = time.Since(u.n.started)
		})
		if err := u.n.checkCount(); err != nil {
			return nil, err
		}
		log.Printf("%s, %d images: loaded in %s", u.n.name, u.size, u.n.fill.load.Round(time.Millisecond))
	}
	wg.Wait()
	for _, u := range units {
		res.cells[key(u.n.name, u.size)] = &cell{store: u.n.name, size: u.size, fill: u.n.fill}
		if !u.n.fill.settled {
			log.Printf("%s, %d images: not idle %s after its start", u.n.name, u.size, u.n.fill.settle.Round(time.Second))
		}
	}

	var seq atomic.Uint64
	for r := range *rounds {
		// rotated by a share of the cells each round, so that no cell
		// always runs right after the same neighbour
		k := (r * len(units) / *rounds) % len(units)
		order := append(slices.Clone(units[k:]), units[:k]...)
		for _, u := range order {
			if waited := waitQuiet(); waited > 3*time.Second {
				log.Printf("waited %s for the machine to be quieter (other processes under %.2f cores)", waited.Round(time.Second), *quietMax)
			}
			s := measure(u.n, &seq, *duration)
			c := res.cells[key(u.n.name, u.size)]
			c.samples = append(c.samples, s)
			sl := slices.Clone(s.lat)
			slices.Sort(sl)
			log.Printf("round %d/%d %7d images %-40s %6.0f reg/s  p50 %6.2f ms  p99 %7.2f ms  Caddy %4.0f µs/reg  other load %.2f cores  errors %d",
				r+1, *rounds, u.size, u.n.name, s.rate, ms(pct(sl, 0.50)), ms(pct(sl, 0.99)), s.cpu/float64(max(1, s.count))*1e6, s.other, s.errs)
			if s.errs > 0 {
				log.Printf("  first error: %s", s.firstErr)
			}
		}
	}
	if *profiles {
		largest := sizes[len(sizes)-1]
		for _, u := range units {
			if u.size != largest {
				continue
			}
			p, err := b.profile(u.n, &seq)
			if err != nil {
				log.Printf("profile of %s: %v", u.n.name, err)
				continue
			}
			res.profiles = append(res.profiles, p)
		}
	}
	for _, u := range units {
		u.n.stop()
		if u.c != nil {
			u.c.close()
		}
	}
	return res, nil
}

func key(store string, size int) string { return fmt.Sprintf("%s@%d", store, size) }

// profile takes a CPU profile of n while the writers load it, and returns
// the top of it as markdown.
func (b *bench) profile(n *node, seq *atomic.Uint64) (string, error) {
	file := filepath.Join(b.root, fmt.Sprintf("cpu-%d.pprof", n.admin))
	done := make(chan sample, 1)
	go func() { done <- measure(n, seq, 6*time.Second) }()
	time.Sleep(time.Second)
	resp, err := http.Get(n.url("/debug/pprof/profile?seconds=5"))
	if err != nil {
		<-done
		return "", err
	}
	f, err := os.Create(file)
	if err == nil {
		_, err = io.Copy(f, resp.Body)
		f.Close()
	}
	resp.Body.Close()
	s := <-done
	if err != nil {
		return "", err
	}
	args := []string{"tool", "pprof", "-top", "-nodecount=22", n.bin, file}
	top, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("pprof: %v\n%s", err, top)
	}
	cum, _ := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=30", n.bin, file).CombinedOutput()
	return fmt.Sprintf("### %s, %d images (%.0f reg/s while profiled)\n\n`go tool pprof -top` (flat):\n\n```\n%s```\n\n`-top -cum`:\n\n```\n%s```\n\n",
		n.name, n.images, s.rate, trimPprof(top), trimPprof(cum)), nil
}

// trimPprof drops pprof's header lines about the file and binary.
func trimPprof(b []byte) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "File:") || strings.HasPrefix(l, "Build ID:") || strings.HasPrefix(l, "Type:") || strings.HasPrefix(l, "Time:") {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// ---------------------------------------------------------------- propagation
