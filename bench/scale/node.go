package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// node is one process of the binary under test.
type node struct {
	cmd   *exec.Cmd
	pid   int
	admin string // http://127.0.0.1:port
	site  string // http://127.0.0.1:port
	dir   string
	log   *os.File
}

// startNode runs the binary with a Caddyfile of the imagelb app and one
// site, on ports it picks, and waits until the site answers.
func startNode(bin, dir string) (*node, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	admin, site := freePort(), freePort()
	block := "\t\thealth_interval 1h\n"
	if *store == "memory" {
		block += "\t\tstore memory\n"
	} else {
		block += "\t\tstore " + *store + "\n"
	}
	for _, line := range strings.Split(*extra, `\n`) {
		if strings.TrimSpace(line) != "" {
			block += "\t\t" + strings.TrimSpace(line) + "\n"
		}
	}
	cfg := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tskip_install_trust\n\tlog default {\n\t\tlevel WARN\n\t}\n\timagelb {\n%s\t}\n}\n"+
		"http://127.0.0.1:%d {\n\tbind 127.0.0.1\n\timagelb\n}\n", admin, block, site)
	caddyfile := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(caddyfile, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "caddy.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", caddyfile, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, "HOME="+dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	n := &node{cmd: cmd, pid: cmd.Process.Pid, admin: fmt.Sprintf("http://127.0.0.1:%d", admin),
		site: fmt.Sprintf("http://127.0.0.1:%d", site), dir: dir, log: logf}
	deadline := time.Now().Add(120 * time.Second)
	for {
		resp, err := http.Get(n.site + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return n, nil
			}
		}
		if time.Now().After(deadline) {
			n.stop()
			return nil, fmt.Errorf("the binary did not answer /health within 120 s (log: %s)", tail(filepath.Join(dir, "caddy.log")))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop kills the process this command started, and waits for it.
func (n *node) stop() {
	n.cmd.Process.Kill()
	n.cmd.Wait()
	n.log.Close()
}

func tail(path string) string {
	data, _ := os.ReadFile(path)
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return strings.TrimSpace(string(data))
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// memory is the process's resident memory, from /proc/PID/status.
type memory struct {
	rss, anon, file, hwm int64 // bytes
}

func (n *node) memory() memory {
	var m memory
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", n.pid))
	if err != nil {
		return m
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		key, rest, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[0], 10, 64)
		switch key {
		case "VmRSS":
			m.rss = kb * 1024
		case "RssAnon":
			m.anon = kb * 1024
		case "RssFile":
			m.file = kb * 1024
		case "VmHWM":
			m.hwm = kb * 1024
		}
	}
	return m
}

// settled waits until the RSS has not changed by more than 1% over 5 s
// (the Go runtime returns freed memory to the system gradually), up to
// -settle, and returns it.
func (n *node) settled() memory {
	deadline := time.Now().Add(*settle)
	prev := n.memory()
	stableSince := time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		m := n.memory()
		if d := m.rss - prev.rss; d > prev.rss/100 || -d > prev.rss/100 {
			prev, stableSince = m, time.Now()
			continue
		}
		if time.Since(stableSince) >= 5*time.Second {
			return m
		}
	}
	return n.memory()
}

// heapInuse is the Go heap in use (runtime.MemStats.HeapInuse), from the
// admin endpoint's /debug/vars.
func (n *node) heapInuse() (int64, error) {
	resp, err := http.Get(n.admin + "/debug/vars")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var vars struct {
		Memstats struct {
			HeapInuse int64
		} `json:"memstats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&vars); err != nil {
		return 0, fmt.Errorf("/debug/vars: %v", err)
	}
	return vars.Memstats.HeapInuse, nil
}

// saveProfile writes the process's heap profile to -profiles, if set.
func (n *node) saveProfile(name string) {
	if *profiles == "" {
		return
	}
	if err := os.MkdirAll(*profiles, 0o755); err != nil {
		log.Printf("profiles: %v", err)
		return
	}
	resp, err := http.Get(n.admin + "/debug/pprof/heap")
	if err != nil {
		log.Printf("heap profile: %v", err)
		return
	}
	defer resp.Body.Close()
	path := filepath.Join(*profiles, name+".pprof")
	f, err := os.Create(path)
	if err != nil {
		log.Printf("heap profile: %v", err)
		return
	}
	defer f.Close()
	io.Copy(f, resp.Body)
	log.Printf("heap profile: %s", path)
}

// read is one GET: bytes, time, and the RSS growth during it.
type read struct {
	status  int
	bytes   int64
	seconds float64
	growth  int64 // peak RSS during the read over the RSS before it
	body    []byte
}

// get reads url whole and measures it. keep keeps the body (for parsing);
// otherwise only its length is counted.
func (n *node) get(url string, keep bool) (read, error) {
	before := n.memory()
	resetPeak := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", n.pid), []byte("5"), 0)
	var peak atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	if resetPeak != nil { // no VmHWM reset: poll instead
		wg.Go(func() {
			for {
				if m := n.memory(); m.rss > peak.Load() {
					peak.Store(m.rss)
				}
				select {
				case <-done:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		})
	}
	start := time.Now()
	client := &http.Client{Timeout: 10 * time.Minute}
	resp, err := client.Get(url)
	var r read
	if err == nil {
		var buf bytes.Buffer
		var w io.Writer = &buf
		if !keep {
			w = io.Discard
		}
		r.bytes, err = io.Copy(w, resp.Body)
		resp.Body.Close()
		r.status, r.body = resp.StatusCode, buf.Bytes()
	}
	r.seconds = time.Since(start).Seconds()
	close(done)
	wg.Wait()
	if err != nil {
		return r, fmt.Errorf("GET %s: %v", url, err)
	}
	after := n.memory()
	if resetPeak == nil {
		peak.Store(after.hwm)
	}
	r.growth = max(peak.Load()-before.rss, 0)
	return r, nil
}

// register registers images [1, n] of two containers, one on each
// backend, through the admin endpoint, -writers at a time.
func (n *node) register(count int, backends []string) error {
	body := make([]string, 0, 2)
	for i, addr := range backends[:2] {
		host, port, _ := net.SplitHostPort(addr)
		body = append(body, fmt.Sprintf(`{"container_id":"c%d","host":%q,"port":%s}`, i, host, port))
	}
	payload := "[" + strings.Join(body, ",") + "]"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *writers}, Timeout: time.Minute}
	return parallel(count, *writers, func(id int) error {
		url := fmt.Sprintf("%s/imagelb/services/%d/register?image_name=img%d", n.admin, id, id)
		resp, err := client.Post(url, "application/json", strings.NewReader(payload))
		if err != nil {
			return err
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("register %d: %d %s", id, resp.StatusCode, msg)
		}
		return nil
	})
}

// traffic sends two requests to each of the first share of the images
// through the proxy: one to each container, by round robin.
func (n *node) traffic(images int) (requests int, err error) {
	count := int(float64(images) * *share)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *clients}, Timeout: time.Minute}
	err = parallel(2*count, *clients, func(i int) error {
		id := (i-1)/2 + 1
		resp, err := client.Get(fmt.Sprintf("%s/api/v1/proxy/%d/", n.site, id))
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("GET /api/v1/proxy/%d/: %d", id, resp.StatusCode)
		}
		return nil
	})
	return 2 * count, err
}

// parallel calls f(1) … f(count) from workers goroutines; the first error
// stops it.
func parallel(count, workers int, f func(int) error) error {
	next := make(chan int)
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				if err := f(i); err != nil {
					failed.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	for i := 1; i <= count && failed.Load() == nil; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	if e := failed.Load(); e != nil {
		return *e
	}
	return nil
}

// startBackends starts count tiny HTTP servers on 127.0.0.1 that answer a
// few bytes, and returns their addresses.
func startBackends(count int) []string {
	var addrs []string
	for range count {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.Write([]byte("ok\n"))
		})}
		go func() {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				log.Fatal(err)
			}
		}()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}
