package chaos

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imagelb/caddy-imagelb/internal/etcdproc"
	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
)

// Fault kinds, each a switch of Config.Faults. With Config.Etcd set, the
// members are processes and member-kill, leader-kill and all-members kill
// them with SIGKILL; embedded, they are closed in-process (their clients'
// connections cut first, as a crash would).
const (
	FaultMemberKill = "member-kill" // a random etcd member killed, then restarted on its data
	FaultLeaderKill = "leader-kill" // the same for the member that leads
	FaultAllMembers = "all-members" // every member down, then back
	FaultNodeKill   = "node-kill"   // a Caddy node killed with SIGKILL, then restarted on its data directory
	FaultNodePause  = "node-pause"  // a node stopped (SIGSTOP) for PauseFor, with a compaction meanwhile
	FaultPartition  = "partition"   // a node cut off from every member while the others write
	FaultCompact    = "compact"     // etcd compacted to its current revision while the nodes watch
	// etcd restored from a snapshot taken FaultFor before, undoing the
	// changes made since: with a revision bump of RestoreBump and
	// mark-compacted (etcdutl 3.5+), or without (etcdctl 3.4), where the
	// revision goes back (and, one time in two, writes outside the nodes'
	// prefix take it past what the nodes had seen before they reconnect)
	FaultRestoreBump   = "restore-bump"
	FaultRestoreNoBump = "restore-nobump"
)

// RestoreBump is the revision bump of FaultRestoreBump, as an operator
// passes to `etcdutl snapshot restore --bump-revision`.
const RestoreBump = 1_000_000

// RestoreFaults are the faults that restore etcd from a snapshot: only
// the embedded members (internal/etcdtest) can be restored.
var RestoreFaults = []string{FaultRestoreBump, FaultRestoreNoBump}

// AllFaults lists every fault kind.
var AllFaults = []string{FaultMemberKill, FaultLeaderKill, FaultAllMembers, FaultNodeKill, FaultNodePause,
	FaultPartition, FaultCompact, FaultRestoreBump, FaultRestoreNoBump}

// Config is one randomized history.
type Config struct {
	Seed     uint64
	Duration time.Duration // of the workload; the faults stop with it
	Nodes    int           // Caddy nodes; default 3
	Groups   int           // image groups (two images and a port each); default 2
	Writers  int           // writers per node, each one request at a time; default 2
	// Think is the most a writer waits between two requests (uniform);
	// default 30ms. It bounds the history's size, so the check's time.
	Think time.Duration
	// Faults are the kinds injected, one at a time, with a quiet gap of
	// FaultGap (default 1s to 3s) between them; FaultFor (default 0.5s to
	// 2s) is how long one lasts, PauseFor (default 11s: past the node's 10s
	// lease) how long a pause lasts.
	Faults   []string
	FaultGap time.Duration
	FaultFor time.Duration
	PauseFor time.Duration
	// Etcd is the etcd server's binary (the one etcdproc.Build makes, or
	// Debian's /usr/bin/etcd, 3.4): its three members run as processes on
	// loopback, and the member faults kill them with SIGKILL. Empty: the
	// members are embedded in this process (etcdtest, the module's etcd).
	Etcd string
	// StrictRejects checks that a 404 or a port 409 was right at some
	// moment of the request (a node answering from a stale view breaks
	// it); off, a rejected write is only checked to change nothing.
	StrictRejects bool
	// Local runs one node on `store local` (its bbolt file) instead of the
	// cluster: the writers hit it while node-kill kills it with SIGKILL (in
	// the middle of group commits), and its own reads, linearizable on one
	// node, stand where etcd's are. Only node-kill applies.
	Local        bool
	CheckTimeout time.Duration // porcupine's; default 2m
	Out          string        // directory for anomaly files; default the test's temporary one
	Log          func(format string, args ...any)
}

// Report is what a run found.
type Report struct {
	Seed       uint64
	Etcd       string         // which etcd, and how it ran
	Ops        int            // writes recorded
	Codes      map[string]int // writes by answer: 200, 404, 409, unknown
	EtcdReads  int
	NodeReads  int
	Faults     []string // what was injected, in order, with its start
	Result     porcupine.CheckResult
	CheckTook  time.Duration
	Anomalies  []string
	Files      []string // the history and visualization written for the anomalies
	Converged  time.Duration
	TotalTaken time.Duration
}

