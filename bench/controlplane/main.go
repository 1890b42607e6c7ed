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
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
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

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/bench/internal/machine"
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

// cluster is an embedded etcd cluster on loopback.
type cluster struct {
	name      string
	members   []*embed.Etcd
	endpoints []string
	client    *clientv3.Client
}

func startCluster(dir string, n int) (*cluster, error) {
	c := &cluster{name: fmt.Sprintf("etcd×%d", n)}
	type urls struct{ client, peer url.URL }
	var us []urls
	var initial []string
	for i := range n {
		u := urls{
			client: url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort())},
			peer:   url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort())},
		}
		us = append(us, u)
		initial = append(initial, fmt.Sprintf("m%d=%s", i, u.peer.String()))
		c.endpoints = append(c.endpoints, u.client.String())
	}
	atExit(c.close)
	token := fmt.Sprintf("controlplane-%d-%d", n, time.Now().UnixNano())
	for i, u := range us {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(dir, cfg.Name)
		cfg.ListenClientUrls = []url.URL{u.client}
		cfg.AdvertiseClientUrls = []url.URL{u.client}
		cfg.ListenPeerUrls = []url.URL{u.peer}
		cfg.AdvertisePeerUrls = []url.URL{u.peer}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = token
		cfg.ClusterState = embed.ClusterStateFlagNew
		cfg.LogLevel = "error"
		cfg.LogOutputs = []string{filepath.Join(dir, cfg.Name+".log")}
		// etcd's defaults otherwise (100 ms ticks, 1 s elections, fsync
		// on every commit): the figures are for durable writes.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: starting member %d: %v", c.name, i, err)
		}
		c.members = append(c.members, e)
	}
	timeout := time.After(60 * time.Second)
	for i, e := range c.members {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			return nil, fmt.Errorf("%s: member %d: %v", c.name, i, err)
		case <-timeout:
			return nil, fmt.Errorf("%s: member %d not ready after 60s", c.name, i)
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	c.client = cli
	return c, nil
}

// close stops the followers, then the leader (a stopping leader hands
// over its leadership first, waiting for a follower).
func (c *cluster) close() {
	if c.client != nil {
		c.client.Close()
		c.client = nil
	}
	var wg sync.WaitGroup
	var leaders []*embed.Etcd
	for _, e := range c.members {
		if e.Server.Leader() == e.Server.MemberID() {
			leaders = append(leaders, e)
			continue
		}
		wg.Go(e.Close)
	}
	wg.Wait()
	for _, e := range leaders {
		e.Close()
	}
	c.members = nil
}

func (c *cluster) storeBlock(pfx string) string {
	return fmt.Sprintf("store etcd {\n\t\t\tendpoints %s\n\t\t\tprefix %s\n\t\t}", strings.Join(c.endpoints, " "), pfx)
}

// ---------------------------------------------------------------- Caddy nodes

// node is one Caddy process and its data home.
type node struct {
	name    string // the configuration's name in the tables
	bin     string
	home    string // XDG_DATA_HOME and XDG_CONFIG_HOME
	admin   int
	store   string // the store line(s) of the imagelb block; "" the default
	nodeID  string
	cmd     *exec.Cmd     // the last process started
	exited  chan struct{} // closed when it has exited
	started time.Time
	logf    *os.File
	images  int // images the registry holds
	fill    fillInfo
}

type fillInfo struct {
	how     string
	took    time.Duration
	images  int // images written by the last fill
	load    time.Duration
	settle  time.Duration
	settled bool
}

func (b *bench) newNode(name string, size int, bin, store, nodeID string) (*node, error) {
	n := &node{name: name, bin: bin, store: store, nodeID: nodeID, admin: freePort()}
	n.home = filepath.Join(b.root, fmt.Sprintf("home-%s-%d", slug(name), size))
	nodesMu.Lock()
	allNodes = append(allNodes, n)
	nodesMu.Unlock()
	return n, os.MkdirAll(n.home, 0o700)
}

