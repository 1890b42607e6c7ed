package chaos

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/imagelb/caddy-imagelb/internal/etcdproc"
)

// TestChaos runs one short randomized history with every fault (the pause
// shortened to 3s; the long command pauses past the 10s lease), on three nodes of the built binary and a three-member
// embedded etcd, and fails on any anomaly. CHAOS_SEED picks the seed
// (default: the time), CHAOS_OUT a directory that keeps the files of an
// anomalous history; the long runs are `go run ./bench/chaos`.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and three Caddy nodes")
	}
	seed := uint64(time.Now().UnixNano() % 1_000_000)
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", s, err)
		}
		seed = n
	}
	out := os.Getenv("CHAOS_OUT") // where an anomalous history is written
	if out == "" {
		out = t.TempDir()
	}
	bin := caddyBinary(t)
	rep := Run(t, bin, Config{
		Seed:     seed,
		Duration: 15 * time.Second,
		Faults:   []string{FaultMemberKill, FaultLeaderKill, FaultAllMembers, FaultNodeKill, FaultPartition, FaultCompact, FaultNodePause},
		FaultGap: 1500 * time.Millisecond,
		FaultFor: 1500 * time.Millisecond,
		PauseFor: 3 * time.Second,
		Out:      out,
		Log:      t.Logf,
	})
	t.Logf("seed %d: %d writes %v, %d etcd reads, %d node reads, %d faults; porcupine %s in %s; converged in %s; %s in all",
		rep.Seed, rep.Ops, rep.Codes, rep.EtcdReads, rep.NodeReads, len(rep.Faults), rep.Result,
		rep.CheckTook.Round(time.Millisecond), rep.Converged.Round(time.Millisecond), rep.TotalTaken.Round(time.Millisecond))
	failOn(t, seed, rep)
	for _, f := range rep.Files {
		t.Logf("written: %s", f)
	}
}

// TestChaosProcesses runs one short history against an etcd of three
// processes (the etcd etcdproc builds; ETCD_BIN names another binary,
// Debian's /usr/bin/etcd say), whose members the member faults kill with
// SIGKILL and restart on their data.
func TestChaosProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds etcd, starts three etcd processes and three Caddy nodes")
	}
	seed := uint64(time.Now().UnixNano() % 1_000_000)
	etcd := os.Getenv("ETCD_BIN")
	if etcd == "" {
		var err error
		if etcd, err = etcdproc.Build("../..", t.TempDir()); err != nil {
			t.Fatal(err)
		}
	}
	bin := caddyBinary(t)
	rep := Run(t, bin, Config{
		Seed:     seed,
		Duration: 8 * time.Second,
		Etcd:     etcd,
		Faults:   []string{FaultMemberKill, FaultLeaderKill, FaultAllMembers},
		FaultGap: time.Second,
		FaultFor: time.Second,
		Log:      t.Logf,
	})
	t.Logf("seed %d, %s: %d writes %v, %d etcd reads, %d node reads, %d faults; porcupine %s in %s; converged in %s; %s in all",
		rep.Seed, rep.Etcd, rep.Ops, rep.Codes, rep.EtcdReads, rep.NodeReads, len(rep.Faults), rep.Result,
		rep.CheckTook.Round(time.Millisecond), rep.Converged.Round(time.Millisecond), rep.TotalTaken.Round(time.Millisecond))
	if len(rep.Faults) == 0 {
		t.Fatal("no member was killed")
	}
	failOn(t, seed, rep)
}

// TestChaosLocal runs a short history on one node of store local, killed
// with SIGKILL while its writers' changes are being group-committed: every
// acknowledged change must be in what the restarted node serves.
func TestChaosLocal(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Caddy")
	}
	seed := uint64(time.Now().UnixNano() % 1_000_000)
	bin := caddyBinary(t)
	rep := Run(t, bin, Config{Seed: seed, Duration: 8 * time.Second, Local: true, Writers: 6,
		Faults: []string{FaultNodeKill}, FaultGap: time.Second, FaultFor: 400 * time.Millisecond, Log: t.Logf})
	t.Logf("seed %d: %d writes %v, %d reads, %d faults; porcupine %s in %s", rep.Seed, rep.Ops, rep.Codes,
		rep.EtcdReads, len(rep.Faults), rep.Result, rep.CheckTook.Round(time.Millisecond))
	if len(rep.Faults) == 0 {
		t.Fatal("no node was killed")
	}
	failOn(t, seed, rep)
}

