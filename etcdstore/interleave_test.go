package etcdstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/internal/testkit"
	"github.com/imagelb/caddy-imagelb/registry"
)

// The tests below force, one at a time, each interleaving of a node's
// commits with its watch and with another node's writes that could lose an
// acknowledged change, on a real etcd. The seams are a gate on the node's
// commits (gatedStore: it holds a commit before or after etcd answers, or
// loses etcd's answer as a timeout would) and a pause on its watch; etcd,
// the registry and the watch are the real ones.

// gatedStore is a Store whose next Commit the test can hold.
type gatedStore struct {
	*Store
	mu      sync.Mutex
	hold    string // where the next Commit stops: "before" or "after" etcd answers; "": nowhere
	lose    bool   // the next Commit's answer is lost: etcd applied it, the registry gets a timeout
	held    chan int64
	release chan struct{}
	stop    chan struct{}
}

// holdNext makes the next Commit stop at where ("before" or "after"); with
// lose, etcd's answer to it is lost.
func (g *gatedStore) holdNext(where string, lose bool) {
	g.mu.Lock()
	g.hold, g.lose = where, lose
	g.mu.Unlock()
}

func (g *gatedStore) Commit(ctx context.Context, changes []registry.Change) (int64, error) {
	g.mu.Lock()
	hold, lose := g.hold, g.lose
	g.hold, g.lose = "", false
	g.mu.Unlock()
	g.wait(hold == "before", 0)
	rev, err := g.Store.Commit(ctx, changes)
	g.wait(hold == "after", rev)
	if lose && err == nil {
		return 0, commitUnknown(fmt.Sprintf("etcd at %s did not answer within %s", g.eps, g.cfg.RequestTimeout), context.DeadlineExceeded)
	}
	return rev, err
}

func (g *gatedStore) wait(hold bool, rev int64) {
	if !hold {
		return
	}
	select {
	case g.held <- rev:
	case <-g.stop:
		return
	}
	select {
	case <-g.release:
	case <-g.stop:
	}
}

// waitHeld waits until a commit is held and returns the revision etcd gave
// it (0 when held before etcd).
func (g *gatedStore) waitHeld(t *testing.T) int64 {
	t.Helper()
	select {
	case rev := <-g.held:
		return rev
	case <-time.After(10 * time.Second):
		t.Fatal("no commit was held")
		return 0
	}
}

func (g *gatedStore) releaseHeld() { g.release <- struct{}{} }

// gatedNode is a node (registry, store, watch, as the app runs them) whose
// commits go through a gatedStore and whose watch the test can pause.
type gatedNode struct {
	reg     *registry.Registry
	store   *Store
	gate    *gatedStore
	watchMu sync.Mutex // held: the watch delivers nothing
	paused  bool
}

func startGatedNode(t *testing.T, endpoints []string) *gatedNode {
	t.Helper()
	st := open(t, endpoints, bolt(t))
	loaded := load(t, st)
	n := &gatedNode{reg: registry.New(registry.Options{}), store: st,
		gate: &gatedStore{Store: st, held: make(chan int64), release: make(chan struct{}), stop: make(chan struct{})}}
	if _, err := n.reg.Restore(loaded); err != nil {
		t.Fatal(err)
	}
	n.reg.SetStore(n.gate)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.Watch(ctx, loaded.Revision, func(ev registry.RemoteEvent) {
			n.watchMu.Lock()
			defer n.watchMu.Unlock()
			for _, err := range n.reg.ApplyRemote(ev) {
				t.Errorf("apply: %v", err)
			}
		})
	}()
	t.Cleanup(func() {
		close(n.gate.stop)
		n.resumeWatch()
		cancel()
		<-done
	})
	return n
}

func (n *gatedNode) pauseWatch() {
	if !n.paused {
		n.watchMu.Lock()
		n.paused = true
	}
}

func (n *gatedNode) resumeWatch() {
	if n.paused {
		n.paused = false
		n.watchMu.Unlock()
	}
}

func ctr(id string) registry.ContainerSpec {
	return registry.ContainerSpec{ContainerID: id, Host: "127.0.0.1", Port: 8000 + len(id), Status: registry.StatusHealthy, Weight: 1}
}

func register(t *testing.T, reg *registry.Registry, id int64, containers ...string) {
	t.Helper()
	spec := registry.ServiceSpec{ImageID: id, ImageName: fmt.Sprintf("image-%d", id)}
	for _, c := range containers {
		spec.Containers = append(spec.Containers, ctr(c))
	}
	if _, err := reg.Register(spec); err != nil {
		t.Fatalf("register image %d: %v", id, err)
	}
}

// async runs a write in a goroutine; its error comes on the channel.
func async(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func putAsync(reg *registry.Registry, id int64, c string) <-chan error {
	return async(func() error { _, err := reg.PutContainer(id, ctr(c)); return err })
}

func answer(t *testing.T, what string, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no answer", what)
		return nil
	}
}

// has reports whether the node publishes image id with container c.
func has(reg *registry.Registry, id int64, c string) bool {
	svc := reg.Lookup(id)
	return svc != nil && svc.Container(c) != nil
}