// allNodes are every node made, for the CPU of this run's processes.
var (
	nodesMu  sync.Mutex
	allNodes []*node
)

// othersCPU is the CPU seconds, by pid, of every user-space process this
// run did not start, with the CPU of the children each has reaped (so that
// short-lived ones, a compiler under go build say, are counted when they
// end). Kernel threads are left out: they also do this run's fsyncs.
func othersCPU() map[int]float64 {
	mine := map[int]bool{os.Getpid(): true, os.Getppid(): true}
	nodesMu.Lock()
	for _, n := range allNodes {
		if n.cmd != nil && n.cmd.Process != nil {
			mine[n.cmd.Process.Pid] = true
		}
	}
	nodesMu.Unlock()
	out := map[int]float64{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || mine[pid] {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(data, ')')
		if i < 0 || i+2 > len(data) {
			continue
		}
		f := strings.Fields(string(data[i+2:]))
		if len(f) < 15 {
			continue
		}
		flags, _ := strconv.ParseUint(f[6], 10, 64)
		if flags&0x00200000 != 0 { // PF_KTHREAD
			continue
		}
		total := 0.0
		for _, v := range f[11:15] { // utime stime cutime cstime
			x, _ := strconv.ParseFloat(v, 64)
			total += x
		}
		out[pid] = total / 100 // USER_HZ
	}
	return out
}

// ownCPU is the CPU seconds of this process and of every node running.
func ownCPU() float64 {
	total := cpuSeconds(os.Getpid())
	nodesMu.Lock()
	defer nodesMu.Unlock()
	for _, n := range allNodes {
		if n.cmd == nil || n.exited == nil {
			continue
		}
		select {
		case <-n.exited:
		default:
			total += cpuSeconds(n.cmd.Process.Pid)
		}
	}
	return total
}

// machineCPU is the busy CPU seconds of the whole machine, kernel work
// included, from /proc/stat.
func machineCPU() float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal guest guest_nice
	busy := 0.0
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest times are in user already
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / 100 // USER_HZ
}

// loadReading is the start of a measure of what other processes use.
type loadReading struct {
	others   map[int]float64
	own, all float64
	t0       time.Time
}

func startLoad() loadReading {
	return loadReading{others: othersCPU(), own: ownCPU(), all: machineCPU(), t0: time.Now()}
}

// cores is how many cores processes this run did not start used since
// the reading. Two upper bounds: theirs from /proc (too high when one
// reaps a child that ran long before), and the machine's busy time less
// this run's processes (too high by the kernel's work, this run's fsyncs
// among it). The lower one.
func (l loadReading) cores() float64 {
	byProcess := othersDelta(l.others, othersCPU())
	byMachine := max(0, (machineCPU()-l.all)-max(0, ownCPU()-l.own))
	el := time.Since(l.t0).Seconds()
	return min(byProcess, byMachine, float64(runtime.NumCPU())*el) / el
}

// waitQuiet waits, up to -quiet-wait, until other processes use under
// -quiet cores over a second; it returns how long it waited.
func waitQuiet() time.Duration {
	if *quietMax <= 0 {
		return 0
	}
	t0 := time.Now()
	for time.Since(t0) < *quietWait {
		l := startLoad()
		time.Sleep(time.Second)
		if l.cores() < *quietMax {
			break
		}
	}
	return time.Since(t0)
}

// othersDelta is the CPU seconds other processes used between two readings.
func othersDelta(before, after map[int]float64) float64 {
	d := 0.0
	for pid, v := range after {
		d += max(0, v-before[pid])
	}
	return d
}

func (n *node) caddyfile() string {
	var opts strings.Builder
	opts.WriteString("\t\thealth_interval 1h\n")
	if n.nodeID != "" {
		fmt.Fprintf(&opts, "\t\tnode_id %s\n", n.nodeID)
	}
	if n.store != "" {
		fmt.Fprintf(&opts, "\t\t%s\n", n.store)
	}
	return fmt.Sprintf("{\n\tadmin localhost:%d\n\tlog default {\n\t\tlevel WARN\n\t}\n\timagelb {\n%s\t}\n}\n", n.admin, opts.String())
}

