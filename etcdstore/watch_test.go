package etcdstore

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/internal/testkit"
	"github.com/imagelb/caddy-imagelb/registry"
)

// A watch from the revision of a Load delivers every change after it,
// those made between the Load and the Watch included, once each, in order.
func TestWatchFromRevision(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	s, other := open(t, c.Endpoints(), nil), open(t, c.Endpoints(), nil)
	r0 := commit(t, other, put(record(1, 0), 0, 0))
	l := load(t, s)
	if l.Revision != r0 {
		t.Fatalf("Load at %d, want %d", l.Revision, r0)
	}
	// Before the watch starts.
	r1 := commit(t, other, put(record(2, 0), 0, 0), put(record(3, 0), 0, 0))
	r2 := commit(t, other, put(record(1, 0, "a"), r0, 0))
	w := startWatch(t, s, l.Revision).seed(l)
	w.waitRevision(t, r2)
	// And while it runs; keys outside services/ (another node's
	// heartbeat, say) move the revision without events.
	r3 := commit(t, other, del(2, r1, 0))
	if _, err := c.Client().Put(context.Background(), "/imagelb/nodes/x", "{}"); err != nil {
		t.Fatal(err)
	}
	r4 := commit(t, s, put(record(4, 0), 0, 0), put(record(3, 0, "b"), r1, 0))
	w.waitRevision(t, r4)

	want := []string{change(2, r1, false), change(3, r1, false), change(1, r2, false), change(2, r3, true), change(4, r4, false), change(3, r4, false)}
	if got := w.changes(); !slices.Equal(got, want) {
		t.Fatalf("changes %v, want %v", got, want)
	}
	if !slices.Equal(w.ids(), []int64{1, 3, 4}) {
		t.Fatalf("state %v", w.ids())
	}
	if rec, _ := w.record(3); len(rec.Containers) != 1 || rec.Revision != r4 {
		t.Fatalf("record 3 = %+v", rec)
	}
	if len(w.resets()) != 0 {
		t.Fatalf("unexpected Reset: %+v", w.resets())
	}
	// No event goes backwards, and one without records (a progress
	// notification) advances to the store's revision.
	w.mu.Lock()
	for i := 1; i < len(w.events); i++ {
		if w.events[i].Revision <= w.events[i-1].Revision {
			t.Errorf("event %d at %d after %d", i, w.events[i].Revision, w.events[i-1].Revision)
		}
	}
	w.mu.Unlock()
	resp, err := c.Client().Put(context.Background(), "/imagelb/nodes/y", "{}")
	if err != nil {
		t.Fatal(err)
	}
	w.waitRevision(t, resp.Header.Revision) // within ProgressNotifyInterval
	if st := s.Status(); !st.OK || st.Revision < resp.Header.Revision {
		t.Fatalf("Status = %+v", st)
	}
}

// A watch from a compacted revision re-lists: a Reset with the whole state.
func TestWatchAfterCompaction(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	s, other := open(t, c.Endpoints(), nil), open(t, c.Endpoints(), nil)
	r0 := commit(t, other, put(record(1, 0), 0, 0), put(record(2, 0), 0, 0))
	l := load(t, s)
	commit(t, other, put(record(3, 0, "a"), 0, 0))
	r1 := commit(t, other, del(1, r0, 0), put(record(3, 0), l.Revision+1, 0))
	c.Compact(0) // the watch needs l.Revision+1, gone
	w := startWatch(t, s, l.Revision).seed(l)
	w.waitRevision(t, r1)
	resets := w.resets()
	if len(resets) != 1 || resets[0].Revision < r1 || len(resets[0].Records) != 2 {
		t.Fatalf("resets %+v", resets)
	}
	if !slices.Equal(w.ids(), []int64{2, 3}) {
		t.Fatalf("state %v", w.ids())
	}
	if rec, _ := w.record(3); rec.Revision != r1 {
		t.Fatalf("record 3 at %d, want %d", rec.Revision, r1)
	}
	// It watches on from the re-list.
	r2 := commit(t, other, put(record(4, 0), 0, 0))
	w.waitRevision(t, r2)
	if !slices.Equal(w.ids(), []int64{2, 3, 4}) || len(w.resets()) != 1 {
		t.Fatalf("state %v, %d resets", w.ids(), len(w.resets()))
	}
}