// failOn fails the test on each anomaly of the history.
func failOn(t *testing.T, seed uint64, rep *Report) {
	t.Helper()
	for _, a := range rep.Anomalies {
		t.Errorf("seed %d: %s", seed, a)
	}
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// caddyBinary builds cmd/caddy once for the package's tests.
func caddyBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "imagelb-chaos-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin, buildErr = BuildCaddy("../..", dir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// TestModel checks the model on histories written by hand: the lost update
// of issue 25 is found, an unknown write may or may not have taken effect,
// and a read sees every acknowledged write before it.
func TestModel(t *testing.T) {
	ctr := func(w int, st uint8) Ctr { return Ctr{Present: true, Weight: w, Status: st} }
	reg := Op{Kind: Register, Node: "lb-1", Ctrs: [Containers]Ctr{ctr(1, healthy), ctr(2, healthy)}}
	regAnswer := Result{Code: 200, Image: Image{Exists: true, Ctrs: reg.Ctrs}}
	drain := Op{Kind: Patch, Node: "lb-1", Ctr: 0, Weight: -1, Status: draining}
	weigh := Op{Kind: Patch, Node: "lb-2", Ctr: 0, Weight: 5}
	read := func(c0 Ctr) Result {
		return Result{Code: 200, State: State{{Exists: true, Ctrs: [Containers]Ctr{c0, ctr(2, healthy)}}}}
	}
	op := func(in Op, out Result, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: in, Output: out, Call: call, Return: ret}
	}
	tests := []struct {
		name    string
		history []porcupine.Operation
		ok      bool
	}{
		{"two patches in turn", []porcupine.Operation{
			op(reg, regAnswer, 0, 1),
			op(drain, Result{Code: 200, Ctr: ctr(1, draining)}, 2, 3),
			op(weigh, Result{Code: 200, Ctr: ctr(5, draining)}, 4, 5),
			op(Op{Kind: Read}, read(ctr(5, draining)), 6, 7),
		}, true},
		{"the second patch made on a version without the first (lost update)", []porcupine.Operation{
			op(reg, regAnswer, 0, 1),
			op(drain, Result{Code: 200, Ctr: ctr(1, draining)}, 2, 3),
			op(weigh, Result{Code: 200, Ctr: ctr(5, healthy)}, 4, 5),
		}, false},
		{"an acknowledged patch missing from a later read", []porcupine.Operation{
			op(reg, regAnswer, 0, 1),
			op(drain, Result{Code: 200, Ctr: ctr(1, draining)}, 2, 3),
			op(Op{Kind: Read}, read(ctr(1, healthy)), 4, 5),
		}, false},
		{"concurrent patches in either order", []porcupine.Operation{
			op(reg, regAnswer, 0, 1),
			op(drain, Result{Code: 200, Ctr: ctr(5, draining)}, 2, 5),
			op(weigh, Result{Code: 200, Ctr: ctr(5, healthy)}, 2, 5),
			op(Op{Kind: Read}, read(ctr(5, draining)), 6, 7),
		}, true},
		{"an unknown patch taken", []porcupine.Operation{
			op(reg, regAnswer, 0, 1),
			op(drain, Result{}, 2, 100),
			op(Op{Kind: Read}, read(ctr(1, draining)), 4, 5),
		}, true},
		{"an unknown patch not taken", []porcupine.Operation{
			op(reg, regAnswer, 0, 1),
			op(drain, Result{}, 2, 100),
			op(Op{Kind: Read}, read(ctr(1, healthy)), 4, 5),
		}, true},
		{"an unknown patch seen applied is in every later read", []porcupine.Operation{
			op(reg, regAnswer, 0, 1),
			op(drain, Result{Applied: true}, 2, 3),
			op(Op{Kind: Read}, read(ctr(1, healthy)), 4, 5),
		}, false},
		{"a port claimed by two images", []porcupine.Operation{
			op(Op{Kind: Register, Slot: 0, Claim: true}, Result{Code: 200, Image: Image{Exists: true, Port: true}}, 0, 1),
			op(Op{Kind: Register, Slot: 1, Claim: true}, Result{Code: 200, Image: Image{Exists: true, Port: true}}, 2, 3),
		}, false},
		{"a port refused while another image holds it", []porcupine.Operation{
			op(Op{Kind: Register, Slot: 0, Claim: true}, Result{Code: 200, Image: Image{Exists: true, Port: true}}, 0, 1),
			op(Op{Kind: Register, Slot: 1, Claim: true}, Result{Code: 409, PortConflict: true}, 2, 3),
		}, true},
		{"a deleted container back", []porcupine.Operation{
			op(reg, regAnswer, 0, 1),
			op(Op{Kind: DelCtr, Ctr: 1}, Result{Code: 200, Ctr: ctr(2, healthy)}, 2, 3),
			op(Op{Kind: Read}, Result{Code: 200, State: State{{Exists: true, Ctrs: reg.Ctrs}}}, 4, 5),
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := porcupine.CheckOperations(Model, tt.history); got != tt.ok {
				t.Fatalf("linearizable: %v, want %v", got, tt.ok)
			}
		})
	}
}

