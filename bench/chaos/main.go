// Command chaos runs randomized histories with faults against a cluster of
// imagelb nodes and checks each one (internal/chaos): three nodes of the
// binary cmd/caddy builds, a three-member etcd (embedded in this process, or
// three processes with -etcd), writers on every node, faults one at a time. For each history it prints
// the seed, the operations by answer, the faults, how long porcupine's check
// took, and the anomalies; on an anomaly it writes the history and
// porcupine's visualization to -out and names the files.
//
// The faults (-faults, comma-separated; default all): member-kill,
// leader-kill, all-members, node-kill, node-pause, partition, compact, and
// two restores of etcd from a snapshot taken during the workload:
// restore-bump (etcdutl's --bump-revision 1000000 --mark-compacted) and
// restore-nobump (etcdctl 3.4's restore: the revision goes back, and one
// time in two other writes take it past the nodes' before they reconnect).
// A restore undoes the acknowledged changes made after its snapshot: the
// history is checked in epochs, each from the state etcd was restored to,
// and every node must come to that state.
//
//	go run ./bench/chaos -duration 10m -seed 1
//	go run ./bench/chaos -histories 1 -seed 42 -faults node-kill,partition
//	go run ./bench/chaos -histories 10 -history 15s -faults restore-bump,restore-nobump,member-kill,node-kill
//	go run ./bench/chaos -local -duration 5m   # store local, killed with SIGKILL
//	go run ./bench/chaos -etcd built -histories 5 -history 12s           # members as processes, kill -9
//	go run ./bench/chaos -etcd /usr/bin/etcd -histories 5 -history 12s   # Debian's etcd-server 3.4
//
// Run it in a private network namespace when other programs use loopback
// ports (`unshare --net`). Seeds are consecutive from -seed; a seed fixes the
// workload's and the faults' choices, not the machine's timing.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/chaos"
	"github.com/imagelb/caddy-imagelb/internal/etcdproc"
)