func (c *Config) defaults() {
	if c.Nodes == 0 {
		c.Nodes = 3
	}
	if c.Groups == 0 {
		c.Groups = 2
	}
	if c.Writers == 0 {
		c.Writers = 2
	}
	if c.Think == 0 {
		c.Think = 30 * time.Millisecond
	}
	if c.FaultGap == 0 {
		c.FaultGap = 2 * time.Second
	}
	if c.FaultFor == 0 {
		c.FaultFor = 2 * time.Second
	}
	if c.PauseFor == 0 {
		c.PauseFor = 11 * time.Second
	}
	if c.CheckTimeout == 0 {
		c.CheckTimeout = 2 * time.Minute
	}
	if c.Log == nil {
		c.Log = func(string, ...any) {}
	}
}

// BuildCaddy builds cmd/caddy (Caddy with the plugin, the binary xcaddy
// makes) into dir and returns its path. root is the module's root.
func BuildCaddy(root, dir string) (string, error) {
	bin := filepath.Join(dir, "caddy")
	build := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building cmd/caddy: %v\n%s", err, out)
	}
	return bin, nil
}

// run is one history in progress.
type run struct {
	t     testing.TB
	cfg   Config
	bin   string
	etcd  etcdCluster
	nodes []*node
	start time.Time
	rng   *rand.Rand // the fault schedule's

	mu        sync.Mutex
	ops       []porcupine.Operation
	unknown   []int // indexes in ops of writes whose effect is unknown
	nodeReads []nodeRead
	ports     []string // port keys that disagree with the records

	watchRev  atomic.Int64 // the newest revision the history's watch has seen
	watchMu   sync.Mutex
	watched   map[int64][]Image // every version of each image in etcd, in order
	watchedAt map[int64][]int64 // and the revision of each
	// and the writes (their marks) whose changes each holds: a version
	// cannot be committed before those writes were sent
	watchedMarks map[int64][][]int64
	markCall     map[int64]int64 // when each write was sent
	watchErr     error
	// when the watch of each epoch (between restores of etcd) first saw
	// each write's mark
	marks      map[epochMark]int64
	watchEpoch int // the restores the watch has been started again after
	lastMark   atomic.Int64

	// the restores, in order: the history is checked in epochs between them
	restores    []restore
	watchCtx    context.Context    // the run's, which the history's watch lives in
	watchCancel context.CancelFunc // the history's watch in progress
	watchDone   chan struct{}

	model    porcupine.Model // the one checked
	lastInfo porcupine.LinearizationInfo
}

// etcdCluster is the three-member etcd of a run: embedded (etcdtest) or
// processes (etcdproc), which have the same methods.
type etcdCluster interface {
	Endpoint(i int) string
	Client() *clientv3.Client
	Revision() int64
	Compact(rev int64) int64
	Leader() int
	Stop(i int) // killed: SIGKILL for a process
	Restart(i int)
	StopAll()
	RestartAll()
}

var (
	_ etcdCluster = (*etcdtest.Cluster)(nil)
	_ etcdCluster = (*etcdproc.Cluster)(nil)
)

// memberDown says how a member fault took a member down.
func (r *run) memberDown() string {
	if r.cfg.Etcd != "" {
		return "killed (SIGKILL), down"
	}
	return "closed, down"
}

// etcdName says which etcd a history ran against.
func etcdName(c etcdCluster) string {
	if p, ok := c.(*etcdproc.Cluster); ok {
		return "etcd " + p.Version() + ", three processes"
	}
	return "etcd " + version.Version + ", three members embedded"
}

var client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}