// etcd's revision behind the watch's (etcd restored from an old backup)
// gives a Reset too.
func TestWatchRevisionWentBack(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	s := open(t, c.Endpoints(), nil)
	r0 := commit(t, s, put(record(1, 0), 0, 0))
	w := startWatch(t, s, r0+1000)
	testkit.Eventually(t, "a Reset", func() bool { return len(w.resets()) == 1 })
	if rs := w.resets(); rs[0].Revision != r0 || !slices.Equal(w.ids(), []int64{1}) {
		t.Fatalf("reset %+v", rs[0])
	}
	r1 := commit(t, s, put(record(2, 0), 0, 0))
	w.waitRevision(t, r1)
	if !slices.Equal(w.ids(), []int64{1, 2}) {
		t.Fatalf("state %v", w.ids())
	}
}

// One of three members down: the cluster goes on. All down: commits fail
// as unavailable within the request timeout, the store reports it; back
// up: another node's change reaches the watch, and the store is OK again.
// A watch whose member was down while the history it needs was compacted
// re-lists.
func TestClusterOutage(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("restarts a three-member cluster")
	}
	c := etcdtest.Start(t, 3)
	a, b := open(t, c.Endpoints(), nil), open(t, c.Endpoints(), nil)
	// lone talks to member 0 only.
	lone := open(t, []string{c.Endpoint(0)}, nil)
	r0 := commit(t, a, put(record(1, 0), 0, 0))
	la, ll := load(t, a), load(t, lone)
	wa := startWatch(t, a, la.Revision).seed(la)
	wl := startWatch(t, lone, ll.Revision).seed(ll)

	c.Stop(0)
	// The client moves to another member; a request in flight on the
	// stopped member's connection may fail, not the next one.
	var r1 int64
	testkit.Eventually(t, "a commit with one member down", func() bool {
		rev, err := b.Commit(context.Background(), []registry.Change{put(record(2, 0), 0, 0)})
		if err != nil && !errors.Is(err, registry.ErrStoreUnavailable) {
			t.Fatalf("commit with one member down: %v", err)
		}
		r1 = rev
		return err == nil
	})
	wa.waitRevision(t, r1)
	r2 := commit(t, b, put(record(1, 0, "x"), r0, 0))
	c.Compact(r2) // the history lone's watch needs is gone
	wa.waitRevision(t, r2)
	testkit.Eventually(t, "lone degraded", func() bool { return !lone.Status().OK })

	c.StopAll()
	start := time.Now()
	_, err := b.Commit(context.Background(), []registry.Change{put(record(3, 0), 0, 0)})
	if !errors.Is(err, registry.ErrStoreUnavailable) {
		t.Fatalf("commit with every member down: %v", err)
	}
	if d := time.Since(start); d > requestTimeout+time.Second {
		t.Fatalf("the commit failed after %s", d)
	}
	if st := b.Status(); st.OK || st.Detail == "" {
		t.Fatalf("b: Status %+v", st)
	}
	testkit.Eventually(t, "the watching store degraded", func() bool { return !a.Status().OK })
	if _, err := a.Nodes(context.Background()); !errors.Is(err, registry.ErrStoreUnavailable) {
		t.Fatalf("Nodes: %v", err)
	}

	c.RestartAll()
	var r3 int64
	testkit.Eventually(t, "a commit after the restart", func() bool {
		rev, err := b.Commit(context.Background(), []registry.Change{put(record(4, 0), 0, 0)})
		r3 = rev
		return err == nil
	})
	wa.waitRevision(t, r3)
	// (The commit that timed out was not applied: it never reached etcd.
	// a's watch may have re-listed: a member left without a leader ends
	// the watches it serves.)
	if !slices.Equal(wa.ids(), []int64{1, 2, 4}) {
		t.Fatalf("a's state %v", wa.ids())
	}
	testkit.Eventually(t, "a OK again", func() bool { return a.Status().OK })
	testkit.Eventually(t, "lone OK again", func() bool { return lone.Status().OK })
	wl.waitRevision(t, r3)
	if len(wl.resets()) == 0 || !slices.Equal(wl.ids(), []int64{1, 2, 4}) {
		t.Fatalf("lone: state %v, %d resets; want a Reset after the compaction", wl.ids(), len(wl.resets()))
	}
	if rec, _ := wl.record(1); len(rec.Containers) != 1 || rec.Revision != r2 {
		t.Fatalf("lone: record 1 = %+v", rec)
	}
}