func main() {
	duration := flag.Duration("duration", 10*time.Minute, "stop starting histories after this long")
	histories := flag.Int("histories", 0, "stop after this many histories (0: -duration decides)")
	seed := flag.Uint64("seed", uint64(time.Now().UnixNano()%1_000_000), "the first history's seed; the next ones count up")
	length := flag.Duration("history", 20*time.Second, "how long each history's workload runs")
	faults := flag.String("faults", strings.Join(chaos.AllFaults, ","), "the fault kinds, comma-separated (none: \"\")")
	pause := flag.Duration("pause", 11*time.Second, "how long node-pause stops a node (its lease is 10s)")
	groups := flag.Int("groups", 2, "image groups (two images contending for one port each)")
	writers := flag.Int("writers", 2, "writers per node")
	strict := flag.Bool("strict", false, "check that every 404 and port 409 was right at some moment of its request")
	local := flag.Bool("local", false, "one node on store local, killed with SIGKILL (only node-kill applies; -faults defaults to it)")
	out := flag.String("out", "chaos-out", "directory for the files of anomalous histories")
	etcd := flag.String("etcd", "embedded", "the etcd members: embedded (in this process, closed by the member faults), "+
		"built (etcd's own main at the module's version, three processes killed with SIGKILL), or the path of an etcd binary run the same way (Debian's /usr/bin/etcd)")
	flag.Parse()

	if *local && !flagSet("faults") {
		*faults = chaos.FaultNodeKill
	}
	if *etcd != "embedded" && !flagSet("faults") {
		// a restore rewrites the members' data directories, which only
		// the embedded members support
		var kinds []string
		for _, k := range chaos.AllFaults {
			if !slices.Contains(chaos.RestoreFaults, k) {
				kinds = append(kinds, k)
			}
		}
		*faults = strings.Join(kinds, ",")
	}
	var kinds []string
	for _, k := range strings.Split(*faults, ",") {
		if k = strings.TrimSpace(k); k != "" {
			if !slices.Contains(chaos.AllFaults, k) {
				log.Fatalf("unknown fault %q: use some of %s", k, strings.Join(chaos.AllFaults, ","))
			}
			kinds = append(kinds, k)
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	root, err := moduleRoot()
	if err != nil {
		log.Fatal(err)
	}
	tmp, err := os.MkdirTemp("", "imagelb-chaos-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	fmt.Printf("building cmd/caddy ...\n")
	bin, err := chaos.BuildCaddy(root, tmp)
	if err != nil {
		log.Fatal(err)
	}

	etcdBin := ""
	switch *etcd {
	case "embedded":
	case "built":
		fmt.Printf("building etcd ...\n")
		if etcdBin, err = etcdproc.Build(root, tmp); err != nil {
			log.Fatal(err)
		}
	default:
		etcdBin = *etcd
	}
	if etcdBin != "" {
		v, err := etcdproc.Version(etcdBin)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("etcd %s (%s): three processes, member faults kill with SIGKILL\n", v, etcdBin)
	}

	// An interrupt stops the nodes and etcd of the history in progress.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		current.cleanup()
		os.RemoveAll(tmp)
		os.Exit(130)
	}()

	began := time.Now()
	var ran, bad, failed, ops int
	var badSeeds, failedSeeds []uint64
	for s := *seed; ; s++ {
		if *histories > 0 && ran >= *histories || *histories == 0 && time.Since(began) >= *duration {
			break
		}
		cfg := chaos.Config{Seed: s, Duration: *length, Groups: *groups, Writers: *writers, Faults: kinds,
			PauseFor: *pause, StrictRejects: *strict, Local: *local, Out: *out, Etcd: etcdBin}
		rep, err := runOne(tmp, bin, cfg)
		ran++
		if err != nil {
			// not an anomaly of the registry, and not a checked history
			// either: counted apart, and the command still fails
			fmt.Printf("seed %d: the harness failed: %v\n", s, err)
			failed++
			failedSeeds = append(failedSeeds, s)
			continue
		}
		ops += rep.Ops
		fmt.Printf("seed %d: %d writes %v, %d etcd reads, %d node reads; check %s in %s; converged in %s; %s in all\n",
			s, rep.Ops, rep.Codes, rep.EtcdReads, rep.NodeReads, rep.Result, rep.CheckTook.Round(time.Millisecond),
			rep.Converged.Round(time.Millisecond), rep.TotalTaken.Round(time.Millisecond))
		fmt.Printf("  faults (%d): %s\n", len(rep.Faults), strings.Join(rep.Faults, "; "))
		if len(rep.Anomalies) > 0 {
			bad++
			badSeeds = append(badSeeds, s)
			for _, a := range rep.Anomalies {
				fmt.Printf("  ANOMALY: %s\n", a)
			}
			fmt.Printf("  files: %s\n", strings.Join(rep.Files, " "))
		}
	}
	fmt.Printf("%d histories checked, %d writes, in %s; %d with an anomaly", ran-failed, ops, time.Since(began).Round(time.Second), bad)
	if bad > 0 {
		fmt.Printf(" (seeds %v)", badSeeds)
	}
	if failed > 0 {
		fmt.Printf("; %d not run to the check, the harness failed (seeds %v)", failed, failedSeeds)
	}
	fmt.Println()
	if bad > 0 || failed > 0 {
		os.RemoveAll(tmp) // os.Exit skips the deferred removal
		os.Exit(1)
	}
}

// runOne runs one history, with a testing.TB of its own whose cleanups run
// when it ends.
func runOne(tmp, bin string, cfg chaos.Config) (rep *chaos.Report, err error) {
	tb := &runTB{tmp: tmp, name: fmt.Sprintf("seed-%d", cfg.Seed)}
	current.set(tb)
	defer func() {
		if v := recover(); v != nil {
			f, ok := v.(fatal)
			if !ok {
				panic(v)
			}
			err = errors.New(string(f))
		}
		current.cleanup()
	}()
	cfg.Log = func(format string, args ...any) { fmt.Printf("  "+format+"\n", args...) }
	return chaos.Run(tb, bin, cfg), nil
}

// current is the history in progress, for an interrupt.
var current inProgress

type inProgress struct {
	mu sync.Mutex
	tb *runTB
}

func (c *inProgress) set(tb *runTB) {
	c.mu.Lock()
	c.tb = tb
	c.mu.Unlock()
}

// fatal is the panic of runTB.Fatal.
type fatal string

// runTB is the testing.TB the harness wants (etcdtest and testkit take
// one), outside a test: Fatal panics, caught by runOne.
type runTB struct {
	testing.TB // the methods not below are not used: calling one panics
	tmp, name  string

	mu       sync.Mutex
	cleanups []func()
	dirs     int
}

func (t *runTB) Helper()                         {}
func (t *runTB) Name() string                    { return t.name }
func (t *runTB) Log(args ...any)                 {}
func (t *runTB) Logf(format string, args ...any) {}
func (t *runTB) Fatal(args ...any)               { panic(fatal(fmt.Sprint(args...))) }
func (t *runTB) Fatalf(format string, args ...any) {
	panic(fatal(fmt.Sprintf(format, args...)))
}

func (t *runTB) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

func (t *runTB) TempDir() string {
	t.mu.Lock()
	t.dirs++
	n := t.dirs
	t.mu.Unlock()
	dir := filepath.Join(t.tmp, t.name, fmt.Sprint(n))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// cleanup runs the cleanups of the history in progress, last first.
func (c *inProgress) cleanup() {
	c.mu.Lock()
	tb := c.tb
	c.tb = nil
	c.mu.Unlock()
	if tb == nil {
		return
	}
	tb.mu.Lock()
	fs := tb.cleanups
	tb.cleanups = nil
	tb.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, f := range slices.Backward(fs) {
			f()
		}
	}()
	select {
	case <-done:
	case <-time.After(cleanupTimeout):
		// An embedded member whose start failed halfway can hang in
		// etcd's Close (seen once: a history stuck for 13 min after a
		// member's start failed); the next history must not wait for it.
		fmt.Printf("  cleanup of %s did not finish within %s: left behind\n", tb.name, cleanupTimeout)
	}
	os.RemoveAll(filepath.Join(tb.tmp, tb.name))
}

// cleanupTimeout bounds the cleanups of one history.
const cleanupTimeout = time.Minute

// flagSet reports whether the flag was given.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// moduleRoot is the directory of the go.mod above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run it from the module")
		}
		dir = parent
	}
}
