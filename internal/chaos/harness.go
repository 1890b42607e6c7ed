package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

// Fault kinds, each a switch of Config.Faults.
const (
	FaultMemberKill = "member-kill" // a random etcd member closed hard, then restarted on its data
	FaultLeaderKill = "leader-kill" // the same for the member that leads
	FaultAllMembers = "all-members" // every member down, then back
	FaultNodeKill   = "node-kill"   // a Caddy node killed with SIGKILL, then restarted on its data directory
	FaultNodePause  = "node-pause"  // a node stopped (SIGSTOP) for PauseFor, with a compaction meanwhile
	FaultPartition  = "partition"   // a node cut off from every member while the others write
	FaultCompact    = "compact"     // etcd compacted to its current revision while the nodes watch
)

// AllFaults lists every fault kind.
var AllFaults = []string{FaultMemberKill, FaultLeaderKill, FaultAllMembers, FaultNodeKill, FaultNodePause,
	FaultPartition, FaultCompact}

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
	etcd  *etcdtest.Cluster
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
	marks        map[int64]int64 // when the watch first saw each write's mark
	lastMark     atomic.Int64

	model    porcupine.Model // the one checked
	lastInfo porcupine.LinearizationInfo
}

type nodeRead struct {
	node      int
	epoch     int // the node's process: reads of one process must not go back
	call, ret int64
	images    map[int64]Image
}

// node is one Caddy node: a process of the built binary.
type node struct {
	name, dir, config string
	adm               string
	proxies           []*etcdtest.Proxy // its own way to each member
	epoch             atomic.Int64
	cmd               *exec.Cmd
	done              chan struct{}
}

var client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}

// Run runs one history against a three-member embedded etcd and
// cfg.Nodes nodes of bin, then checks it. A fault of the harness itself
// (etcd not starting, say) fails t; what the checker finds is in the
// report.
func Run(t testing.TB, bin string, cfg Config) *Report {
	t.Helper()
	cfg.defaults()
	if cfg.Out == "" {
		cfg.Out = t.TempDir()
	}
	began := time.Now()
	r := &run{t: t, cfg: cfg, bin: bin, rng: rand.New(rand.NewPCG(cfg.Seed, 0xfa17)), watched: map[int64][]Image{}, watchedAt: map[int64][]int64{}, watchedMarks: map[int64][][]int64{}, markCall: map[int64]int64{}, marks: map[int64]int64{}}
	if cfg.Local {
		cfg.Nodes = 1
		r.cfg = cfg
		for _, f := range cfg.Faults {
			if f != FaultNodeKill {
				t.Fatalf("chaos: fault %s does not apply to store local (only %s does)", f, FaultNodeKill)
			}
		}
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
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !cfg.Local {
		watching := make(chan struct{})
		go r.watch(ctx, watching)
		<-watching
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

// newNode writes node i's Caddyfile: the imagelb app on etcd through the
// node's own proxies, no health checks (a verdict would change the status
// a read shows), request_timeout 2s.
func (r *run) newNode(i int, backend int) *node {
	t := r.t
	n := &node{name: fmt.Sprintf("lb-%d", i+1), dir: t.TempDir(), done: make(chan struct{})}
	close(n.done)
	store := "store local"
	var eps []string
	for m := range 3 {
		if r.cfg.Local {
			break
		}
		target, err := url.Parse(r.etcd.Endpoint(m))
		if err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))
		p := etcdtest.NewProxy(addr, target.Host)
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Stop)
		n.proxies = append(n.proxies, p)
		eps = append(eps, "http://"+addr)
	}
	if !r.cfg.Local {
		store = fmt.Sprintf("store etcd {\n\t\t\tendpoints %s\n\t\t\trequest_timeout 2s\n\t\t\tdial_timeout 2s\n\t\t}",
			strings.Join(eps, " "))
	}
	admin, site := testkit.FreePort(t), testkit.FreePort(t)
	n.adm = fmt.Sprintf("http://127.0.0.1:%d/imagelb", admin)
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	imagelb {
		node_id %s
		health_interval 1h
		%s
	}
}

