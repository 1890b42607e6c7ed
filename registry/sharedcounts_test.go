package registry

import (
	"context"
	"testing"
	"time"
)

func nc(node, series string, requests, failed int64) NodeCounts {
	return NodeCounts{Node: node, Series: series, ImageCounts: ImageCounts{Requests: requests, Failed: failed, Latency: []uint64{uint64(requests)}}}
}

// TestCountsTracker: the readings of a step, one row each, and what the
// tracker of node "self" adds up after each.
func TestCountsTracker(t *testing.T) {
	tests := []struct {
		name     string
		readings [][]NodeCounts
		want     []int64 // requests after each reading
	}{
		{"the first reading is the baseline", [][]NodeCounts{{nc("a", "1", 100, 0)}, {nc("a", "1", 130, 0)}}, []int64{0, 30}},
		{"its own counts are left out", [][]NodeCounts{{nc("self", "1", 0, 0), nc("a", "1", 5, 0)}, {nc("self", "1", 50, 0), nc("a", "1", 6, 0)}}, []int64{0, 1}},
		{"a node first seen after the baseline: all of its series", [][]NodeCounts{{nc("a", "1", 10, 0)}, {nc("a", "1", 10, 0), nc("b", "1", 4, 0)}}, []int64{0, 4}},
		{"a node gone keeps what it added", [][]NodeCounts{{nc("a", "1", 10, 0)}, {nc("a", "1", 15, 0)}, {}}, []int64{0, 5, 5}},
		{"a gone node back in the same series: from where it was", [][]NodeCounts{{nc("a", "1", 10, 0)}, {}, {nc("a", "1", 12, 0)}}, []int64{0, 0, 2}},
		{"a restart: a new series, all of it", [][]NodeCounts{{nc("a", "1", 10, 0)}, {nc("a", "1", 20, 0)}, {nc("a", "2", 3, 0)}, {nc("a", "2", 5, 0)}}, []int64{0, 10, 13, 15}},
		{"an older reading adds nothing", [][]NodeCounts{{nc("a", "1", 10, 0)}, {nc("a", "1", 20, 0)}, {nc("a", "1", 15, 0)}, {nc("a", "1", 21, 0)}}, []int64{0, 10, 10, 11}},
		{"a replaced series read late adds nothing", [][]NodeCounts{{nc("a", "1", 10, 0)}, {nc("a", "2", 3, 0)}, {nc("a", "1", 40, 0)}, {nc("a", "2", 4, 0)}}, []int64{0, 3, 3, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := NewCountsTracker("self")
			for i, rs := range tt.readings {
				got := tr.Observe(rs)
				if got.Requests != tt.want[i] || got.Latency == nil && got.Requests != 0 {
					t.Fatalf("after reading %d: %+v, want %d requests", i, got, tt.want[i])
				}
				if got.Requests > 0 && got.Latency[0] != uint64(got.Requests) {
					t.Fatalf("after reading %d: latency %v, want %d in the first bucket", i, got.Latency, got.Requests)
				}
			}
		})
	}
}

func TestImageCountsArithmetic(t *testing.T) {
	a := ImageCounts{Requests: 5, Failed: 1, Latency: []uint64{1, 0, 4}}
	b := ImageCounts{Requests: 2, Failed: 1, Latency: []uint64{1, 1}}
	if got := a.Add(b); got.Requests != 7 || got.Failed != 2 || len(got.Latency) != 3 || got.Latency[1] != 1 || got.Latency[2] != 4 {
		t.Fatalf("a+b = %+v", got)
	}
	if _, ok := a.Sub(b); ok {
		t.Fatal("a-b took a bucket below zero")
	}
	d, ok := a.Add(b).Sub(b)
	if !ok || d.Requests != 5 || d.Failed != 1 || len(d.Latency) != 3 || d.Latency[0] != 1 || d.Latency[1] != 0 {
		t.Fatalf("(a+b)-b = %+v %v", d, ok)
	}
	if _, ok := b.Sub(a); ok {
		t.Fatal("b-a went below zero")
	}
	if z, ok := a.Sub(a); !ok || z.Requests != 0 || z.Latency != nil {
		t.Fatalf("a-a = %+v %v, want zero with no buckets", z, ok)
	}
	if _, ok := (ImageCounts{}).Quantile(0.99); ok {
		t.Fatal("the p99 of nothing")
	}
}

// TestImageCountsOfARegistry: a registry's counts of an image are its
// finished requests, 5xx and no answer failing, with their latencies; the
// local store shares nothing.
func TestImageCountsOfARegistry(t *testing.T) {
	r := newTestRegistry(t, Options{})
	st := mustRegister(t, r, svcSpec(1, ctr("c", 9000))).State
	for _, status := range []int{200, 404, 500, 503, 0} {
		st.Begin()
		st.Finish(status, status != 200 && status != 404, time.Duration(status+1)*time.Millisecond)
	}
	st.Begin() // still in flight: not counted
	got := r.ImageCounts(1)
	if got.Requests != 5 || got.Failed != 3 {
		t.Fatalf("counts %+v, want 5 finished requests and 3 failed", got)
	}
	if p99, _ := got.Quantile(0.99); p99 < 504 || p99 > 650 {
		t.Fatalf("p99 %v ms, want the bucket of 504 ms", p99)
	}
	if c := r.ImageCounts(2); c.Requests != 0 || c.Latency != nil {
		t.Fatalf("an unknown image's counts: %+v", c)
	}
	sc := SharedCountsOf(nil)
	if rs, err := sc.LoadCounts(context.Background(), 1); rs != nil || err != nil {
		t.Fatalf("the local store's shared counts: %+v %v", rs, err)
	}
	if err := NewCountsPublisher(r, sc, "n", func() []int64 { return []int64{1} }).Publish(context.Background()); err != nil {
		t.Fatal(err)
	}
}
