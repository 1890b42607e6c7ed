package registry

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// served counts n requests of the image with the given body sizes, as the
// request path does.
func served(t *testing.T, r *Registry, id int64, n int, in, out int) {
	t.Helper()
	svc := r.Lookup(id)
	for range n {
		svc.State.Begin()
		svc.State.Usage.AddIn(in)
		svc.State.Usage.AddOut(out)
		svc.State.Finish(200, false, 10*time.Millisecond)
	}
}

func usageOf(t *testing.T, l *Ledger, q UsageQuery) map[int64]ImageUsage {
	t.Helper()
	rep, err := l.Query(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]ImageUsage{}
	for _, iu := range rep.Images {
		out[iu.ImageID] = iu
	}
	return out
}

// TestLedger runs the ledger on a real BoltStore with a clock of its own:
// usage lands in the bucket of the flush that collected it; a query's
// range cuts through buckets and adjacent ranges add up exactly; a new
// process (a new registry on the same database) goes on from the stored
// totals and adds to the current bucket; old buckets are compacted away.
func TestLedger(t *testing.T) {
	base := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	clock := base
	now = func() time.Time { return clock }
	t.Cleanup(func() { now = time.Now })
	path := filepath.Join(t.TempDir(), "registry.db")
	db, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	r := New(Options{})
	mustRegister(t, r, svcSpec(1, ctr("a", 1)))
	mustRegister(t, r, svcSpec(2, ctr("b", 2)))
	l, err := NewLedger(ctx, r, db, "n1", time.Minute, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Minutes 0, 1 and 2: 5, 7 and 11 requests of image 1; image 2 in minute 1.
	for i, n := range []int{5, 7, 11} {
		clock = base.Add(time.Duration(i)*time.Minute + 30*time.Second)
		served(t, r, 1, n, 100, 1000)
		if i == 1 {
			served(t, r, 2, 3, 1, 1)
		}
		if err := l.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	whole := usageOf(t, l, UsageQuery{From: base, To: base.Add(3 * time.Minute), Step: time.Minute})
	if u := whole[1]; u.Requests != 23 || u.BytesIn != 2300 || u.BytesOut != 23000 || len(u.Buckets) != 3 ||
		u.Buckets[0].Requests != 5 || u.Buckets[1].Requests != 7 || u.Buckets[2].Requests != 11 {
		t.Fatalf("image 1 over three minutes: %+v", u)
	}
	if u := whole[2]; u.Requests != 3 || len(u.Buckets) != 1 || !u.Buckets[0].Start.Equal(base.Add(time.Minute)) {
		t.Fatalf("image 2: %+v", u)
	}
	// A range cutting through minute 1 (from 1:30 to 2:10) holds the
	// buckets that start in it, aligned out to whole steps: minutes 1 and 2.
	cut := usageOf(t, l, UsageQuery{ImageID: 1, From: base.Add(90 * time.Second), To: base.Add(130 * time.Second), Step: time.Minute})
	if len(cut) != 1 || cut[1].Requests != 18 {
		t.Fatalf("range 1:30-2:10 of image 1: %+v, want minutes 1 and 2: 18 requests", cut)
	}
	// Adjacent ranges add up exactly to the whole, however they are cut.
	for _, mid := range []time.Duration{time.Minute, 2 * time.Minute} {
		a := usageOf(t, l, UsageQuery{ImageID: 1, From: base, To: base.Add(mid), Step: time.Minute})[1]
		b := usageOf(t, l, UsageQuery{ImageID: 1, From: base.Add(mid), To: base.Add(3 * time.Minute), Step: time.Minute})[1]
		if a.Requests+b.Requests != 23 || a.BytesOut+b.BytesOut != 23000 {
			t.Fatalf("split at %s: %d + %d requests, want 23", mid, a.Requests, b.Requests)
		}
	}
	// A coarser step sums the buckets.
	if h := usageOf(t, l, UsageQuery{ImageID: 1, From: base, To: base.Add(time.Hour), Step: time.Hour})[1]; len(h.Buckets) != 1 || h.Buckets[0].Requests != 23 {
		t.Fatalf("by the hour: %+v", h)
	}
	if _, err := l.Query(ctx, UsageQuery{From: base, To: base.Add(time.Hour), Step: 90 * time.Second}); KindOf(err) != KindInvalid {
		t.Fatalf("a step that is not a multiple of the interval: %v", err)
	}

	// Counted but not flushed yet: the query shows it already.
	served(t, r, 1, 2, 0, 0)
	if u := usageOf(t, l, UsageQuery{ImageID: 1, From: base, To: base.Add(3 * time.Minute), Step: time.Minute})[1]; u.Requests != 25 {
		t.Fatalf("unflushed requests not in the query: %d, want 25", u.Requests)
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	// A new process: the totals go on, the current bucket is added to.
	db.Close()
	db, err = OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r2 := New(Options{})
	mustRegister(t, r2, svcSpec(1, ctr("a", 1)))
	l2, err := NewLedger(ctx, r2, db, "n1", time.Minute, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if tot := r2.Lookup(1).State.Usage.Total(); tot.Requests != 25 || tot.BytesOut != 23000 {
		t.Fatalf("totals after a restart: %+v, want 25 requests", tot)
	}
	if v := r2.Stats(r2.Services()).Services[0]; v.TotalRequests != 25 || v.BytesIn != 2300 {
		t.Fatalf("stats after a restart: %d requests, %d bytes in; want 25, 2300", v.TotalRequests, v.BytesIn)
	}
	served(t, r2, 1, 4, 0, 0)
	if err := l2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if u := usageOf(t, l2, UsageQuery{ImageID: 1, From: base.Add(2 * time.Minute), To: base.Add(3 * time.Minute), Step: time.Minute})[1]; u.Requests != 17 {
		t.Fatalf("minute 2 after a restart in it: %d requests, want 11 + 2 + 4", u.Requests)
	}

	// Past the retention, old buckets go at the next compaction.
	clock = base.Add(25*time.Hour + 2*time.Minute + 30*time.Second)
	if err := l2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if u := usageOf(t, l2, UsageQuery{From: base, To: base.Add(time.Hour), Step: time.Minute}); len(u) != 0 {
		t.Fatalf("buckets older than the retention are still there: %+v", u)
	}
	if tot := r2.Lookup(1).State.Usage.Total(); tot.Requests != 29 {
		t.Fatalf("compaction changed the totals: %+v", tot)
	}
}

// failingUsage is a usage store whose commits fail while broken is set: a
// store that is down.
type failingUsage struct {
	MemoryUsage
	broken bool
}

func (f *failingUsage) CommitUsage(ctx context.Context, node string, b []UsageBucket, tot map[int64]Usage) error {
	if f.broken {
		return errors.New("the store is down")
	}
	return f.MemoryUsage.CommitUsage(ctx, node, b, tot)
}

// TestLedgerFlushFailure: a flush that fails forgets nothing; the next one
// writes it.
func TestLedgerFlushFailure(t *testing.T) {
	ctx := context.Background()
	store := &failingUsage{}
	r := New(Options{})
	mustRegister(t, r, svcSpec(1, ctr("a", 1)))
	l, err := NewLedger(ctx, r, store, "n1", time.Minute, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	served(t, r, 1, 3, 10, 10)
	store.broken = true
	if err := l.Flush(ctx); err == nil {
		t.Fatal("the flush did not report the failure")
	}
	served(t, r, 1, 2, 10, 10)
	store.broken = false
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	totals, _ := store.LoadUsageTotals(ctx, "n1")
	if totals[1].Requests != 5 || totals[1].BytesIn != 50 {
		t.Fatalf("stored totals after a failed flush and a good one: %+v, want 5 requests", totals[1])
	}
}

// BenchmarkUsageCounter is what the ledger adds to a proxied request on
// the request path: a request finished, one read and one write counted.
func BenchmarkUsageCounter(b *testing.B) {
	u := new(UsageCounter)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			u.AddIn(100)
			u.AddOut(1000)
			u.finish(false, time.Millisecond)
		}
	})
}