:%d {
	imagelb
}
`, admin, n.name, store, site)
	n.config = filepath.Join(n.dir, "Caddyfile")
	if err := os.WriteFile(n.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return n
}

// startNode runs the node's process and waits until its API answers.
func (r *run) startNode(n *node) {
	r.t.Helper()
	logs, err := os.OpenFile(filepath.Join(n.dir, "caddy.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		r.t.Fatal(err)
	}
	cmd := exec.Command(r.bin, "run", "--config", n.config)
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+n.dir, "XDG_CONFIG_HOME="+n.dir)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logs.Close(); close(done) }()
	n.cmd, n.done = cmd, done
	n.epoch.Add(1)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-done:
			r.t.Fatalf("%s exited at start; its log: %s", n.name, filepath.Join(n.dir, "caddy.log"))
		default:
		}
		if resp, err := client.Get(n.adm + "/services"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s's API did not answer within 30s", n.name)
		}
		time.Sleep(20 * time.Millisecond) // polling until the node serves
	}
}

// kill9 kills the node with SIGKILL (no shutdown code runs) and waits.
func (n *node) kill9() {
	if n.cmd != nil && n.cmd.Process != nil {
		n.cmd.Process.Kill()
		<-n.done
	}
}

func (n *node) signal(sig syscall.Signal) {
	if n.cmd != nil && n.cmd.Process != nil {
		n.cmd.Process.Signal(sig)
	}
}

func (r *run) killAll() {
	for _, n := range r.nodes {
		n.kill9()
	}
}

// record appends a finished operation to the history.
func (r *run) record(client int, op Op, res Result, call, ret int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: op, Call: call, Output: res, Return: ret})
	if op.Mark != 0 {
		r.markCall[op.Mark] = call
	}
	if op.Kind != Read && res.Code == 0 {
		r.unknown = append(r.unknown, len(r.ops)-1)
	}
}

// writer sends random writes to one node, one at a time, until deadline;
// id is its row in the visualization.
func (r *run) writer(id int, n *node, backend int, rng *rand.Rand, deadline time.Time) {
	for time.Now().Before(deadline) {
		op := randomOp(rng, r.cfg.Groups)
		op.Node, op.Mark = n.name, r.lastMark.Add(1)
		call := r.now()
		res, sent := send(n, op, backend)
		if sent {
			r.record(id, op, res, call, r.now())
		}
		wait := time.Duration(rng.Int64N(int64(r.cfg.Think) + 1))
		if res.Code == 0 {
			wait += 200 * time.Millisecond // etcd or the node is down: fewer unknowns to place
		}
		time.Sleep(wait) // the workload's think time
	}
}

func randomOp(rng *rand.Rand, groups int) Op {
	op := Op{Group: rng.IntN(groups), Slot: rng.IntN(ImagesPerGroup), Ctr: rng.IntN(Containers), Weight: -1}
	status := func() uint8 {
		if rng.IntN(4) == 0 {
			return draining
		}
		return healthy
	}
	switch x := rng.IntN(100); {
	case x < 14:
		op.Kind = Register
		op.Claim = rng.IntN(2) == 0
		for c := range op.Ctrs {
			if rng.IntN(2) == 0 {
				op.Ctrs[c] = Ctr{Present: true, Weight: 1 + rng.IntN(9), Status: status()}
			}
		}
	case x < 44:
		op.Kind, op.Weight, op.Status = Put, 1+rng.IntN(9), status()
	case x < 72:
		op.Kind = Patch
		switch rng.IntN(3) {
		case 0:
			op.Weight = rng.IntN(10)
		case 1:
			op.Status = status()
		default:
			op.Weight, op.Status = rng.IntN(10), status()
		}
	case x < 92:
		op.Kind = DelCtr
	default:
		op.Kind = DelSvc
	}
	return op
}

// send makes op's request to the node and reads its answer; sent is false
// when the node refused the connection (it is dead: nothing was asked).
func send(n *node, op Op, backend int) (res Result, sent bool) {
	img := ImageID(op.Group, op.Slot)
	svc := fmt.Sprintf("%s/services/%d", n.adm, img)
	ctr := fmt.Sprintf("%s/containers/c%d", svc, op.Ctr)
	var method, target string
	var body any
	switch op.Kind {
	case Register:
		method, target = "POST", fmt.Sprintf("%s/register?image_name=img-%d", svc, img)
		if op.Claim {
			target += fmt.Sprintf("&external_port=%d", GroupPort(op.Group))
		}
		cs := []map[string]any{}
		for i, c := range op.Ctrs {
			if c.Present {
				cs = append(cs, map[string]any{"container_id": fmt.Sprintf("c%d", i), "port": backend,
					"weight": c.Weight, "status": statusNames[c.Status], "cpu_usage": op.Mark})
			}
		}
		body = cs
	case Put:
		method, target = "PUT", ctr
		body = map[string]any{"port": backend, "weight": op.Weight, "status": statusNames[op.Status], "cpu_usage": op.Mark}
	case Patch:
		method, target = "PATCH", ctr
		p := map[string]any{"cpu_usage": op.Mark}
		if op.Weight >= 0 {
			p["weight"] = op.Weight
		}
		if op.Status != noStatus {
			p["status"] = statusNames[op.Status]
		}
		body = p
	case DelCtr:
		method, target = "DELETE", ctr
	case DelSvc:
		method, target = "DELETE", svc
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, target, rd)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if errors.Is(err, syscall.ECONNREFUSED) {
		return Result{}, false
	}
	if err != nil {
		return Result{Detail: err.Error()}, true
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var e struct {
		Detail any `json:"detail"`
	}
	json.Unmarshal(data, &e)
	detail := fmt.Sprint(e.Detail)
	switch resp.StatusCode {
	case 200:
		res := Result{Code: 200}
		switch op.Kind {
		case Register, DelSvc:
			var s svcJSON
			if json.Unmarshal(data, &s) != nil || s.ImageID != img {
				res.Image = Image{Odd: true}
			} else {
				res.Image = s.image(op.Group)
			}
		default:
			var c ctrJSON
			if json.Unmarshal(data, &c) != nil || c.ID != fmt.Sprintf("c%d", op.Ctr) {
				res.Ctr = Ctr{Present: true, Status: 255}
			} else {
				res.Ctr = c.ctr()
			}
		}
		return res, true
	case 404:
		return Result{Code: 404, Detail: detail}, true
	case 409:
		return Result{Code: 409, PortConflict: strings.Contains(detail, "already mapped"), Detail: detail}, true
	}
	return Result{Detail: fmt.Sprintf("%d %s", resp.StatusCode, detail)}, true
}

// svcJSON is a Service as the API answers it, and a record as etcd holds
// it: the fields the model has.
type svcJSON struct {
	ImageID      int64     `json:"image_id"`
	ExternalPort *int      `json:"external_port"`
	Containers   []ctrJSON `json:"containers"`
}

type ctrJSON struct {
	ID     string   `json:"container_id"`
	Weight int      `json:"weight"`
	Status string   `json:"status"`
	Mark   *float64 `json:"cpu_usage"`
}

func (c ctrJSON) ctr() Ctr {
	return Ctr{Present: true, Weight: c.Weight, Status: parseStatus(c.Status)}
}

func (s svcJSON) image(group int) Image {
	im := Image{Exists: true}
	if s.ExternalPort != nil && *s.ExternalPort != 0 {
		if *s.ExternalPort == GroupPort(group) {
			im.Port = true
		} else {
			im.Odd = true
		}
	}
	for _, c := range s.Containers {
		var k int
		if _, err := fmt.Sscanf(c.ID, "c%d", &k); err != nil || k < 0 || k >= Containers || im.Ctrs[k].Present ||
			fmt.Sprintf("c%d", k) != c.ID {
			im.Odd = true
			continue
		}
		im.Ctrs[k] = c.ctr()
	}
	return im
}

// reader reads the node's services, one read at a time, until deadline.
func (r *run) reader(i int, n *node, deadline time.Time) {
	for time.Now().Before(deadline) {
		epoch := int(n.epoch.Load())
		call := r.now()
		images, ok := r.readNode(n)
		ret := r.now()
		if ok && int(n.epoch.Load()) == epoch {
			r.mu.Lock()
			r.nodeReads = append(r.nodeReads, nodeRead{node: i, epoch: epoch, call: call, ret: ret, images: images})
			r.mu.Unlock()
		}
		time.Sleep(20 * time.Millisecond) // read interval
	}
}

// readNode reads the workload's images as a node serves them.
func (r *run) readNode(n *node) (map[int64]Image, bool) {
	resp, err := client.Get(n.adm + "/services")
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	var all []svcJSON
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&all) != nil {
		return nil, false
	}
	images := map[int64]Image{}
	for _, s := range all {
		if g, _, ok := imageOf(s.ImageID, r.cfg.Groups); ok {
			images[s.ImageID] = s.image(g)
		}
	}
	return images, true
}

const prefix = "/imagelb/"

// readEtcd reads every group's state from etcd in one linearizable
// transaction, and checks that the port keys agree with the records.
func (r *run) readEtcd(ctx context.Context) ([]State, error) {
	resp, err := r.etcd.Client().Txn(ctx).Then(
		clientv3.OpGet(prefix+"services/", clientv3.WithPrefix()),
		clientv3.OpGet(prefix+"ports/", clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, err
	}
	states := make([]State, r.cfg.Groups)
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		var s svcJSON
		if err := json.Unmarshal(kv.Value, &s); err != nil {
			return nil, fmt.Errorf("record %s: %v", kv.Key, err)
		}
		if g, slot, ok := imageOf(s.ImageID, r.cfg.Groups); ok {
			states[g][slot] = s.image(g)
		}
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var port int
		var owner int64
		fmt.Sscanf(strings.TrimPrefix(string(kv.Key), prefix+"ports/"), "%d", &port)
		fmt.Sscanf(string(kv.Value), "%d", &owner)
		g, slot, ok := imageOf(owner, r.cfg.Groups)
		if !ok || GroupPort(g) != port || !states[g][slot].Port {
			r.portProblem(fmt.Sprintf("at revision %d, etcd's key ports/%d names image %d, whose record does not hold the port",
				resp.Header.Revision, port, owner))
		}
	}
	for g := range states {
		for slot := range states[g] {
			if states[g][slot].Port && !portKey(resp, GroupPort(g)) {
				r.portProblem(fmt.Sprintf("at revision %d, image %d's record holds port %d, which no ports/ key claims",
					resp.Header.Revision, ImageID(g, slot), GroupPort(g)))
			}
		}
	}
	return states, nil
}

// portProblem notes a disagreement between the port keys and the records
// (the first few).
func (r *run) portProblem(what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ports) < 3 {
		r.ports = append(r.ports, what)
	}
}

func portKey(resp *clientv3.TxnResponse, port int) bool {
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		if string(kv.Key) == fmt.Sprintf("%sports/%d", prefix, port) {
			return true
		}
	}
	return false
}

// etcdReader reads etcd every 100 ms: linearizable reads in the history.
func (r *run) etcdReader(deadline time.Time) {
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		call := r.now()
		states, err := r.readEtcd(ctx)
		ret := r.now()
		cancel()
		if err == nil {
			for g, s := range states {
				r.record(0, Op{Kind: Read, Group: g, Node: "etcd"}, Result{Code: 200, State: s}, call, ret)
			}
		}
		time.Sleep(100 * time.Millisecond) // read interval
	}
}

// localReader reads the one node of store local every 50 ms: on one node
// its reads are linearizable, and stand in the history where etcd's are.
func (r *run) localReader(n *node, deadline time.Time) {
	for time.Now().Before(deadline) {
		call := r.now()
		images, ok := r.readNode(n)
		ret := r.now()
		if ok {
			for g := range r.cfg.Groups {
				var s State
				for slot := range ImagesPerGroup {
					s[slot] = images[ImageID(g, slot)]
				}
				r.record(0, Op{Kind: Read, Group: g, Node: n.name}, Result{Code: 200, State: s}, call, ret)
			}
		}
		time.Sleep(50 * time.Millisecond) // read interval
	}
}

// watch records every version of every record, from the start, for the
// check of the nodes' reads and of unknown writes; ready is closed once it
// watches. A watch that ends (etcd lost its leader, say) starts again after
// the last revision it saw.
func (r *run) watch(ctx context.Context, ready chan struct{}) {
	rev := r.etcd.Revision()
	r.watchRev.Store(rev)
	for ctx.Err() == nil {
		wc := r.etcd.Client().Watch(ctx, prefix+"services/", clientv3.WithPrefix(),
			clientv3.WithRev(r.watchRev.Load()+1), clientv3.WithProgressNotify())
		if ready != nil {
			close(ready)
			ready = nil
		}
		for resp := range wc {
			if err := resp.Err(); err != nil {
				if resp.CompactRevision != 0 {
					r.watchMu.Lock()
					r.watchErr = err
					r.watchMu.Unlock()
					return
				}
				break
			}
			r.watchMu.Lock()
			for _, ev := range resp.Events {
				r.event(ev)
			}
			r.watchMu.Unlock()
			r.watchRev.Store(max(r.watchRev.Load(), resp.Header.Revision))
		}
		time.Sleep(50 * time.Millisecond) // before watching again
	}
}

// event records one version of a record; r.watchMu is held.
func (r *run) event(ev *clientv3.Event) {
	var id int64
	fmt.Sscanf(strings.TrimPrefix(string(ev.Kv.Key), prefix+"services/"), "%d", &id)
	g, _, ok := imageOf(id, r.cfg.Groups)
	if !ok {
		return
	}
	im := Image{}
	var marks []int64
	if ev.Type == clientv3.EventTypePut {
		var s svcJSON
		if json.Unmarshal(ev.Kv.Value, &s) != nil {
			im.Odd = true
		} else {
			im = s.image(g)
			for _, c := range s.Containers {
				if c.Mark != nil {
					marks = append(marks, int64(*c.Mark))
					if _, seen := r.marks[int64(*c.Mark)]; !seen {
						r.marks[int64(*c.Mark)] = r.now()
					}
				}
			}
		}
	}
	r.watched[id] = append(r.watched[id], im)
	r.watchedAt[id] = append(r.watchedAt[id], ev.Kv.ModRevision)
	r.watchedMarks[id] = append(r.watchedMarks[id], marks)
}

// faults injects the configured faults one at a time until deadline; each
// is healed before the next.
func (r *run) faults(deadline time.Time, rep *Report) {
	if len(r.cfg.Faults) == 0 {
		time.Sleep(time.Until(deadline))
		return
	}
	rng := r.rng
	between := func(d time.Duration) time.Duration { return d/4 + time.Duration(rng.Int64N(int64(d))) }
	for {
		gap := between(r.cfg.FaultGap)
		if time.Now().Add(gap).After(deadline) {
			time.Sleep(time.Until(deadline))
			return
		}
		time.Sleep(gap) // quiet time between faults: the schedule
		kind := r.cfg.Faults[rng.IntN(len(r.cfg.Faults))]
		d := between(r.cfg.FaultFor)
		at := time.Since(r.start).Round(time.Millisecond)
		what := r.inject(kind, d, rng)
		rep.Faults = append(rep.Faults, fmt.Sprintf("%s %s", at, what))
		r.cfg.Log("seed %d: %s %s", r.cfg.Seed, at, what)
	}
}

// inject makes one fault, waits d, and heals it; it describes what it did.
func (r *run) inject(kind string, d time.Duration, rng *rand.Rand) string {
	switch kind {
	case FaultMemberKill, FaultLeaderKill:
		m := rng.IntN(3)
		if kind == FaultLeaderKill {
			if m = r.etcd.Leader(); m < 0 {
				return kind + ": no leader, skipped"
			}
		}
		r.etcd.Stop(m)
		time.Sleep(d) // the member is down for d
		r.etcd.Restart(m)
		return fmt.Sprintf("%s: member m%d down for %s", kind, m, d.Round(time.Millisecond))
	case FaultAllMembers:
		r.etcd.StopAll()
		time.Sleep(d) // every member is down for d
		r.etcd.RestartAll()
		return fmt.Sprintf("%s: every member down for %s", kind, d.Round(time.Millisecond))
	case FaultNodeKill:
		n := r.nodes[rng.IntN(len(r.nodes))]
		n.kill9()
		time.Sleep(d) // the node is dead for d
		r.startNode(n)
		return fmt.Sprintf("%s: %s killed (SIGKILL), restarted after %s", kind, n.name, d.Round(time.Millisecond))
	case FaultNodePause:
		n := r.nodes[rng.IntN(len(r.nodes))]
		n.signal(syscall.SIGSTOP)
		time.Sleep(r.cfg.PauseFor / 2) // paused: the others write
		rev := r.etcd.Compact(r.watchRev.Load())
		time.Sleep(r.cfg.PauseFor - r.cfg.PauseFor/2) // past its lease
		n.signal(syscall.SIGCONT)
		return fmt.Sprintf("%s: %s stopped (SIGSTOP) for %s, etcd compacted to %d meanwhile", kind, n.name, r.cfg.PauseFor, rev)
	case FaultPartition:
		n := r.nodes[rng.IntN(len(r.nodes))]
		for _, p := range n.proxies {
			p.Stop()
		}
		time.Sleep(d) // cut off for d
		for _, p := range n.proxies {
			if err := p.Start(); err != nil {
				r.t.Fatal(err)
			}
		}
		return fmt.Sprintf("%s: %s cut off from etcd for %s", kind, n.name, d.Round(time.Millisecond))
	case FaultCompact:
		rev := r.etcd.Compact(r.watchRev.Load())
		return fmt.Sprintf("%s: etcd compacted to %d", kind, rev)
	}
	r.t.Fatalf("chaos: unknown fault %q (known: %s)", kind, strings.Join(AllFaults, ", "))
	return ""
}

// converge waits until every node serves etcd's state, and returns it.
func (r *run) converge(timeout time.Duration) ([]State, error) {
	deadline := time.Now().Add(timeout)
	var final []State
	var diff string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		states, err := r.readEtcd(ctx)
		cancel()
		if err == nil {
			final, diff = states, ""
			for _, n := range r.nodes {
				images, ok := r.readNode(n)
				if !ok {
					diff = n.name + " does not answer"
					break
				}
				for g, s := range states {
					for slot, want := range s {
						id := ImageID(g, slot)
						if got := images[id]; got != want {
							diff = fmt.Sprintf("%s has image %d as %s, etcd has %s", n.name, id, got, want)
						}
					}
				}
			}
			if diff == "" {
				return final, nil
			}
		} else {
			diff = "etcd: " + err.Error()
		}
		if time.Now().After(deadline) {
			return final, fmt.Errorf("not converged %s after the faults were healed: %s", timeout, diff)
		}
		time.Sleep(50 * time.Millisecond) // polling until the nodes catch up
	}
}

// check checks the history: the writes and etcd's reads with porcupine,
// each node's reads against the versions etcd had, in order.
func (r *run) check(rep *Report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// A write whose effect is unknown may take effect at any time after its
	// call: it returns after everything else (porcupine's way to say
	// "pending").
	var end int64
	for _, o := range r.ops {
		end = max(end, o.Return)
	}
	// A Register, Put or Patch leaves its mark in the record it writes: if
	// etcd's history has it, the write took effect before the watch saw it.
	// If not, it may still have taken effect: a node commits the changes
	// queued meanwhile as one record per image, so a write followed in the
	// same commit by another write of the same image (or a removal) leaves
	// no mark of its own, and a registration without containers has none.
	// Such a write stays pending, as a delete does.
	r.watchMu.Lock()
	for _, i := range r.unknown {
		op, res := r.ops[i].Input.(Op), r.ops[i].Output.(Result)
		if op.Kind == DelCtr || op.Kind == DelSvc || r.cfg.Local {
			r.ops[i].Return = end + 1
			continue
		}
		if at, ok := r.marks[op.Mark]; ok {
			res.Applied = true
			r.ops[i].Output, r.ops[i].Return = res, max(at, r.ops[i].Call)
			rep.Codes["unknown, applied"]++
		} else {
			r.ops[i].Return = end + 1
			rep.Codes["unknown, no mark"]++
		}
	}
	r.watchMu.Unlock()
	for _, o := range r.ops {
		op, res := o.Input.(Op), o.Output.(Result)
		if op.Kind == Read {
			rep.EtcdReads++
			continue
		}
		rep.Ops++
		switch res.Code {
		case 0:
			if op.Kind == DelCtr || op.Kind == DelSvc || r.cfg.Local {
				rep.Codes["unknown"]++
			}
		case 409:
			if res.PortConflict {
				rep.Codes["409 port"]++
			} else {
				rep.Codes["409 races"]++
			}
		default:
			rep.Codes[fmt.Sprint(res.Code)]++
		}
	}
	rep.NodeReads = len(r.nodeReads)

	model := Model
	if !r.cfg.StrictRejects {
		model.Step = func(state, input, output any) (bool, any) {
			res := output.(Result)
			if res.Code == 404 || res.Code == 409 { // rejected: changes nothing, whatever the node saw
				return true, state
			}
			return step(state.(State), input.(Op), res)
		}
	}
	r.model = model
	began := time.Now()
	result, info := porcupine.CheckOperationsVerbose(model, r.ops, r.cfg.CheckTimeout)
	rep.CheckTook = time.Since(began)
	rep.Result = result
	switch result {
	case porcupine.Illegal:
		rep.Anomalies = append(rep.Anomalies, "writes and etcd's reads are not linearizable: "+r.firstStuck(info))
	case porcupine.Unknown:
		rep.Anomalies = append(rep.Anomalies, fmt.Sprintf("porcupine did not finish within %s (not an anomaly of the system; a smaller history checks)", r.cfg.CheckTimeout))
	}
	r.lastInfo = info
	rep.Anomalies = append(rep.Anomalies, r.ports...)
	if !r.cfg.Local {
		rep.Anomalies = append(rep.Anomalies, r.checkNodeReads()...)
	}
}

// firstStuck names the operations porcupine could not place: for each
// partition that failed, the longest partial linearization's last
// operations and state, and the unplaced operations that had returned
// first (one of them has no place after that state).
func (r *run) firstStuck(info porcupine.LinearizationInfo) string {
	var out []string
	parts := r.model.Partition(r.ops)
	for p, lins := range info.PartialLinearizationsOperations() {
		longest := -1
		for i, l := range lins {
			if longest < 0 || len(l) > len(lins[longest]) {
				longest = i
			}
		}
		if longest < 0 || len(lins[longest]) == len(parts[p]) {
			continue
		}
		l := lins[longest]
		state := State{}
		for _, o := range l {
			_, st := r.model.Step(state, o.Input, o.Output)
			state = st.(State)
		}
		placed := map[[2]int64]bool{}
		for _, o := range l {
			placed[[2]int64{o.Call, int64(o.ClientId)}] = true
		}
		var rest []porcupine.Operation
		for _, o := range parts[p] {
			if !placed[[2]int64{o.Call, int64(o.ClientId)}] {
				rest = append(rest, o)
			}
		}
		slices.SortFunc(rest, func(a, b porcupine.Operation) int { return int(a.Return - b.Return) })
		var b strings.Builder
		fmt.Fprintf(&b, "\n  group %d: %d of %d operations placed; the last placed:", parts[p][0].Input.(Op).Group, len(l), len(parts[p]))
		for _, o := range l[max(0, len(l)-4):] {
			fmt.Fprintf(&b, "\n    %s", describe(o))
		}
		fmt.Fprintf(&b, "\n  state then: %s\n  unplaced, by return:", state)
		for _, o := range rest[:min(6, len(rest))] {
			fmt.Fprintf(&b, "\n    %s", describe(o))
		}
		out = append(out, b.String())
	}
	return strings.Join(out, "")
}

func describe(o porcupine.Operation) string {
	return fmt.Sprintf("[%.3fs %.3fs] %s", float64(o.Call)/1e9, float64(o.Return)/1e9, Model.DescribeOperation(o.Input, o.Output))
}

// checkNodeReads checks that each node's reads of each image are versions
// etcd had, never older than one the node showed before (within one
// process of the node: a restarted node starts from its local copy).
func (r *run) checkNodeReads() []string {
	r.watchMu.Lock()
	defer r.watchMu.Unlock()
	if r.watchErr != nil {
		return []string{"the history's own watch ended (" + r.watchErr.Error() + "): node reads not checked"}
	}
	reads := slices.Clone(r.nodeReads)
	slices.SortStableFunc(reads, func(a, b nodeRead) int { return int(a.call - b.call) })
	var found []string
	type key struct {
		node, epoch int
		id          int64
	}
	at := map[key]int{}     // the index of the version a node showed last
	when := map[key]int64{} // and when it read it
	// earliest[id][i]: version i of image id cannot have been committed
	// before this time (the latest call of the writes it holds, or of its
	// predecessor's): a read that returned before it cannot show it.
	earliest := map[int64][]int64{}
	for id, vs := range r.watchedMarks {
		e := make([]int64, len(vs)+1)
		for i, marks := range vs {
			e[i+1] = e[i]
			for _, m := range marks {
				if c, ok := r.markCall[m]; ok {
					e[i+1] = max(e[i+1], c)
				}
			}
		}
		earliest[id] = e
	}
	for _, rd := range reads {
		for g := range r.cfg.Groups {
			for slot := range ImagesPerGroup {
				id := ImageID(g, slot)
				versions := append([]Image{{}}, r.watched[id]...)
				k := key{rd.node, rd.epoch, id}
				from := at[k]
				got := rd.images[id]
				j := -1
				for i := from; i < len(versions); i++ {
					if i > 0 && earliest[id][i] > rd.ret {
						break // not committed yet when the read returned
					}
					if versions[i] == got {
						j = i
						break
					}
				}
				if j < 0 {
					if len(found) < 10 {
						what := "a version etcd did not have"
						if old := slices.Index(versions[:from], got); old >= 0 {
							what = fmt.Sprintf("etcd's version %s (at revision %d), older than version %s (revision %d) which it showed at %s: it went back",
								vname(old), rev(r.watchedAt[id], old), vname(from), rev(r.watchedAt[id], from),
								time.Duration(when[k]).Round(time.Millisecond))
						}
						found = append(found, fmt.Sprintf("%s at %s showed image %d as %s: %s",
							r.nodes[rd.node].name, time.Duration(rd.call).Round(time.Millisecond), id, got, what))
					}
					continue
				}
				at[k], when[k] = j, rd.call
			}
		}
	}
	return found
}

// vname names version i of an image's versions (0: before the first).
func vname(i int) string { return fmt.Sprintf("#%d", i) }

// rev is the revision of version i (0 for the version before the first).
func rev(revs []int64, i int) int64 {
	if i == 0 {
		return 0
	}
	return revs[i-1]
}

// write writes the history and porcupine's visualization of the run to
// cfg.Out, and returns the files' paths.
func (r *run) write(rep *Report) []string {
	base := filepath.Join(r.cfg.Out, fmt.Sprintf("chaos-seed-%d", r.cfg.Seed))
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %d writes, %d etcd reads, %d node reads\nfaults:\n", rep.Seed, rep.Ops, rep.EtcdReads, rep.NodeReads)
	for _, f := range rep.Faults {
		fmt.Fprintf(&b, "  %s\n", f)
	}
	fmt.Fprintf(&b, "anomalies:\n")
	for _, a := range rep.Anomalies {
		fmt.Fprintf(&b, "  %s\n", a)
	}
	fmt.Fprintf(&b, "history (call, return in ms since the start; unknown effects return at the end):\n")
	ops := slices.Clone(r.ops)
	slices.SortStableFunc(ops, func(a, b porcupine.Operation) int { return int(a.Call - b.Call) })
	for _, o := range ops {
		fmt.Fprintf(&b, "  %10.3f %10.3f  %s\n", float64(o.Call)/1e6, float64(o.Return)/1e6,
			Model.DescribeOperation(o.Input, o.Output))
	}
	fmt.Fprintf(&b, "etcd's versions of each image (the history's watch):\n")
	for g := range r.cfg.Groups {
		for slot := range ImagesPerGroup {
			id := ImageID(g, slot)
			fmt.Fprintf(&b, "  image %d:\n", id)
			for i, v := range r.watched[id] {
				fmt.Fprintf(&b, "    #%d rev %d: %s\n", i+1, r.watchedAt[id][i], v)
			}
		}
	}
	files := []string{base + ".txt"}
	if err := os.WriteFile(files[0], []byte(b.String()), 0o644); err != nil {
		r.cfg.Log("writing %s: %v", files[0], err)
	}
	if rep.Result == porcupine.Illegal {
		html := base + ".html"
		if err := porcupine.VisualizePath(r.model, r.lastInfo, html); err != nil {
			r.cfg.Log("writing %s: %v", html, err)
		} else {
			files = append(files, html)
		}
	}
	return files
}