// startNode starts the node and waits until its registry is loaded (the
// image n.images answers) and the process is idle (the first round of
// health checks probes every container of a loaded registry).
func (n *node) startNode() error {
	var err error
	for range 3 {
		if err = n.startOnce(); err == nil || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		log.Printf("%s: its admin port was taken meanwhile: starting again on another", n.name)
		n.admin = freePort()
	}
	return err
}

func (n *node) startOnce() error {
	path := filepath.Join(n.home, "Caddyfile")
	if err := os.WriteFile(path, []byte(n.caddyfile()), 0o644); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(n.home, "caddy.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(n.bin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+n.home, "XDG_CONFIG_HOME="+n.home)
	cmd.Stdout, cmd.Stderr = logf, logf
	// killed with this process, however it ends
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	n.cmd, n.logf, n.exited, n.started = cmd, logf, make(chan struct{}), t0
	go func(done chan struct{}) { cmd.Wait(); close(done) }(n.exited)
	atExit(n.stop)
	path = "/imagelb/stats"
	if n.images > 0 {
		path = fmt.Sprintf("/imagelb/services/%d", n.images)
	}
	if err := n.waitOK(path, 5*time.Minute); err != nil {
		return fmt.Errorf("%s: %v\n%s", n.name, err, n.logTail())
	}
	n.fill.load = time.Since(t0)
	return nil
}

// stop stops the process, if it runs; safe to call again.
func (n *node) stop() {
	if n.cmd == nil {
		return
	}
	select {
	case <-n.exited:
		return
	default:
	}
	n.cmd.Process.Signal(os.Interrupt)
	select {
	case <-n.exited:
	case <-time.After(15 * time.Second):
		n.cmd.Process.Kill()
		<-n.exited
	}
	n.logf.Close()
}

func (n *node) pid() int { return n.cmd.Process.Pid }

func (n *node) logTail() string {
	data, _ := os.ReadFile(filepath.Join(n.home, "caddy.log"))
	if len(data) > 3000 {
		data = data[len(data)-3000:]
	}
	return string(data)
}

func (n *node) waitOK(path string, timeout time.Duration) error {
	c := newClient(n.admin)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-n.exited:
			return errors.New("caddy exited")
		default:
		}
		resp, err := c.Get(n.url(path))
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("GET %s did not answer 200 within %s", path, timeout)
}

func (n *node) url(path string) string { return fmt.Sprintf("http://localhost:%d%s", n.admin, path) }

// newClient is one keep-alive HTTP connection to an admin endpoint on
// 127.0.0.1 (the endpoint listens on localhost, which Go binds to IPv4).
func newClient(port int) *http.Client {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	d := &net.Dialer{}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp4", addr)
		},
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
	}}
}

// ports of image id's containers at registration seq (0: the fill): any
// port on 127.0.0.1, nothing listens there (health_interval 1h).
func ports(id int64, seq uint64) (int, int) {
	a := 20000 + int((uint64(id)+seq*7919)%20000)
	return a, a + 20000
}

func registerReq(n *node, id int64, pa, pb int) *http.Request {
	body := fmt.Sprintf(`[{"container_id":"a","port":%d},{"container_id":"b","port":%d}]`, pa, pb)
	req, _ := http.NewRequest(http.MethodPost, n.url(fmt.Sprintf("/imagelb/services/%d/register?image_name=img%d", id, id)), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	return req
}

func do(c *http.Client, req *http.Request) (int, error) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 500))
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", req.Method, req.URL.Path, resp.StatusCode, bytes.TrimSpace(body))
	}
	io.Copy(io.Discard, resp.Body)
	return 200, nil
}

// ---------------------------------------------------------------- fills