func waitHas(t *testing.T, name string, reg *registry.Registry, id int64, c string) {
	t.Helper()
	testkit.Eventually(t, fmt.Sprintf("node %s to have container %s of image %d", name, c, id), func() bool { return has(reg, id, c) })
}

// converged checks that etcd holds image id with exactly the containers
// want (none: no record), and that every node comes to publish the same.
func converged(t *testing.T, c *etcdtest.Cluster, id int64, want []string, regs ...*registry.Registry) {
	t.Helper()
	slices.Sort(want)
	st := open(t, c.Endpoints(), nil)
	var stored []string
	found := false
	for _, rec := range load(t, st).Records {
		if rec.ImageID == id {
			found = true
			for _, ct := range rec.Containers {
				stored = append(stored, ct.ContainerID)
			}
		}
	}
	slices.Sort(stored)
	if found != (want != nil) || !slices.Equal(stored, want) {
		t.Fatalf("etcd holds image %d: %v with containers %v; want containers %v", id, found, stored, want)
	}
	rev := c.Revision()
	for i, reg := range regs {
		testkit.Eventually(t, fmt.Sprintf("node %d to apply revision %d", i, rev), func() bool { return reg.Revision() >= rev })
		svc := reg.Lookup(id)
		var got []string
		if svc != nil {
			got = containerIDs(svc)
		}
		if (svc != nil) != (want != nil) || !slices.Equal(got, want) {
			t.Fatalf("node %d publishes image %d as %v (containers %v), etcd holds %v", i, id, svc != nil, got, want)
		}
	}
}

// inFlightWithQueued holds a's commit of put(1, first) after etcd
// committed it, and queues put(1, second) behind it: the second change is
// made on the first's version, which no commit has acknowledged yet.
func inFlightWithQueued(t *testing.T, a *gatedNode, first, second func() error) (rev int64, errFirst, errSecond <-chan error) {
	t.Helper()
	a.gate.holdNext("after", false)
	errFirst = async(first)
	rev = a.gate.waitHeld(t)
	errSecond = async(second)
	testkit.Eventually(t, "the second change to queue behind the first", func() bool { return a.reg.Pending() == 2 })
	return rev, errFirst, errSecond
}