// TestUnknownWithoutMark: an unknown write whose mark etcd's history never
// shows may still have taken effect. A node commits the changes its writers
// queued in one transaction, one record per image: a put and a patch of the
// same container, both timed out on a paused node, are written together,
// and the record carries only the patch's mark (seed 4011's history); a
// registration without containers carries none at all (seeds 4025, 4036).
// Such a write stays pending: the check must not take it for never applied.
func TestUnknownWithoutMark(t *testing.T) {
	ctr := func(w int, st uint8) Ctr { return Ctr{Present: true, Weight: w, Status: st} }
	op := func(in Op, out Result, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: in, Output: out, Call: call, Return: ret}
	}
	reg := Op{Kind: Register, Node: "lb-1", Ctrs: [Containers]Ctr{ctr(8, healthy)}, Mark: 1}
	put := Op{Kind: Put, Node: "lb-2", Ctr: 0, Weight: 9, Status: healthy, Mark: 2}
	drain := Op{Kind: Patch, Node: "lb-2", Ctr: 0, Weight: -1, Status: draining, Mark: 3}
	empty := Op{Kind: Register, Node: "lb-3", Slot: 1, Mark: 4}
	read := Result{Code: 200, State: State{{Exists: true, Ctrs: [Containers]Ctr{ctr(9, draining)}}, {Exists: true}}}
	r := &run{cfg: Config{CheckTimeout: time.Minute}, marks: map[epochMark]int64{{0, 1}: 1, {0, 3}: 20}}
	r.ops = []porcupine.Operation{
		op(reg, Result{Code: 200, Image: Image{Exists: true, Ctrs: reg.Ctrs}}, 0, 1),
		op(put, Result{}, 2, 30),
		op(drain, Result{}, 3, 30),
		op(empty, Result{}, 4, 30),
		op(Op{Kind: Read}, read, 25, 26),
	}
	r.unknown = []int{1, 2, 3}
	rep := &Report{Codes: map[string]int{}}
	r.check(rep)
	if rep.Result != porcupine.Ok {
		t.Fatalf("the history is linearizable (the put and the patch committed together, the empty registration applied), the check says %s: %v", rep.Result, rep.Anomalies)
	}
}