// fillAPI registers images (from, to] through the admin endpoint, with
// the writers.
func (n *node) fillAPI(to int) error {
	from := n.images
	t0 := time.Now()
	ids := make(chan int64)
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range *writers {
		c := newClient(n.admin)
		wg.Go(func() {
			for id := range ids {
				pa, pb := ports(id, 0)
				if _, err := do(c, registerReq(n, id, pa, pb)); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
			}
		})
	}
feed:
	for id := int64(from + 1); id <= int64(to); id++ {
		select {
		case ids <- id:
		case <-ctx.Done():
			break feed
		}
	}
	close(ids)
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("%s: fill: %v", n.name, firstErr)
	}
	n.images = to
	n.fill = fillInfo{how: fmt.Sprintf("admin API, %d writers", *writers), took: time.Since(t0), images: to - from}
	return nil
}

// record is image id's record as the node writes it (the template is read
// back from etcd after one registration through the API).
func (b *bench) record(id int64, at time.Time) registry.ServiceRecord {
	rec := b.template
	rec.ImageID, rec.ImageName, rec.Updated = id, fmt.Sprintf("img%d", id), at
	rec.Containers = slices.Clone(b.template.Containers)
	pa, pb := ports(id, 0)
	rec.Containers[0].Port, rec.Containers[1].Port = pa, pb
	return rec
}

// takeTemplate registers image 1 through the API of a node on a
// one-member etcd of its own and reads its record back: the records
// written directly are exactly what a node writes.
func (b *bench) takeTemplate() error {
	c, err := startCluster(filepath.Join(b.root, "etcd-template"), 1)
	if err != nil {
		return err
	}
	defer c.close()
	n, err := b.newNode("template", 0, b.caddy, c.storeBlock(prefix), "a")
	if err != nil {
		return err
	}
	if err := n.startNode(); err != nil {
		return err
	}
	defer n.stop()
	if err := n.fillAPI(1); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.client.Get(ctx, prefix+registry.RecordKey(1))
	if err != nil {
		return err
	}
	if len(resp.Kvs) != 1 {
		return errors.New("the record of image 1 is not in etcd after its registration")
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &b.template); err != nil {
		return err
	}
	if len(b.template.Containers) != 2 {
		return fmt.Errorf("the record of image 1 has %d containers", len(b.template.Containers))
	}
	return nil
}

