package registry

import (
	"context"
	"testing"
)

func nc(node, series string, requests, failed int64) NodeCounts {
	c := NodeCounts{Node: node, Series: series, StepCounts: StepCounts{Requests: uint64(requests), Errors: uint64(failed)}}
	c.Latency[0] = uint64(requests)
	return c
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
				if got.Requests != uint64(tt.want[i]) {
					t.Fatalf("after reading %d: %+v, want %d requests", i, got, tt.want[i])
				}
				if got.Latency[0] != got.Requests {
					t.Fatalf("after reading %d: latency %v, want %d in the first bucket", i, got.Latency, got.Requests)
				}
			}
		})
	}
}

// TestNoSharedCounts: the store of one node shares nothing, and a
// publisher on it does nothing.
func TestNoSharedCounts(t *testing.T) {
	r := newTestRegistry(t, Options{})
	mustRegister(t, r, svcSpec(1, ctr("c", 9000)))
	sc := SharedCountsOf(nil)
	if rs, err := sc.LoadCounts(context.Background(), 1); rs != nil || err != nil {
		t.Fatalf("the local store's shared counts: %+v %v", rs, err)
	}
	if err := NewCountsPublisher(r, sc, "n", func() []int64 { return []int64{1} }).Publish(context.Background()); err != nil {
		t.Fatal(err)
	}
}
