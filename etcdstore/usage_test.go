package etcdstore

import (
	"context"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/registry"
)

// TestUsageOnEtcd: two nodes write their own usage buckets of the same
// minutes; a range read returns both nodes' buckets that start in it, the
// totals are each node's, and a compaction deletes only the node's own old
// buckets.
func TestUsageOnEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := open(t, c.Endpoints(), nil), open(t, c.Endpoints(), nil)
	ctx := context.Background()
	m0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	bucket := func(i int, images map[int64]registry.Usage) registry.UsageBucket {
		return registry.UsageBucket{Start: m0.Add(time.Duration(i) * time.Minute), Images: images}
	}
	u := func(n int64) registry.Usage { return registry.Usage{Requests: n, BytesOut: 10 * n} }
	if err := a.CommitUsage(ctx, "a", []registry.UsageBucket{bucket(0, map[int64]registry.Usage{1: u(5)}), bucket(1, map[int64]registry.Usage{1: u(7)})},
		map[int64]registry.Usage{1: u(12)}); err != nil {
		t.Fatal(err)
	}
	if err := b.CommitUsage(ctx, "b", []registry.UsageBucket{bucket(1, map[int64]registry.Usage{1: u(3), 2: u(1)})},
		map[int64]registry.Usage{1: u(3), 2: u(1)}); err != nil {
		t.Fatal(err)
	}
	// Node a rewrites its minute 1 as a whole (a later flush of the same minute).
	if err := a.CommitUsage(ctx, "a", []registry.UsageBucket{bucket(1, map[int64]registry.Usage{1: u(9)})}, map[int64]registry.Usage{1: u(14)}); err != nil {
		t.Fatal(err)
	}
	got, err := b.LoadUsage(ctx, m0.Add(time.Minute), m0.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	sum := map[int64]int64{}
	nodes := map[string]bool{}
	for _, bk := range got {
		nodes[bk.Node] = true
		if !bk.Start.Equal(m0.Add(time.Minute)) {
			t.Fatalf("bucket at %s outside the range", bk.Start)
		}
		for id, v := range bk.Images {
			sum[id] += v.Requests
		}
	}
	if len(got) != 2 || !nodes["a"] || !nodes["b"] || sum[1] != 12 || sum[2] != 1 {
		t.Fatalf("minute 1: %+v; want a's 9 and b's 3 of image 1, b's 1 of image 2", got)
	}
	for node, want := range map[string]int64{"a": 14, "b": 3} {
		tot, err := a.LoadUsageTotals(ctx, node)
		if err != nil || tot[1].Requests != want {
			t.Fatalf("totals of %s: %+v %v, want %d", node, tot, err, want)
		}
	}
	if tot, err := a.LoadUsageTotals(ctx, "nobody"); err != nil || tot != nil {
		t.Fatalf("totals of an unknown node: %+v %v", tot, err)
	}
	if err := a.CompactUsage(ctx, "a", m0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	left, err := a.LoadUsage(ctx, m0, m0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].Node != "b" {
		t.Fatalf("after a's compaction: %+v, want only b's bucket", left)
	}
	c.StopAll()
	if _, err := a.LoadUsage(ctx, m0, m0.Add(time.Hour)); err == nil {
		t.Fatal("a usage read with etcd down succeeded")
	}
}