// TestRestoreEpochs: a restore of etcd undoes the acknowledged writes made
// after its snapshot. The check splits the history at it: an acknowledged
// registration gone after the restore is linearizable within its epoch,
// the next epoch starts from the state read right after the restore, and a
// write in flight across it may have taken effect in either epoch or none,
// unless the history's watch saw its mark in one (then there, and in no
// other) or it was rejected (then in none).
func TestRestoreEpochs(t *testing.T) {
	ctr := func(w int, st uint8) Ctr { return Ctr{Present: true, Weight: w, Status: st} }
	op := func(in Op, out Result, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: in, Output: out, Call: call, Return: ret}
	}
	reg := Op{Kind: Register, Node: "lb-1", Ctrs: [Containers]Ctr{ctr(1, healthy)}}
	registered := State{{Exists: true, Ctrs: reg.Ctrs}}
	put := Op{Kind: Put, Node: "lb-2", Ctr: 1, Weight: 2, Status: healthy}
	withPut := registered
	withPut[0].Ctrs[1] = ctr(2, healthy)
	restored := restore{stop: 10, up: 20, states: []State{{}}} // etcd restored to a snapshot without the image
	marked := reg
	marked.Mark = 7
	tests := []struct {
		name     string
		history  []porcupine.Operation
		restores []restore
		ok       bool
	}{
		{"a registration undone by a restore", []porcupine.Operation{
			op(reg, Result{Code: 200, Image: registered[0]}, 0, 1),
			op(Op{Kind: Read}, Result{Code: 200, State: registered}, 2, 3),
			op(Op{Kind: Read}, Result{Code: 200, State: State{}}, 21, 22),
		}, []restore{restored}, true},
		{"the same with no restore", []porcupine.Operation{
			op(reg, Result{Code: 200, Image: registered[0]}, 0, 1),
			op(Op{Kind: Read}, Result{Code: 200, State: registered}, 2, 3),
			op(Op{Kind: Read}, Result{Code: 200, State: State{}}, 21, 22),
		}, nil, false},
		{"a registration back after the restore, with no write", []porcupine.Operation{
			op(reg, Result{Code: 200, Image: registered[0]}, 0, 1),
			op(Op{Kind: Read}, Result{Code: 200, State: State{}}, 21, 22),
			op(Op{Kind: Read}, Result{Code: 200, State: registered}, 23, 24),
		}, []restore{restored}, false},
		{"a write in flight across the restore took effect after it", []porcupine.Operation{
			op(reg, Result{Code: 200, Image: registered[0]}, 0, 1),
			op(reg, Result{Code: 200, Image: registered[0]}, 9, 25),
			op(Op{Kind: Read}, Result{Code: 200, State: registered}, 26, 27),
		}, []restore{restored}, true},
		{"a put acknowledged after the restore, on a version the restore undid", []porcupine.Operation{
			op(reg, Result{Code: 200, Image: registered[0]}, 0, 1),
			op(put, Result{Code: 200, Ctr: ctr(2, healthy)}, 21, 22),
			op(Op{Kind: Read}, Result{Code: 200, State: withPut}, 23, 24),
		}, []restore{restored}, false},
		{"a write in flight across the restore, seen applied after it", []porcupine.Operation{
			op(marked, Result{Code: 200, Image: registered[0]}, 9, 25),
			op(Op{Kind: Read}, Result{Code: 200, State: registered}, 26, 27),
		}, []restore{restored}, true},
		{"a write in flight across the restore, seen applied before it only, back after it", []porcupine.Operation{
			op(marked, Result{Code: 200, Image: registered[0]}, 9, 25),
			op(Op{Kind: Read}, Result{Code: 200, State: registered}, 26, 27),
		}, []restore{restored}, false},
		{"an unknown write in flight across the restore, seen applied after it, missing from a read", []porcupine.Operation{
			op(marked, Result{Detail: "503"}, 9, 25),
			op(Op{Kind: Read}, Result{Code: 200, State: State{}}, 30, 31),
		}, []restore{restored}, false},
		{"a put rejected in flight across the restore", []porcupine.Operation{
			op(put, Result{Code: 404, Detail: "not registered"}, 9, 25),
			op(Op{Kind: Read}, Result{Code: 200, State: registered}, 26, 27),
		}, []restore{{stop: 10, up: 20, states: []State{registered}}}, true},
		{"a put rejected in flight across the restore, applied after it", []porcupine.Operation{
			op(put, Result{Code: 404, Detail: "not registered"}, 9, 25),
			op(Op{Kind: Read}, Result{Code: 200, State: withPut}, 26, 27),
		}, []restore{{stop: 10, up: 20, states: []State{registered}}}, false},
	}
	// the marks the history's watch saw, by test
	seen := map[string]map[epochMark]int64{
		"a write in flight across the restore, seen applied after it":                               {{1, 7}: 21},
		"a write in flight across the restore, seen applied before it only, back after it":          {{0, 7}: 9},
		"an unknown write in flight across the restore, seen applied after it, missing from a read": {{1, 7}: 28},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &run{cfg: Config{CheckTimeout: time.Minute, Groups: 1}, marks: seen[tt.name], restores: tt.restores}
			r.ops = tt.history
			rep := &Report{Codes: map[string]int{}}
			r.check(rep)
			if got := rep.Result == porcupine.Ok; got != tt.ok {
				t.Fatalf("linearizable: %v (%s), want %v: %v", got, rep.Result, tt.ok, rep.Anomalies)
			}
		})
	}
}

