// Command controlplane measures imagelb's control plane on loopback (see the
// README, Durability and Performance): durable registrations per second
// through the admin endpoint of the xcaddy-built binary, for store local
// (bbolt), store etcd with one embedded member and with three, at registries
// already holding 1,000, 10,000 and 100,000 images; the same figure for the
// previous design (the whole-state JSON file, commit ae90069) at 1,000 and
// 10,000 images; and how long a registration on one node takes to show on
// another (three etcd members, two Caddy nodes). Alternating rounds, the
// order of the configurations rotated each round; medians and spreads. It
// writes a markdown table to bench/results/controlplane.md.
//
//	go run ./bench/controlplane              # the full run (about 10 minutes on 2 cores)
//	go run ./bench/controlplane -quick       # 1 round of 2s, 1,000 and 10,000 images
//	go run ./bench/controlplane -before=false
//
// etcd runs inside this process (go.etcd.io/etcd/server/v3/embed), each
// member in its own temp dir, with fsync on (durable, unlike the tests'
// UnsafeNoFsync). Everything it starts is stopped, and every temp dir
// removed, when it ends or is interrupted.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/imagelb/caddy-imagelb/registry"
)

const (
	caddyVersion = "v2.11.9"
	module       = "github.com/imagelb/caddy-imagelb"
	beforeCommit = "ae90069"
	// beforeMax is the largest registry the previous design is measured at:
	// each of its commits rewrites the whole file, so a fill and a round at
	// 100,000 images would take too long.
	beforeMax = 10000
	prefix    = "/imagelb/"
)

var (
	quick       = flag.Bool("quick", false, "1 round of 2s at 1,000 and 10,000 images (flags given explicitly win)")
	rounds      = flag.Int("rounds", 3, "alternating rounds per cell")
	duration    = flag.Duration("duration", 5*time.Second, "measured time per cell and round")
	sizesFlag   = flag.String("sizes", "1000,10000,100000", "registry sizes (images) to measure at")
	out         = flag.String("out", "bench/results/controlplane.md", "where the markdown goes")
	before      = flag.Bool("before", true, "also build and measure the previous design (commit "+beforeCommit+", whole-state JSON file)")
	writers     = flag.Int("writers", 16, "concurrent writers (one keep-alive HTTP connection each)")
	propSamples = flag.Int("prop-samples", 500, "propagation samples (0: skip the propagation test)")
	storesFlag  = flag.String("stores", "local,etcd1,etcd3", "the stores to measure (the previous design: -before)")
	quietMax    = flag.Float64("quiet", 0.25, "before each cell, wait until other processes use less than this many cores (0: don't wait)")
	quietWait   = flag.Duration("quiet-wait", 15*time.Second, "the longest wait for -quiet before a cell")
	profiles    = flag.Bool("profile", true, "CPU profiles of Caddy at the largest size, one per store")
)

func main() {
	flag.Parse()
	log.SetFlags(log.Ltime)
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		if !set["rounds"] {
			*rounds = 1
		}
		if !set["duration"] {
			*duration = 2 * time.Second
		}
		if !set["sizes"] {
			*sizesFlag = "1000,10000"
		}
	}
	if *rounds < 1 || *writers < 1 || *duration <= 0 {
		log.Fatal("-rounds, -writers and -duration must be positive")
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		interrupted.Store(true)
		log.Printf("%v: stopping everything and removing the temp dirs ...", s)
		cleanup()
		os.Exit(130)
	}()
	err := runSafe()
	if interrupted.Load() {
		select {} // the signal's goroutine cleans up and exits
	}
	cleanup()
	if err != nil {
		log.Fatal(err)
	}
}

// interrupted is set on a signal: what fails from then on is the cleanup
// pulling things away.
var interrupted atomic.Bool

// runSafe is run, with a panic turned into an error (so that the cleanup
// still runs).
func runSafe() (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
	}()
	return run()
}

// cleanups run in reverse order, once, at the end or on a signal.
var (
	cleanMu  sync.Mutex
	cleanups []func()
)

func atExit(f func()) {
	cleanMu.Lock()
	cleanups = append(cleanups, f)
	cleanMu.Unlock()
}

func cleanup() {
	cleanMu.Lock()
	defer cleanMu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	cleanups = nil
}

