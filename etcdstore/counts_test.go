package etcdstore

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/registry"
)

// countsNode is one node of a shared-counts test: its own registry (its
// own counters), its own store and a publisher of image 1's counts.
type countsNode struct {
	t     *testing.T
	id    string
	reg   *registry.Registry
	store *Store
	pub   *registry.CountsPublisher
}

func newCountsNode(t *testing.T, c *etcdtest.Cluster, id string) *countsNode {
	t.Helper()
	n := &countsNode{t: t, id: id, reg: registry.New(registry.Options{}),
		store: open(t, c.Endpoints(), nil, func(cfg *Config) { cfg.LeaseTTL = 2 * time.Second })}
	n.register()
	n.pub = registry.NewCountsPublisher(n.reg, n.store, id, func() []int64 { return []int64{1} })
	return n
}

// register registers image 1 in the node's registry (only there: the test
// is about the counts, not the record).
func (n *countsNode) register() {
	n.t.Helper()
	if _, err := n.reg.Register(registry.ServiceSpec{ImageID: 1, ImageName: "x",
		Containers: []registry.ContainerSpec{{ContainerID: "c", Host: "127.0.0.1", Port: 80, Status: registry.StatusHealthy, Weight: 1}}}); err != nil {
		n.t.Fatal(err)
	}
}

// serve counts ok requests of 2 ms and failed ones of 40 ms (half of them a
// 500, half no answer) as image 1's.
func (n *countsNode) serve(ok, failed int) {
	st := n.reg.Lookup(1).State
	for range ok {
		st.Begin()
		st.Finish(200, false, 2*time.Millisecond)
	}
	for i := range failed {
		st.Begin()
		if i%2 == 0 {
			st.Finish(500, true, 40*time.Millisecond)
		} else {
			st.Finish(0, true, 40*time.Millisecond)
		}
	}
}

func (n *countsNode) publish() {
	n.t.Helper()
	if err := n.pub.Publish(context.Background()); err != nil {
		n.t.Fatal(err)
	}
}