// TestEventWhileBatchInFlight: node a's batch (put a1) is committed but not
// yet answered, put a2 is queued behind it; node b, which has seen a1,
// puts b1, and a's watch delivers both a1 and b1 before a's commit
// returns. a2 was made on a1's version; committed against b1's revision it
// would drop b1, which b acknowledged.
func TestEventWhileBatchInFlight(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startGatedNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	register(t, a.reg, 1, "c0")
	waitHas(t, "b", b.reg, 1, "c0")

	_, errA1, errA2 := inFlightWithQueued(t, a,
		func() error { _, err := a.reg.PutContainer(1, ctr("a1")); return err },
		func() error { _, err := a.reg.PutContainer(1, ctr("a2")); return err })
	waitHas(t, "b", b.reg, 1, "a1")
	if _, err := b.reg.PutContainer(1, ctr("b1")); err != nil {
		t.Fatal(err)
	}
	waitHas(t, "a", a.reg, 1, "b1") // a's watch applied it while a1's batch is in flight
	a.gate.releaseHeld()
	for what, ch := range map[string]<-chan error{"put a1": errA1, "put a2": errA2} {
		if err := answer(t, what, ch); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	converged(t, c, 1, []string{"a1", "a2", "b1", "c0"}, a.reg, b.reg)
}

// TestOwnEchoBeforeCommitReturns: a's own commit (put a1) comes back on its
// watch before Commit returns, and put a2 is made after that; then b puts
// b1 on a1, and a's watch delivers it before a1's commit returns. Every
// acknowledged container stays.
func TestOwnEchoBeforeCommitReturns(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startGatedNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	register(t, a.reg, 1, "c0")
	waitHas(t, "b", b.reg, 1, "c0")

	a.gate.holdNext("after", false)
	errA1 := putAsync(a.reg, 1, "a1")
	rev := a.gate.waitHeld(t)
	testkit.Eventually(t, "node a's watch to deliver its own commit", func() bool { return a.reg.Revision() >= rev })
	errA2 := putAsync(a.reg, 1, "a2")
	testkit.Eventually(t, "put a2 to queue", func() bool { return a.reg.Pending() == 2 })
	waitHas(t, "b", b.reg, 1, "a1")
	if _, err := b.reg.PutContainer(1, ctr("b1")); err != nil {
		t.Fatal(err)
	}
	waitHas(t, "a", a.reg, 1, "b1")
	a.gate.releaseHeld()
	for what, ch := range map[string]<-chan error{"put a1": errA1, "put a2": errA2} {
		if err := answer(t, what, ch); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	converged(t, c, 1, []string{"a1", "a2", "b1", "c0"}, a.reg, b.reg)
}

// TestDeleteRacingAPut: while a's put a1 is in flight and a weight change
// of container "victim" is queued behind it, b removes "victim" (200). The
// removal comes first, so the queued change answers 404: it must not
// bring the removed container back into rotation.
func TestDeleteRacingAPut(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startGatedNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	register(t, a.reg, 1, "c0", "victim")
	waitHas(t, "b", b.reg, 1, "victim")

	five := 5
	_, errA1, errPatch := inFlightWithQueued(t, a,
		func() error { _, err := a.reg.PutContainer(1, ctr("a1")); return err },
		func() error {
			_, err := a.reg.PatchContainer(1, "victim", registry.ContainerPatch{Weight: &five})
			return err
		})
	waitHas(t, "b", b.reg, 1, "a1")
	if _, err := b.reg.RemoveContainer(1, "victim"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "node a to apply the removal", func() bool { return !has(a.reg, 1, "victim") })
	a.gate.releaseHeld()
	if err := answer(t, "put a1", errA1); err != nil {
		t.Fatalf("put a1: %v", err)
	}
	if err := answer(t, "patch victim", errPatch); registry.KindOf(err) != registry.KindNotFound {
		t.Errorf("the patch of the removed container answered %v, want a 404 (the removal came first)", err)
	}
	converged(t, c, 1, []string{"a1", "c0"}, a.reg, b.reg)
}

// TestTwoRegistrationsOfOneImage: a registers image 1 with [a] (in flight,
// a2 queued behind it); b registers image 1 with [b] on top of it before
// a's commit returns. b's registration replaced a's containers: a2 goes
// into b's list. Then both nodes register new images at the same moment,
// round after round: one registration wins, the other is made again on it,
// and both nodes agree with etcd.
func TestTwoRegistrationsOfOneImage(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startGatedNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	_, errA, errA2 := inFlightWithQueued(t, a,
		func() error {
			_, err := a.reg.Register(registry.ServiceSpec{ImageID: 1, ImageName: "one", Containers: []registry.ContainerSpec{ctr("a")}})
			return err
		},
		func() error { _, err := a.reg.PutContainer(1, ctr("a2")); return err })
	waitHas(t, "b", b.reg, 1, "a")
	register(t, b.reg, 1, "b")
	waitHas(t, "a", a.reg, 1, "b")
	a.gate.releaseHeld()
	for what, ch := range map[string]<-chan error{"register [a]": errA, "put a2": errA2} {
		if err := answer(t, what, ch); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	converged(t, c, 1, []string{"a2", "b"}, a.reg, b.reg)

	for id := int64(2); id < 12; id++ {
		var wg sync.WaitGroup
		for name, n := range map[string]*registry.Registry{"x": a.reg, "y": b.reg} {
			wg.Go(func() {
				if _, err := n.Register(registry.ServiceSpec{ImageID: id, ImageName: "new", Containers: []registry.ContainerSpec{ctr(name)}}); err != nil {
					t.Errorf("register image %d with [%s]: %v", id, name, err)
				}
			})
		}
		wg.Wait()
		stored := load(t, a.store).Records
		i := slices.IndexFunc(stored, func(r registry.ServiceRecord) bool { return r.ImageID == id })
		if i < 0 || len(stored[i].Containers) != 1 {
			t.Fatalf("image %d in etcd: %+v", id, stored)
		}
		converged(t, c, id, []string{stored[i].Containers[0].ContainerID}, a.reg, b.reg)
	}
}

// TestConflictRetry: a's watch is paused, so a learns of b's changes only
// from its commit's conflict. A put retried on the winner's record keeps
// both containers. Then b removes the image (after changing it once more):
// a's put answers 404, and when a's watch delivers b's older change, the
// removed image does not come back on a, not even for a moment.
func TestConflictRetry(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startGatedNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	register(t, a.reg, 1, "c0")
	waitHas(t, "b", b.reg, 1, "c0")

	a.pauseWatch()
	if _, err := b.reg.PutContainer(1, ctr("b1")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.reg.PutContainer(1, ctr("a1")); err != nil {
		t.Fatalf("put a1 after a conflict: %v", err)
	}
	a.resumeWatch()
	converged(t, c, 1, []string{"a1", "b1", "c0"}, a.reg, b.reg)

	a.pauseWatch()
	if _, err := b.reg.PutContainer(1, ctr("b2")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.reg.Remove(1); err != nil {
		t.Fatal(err)
	}
	var gone, back atomic.Bool
	defer a.reg.OnChange(func(ids []int64) {
		if gone.Load() && slices.Contains(ids, 1) && a.reg.Lookup(1) != nil {
			back.Store(true)
		}
	})()
	if _, err := a.reg.PutContainer(1, ctr("a2")); registry.KindOf(err) != registry.KindNotFound {
		t.Fatalf("put a2 on an image b removed: %v, want a 404", err)
	}
	if a.reg.Lookup(1) != nil {
		t.Fatal("node a still has image 1 after its conflict said it is gone")
	}
	gone.Store(true)
	a.resumeWatch()
	converged(t, c, 1, nil, a.reg, b.reg)
	if back.Load() {
		t.Fatal("image 1 came back on node a after it was removed (the watch delivered b's older change)")
	}
}

// TestRemakeAfterFailedCommit: etcd commits a's put a1 but its answer is
// lost (a timeout): the writer gets a 503 that says the outcome is
// unknown, never "not applied". put a2, queued behind it, is made again
// and committed without dropping a1, which etcd has.
func TestRemakeAfterFailedCommit(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startGatedNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	register(t, a.reg, 1, "c0")

	a.gate.holdNext("after", true)
	errA1 := putAsync(a.reg, 1, "a1")
	a.gate.waitHeld(t)
	errA2 := putAsync(a.reg, 1, "a2")
	testkit.Eventually(t, "put a2 to queue", func() bool { return a.reg.Pending() == 2 })
	a.gate.releaseHeld()
	err := answer(t, "put a1", errA1)
	if registry.KindOf(err) != registry.KindUnavailable {
		t.Fatalf("put a1 whose answer was lost: %v, want a 503", err)
	}
	if msg := err.Error(); strings.Contains(msg, "not applied") || !strings.Contains(msg, "unknown") {
		t.Errorf("the 503's detail must say the outcome is unknown, and only that: %q", msg)
	}
	if err := answer(t, "put a2", errA2); err != nil {
		t.Fatalf("put a2: %v", err)
	}
	converged(t, c, 1, []string{"a1", "a2", "c0"}, a.reg, b.reg)
}

// TestReListAfterRestore: etcd was restored from an older backup without a
// revision bump: the node holds image 1 in a version etcd no longer has
// and image 2 that etcd never had, both at revisions above etcd's. The
// watch notices the revision went back and re-lists; the node must then be
// what it listed, whatever the revisions it recorded, and go on working.
func TestReListAfterRestore(t *testing.T) {
	c := etcdtest.Start(t, 1)
	st := open(t, c.Endpoints(), bolt(t))
	r1 := commit(t, st, put(record(1, 0, "x"), 0, 0))
	later := r1 + 1000
	rec1, rec2 := record(1, 0, "y"), record(2, 0, "z")
	rec1.Revision, rec2.Revision = later-1, later
	reg := registry.New(registry.Options{})
	if _, err := reg.Restore(&registry.Loaded{Revision: later, Records: []registry.ServiceRecord{*rec1, *rec2}}); err != nil {
		t.Fatal(err)
	}
	reg.SetStore(st)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.Watch(ctx, later, func(ev registry.RemoteEvent) { reg.ApplyRemote(ev) })
	}()
	defer func() { cancel(); <-done }()
	testkit.Eventually(t, "the node to be what etcd holds: image 1 with x, no image 2", func() bool {
		return has(reg, 1, "x") && !has(reg, 1, "y") && reg.Lookup(2) == nil
	})
	if _, err := reg.PutContainer(1, ctr("w")); err != nil {
		t.Fatalf("a put after the re-list: %v", err)
	}
	converged(t, c, 1, []string{"w", "x"}, reg)
	converged(t, c, 2, nil, reg)
}

// TestReListAfterCompaction: a node whose watch resumes from a compacted
// revision re-lists and is then exactly what it listed: removals
// included.
func TestReListAfterCompaction(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startGatedNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	register(t, a.reg, 1, "c0")
	register(t, a.reg, 2, "c0")
	waitHas(t, "b", b.reg, 2, "c0")
	a.store.Close() // a's watch stops; a keeps what it has
	if _, err := b.reg.Remove(2); err != nil {
		t.Fatal(err)
	}
	if _, err := b.reg.PutContainer(1, ctr("b1")); err != nil {
		t.Fatal(err)
	}
	c.Compact(0)
	st := open(t, c.Endpoints(), bolt(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.Watch(ctx, a.reg.Revision(), func(ev registry.RemoteEvent) { a.reg.ApplyRemote(ev) })
	}()
	defer func() { cancel(); <-done }()
	converged(t, c, 1, []string{"b1", "c0"}, a.reg)
	converged(t, c, 2, nil, a.reg)
}

// latentStore delays a Commit before it is sent and after etcd answered, as
// a loaded network and etcd's fsync do: batches stay in flight long enough
// for the other nodes' commits and the watch to come between.
type latentStore struct {
	*Store
	rng *rand.Rand
	mu  sync.Mutex
}

func (s *latentStore) Commit(ctx context.Context, changes []registry.Change) (int64, error) {
	s.mu.Lock()
	before, after := time.Duration(s.rng.IntN(3))*time.Millisecond, time.Duration(s.rng.IntN(5))*time.Millisecond
	s.mu.Unlock()
	time.Sleep(before) // injected latency, not a wait for a condition
	rev, err := s.Store.Commit(ctx, changes)
	time.Sleep(after)
	return rev, err
}

// TestManyWritersLoseNothing: nine clients on three nodes, each one request
// at a time on containers of its own in one shared image (adds, weight
// changes, removals), with latency on every commit. Every answer a client
// got is what etcd and every node hold in the end: no acknowledged change
// lost or undone, and no 404 for a container its only writer has.
func TestManyWritersLoseNothing(t *testing.T) {
	c := etcdtest.Start(t, 1)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	var nodes []*node
	for i := range 3 {
		n := startNode(t, c.Endpoints())
		n.reg.SetStore(&latentStore{Store: n.store, rng: rand.New(rand.NewPCG(seed, uint64(i)))})
		nodes = append(nodes, n)
	}
	register(t, nodes[0].reg, 1)
	for i, n := range nodes {
		testkit.Eventually(t, fmt.Sprintf("node %d to have image 1", i), func() bool { return n.reg.Lookup(1) != nil })
	}
	type want struct {
		present, unknown bool
		weight           int
	}
	const clients, ops = 9, 40
	models := make([]map[string]*want, clients)
	var wg sync.WaitGroup
	for cl := range clients {
		models[cl] = map[string]*want{}
		wg.Go(func() {
			reg, rng := nodes[cl%len(nodes)].reg, rand.New(rand.NewPCG(seed, uint64(100+cl)))
			for range ops {
				id := fmt.Sprintf("c%d-%d", cl, rng.IntN(4))
				m := models[cl][id]
				if m == nil {
					m = &want{}
					models[cl][id] = m
				}
				weight := 1 + rng.IntN(9)
				var err error
				switch op := rng.IntN(3); {
				case op == 0 || !m.present:
					spec := ctr(id)
					spec.Weight = weight
					if _, err = reg.PutContainer(1, spec); err == nil {
						m.present, m.weight = true, weight
					}
				case op == 1:
					if _, err = reg.PatchContainer(1, id, registry.ContainerPatch{Weight: &weight}); err == nil {
						m.weight = weight
					}
				default:
					if _, err = reg.RemoveContainer(1, id); err == nil {
						m.present = false
					}
				}
				switch {
				case registry.KindOf(err) == registry.KindNotFound:
					t.Errorf("client %d: %v (the client's own container, which it did not remove)", cl, err)
				case err != nil: // 409 after too many conflicts, 503: the outcome is not known
					t.Logf("client %d: %v", cl, err)
					m.unknown = true
				}
			}
		})
	}
	wg.Wait()
	stored := load(t, nodes[0].store)
	rev := stored.Revision
	check := func(where string, get func(id string) (bool, int)) {
		for cl := range clients {
			for id, m := range models[cl] {
				if present, weight := get(id); !m.unknown && (present != m.present || present && weight != m.weight) {
					t.Errorf("%s: container %s present %v weight %d; its client was last answered: present %v weight %d",
						where, id, present, weight, m.present, m.weight)
				}
			}
		}
	}
	check("etcd", func(id string) (bool, int) {
		for _, ct := range stored.Records[0].Containers {
			if ct.ContainerID == id {
				return true, ct.Weight
			}
		}
		return false, 0
	})
	for i, n := range nodes {
		testkit.Eventually(t, fmt.Sprintf("node %d to apply revision %d", i, rev), func() bool { return n.reg.Revision() >= rev })
		svc := n.reg.Lookup(1)
		check(fmt.Sprintf("node %d", i), func(id string) (bool, int) {
			if ct := svc.Container(id); ct != nil {
				return true, ct.Weight
			}
			return false, 0
		})
	}
}

// TestReListOlderThanOwnCommit: a re-list read before this node's own
// commit was answered must not take the committed image away, not even
// until the watch delivers it: a read from the node never goes back. Its
// removals of what the node had before the listing still apply.
func TestReListOlderThanOwnCommit(t *testing.T) {
	c := etcdtest.Start(t, 1)
	st := open(t, c.Endpoints(), bolt(t))
	commit(t, st, put(record(1, 0, "x"), 0, 0))
	reg := registry.New(registry.Options{})
	if _, err := reg.Restore(load(t, st)); err != nil {
		t.Fatal(err)
	}
	reg.SetStore(st)
	other := open(t, c.Endpoints(), nil)
	commit(t, other, del(1, load(t, other).Records[0].Revision, 0))
	listing := load(t, other) // read now: without image 1, before image 5
	register(t, reg, 5, "c")
	records := make([]registry.Remote, len(listing.Records))
	for i := range listing.Records {
		records[i] = registry.Remote{ImageID: listing.Records[i].ImageID, Record: &listing.Records[i], Revision: listing.Records[i].Revision}
	}
	reg.ApplyRemote(registry.RemoteEvent{Records: records, Revision: listing.Revision, Reset: true}) // as the watch delivers it
	if reg.Lookup(5) == nil {
		t.Fatal("the node's own acknowledged image 5 went away at a re-list read before its commit")
	}
	if reg.Lookup(1) != nil {
		t.Fatal("image 1, removed by another node before the listing, is still on the node")
	}
}

// TestDeleteOvertakesOwnCommit: a's commit (a registration of a new image,
// then a put on an image a has) is held after etcd committed it; b, which
// has seen it, removes the image, and a's watch delivers the removal before
// a's commit returns. The commit's answer is older than what a's watch
// delivered: a must not publish it, not even for a moment, or a read from
// a goes back, and the removed image stays on a for good (the watch never
// delivers the removal again).
func TestDeleteOvertakesOwnCommit(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startGatedNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	writes := []func() error{
		func() error {
			_, err := a.reg.Register(registry.ServiceSpec{ImageID: 1, ImageName: "one", Containers: []registry.ContainerSpec{ctr("a")}})
			return err
		},
		func() error { _, err := a.reg.PutContainer(2, ctr("a")); return err },
	}
	register(t, a.reg, 2, "c0")
	for i, write := range writes {
		id := int64(i + 1)
		a.gate.holdNext("after", false)
		errA := async(write)
		a.gate.waitHeld(t)
		waitHas(t, "b", b.reg, id, "a")
		if _, err := b.reg.Remove(id); err != nil {
			t.Fatal(err)
		}
		removed := c.Revision()
		testkit.Eventually(t, "node a's watch to deliver the removal", func() bool { return a.reg.Revision() >= removed })
		var back atomic.Bool
		stop := a.reg.OnChange(func(ids []int64) {
			if slices.Contains(ids, id) && a.reg.Lookup(id) != nil {
				back.Store(true)
			}
		})
		a.gate.releaseHeld()
		if err := answer(t, fmt.Sprintf("a's write of image %d", id), errA); err != nil {
			t.Fatalf("a's write of image %d: %v", id, err)
		}
		stop()
		if back.Load() || a.reg.Lookup(id) != nil {
			t.Fatalf("image %d, removed by b after a's commit, came back on node a when a's commit returned", id)
		}
		converged(t, c, id, nil, a.reg, b.reg)
	}
}

// TestReListWhileBatchInFlight: a's put a1 is committed but not answered,
// put a2 is queued on it, and a's watch is stopped; b puts b1 on a1 (then,
// in a second round, removes the image), etcd compacts, and a re-list
// (what the watch delivers after a compaction) reaches a before a1's commit
// returns. a must not publish a1's version over the listed one when the
// commit returns, and a2, made on a1's version, must not drop b1 nor bring
// the image back. a's watch stays stopped: the re-list stands for it, and
// a watch delivers nothing older than its re-list.
func TestReListWhileBatchInFlight(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startGatedNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	other := open(t, c.Endpoints(), nil)
	for id, remove := range []bool{false, true} {
		id := int64(id + 1)
		register(t, a.reg, id, "c0")
		waitHas(t, "b", b.reg, id, "c0")
		a.pauseWatch()
		_, errA1, errA2 := inFlightWithQueued(t, a,
			func() error { _, err := a.reg.PutContainer(id, ctr("a1")); return err },
			func() error { _, err := a.reg.PutContainer(id, ctr("a2")); return err })
		waitHas(t, "b", b.reg, id, "a1")
		listed := func() bool { return has(a.reg, id, "b1") }
		want := []string{"a1", "a2", "b1", "c0"}
		if remove {
			listed, want = func() bool { return a.reg.Lookup(id) == nil }, nil
			_, err := b.reg.Remove(id)
			if err != nil {
				t.Fatal(err)
			}
		} else if _, err := b.reg.PutContainer(id, ctr("b1")); err != nil {
			t.Fatal(err)
		}
		c.Compact(0)
		relist(t, a.reg, other)
		if !listed() {
			t.Fatalf("round %d: node a is not what it listed", id)
		}
		var back atomic.Bool
		stop := a.reg.OnChange(func(ids []int64) {
			if slices.Contains(ids, id) && !listed() {
				back.Store(true)
			}
		})
		a.gate.releaseHeld()
		if err := answer(t, "put a1", errA1); err != nil {
			t.Fatalf("put a1: %v", err)
		}
		errA2v := answer(t, "put a2", errA2)
		stop()
		if back.Load() {
			t.Fatalf("round %d: node a went back to a1's version when a1's commit returned, after its re-list", id)
		}
		if remove && registry.KindOf(errA2v) != registry.KindNotFound || !remove && errA2v != nil {
			t.Fatalf("round %d: put a2: %v", id, errA2v)
		}
		relist(t, a.reg, other) // in place of a's watch
		converged(t, c, id, want, a.reg, b.reg)
	}
}

// relist delivers to reg what a watch delivers after a re-list: every
// record as etcd holds it now, read through st.
func relist(t *testing.T, reg *registry.Registry, st *Store) {
	t.Helper()
	listing := load(t, st)
	records := make([]registry.Remote, len(listing.Records))
	for i := range listing.Records {
		records[i] = registry.Remote{ImageID: listing.Records[i].ImageID, Record: &listing.Records[i], Revision: listing.Records[i].Revision}
	}
	reg.ApplyRemote(registry.RemoteEvent{Records: records, Revision: listing.Revision, Reset: true})
}

// TestRemovalQueuedOnOvertakenCommit: a's put a1 is committed but not
// answered and a's removal of the image is queued on a1's version; b, which
// has seen a1, removes the image first, and a's watch delivers that before
// a1's commit returns. Only one removal happened: a's must answer 404, not
// a 200 that no commit backs (seed 5013: two nodes answered 200 to the
// removal of one version).
func TestRemovalQueuedOnOvertakenCommit(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startGatedNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	register(t, a.reg, 1, "c0")
	waitHas(t, "b", b.reg, 1, "c0")

	_, errA1, errRemove := inFlightWithQueued(t, a,
		func() error { _, err := a.reg.PutContainer(1, ctr("a1")); return err },
		func() error { _, err := a.reg.Remove(1); return err })
	waitHas(t, "b", b.reg, 1, "a1")
	if _, err := b.reg.Remove(1); err != nil {
		t.Fatal(err)
	}
	removed := c.Revision()
	testkit.Eventually(t, "node a's watch to deliver b's removal", func() bool { return a.reg.Revision() >= removed })
	a.gate.releaseHeld()
	if err := answer(t, "put a1", errA1); err != nil {
		t.Fatalf("put a1: %v", err)
	}
	if err := answer(t, "a's removal", errRemove); registry.KindOf(err) != registry.KindNotFound {
		t.Fatalf("a's removal of an image b had removed first answered %v, want a 404", err)
	}
	converged(t, c, 1, nil, a.reg, b.reg)
}

// TestConflictOlderThanWatchedRemoval: a's removal of container c2 is made
// on a version b has already changed (b removed c2 first); etcd refuses
// a's commit and reads the record as it is then, but the answer is held.
// Meanwhile a's watch delivers b's change and then b's removal of the
// whole image, and a shows the image gone. The conflict's record, read
// before the removal, must not bring the image back on a, not even for a
// moment: the watch has passed its revision, so a has that version or a
// newer one (seed 11000: lb-1 showed image 103 removed at 11.895 s, then
// again as of the conflict's revision from 11.92 s).
func TestConflictOlderThanWatchedRemoval(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startGatedNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	register(t, a.reg, 1, "c0", "c2")
	waitHas(t, "b", b.reg, 1, "c2")

	a.pauseWatch() // a's removal is made on the version with c2
	if _, err := b.reg.RemoveContainer(1, "c2"); err != nil {
		t.Fatal(err)
	}
	a.gate.holdNext("after", false)
	errA := async(func() error { _, err := a.reg.RemoveContainer(1, "c2"); return err })
	a.gate.waitHeld(t) // etcd refused it: the conflict carries the record without c2
	a.resumeWatch()
	testkit.Eventually(t, "node a's watch to deliver b's removal of c2", func() bool { return !has(a.reg, 1, "c2") })
	if _, err := b.reg.Remove(1); err != nil {
		t.Fatal(err)
	}
	removed := c.Revision()
	testkit.Eventually(t, "node a's watch to deliver b's removal of the image", func() bool {
		return a.reg.Revision() >= removed && a.reg.Lookup(1) == nil
	})
	var back atomic.Bool
	stop := a.reg.OnChange(func(ids []int64) {
		if slices.Contains(ids, 1) && a.reg.Lookup(1) != nil {
			back.Store(true)
		}
	})
	a.gate.releaseHeld()
	err := answer(t, "a's removal of c2", errA)
	stop()
	if back.Load() || a.reg.Lookup(1) != nil {
		t.Fatal("image 1, removed by b and shown removed on node a, came back on a when a's refused commit returned: a read from a went back")
	}
	if registry.KindOf(err) != registry.KindNotFound {
		t.Fatalf("a's removal of c2, which b removed first: %v, want a 404", err)
	}
	converged(t, c, 1, nil, a.reg, b.reg)
}

// TestRegisterThenDeleteInOneBatch: node a queues a registration of image
// 2 (claiming an external port) and then a removal of image 2 while another
// commit is held, so both wait for one batch. Each answer must match what
// etcd did: the registration's port claim and compare are checked (a 409
// when another node holds the port, which a has not seen), and a removal
// answers the version etcd removed (seeds 30003 and 30017: one batch sent
// one change per image, so the registration never reached etcd; both
// answered 200, with no transaction at all or with a removal answering a
// version etcd never had).
func TestRegisterThenDeleteInOneBatch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		had     bool // a (and etcd) have image 2, without a port, before
		port    int  // the port the registration claims; 9400 is b's image 1's
		want409 bool
	}{
		{name: "new image, port taken", port: 9400, want409: true},
		{name: "new image, port free", port: 9401},
		{name: "known image, port taken", had: true, port: 9400, want409: true},
		{name: "known image, port free", had: true, port: 9401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := etcdtest.Start(t, 1)
			a, b := startGatedNode(t, c.Endpoints()), startNode(t, c.Endpoints())
			register(t, a.reg, 3, "c0")
			if tc.had {
				register(t, a.reg, 2, "old")
			}
			a.pauseWatch() // a does not learn that b's image 1 takes port 9400
			if _, err := b.reg.Register(registry.ServiceSpec{ImageID: 1, ImageName: "one", ExternalPort: 9400,
				Containers: []registry.ContainerSpec{ctr("b")}}); err != nil {
				t.Fatal(err)
			}
			w := startWatch(t, open(t, c.Endpoints(), nil), c.Revision())

			a.gate.holdNext("before", false)
			errPut := putAsync(a.reg, 3, "a1")
			a.gate.waitHeld(t)
			errReg := async(func() error {
				_, err := a.reg.Register(registry.ServiceSpec{ImageID: 2, ImageName: "two", ExternalPort: tc.port,
					Containers: []registry.ContainerSpec{ctr("new")}})
				return err
			})
			testkit.Eventually(t, "the registration to queue", func() bool { return a.reg.Pending() == 2 })
			var removed *registry.Service
			errDel := async(func() error { var err error; removed, err = a.reg.Remove(2); return err })
			testkit.Eventually(t, "the removal to queue", func() bool { return a.reg.Pending() == 3 })
			a.gate.releaseHeld()
			if err := answer(t, "put a1", errPut); err != nil {
				t.Fatalf("put a1: %v", err)
			}
			regErr, delErr := answer(t, "register", errReg), answer(t, "remove", errDel)

			// Every version of image 2 etcd committed since, in order.
			final := c.Revision()
			testkit.Eventually(t, "the watch to reach etcd's revision", func() bool { return w.revision() >= final })
			var seen []*registry.ServiceRecord
			w.mu.Lock()
			for _, ev := range w.events {
				for _, r := range ev.Records {
					if r.ImageID == 2 {
						seen = append(seen, r.Record)
					}
				}
			}
			w.mu.Unlock()
			ports := make([]string, len(seen))
			for i, r := range seen {
				ports[i] = "removed"
				if r != nil {
					ports[i] = fmt.Sprintf("port %d %v", r.ExternalPort, r.Containers)
				}
			}

			if tc.want409 {
				if registry.KindOf(regErr) != registry.KindConflict || !strings.Contains(regErr.Error(), "9400") {
					t.Errorf("the registration claiming port 9400, held by b's image 1, answered %v; want a 409 (etcd saw of image 2: %v)", regErr, ports)
				}
			} else if regErr != nil {
				t.Errorf("the registration claiming free port %d: %v", tc.port, regErr)
			} else if len(seen) == 0 || seen[0] == nil || seen[0].ExternalPort != tc.port {
				t.Errorf("the registration answered 200, but etcd never held its version of image 2: etcd saw %v", ports)
			}
			wantRemoved := "new" // what etcd holds when the removal runs
			if tc.want409 {
				wantRemoved = "old"
			}
			switch {
			case tc.want409 && !tc.had:
				if registry.KindOf(delErr) != registry.KindNotFound {
					t.Errorf("the removal of image 2, which etcd never held, answered %v; want a 404 (etcd saw %v)", delErr, ports)
				}
			case delErr != nil:
				t.Errorf("the removal of image 2: %v (etcd saw %v)", delErr, ports)
			case removed == nil || removed.Container(wantRemoved) == nil:
				t.Errorf("the removal answered %+v; want the version etcd removed, with container %q (etcd saw %v)", removed, wantRemoved, ports)
			case len(seen) == 0 || seen[len(seen)-1] != nil:
				t.Errorf("the removal answered 200, but etcd did not remove image 2: etcd saw %v", ports)
			}
			if !tc.want409 && removed != nil && removed.ExternalPort != tc.port {
				t.Errorf("the removal answered port %d; want %d", removed.ExternalPort, tc.port)
			}
			if tc.want409 && removed != nil && removed.ExternalPort != 0 {
				t.Errorf("the removal answered a version with port %d, which etcd never held (etcd saw %v)", removed.ExternalPort, ports)
			}
			a.resumeWatch()
			converged(t, c, 2, nil, a.reg, b.reg)
		})
	}
}

// TestWriteOnALaggingNode: a node whose watch has not yet delivered
// another node's changes gets writes of the images they made. Reads from
// it may lag, but a write's 404 says the image or container is not
// registered, and an orchestrator takes it as done ("already gone"): it
// must be true in etcd, not only in the node's late view. So the PATCH
// and the DELETE are made on the record etcd holds; only a DELETE of an
// image etcd has not either answers 404.
func TestWriteOnALaggingNode(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, lag := startNode(t, c.Endpoints()), startGatedNode(t, c.Endpoints())
	lag.pauseWatch()
	register(t, a.reg, 1, "c0", "c1")
	register(t, a.reg, 2, "x")
	five := 5
	if _, err := lag.reg.PatchContainer(1, "c1", registry.ContainerPatch{Weight: &five}); err != nil {
		t.Errorf("PATCH of container c1 of image 1 (registered on another node) on the lagging node: %v, want it applied", err)
	}
	if _, err := lag.reg.Remove(2); err != nil {
		t.Errorf("DELETE of image 2 (registered on another node) on the lagging node: %v, want it applied", err)
	}
	if _, err := lag.reg.Remove(3); registry.KindOf(err) != registry.KindNotFound {
		t.Errorf("DELETE of image 3, which etcd has not either: %v, want a 404", err)
	}
	lag.resumeWatch()
	converged(t, c, 2, nil, a.reg, lag.reg)
	converged(t, c, 1, []string{"c0", "c1"}, a.reg, lag.reg)
	if w := a.reg.Lookup(1).Container("c1").Weight; w != 5 {
		t.Errorf("c1's weight on the other node: %d, want 5 (the lagging node's PATCH)", w)
	}
}