// Run runs one history against a three-member etcd (embedded, or the
// processes of cfg.Etcd) and cfg.Nodes nodes of bin, then checks it. A fault of the harness itself
// (etcd not starting, say) fails t; what the checker finds is in the
// report.
func Run(t testing.TB, bin string, cfg Config) *Report {
	t.Helper()
	cfg.defaults()
	if cfg.Out == "" {
		cfg.Out = t.TempDir()
	}
	began := time.Now()
	r := &run{t: t, cfg: cfg, bin: bin, rng: rand.New(rand.NewPCG(cfg.Seed, 0xfa17)), watched: map[int64][]Image{}, watchedAt: map[int64][]int64{}, watchedMarks: map[int64][][]int64{}, markCall: map[int64]int64{}, marks: map[epochMark]int64{}}
	if cfg.Local {
		cfg.Nodes = 1
		r.cfg = cfg
		for _, f := range cfg.Faults {
			if f != FaultNodeKill {
				t.Fatalf("chaos: fault %s does not apply to store local (only %s does)", f, FaultNodeKill)
			}
		}
	} else if cfg.Etcd != "" {
		for _, f := range cfg.Faults {
			if slices.Contains(RestoreFaults, f) {
				t.Fatalf("chaos: fault %s needs the embedded etcd (Config.Etcd empty, bench/chaos -etcd embedded): a restore rewrites the members' data directories in process", f)
			}
		}
		r.etcd = etcdproc.Start(t, cfg.Etcd, 3)
	} else {
		r.etcd = etcdtest.Start(t, 3)
	}
	backend := startBackend(t)
	for i := range cfg.Nodes {
		r.nodes = append(r.nodes, r.newNode(i, backend))
	}
	t.Cleanup(r.killAll)
	for _, n := range r.nodes {
		r.startNode(n)
	}
	rep := &Report{Seed: cfg.Seed, Codes: map[string]int{}}
	if r.etcd != nil {
		rep.Etcd = etcdName(r.etcd)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !cfg.Local {
		r.watchCtx = ctx
		r.startWatch(ctx, r.etcd.Revision())
	}

	r.start = time.Now()
	deadline := r.start.Add(cfg.Duration)
	var wg sync.WaitGroup
	for i, n := range r.nodes {
		for w := range cfg.Writers {
			seed := cfg.Seed*1000 + uint64(i*cfg.Writers+w)
			wg.Go(func() { r.writer(1+i*cfg.Writers+w, n, backend, rand.New(rand.NewPCG(seed, 1)), deadline) })
		}
		wg.Go(func() { r.reader(i, n, deadline) })
	}
	if cfg.Local {
		wg.Go(func() { r.localReader(r.nodes[0], deadline) })
	} else {
		wg.Go(func() { r.etcdReader(deadline) })
	}
	r.faults(deadline, rep)
	wg.Wait()

	if cfg.Local {
		r.check(rep)
		rep.TotalTaken = time.Since(began)
		if len(rep.Anomalies) > 0 {
			rep.Files = r.write(rep)
		}
		return rep
	}
	// Every fault is healed: each node must come to etcd's state.
	conv := time.Now()
	final, err := r.converge(30 * time.Second)
	rep.Converged = time.Since(conv)
	if err != nil {
		rep.Anomalies = append(rep.Anomalies, err.Error())
	}
	if final != nil {
		now := r.now()
		for g := range cfg.Groups {
			r.ops = append(r.ops, porcupine.Operation{ClientId: 0, Input: Op{Kind: Read, Group: g, Node: "etcd"},
				Call: now, Output: Result{Code: 200, State: final[g]}, Return: now + 1})
		}
	}
	// The history's watch must have seen every version up to the final
	// read: it tells which unknown writes took effect.
	want := r.etcd.Revision()
	for wait := time.Now(); r.watchRev.Load() < want; {
		if time.Since(wait) > 10*time.Second {
			rep.Anomalies = append(rep.Anomalies, fmt.Sprintf("the history's watch is at revision %d, etcd at %d", r.watchRev.Load(), want))
			break
		}
		time.Sleep(10 * time.Millisecond) // polling for the watch's progress
	}
	cancel()
	if r.watchDone != nil {
		<-r.watchDone
	}
	r.check(rep)
	rep.TotalTaken = time.Since(began)
	if len(rep.Anomalies) > 0 {
		rep.Files = r.write(rep)
	}
	return rep
}

func startBackend(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func (r *run) now() int64 { return time.Since(r.start).Nanoseconds() }