// restoreShaped is a history shaped like those of seeds 12001, 12003 and
// 22003 (issue 25): a busy epoch, a restore of etcd, and the ~30 writes
// called while the nodes were cut off from etcd, in flight across it. Most
// were rejected (404, from the node's view), four were acknowledged (two
// took effect before the restore, two after, each leaving its mark), three
// deletes are unknown. Then a busy epoch from the restored state. It
// returns the history, the restore, and the marks the history's watch saw.
func restoreShaped(seed uint64) ([]porcupine.Operation, restore, map[epochMark]int64) {
	rng := rand.New(rand.NewPCG(seed, 25))
	var ops []porcupine.Operation
	marks := map[epochMark]int64{}
	var mark int64
	add := func(in Op, out Result, call, ret int64) {
		ops = append(ops, porcupine.Operation{ClientId: 1 + len(ops)%6, Input: in, Output: out, Call: call, Return: ret})
	}
	// answer is what a sequential registry answers op in s.
	answer := func(s State, op Op) (State, Result) {
		next, code, ctr, img := apply(s, op)
		res := Result{Code: code, Ctr: ctr, Image: img, PortConflict: code == 409}
		if code == 404 {
			res.Detail = "not registered"
		}
		return next, res
	}
	write := func() Op {
		mark++
		op := randomOp(rng, 1)
		op.Node, op.Mark = "lb-1", mark
		return op
	}
	// busy runs n writes one after another from t, each followed by one
	// of etcd's reads every third write.
	busy := func(s State, t int64, n int) (State, int64, []State) {
		var seen []State
		for i := range n {
			op := write()
			next, res := answer(s, op)
			add(op, res, t, t+4)
			s, t = next, t+10
			seen = append(seen, s)
			if i%3 == 2 {
				add(Op{Kind: Read, Node: "etcd"}, Result{Code: 200, State: s}, t, t+4)
				t += 10
			}
		}
		return s, t, seen
	}
	s, t, seen := busy(State{}, 0, 150)
	rs := restore{stop: t + 200, up: t + 2200, states: []State{seen[100]}} // the snapshot's
	// acknowledged before the restore: the watch saw their marks then
	for range 2 {
		op := write()
		op.Kind, op.Weight, op.Status = Put, 1+rng.IntN(9), healthy
		if !s[op.Slot].Exists {
			op.Kind, op.Ctrs = Register, [Containers]Ctr{{Present: true, Weight: 1, Status: healthy}}
		}
		next, res := answer(s, op)
		add(op, res, t, rs.stop+500)
		marks[epochMark{0, op.Mark}] = t + 5
		s, t = next, t+10
	}
	add(Op{Kind: Read, Node: "etcd"}, Result{Code: 200, State: s}, t, t+4)
	// rejected while cut off, and unknown deletes
	for i := range 30 {
		op := write()
		call := rs.stop - 100 + int64(i)*70
		add(op, Result{Code: 404, Detail: "not registered"}, call, max(call, rs.stop)+50+int64(rng.IntN(300)))
	}
	for i := range 3 {
		op := write()
		op.Kind, op.Mark = DelCtr, 0
		add(op, Result{Detail: "503 did not confirm the commit"}, rs.stop-50+int64(i), rs.up+100)
	}
	// acknowledged after the restore: the new watch saw their marks
	s, t = rs.states[0], rs.up+10
	for range 2 {
		op := write()
		op.Kind, op.Ctrs = Register, [Containers]Ctr{{Present: true, Weight: 2, Status: draining}}
		next, res := answer(s, op)
		add(op, res, rs.stop-20, rs.up+150)
		marks[epochMark{1, op.Mark}] = t
		s, t = next, t+10
	}
	add(Op{Kind: Read, Node: "etcd"}, Result{Code: 200, State: s}, t+200, t+204)
	_, t, _ = busy(s, t+210, 150)
	return ops, rs, marks
}

// TestRestoreShapedChecks: a history shaped like the ones porcupine did
// not finish within 2 min (issue 25) checks, and is found linearizable.
// The writes in flight across the restore were each left pending in both
// epochs, ~16 to place anywhere in each group's next epoch: exponential.
// A rejected one changes nothing in either, an acknowledged one whose mark
// the watch saw took effect in the epoch that saw it.
func TestRestoreShapedChecks(t *testing.T) {
	for seed := range uint64(3) {
		ops, rs, marks := restoreShaped(seed)
		r := &run{cfg: Config{CheckTimeout: 30 * time.Second, Groups: 1}, marks: marks, restores: []restore{rs}, ops: ops}
		rep := &Report{Codes: map[string]int{}}
		r.check(rep)
		if rep.Result != porcupine.Ok {
			t.Fatalf("seed %d: %s after %s, want ok: %v", seed, rep.Result, rep.CheckTook, rep.Anomalies)
		}
		t.Logf("seed %d: %d operations checked in %s", seed, len(r.ops), rep.CheckTook)
	}
}