// bench is the run's state.
type bench struct {
	root      string // temp dir: binaries, data homes, etcd members
	caddy     string
	beforeBin string
	template  registry.ServiceRecord // a record as the node writes it
	source    string                 // the commit built, and whether the tree had changes
	start     time.Time
}

func run() error {
	if runtime.GOOS != "linux" {
		return errors.New("bench/controlplane runs on Linux (it reads /proc)")
	}
	if _, err := os.Stat("go.mod"); err != nil {
		return errors.New("run it from the repository root: go run ./bench/controlplane")
	}
	sizes, err := parseSizes(*sizesFlag)
	if err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "imagelb-controlplane-")
	if err != nil {
		return err
	}
	atExit(func() { os.RemoveAll(root) })
	b := &bench{root: root, caddy: filepath.Join(root, "caddy"), start: time.Now()}
	repo, _ := os.Getwd()

	b.source = gitState()
	log.Printf("building caddy %s with the plugin (xcaddy) from %s ...", caddyVersion, b.source)
	if err := xcaddyBuild(repo, b.caddy); err != nil {
		return err
	}
	measureBefore := *before && slices.ContainsFunc(sizes, func(n int) bool { return n <= beforeMax })
	if measureBefore {
		log.Printf("building the previous design (commit %s) in a git worktree ...", beforeCommit)
		if err := b.buildBefore(repo); err != nil {
			return err
		}
	}

	res, err := b.registrations(sizes, measureBefore)
	if err != nil {
		return err
	}
	var prop *propResult
	if *propSamples > 0 {
		if prop, err = b.propagation(); err != nil {
			return err
		}
	}
	report := b.report(sizes, measureBefore, res, prop)
	fmt.Print(report)
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
		return err
	}
	log.Printf("wrote %s (total %s)", *out, time.Since(b.start).Round(time.Second))
	return nil
}

func parseSizes(s string) ([]int, error) {
	var sizes []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-sizes %q: want positive image counts, e.g. 1000,10000", s)
		}
		sizes = append(sizes, n)
	}
	slices.Sort(sizes)
	return slices.Compact(sizes), nil
}

// xcaddyBuild builds Caddy with the plugin at src, as the README's "Build
// with xcaddy" does.
func xcaddyBuild(src, output string) error {
	cmd := exec.Command("go", "tool", "xcaddy", "build", caddyVersion, "--with", module+"@v0.0.0="+src, "--output", output)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("xcaddy build in %s: %v\n%s", src, err, out)
	}
	return nil
}

// buildBefore builds the previous design from a git worktree, removed
// right after.
func (b *bench) buildBefore(repo string) error {
	wt := filepath.Join(b.root, "before-src")
	remove := func() {
		exec.Command("git", "-C", repo, "worktree", "remove", "--force", wt).Run()
		exec.Command("git", "-C", repo, "worktree", "prune").Run()
	}
	atExit(remove) // also on a signal during the build
	if out, err := exec.Command("git", "-C", repo, "worktree", "add", "--detach", wt, beforeCommit).CombinedOutput(); err != nil {
		return fmt.Errorf("git worktree add %s: %v\n%s", beforeCommit, err, out)
	}
	b.beforeBin = filepath.Join(b.root, "caddy-before")
	err := xcaddyBuild(wt, b.beforeBin)
	remove()
	return err
}

// ---------------------------------------------------------------- etcd

// tmpFS names the file system the temp dirs are on.
func tmpFS() string {
	dir := os.TempDir()
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return dir
	}
	defer f.Close()
	best, desc := "", dir
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) < 3 {
			continue
		}
		mp := fs[1]
		if (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > len(best) {
			best, desc = mp, fmt.Sprintf("%s (%s, %s)", dir, fs[2], fs[0])
		}
	}
	return desc
}

// freePort is a port free on 127.0.0.1 now, from 10000–19999: below
// Linux's ephemeral range, so that no outgoing connection (of this run or
// of anything else on the machine) takes it before it is bound, and below
// the containers' ports (20000 and up, where nothing listens).
func freePort() int {
	for {
		port := 10000 + rand.IntN(10000)
		portsMu.Lock()
		taken := usedPorts[port]
		usedPorts[port] = true
		portsMu.Unlock()
		if taken {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		return port
	}
}

// usedPorts are the ports freePort handed out: each once.
var (
	portsMu   sync.Mutex
	usedPorts = map[int]bool{}
)