// With etcd down, Load returns the cache's state, degraded; once etcd is
// back the watch re-lists (the cache keeps no revision per record) and
// follows.
func TestLoadFromCache(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	cache := bolt(t)
	s := open(t, c.Endpoints(), cache)
	other := open(t, c.Endpoints(), nil)
	l := load(t, s)
	w := startWatch(t, s, l.Revision)
	commit(t, s, put(record(1, 8081, "a"), 0, 0))
	r2 := commit(t, other, put(record(2, 0), 0, 0), put(record(3, 0), 0, 0))
	r3 := commit(t, other, del(3, r2, 0))
	w.waitRevision(t, r3)
	testkit.Eventually(t, "the cache at r3", func() bool {
		cached, err := cache.Load(context.Background())
		return err == nil && cached.Revision == r3 && slices.Equal(loadedIDs(cached), []int64{1, 2})
	})
	s.Close()
	c.StopAll()

	s2 := open(t, c.Endpoints(), cache)
	l2, err := s2.Load(context.Background())
	if err != nil {
		t.Fatalf("Load with etcd down and a cache: %v", err)
	}
	if l2.Revision != r3 || !slices.Equal(loadedIDs(l2), []int64{1, 2}) || l2.Records[0].ExternalPort != 8081 {
		t.Fatalf("Load from the cache: %+v", l2)
	}
	if st := s2.Status(); st.OK || st.Revision != r3 {
		t.Fatalf("Status %+v, want degraded at %d", st, r3)
	}
	w2 := startWatch(t, s2, l2.Revision).seed(l2)

	c.RestartAll()
	var r4 int64
	testkit.Eventually(t, "a commit after the restart", func() bool {
		rev, err := other.Commit(context.Background(), []registry.Change{put(record(5, 0), 0, 0)})
		r4 = rev
		return err == nil
	})
	w2.waitRevision(t, r4)
	if !slices.Equal(w2.ids(), []int64{1, 2, 5}) {
		t.Fatalf("state %v", w2.ids())
	}
	if rec, _ := w2.record(2); rec.Revision != r2 {
		t.Fatalf("record 2 at %d, want %d: the re-list gives the records their revisions", rec.Revision, r2)
	}
	testkit.Eventually(t, "s2 OK", func() bool { return s2.Status().OK })
	testkit.Eventually(t, "the cache to follow", func() bool {
		cached, err := cache.Load(context.Background())
		return err == nil && cached.Revision >= r4 && slices.Equal(loadedIDs(cached), []int64{1, 2, 5})
	})

	// An empty cache does not do.
	c.StopAll()
	s3 := open(t, c.Endpoints(), bolt(t))
	if _, err := s3.Load(context.Background()); !errors.Is(err, registry.ErrStoreUnavailable) {
		t.Fatalf("Load with etcd down and an empty cache: %v", err)
	}
}

// A commit's mirror and the watch's race; the cache keeps the newest
// record of each image, at a revision the watch has delivered.
func TestCacheOrder(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	cache := bolt(t)
	s := open(t, c.Endpoints(), cache)
	other := open(t, c.Endpoints(), nil)
	l := load(t, s)
	// No watch runs: the commit's mirror must not claim the cache is
	// complete up to its revision while another node's change before it
	// has not been mirrored.
	commit(t, other, put(record(1, 0), 0, 0))
	r2 := commit(t, s, put(record(2, 0), 0, 0))
	cached, err := cache.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if cached.Revision != l.Revision || !slices.Equal(loadedIDs(cached), []int64{2}) {
		t.Fatalf("cache at %d with %v, want %d with [2]", cached.Revision, loadedIDs(cached), l.Revision)
	}
	// The watch then delivers r1, and r2 (already mirrored).
	w := startWatch(t, s, l.Revision)
	w.waitRevision(t, r2)
	testkit.Eventually(t, "the cache at r2", func() bool { // the watch mirrors after it delivers
		cached, _ = cache.Load(context.Background())
		return cached.Revision == r2 && slices.Equal(loadedIDs(cached), []int64{1, 2})
	})
	// An older change never overwrites a newer one.
	s.mirrorEvent([]registry.Remote{{ImageID: 2, Revision: r2 - 1}}, r2)
	cached, _ = cache.Load(context.Background())
	if !slices.Equal(loadedIDs(cached), []int64{1, 2}) {
		t.Fatalf("a stale deletion was mirrored: %v", loadedIDs(cached))
	}
}