// observe reads every node's counts of image 1 through st and feeds them to
// the tracker.
func observe(t *testing.T, st *Store, tr *registry.CountsTracker) registry.StepCounts {
	t.Helper()
	readings, err := st.LoadCounts(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	return tr.Observe(readings)
}

func wantCounts(t *testing.T, what string, got registry.StepCounts, requests, failed uint64) {
	t.Helper()
	if got.Requests != requests || got.Errors != failed {
		t.Fatalf("%s: %d requests, %d failed; want %d and %d", what, got.Requests, got.Errors, requests, failed)
	}
	var sum uint64
	for _, n := range got.Latency {
		sum += n
	}
	if sum != requests {
		t.Fatalf("%s: the latency buckets hold %d requests, want %d", what, sum, requests)
	}
}

// TestSharedCountsSummed: two nodes publish their counts of an image; a
// tracker started before a step adds what both served in it, and nothing
// of what either served before: neither what a node served before the
// baseline nor what one served before it first published.
func TestSharedCountsSummed(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := newCountsNode(t, c, "a"), newCountsNode(t, c, "b")
	a.serve(50, 5) // before the step
	b.serve(100, 100)
	a.publish()
	tr := registry.NewCountsTracker("reader")
	self := registry.NewCountsTracker("a") // the driver, on node a: its own counts it reads itself
	wantCounts(t, "the baseline", observe(t, a.store, tr), 0, 0)
	observe(t, a.store, self)

	b.publish() // b's first publication, after the baseline: its 200 earlier requests are not the step's
	a.serve(10, 4)
	b.serve(20, 2)
	a.publish()
	b.publish()
	got := observe(t, b.store, tr)
	wantCounts(t, "both nodes", got, 36, 6)
	if p99, ok := got.Latency.Quantile(0.99); !ok || p99 < 40 || p99 > 50 {
		t.Fatalf("the summed p99 is %v ms (%v), want the 40 ms bucket", p99, ok)
	}
	if p50, _ := got.Latency.Quantile(0.5); p50 > 3 {
		t.Fatalf("the summed p50 is %v ms, want the 2 ms bucket", p50)
	}
	wantCounts(t, "without the reader's own", observe(t, b.store, self), 22, 2)
	// Another reading without new traffic adds nothing.
	wantCounts(t, "read again", observe(t, a.store, tr), 36, 6)
}

// TestSharedCountsOfAStoppedNode: a node that stops publishing (it died)
// keeps what it added before; its counts expire with their lease and the
// sum does not go down. A node that stops cleanly deletes its counts.
func TestSharedCountsOfAStoppedNode(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := newCountsNode(t, c, "a"), newCountsNode(t, c, "b")
	a.publish()
	b.publish()
	tr := registry.NewCountsTracker("reader")
	observe(t, a.store, tr)
	a.serve(10, 0)
	b.serve(5, 5)
	a.publish()
	b.publish()
	wantCounts(t, "both", observe(t, a.store, tr), 20, 5)

	// b dies: it serves more but never publishes it; its key expires (a's
	// may too, as a does not publish meanwhile: it then starts a new series).
	b.serve(100, 100)
	eventually(t, 30*time.Second, "b's counts to expire with their lease", func() bool {
		rs, err := a.store.LoadCounts(context.Background(), 1)
		return err == nil && !slices.ContainsFunc(rs, func(r registry.NodeCounts) bool { return r.Node == "b" })
	})
	a.publish()
	a.serve(1, 0)
	a.publish()
	wantCounts(t, "after b's counts expired", observe(t, a.store, tr), 21, 5)

	// a stops cleanly: its lease is revoked at once.
	a.store.Close()
	rs, err := b.store.LoadCounts(context.Background(), 1)
	if err != nil || len(rs) != 0 {
		t.Fatalf("after a closed: %+v %v, want no counts", rs, err)
	}
	wantCounts(t, "after a closed", tr.Observe(rs), 21, 5)
}

// TestSharedCountsOfARestartedNode: a node restarts (its counters start
// again at 0) and publishes in a new series under the same key; the sum
// neither goes back nor counts anything twice. The same holds when the
// image is removed and registered again in a running node.
func TestSharedCountsOfARestartedNode(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := newCountsNode(t, c, "a"), newCountsNode(t, c, "b")
	a.publish()
	b.publish()
	tr := registry.NewCountsTracker("reader")
	observe(t, a.store, tr)
	b.serve(30, 3)
	b.publish()
	wantCounts(t, "before the restart", observe(t, a.store, tr), 33, 3)

	// b restarts: a new process, new counters, the same node id.
	b.serve(7, 0) // served and never published: lost with the process
	b2 := newCountsNode(t, c, "b")
	b2.serve(4, 1)
	b2.publish() // the first publication is zero: counts start at it
	b2.serve(4, 1)
	b2.publish()
	wantCounts(t, "after the restart", observe(t, a.store, tr), 38, 4)

	// The image is removed and registered again on b2: its counters start
	// at 0 while the publisher's series goes on.
	if _, err := b2.reg.Remove(1); err != nil {
		t.Fatal(err)
	}
	b2.register()
	b2.serve(2, 0)
	b2.publish()
	wantCounts(t, "after the image was registered again", observe(t, a.store, tr), 40, 4)
	b2.serve(1, 0)
	b2.publish()
	wantCounts(t, "and on", observe(t, a.store, tr), 41, 4)
	// A reading older than one already seen (a slow reader's) adds nothing.
	old := []registry.NodeCounts{{Node: "b", Series: mustSeries(t, a.store, "b"), StepCounts: registry.StepCounts{Requests: 1}}}
	wantCounts(t, "an older reading", tr.Observe(old), 41, 4)
}

// TestSharedCountsAfterTheLeaseIsLost: when a node's counts lease is gone
// (it expired while etcd could not be reached), the node starts new series
// and writes nothing in the old one, so that a reader that read while the
// keys were gone does not take the node's earlier counts as the step's.
func TestSharedCountsAfterTheLeaseIsLost(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := newCountsNode(t, c, "a")
	a.serve(10, 0)
	a.publish()
	first := mustSeries(t, a.store, "a")
	// The lease disappears, as when it expires.
	a.store.mu.Lock()
	lease := a.store.countsLease
	a.store.mu.Unlock()
	if _, err := c.Client().Revoke(context.Background(), lease); err != nil {
		t.Fatal(err)
	}
	tr := registry.NewCountsTracker("reader")
	wantCounts(t, "the baseline, with a's counts gone", observe(t, a.store, tr), 0, 0)
	a.serve(5, 0) // served while its counts were gone: before the reader's next reading, after its baseline
	a.publish()
	if s := mustSeries(t, a.store, "a"); s == first {
		t.Fatal("the node published in its old series after its counts were lost")
	}
	wantCounts(t, "the new series' first publication", observe(t, a.store, tr), 0, 0)
	a.serve(3, 3)
	a.publish()
	wantCounts(t, "after", observe(t, a.store, tr), 6, 3)
	// A store's PublishCounts says so itself.
	a.store.mu.Lock()
	lease = a.store.countsLease
	a.store.mu.Unlock()
	if _, err := c.Client().Revoke(context.Background(), lease); err != nil {
		t.Fatal(err)
	}
	err := a.store.PublishCounts(context.Background(), "a", map[int64]registry.NodeCounts{1: {Series: "s"}})
	if !errors.Is(err, registry.ErrCountsLost) {
		t.Fatalf("publishing on a revoked lease: %v, want ErrCountsLost", err)
	}
	if rs, _ := a.store.LoadCounts(context.Background(), 1); len(rs) != 0 {
		t.Fatalf("the old series was written on the new lease: %+v", rs)
	}
}

// TestSharedCountsKeys: the keys are the node's own, under the image, and a
// key that does not decode is left out of a reading.
func TestSharedCountsKeys(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := newCountsNode(t, c, "a")
	a.publish()
	ctx := context.Background()
	resp, err := c.Client().Get(ctx, DefaultPrefix+countsDir, clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != DefaultPrefix+"rollout-counts/1/a" || resp.Kvs[0].Lease == 0 {
		t.Fatalf("keys: %+v %v; want one leased key %srollout-counts/1/a", resp.Kvs, err, DefaultPrefix)
	}
	if _, err := c.Client().Put(ctx, DefaultPrefix+"rollout-counts/1/x", "{"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client().Put(ctx, DefaultPrefix+"rollout-counts/12/a", `{"series":"s","requests":9}`); err != nil {
		t.Fatal(err)
	}
	rs, err := a.store.LoadCounts(ctx, 1)
	if err != nil || len(rs) != 1 || rs[0].Node != "a" {
		t.Fatalf("image 1's counts: %+v %v; want only a's", rs, err)
	}
	if err := a.store.PublishCounts(ctx, "a/b", map[int64]registry.NodeCounts{1: {Series: "s"}}); err == nil {
		t.Fatal("a node id with a / was taken")
	}
	// The publisher deletes the counts of an image it is no longer asked for.
	a.pub = registry.NewCountsPublisher(a.reg, a.store, "a", func() []int64 { return nil })
	a.publish()
	if rs, err := a.store.LoadCounts(ctx, 1); err != nil || len(rs) != 1 {
		t.Fatalf("a new publisher deleted what it never published: %+v %v", rs, err)
	}
	asked := []int64{1}
	a.pub = registry.NewCountsPublisher(a.reg, a.store, "a", func() []int64 { return asked })
	a.publish()
	asked = nil
	a.publish()
	if rs, err := a.store.LoadCounts(ctx, 1); err != nil || len(rs) != 0 {
		t.Fatalf("a's counts of image 1 after it was no longer asked: %+v %v, want none", rs, err)
	}
}

// mustSeries returns node's series of image 1.
func mustSeries(t *testing.T, st *Store, node string) string {
	t.Helper()
	rs, err := st.LoadCounts(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Node == node {
			return r.Series
		}
	}
	t.Fatalf("no counts of node %s: %+v", node, rs)
	return ""
}

// eventually polls cond until it holds, failing the test after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond) // the polling interval of a condition
	}
}

// TestClusterCounts: a node's counts source in a cluster is its own
// counters plus the other nodes' published counts: a step's difference of
// two readings holds both nodes' requests; with etcd down it answers an
// error rather than half the counts.
func TestClusterCounts(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := newCountsNode(t, c, "a"), newCountsNode(t, c, "b")
	a.publish()
	b.publish()
	src := registry.NewClusterCounts(a.reg, a.store, "a")
	ctx := context.Background()
	a.serve(100, 0) // before the step
	base, err := src.Counts(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	a.serve(3, 1)
	b.serve(5, 2)
	a.publish() // a's own published counts are not added twice
	b.publish()
	cur, err := src.Counts(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	wantCounts(t, "the step", cur.Sub(base), 11, 3)
	c.StopAll()
	if _, err := src.Counts(ctx, 1); err == nil {
		t.Fatal("a reading with etcd down succeeded")
	}
}