// fillEtcd writes the records of images (n.images, to] straight into etcd
// with the node stopped, then starts the node, which loads them.
func (b *bench) fillEtcd(n *node, c *cluster, to int) error {
	from := n.images
	n.stop()
	t0 := time.Now()
	const perTxn = 100 // etcd allows 128 operations per transaction
	batches := make(chan [2]int64)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	now := time.Now().UTC()
	for range 8 {
		wg.Go(func() {
			for bt := range batches {
				ops := make([]clientv3.Op, 0, perTxn)
				for id := bt[0]; id < bt[1]; id++ {
					v, err := json.Marshal(b.record(id, now))
					if err != nil {
						errs <- err
						return
					}
					ops = append(ops, clientv3.OpPut(prefix+registry.RecordKey(id), string(v)))
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := c.client.Txn(ctx).Then(ops...).Commit()
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	var ferr error
	for lo := int64(from + 1); lo <= int64(to) && ferr == nil; lo += perTxn {
		select {
		case batches <- [2]int64{lo, min(lo+perTxn, int64(to)+1)}:
		case ferr = <-errs:
		}
	}
	close(batches)
	wg.Wait()
	if ferr == nil {
		select {
		case ferr = <-errs:
		default:
		}
	}
	if ferr != nil {
		return fmt.Errorf("%s: writing the records into etcd: %v", n.name, ferr)
	}
	n.images = to
	n.fill = fillInfo{how: "records written into etcd (client, 8×100 per txn)", took: time.Since(t0), images: to - from}
	return nil
}

// fillJSON writes the previous design's whole-state file, then starts the
// node, which loads it.
func (b *bench) fillJSON(n *node, to int) error {
	n.stop()
	t0 := time.Now()
	now := time.Now().UTC()
	st := &registry.State{Version: uint64(to), SavedAt: now, Services: make([]registry.ServiceRecord, 0, to)}
	for id := int64(1); id <= int64(to); id++ {
		st.Services = append(st.Services, b.record(id, now))
	}
	data, err := registry.EncodeState(st)
	if err != nil {
		return err
	}
	path := filepath.Join(n.home, "caddy", "imagelb", "registry.json")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	n.fill = fillInfo{how: fmt.Sprintf("registry.json written (%.1f MiB)", float64(len(data))/(1<<20)), took: time.Since(t0), images: to - n.images}
	n.images = to
	return nil
}

// checkCount asserts that the node holds exactly n.images images (the
// records written directly all passed its validation).
func (n *node) checkCount() error {
	resp, err := newClient(n.admin).Get(n.url("/imagelb/stats"))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var st struct {
		Services []json.RawMessage `json:"services"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("%s: /imagelb/stats: %v", n.name, err)
	}
	if len(st.Services) != n.images {
		return fmt.Errorf("%s: the node loaded %d images, %d were written\n%s", n.name, len(st.Services), n.images, n.logTail())
	}
	return nil
}

// ---------------------------------------------------------------- registrations/s

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

type propResult struct {
	afterAck  []time.Duration // A answered 200 → B answers 200
	afterSend []time.Duration // A's request sent → B answers 200
	regA      []time.Duration // the registration on A
	timeouts  int
}

// propagation registers on node A and polls node B until the image shows,
// on the three-member cluster, under a prefix of its own.
func (b *bench) propagation() (*propResult, error) {
	e3, err := startCluster(filepath.Join(b.root, "etcd3-propagation"), 3)
	if err != nil {
		return nil, err
	}
	defer e3.close()
	log.Printf("== propagation: 2 nodes on a fresh %s, %d samples", e3.name, *propSamples)
	na, err := b.newNode("node a", 0, b.caddy, e3.storeBlock(prefix), "a")
	if err != nil {
		return nil, err
	}
	nb, err := b.newNode("node b", 0, b.caddy, e3.storeBlock(prefix), "b")
	if err != nil {
		return nil, err
	}
	for _, n := range []*node{na, nb} {
		if err := n.startNode(); err != nil {
			return nil, err
		}
		defer n.stop()
	}
	ca, cb := newClient(na.admin), newClient(nb.admin)
	res := &propResult{}
	const warm = 10
	for i := range *propSamples + warm {
		id := int64(i + 1)
		pa, pb := ports(id, 0)
		req := registerReq(na, id, pa, pb)
		t0 := time.Now()
		if _, err := do(ca, req); err != nil {
			return nil, fmt.Errorf("node a: %v", err)
		}
		t1 := time.Now()
		get := nb.url(fmt.Sprintf("/imagelb/services/%d", id))
		for {
			resp, err := cb.Get(get)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Since(t1) > 10*time.Second {
				res.timeouts++
				break
			}
			time.Sleep(time.Millisecond)
		}
		t2 := time.Now()
		if i < warm {
			continue
		}
		res.afterAck = append(res.afterAck, t2.Sub(t1))
		res.afterSend = append(res.afterSend, t2.Sub(t0))
		res.regA = append(res.regA, t1.Sub(t0))
	}
	for _, s := range [][]time.Duration{res.afterAck, res.afterSend, res.regA} {
		slices.Sort(s)
	}
	log.Printf("propagation: p50 %.2f ms, p99 %.2f ms, max %.2f ms after A's answer", ms(pct(res.afterAck, .5)), ms(pct(res.afterAck, .99)), ms(res.afterAck[len(res.afterAck)-1]))
	return res, nil
}

// ---------------------------------------------------------------- report

func (b *bench) report(sizes []int, withBefore bool, res *regResults, prop *propResult) string {
	var w strings.Builder
	w.WriteString("# Control-plane benchmark\n\n")
	w.WriteString(header(b.source))
	fmt.Fprintf(&w, "- Run time: %s\n", time.Since(b.start).Round(time.Second))
	fmt.Fprintf(&w, "\nEach cell (a registry size and a store) has a Caddy node of its own, and each etcd cell its own cluster; every cell "+
		"takes part in every round, so the sizes alternate as well as the stores. "+
		"In a cell %d writers (one keep-alive HTTP connection each) re-register random images of the registry with "+
		"changed container ports for %s after a 0.5 s warm-up (`POST /imagelb/services/{id}/register`, two containers on 127.0.0.1, "+
		"nothing listening, `health_interval 1h`); a 200 means the change is committed. %d alternating round(s), the order of the "+
		"cells rotated each round (by the number of cells over the number of rounds). registrations/s: median of the rounds, spread min–max; latency: p50 and p99 of every "+
		"registration of the cell's rounds together; CPU: Caddy's user+system time per registration (from /proc). etcd runs "+
		"embedded in the benchmark process, fsync on (etcd's defaults otherwise), each member in its own temp dir on the same disk. "+
		"The machine is shared: before each cell the run waits, up to %s, until other processes use under %.2f cores (-quiet, "+
		"-quiet-wait), and the \"other load\" column says what they used during the cell.\n\n",
		*writers, *duration, *rounds, *quietWait, *quietMax)

	// before/after summary
	w.WriteString("## Registrations/s, before and after\n\n")
	hdr := "| images |"
	sep := "|---|"
	if withBefore {
		hdr += " before: JSON file |"
		sep += "---|"
	}
	hdr += " local (bbolt) |"
	sep += "---|"
	if withBefore {
		hdr += " local vs before |"
		sep += "---|"
	}
	hdr += " etcd, 1 member | etcd, 3 members |\n"
	sep += "---|---|\n"
	w.WriteString(hdr + sep)
	for _, size := range sizes {
		fmt.Fprintf(&w, "| %s |", thousands(size))
		get := func(store string) *cell { return res.cells[key(store, size)] }
		if withBefore {
			if c := get(nameBefore); c != nil {
				fmt.Fprintf(&w, " %s |", rateCell(c))
			} else {
				w.WriteString(" not measured |")
			}
		}
		fmt.Fprintf(&w, " %s |", rateCell(get(nameLocal)))
		if withBefore {
			if c, l := get(nameBefore), get(nameLocal); c != nil && l != nil {
				fmt.Fprintf(&w, " %.1f× |", l.median()/c.median())
			} else {
				w.WriteString(" – |")
			}
		}
		fmt.Fprintf(&w, " %s | %s |\n", rateCell(get(nameEtcd1)), rateCell(get(nameEtcd3)))
	}
	if withBefore && sizes[len(sizes)-1] > beforeMax {
		fmt.Fprintf(&w, "\nThe previous design is measured up to %s images only: each of its commits rewrites and fsyncs the whole "+
			"file, so a fill and rounds at 100,000 images would take too long.\n", thousands(beforeMax))
	}
	w.WriteString("\nCells: median registrations/s (min–max over the rounds).\n")

	// details
	w.WriteString("\n## Every cell\n\n| images | store | registrations/s | spread (min–max) | p50 ms | p99 ms | Caddy CPU µs / registration | bench process CPU µs / registration | other load, cores | errors |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, size := range sizes {
		for _, store := range res.stores {
			c := res.cells[key(store, size)]
			if c == nil {
				continue
			}
			r := c.rates()
			lat := c.latencies()
			cpu, self := c.cpuPerReg()
			nerr, first := c.errors()
			errCell := "0"
			if nerr > 0 {
				errCell = fmt.Sprintf("%d (%s)", nerr, strings.ReplaceAll(first, "|", "/"))
			}
			var others []float64
			for _, x := range c.samples {
				others = append(others, x.other)
			}
			slices.Sort(others)
			fmt.Fprintf(&w, "| %s | %s | %.0f | %.0f–%.0f | %.2f | %.2f | %.0f | %.0f | %.2f (%.2f–%.2f) | %s |\n", thousands(size), store, c.median(), r[0], r[len(r)-1],
				ms(pct(lat, .5)), ms(pct(lat, .99)), cpu*1e6, self*1e6, median(others), others[0], others[len(others)-1], errCell)
		}
	}
	w.WriteString("\nThe bench process's CPU is the clients plus every embedded etcd member (those of the cell's cluster do the work). " +
		"Other load: the cores used during the window by processes this run did not start, median (min–max) over the rounds: what " +
		"else ran on this shared machine meanwhile. It is the lower of two over-estimates: those processes' CPU from /proc (with the " +
		"children they reaped, which may have run before the window) and the machine's busy time (/proc/stat) less this run's " +
		"processes (which includes kernel work, this run's fsyncs among it).\n")

	// fills
	w.WriteString("\n## Filling the registries\n\n| images | store | how | images written | took | per second | node start: registry loaded | node idle after |\n|---|---|---|---|---|---|---|---|\n")
	for _, size := range sizes {
		for _, store := range res.stores {
			c := res.cells[key(store, size)]
			if c == nil {
				continue
			}
			f := c.fill
			load := f.load.Round(10 * time.Millisecond).String()
			settle := f.settle.Round(10 * time.Millisecond).String()
			if !f.settled {
				settle += " (not idle: gave up)"
			}
			fmt.Fprintf(&w, "| %s | %s | %s | %s | %s | %.0f | %s | %s |\n", thousands(size), store, f.how, thousands(f.images),
				f.took.Round(time.Millisecond), float64(f.images)/f.took.Seconds(), load, settle)
		}
	}
	w.WriteString("\nEvery cell has a node (and an etcd cluster) of its own. store local is filled through the admin API from empty " +
		"(the path being measured), then restarted like the others. The etcd registries and the JSON file are written directly, " +
		"in the record format the node writes (a record registered through the API and read back from etcd is the template), " +
		"then the node is started and loads them: faster than the API. The nodes are started one after the other (\"registry " +
		"loaded\": from the start of the process to the last image answering), then the run waits until every one is idle " +
		"(\"idle after\", from its start: under 15% of a core for 2 s; the first round of health checks after a start probes " +
		"every container) before the first round.\n")

	// targets
	w.WriteString("\n## Targets\n\n")
	l1, l100 := res.cells[key(nameLocal, 1000)], res.cells[key(nameLocal, 100000)]
	if l1 != nil && l100 != nil {
		ratio := l100.median() / l1.median()
		fmt.Fprintf(&w, "- %s store local at 100,000 images ≥ 0.8× its rate at 1,000: %.0f vs %.0f reg/s = %.2f×\n", mark(ratio >= 0.8), l100.median(), l1.median(), ratio)
	} else {
		w.WriteString("- – store local at 100,000 images ≥ 0.8× its rate at 1,000: not measured (needs -sizes with 1000 and 100000)\n")
	}
	if l100 != nil {
		fmt.Fprintf(&w, "- %s store local at 100,000 images ≥ 1,000 reg/s: %.0f reg/s\n", mark(l100.median() >= 1000), l100.median())
	} else {
		w.WriteString("- – store local at 100,000 images ≥ 1,000 reg/s: not measured\n")
	}
	if prop != nil {
		p99 := pct(prop.afterAck, .99)
		fmt.Fprintf(&w, "- %s propagation p99 < 100 ms: %.2f ms\n", mark(p99 < 100*time.Millisecond && prop.timeouts == 0), ms(p99))
	} else {
		w.WriteString("- – propagation p99 < 100 ms: not measured (-prop-samples 0)\n")
	}

	// propagation
	if prop != nil {
		b.propReport(&w, prop)
	}
	if len(res.profiles) > 0 {
		fmt.Fprintf(&w, "\n## Where Caddy's time goes at %s images\n\nCPU profiles from the admin endpoint (`/debug/pprof/profile?seconds=5`) while the writers load the node; the profile files are not kept.\n\n", thousands(sizes[len(sizes)-1]))
		for _, p := range res.profiles {
			w.WriteString(p)
		}
	}
	return w.String()
}

func (b *bench) propReport(w *strings.Builder, prop *propResult) {
	fmt.Fprintf(w, "\n## Propagation between nodes\n\n3 etcd members, 2 Caddy nodes (node_id a and b, each with all three endpoints). "+
		"Each sample registers a new image on node A, then polls node B's `GET /imagelb/services/{id}` (one keep-alive connection, "+
		"1 ms between polls) until it answers 200. %d samples after 10 warm-up ones; the registry grows from 10 to %d images, on a "+
		"fresh cluster started once the registration cells are done and their processes stopped.\n\n", len(prop.afterAck), len(prop.afterAck)+10)
	w.WriteString("| from | p50 ms | p99 ms | max ms |\n|---|---|---|---|\n")
	row := func(name string, d []time.Duration) {
		fmt.Fprintf(w, "| %s | %.2f | %.2f | %.2f |\n", name, ms(pct(d, .5)), ms(pct(d, .99)), ms(d[len(d)-1]))
	}
	row("A's 200 (committed) → B answers 200", prop.afterAck)
	row("A's request sent → B answers 200", prop.afterSend)
	row("the registration on A itself", prop.regA)
	if prop.timeouts > 0 {
		fmt.Fprintf(w, "\n%d samples did not show on B within 10 s.\n", prop.timeouts)
	}

}

func rateCell(c *cell) string {
	if c == nil || len(c.samples) == 0 {
		return "–"
	}
	r := c.rates()
	if len(r) == 1 {
		return fmt.Sprintf("%.0f", r[0])
	}
	return fmt.Sprintf("%.0f (%.0f–%.0f)", c.median(), r[0], r[len(r)-1])
}

func mark(ok bool) string {
	if ok {
		return "✓"
	}
	return "✗"
}

// gitState names the commit of the working tree and whether it has
// uncommitted changes to tracked files.
func gitState() string {
	commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	dirty, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output()
	tree := "clean"
	if len(bytes.TrimSpace(dirty)) > 0 {
		tree = "with uncommitted changes to tracked files"
	}
	return fmt.Sprintf("the working tree at commit %s (%s)", strings.TrimSpace(string(commit)), tree)
}

func header(source string) string {
	cpu := machine.CPUModel()
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(string(data)); len(f) > 1 {
			kb, _ := strconv.Atoi(f[1])
			mem = fmt.Sprintf(", %.0f GiB RAM", float64(kb)/(1<<20))
		}
	}
	cmd := "go run ./bench/controlplane"
	if len(os.Args) > 1 {
		cmd += " " + strings.Join(os.Args[1:], " ")
	}
	return fmt.Sprintf("- Machine: %d cores (nproc), %s%s; shared and noisy; loopback only; temp dirs on %s\n"+
		"- Go: %s; Caddy: %s built with xcaddy (`go tool xcaddy build %s --with %s@v0.0.0=ROOT`)\n"+
		"- Built from: %s\n"+
		"- Date: %s\n"+
		"- Command: `%s`\n",
		runtime.NumCPU(), cpu, mem, tmpFS(), runtime.Version(), caddyVersion, caddyVersion, module,
		source, time.Now().UTC().Format("2006-01-02 15:04 UTC"), cmd)
}

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

// slug is s in lower-case letters, digits and dashes.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimSuffix(b.String(), "-")
}

func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// ---------------------------------------------------------------- helpers

func pct(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// cpuSeconds is the user+system CPU time of a process, from /proc.
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// waitIdle waits until the process uses under 15% of a core for two
// seconds in a row; false if it did not within timeout. Not 0: at 100,000
// images the checks of health_interval 1h (200,000 containers an hour, 55
// a second) and Go's scavenger returning the first round's memory keep a
// node at 5–10% of a core for minutes.
func waitIdle(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	quiet := 0
	prev := cpuSeconds(pid)
	for time.Now().Before(deadline) {
		time.Sleep(time.Second)
		cur := cpuSeconds(pid)
		if cur-prev < 0.15 {
			quiet++
			if quiet == 2 {
				return true
			}
		} else {
			quiet = 0
		}
		prev = cur
	}
	return false
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
