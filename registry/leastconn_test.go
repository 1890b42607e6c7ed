package registry

import (
	"testing"
	"time"
)

func TestLeastConnections(t *testing.T) {
	r := newTestRegistry(t, Options{})
	svc := serviceWith(t, r, 1, LeastConnections, 3)
	c := []*Container{svc.Container("c0"), svc.Container("c1"), svc.Container("c2")}
	load := func(loads ...int) {
		t.Helper()
		for i, n := range loads {
			for c[i].Stats.InFlight.Load() < int64(n) {
				c[i].Stats.Begin()
			}
			for c[i].Stats.InFlight.Load() > int64(n) {
				c[i].Stats.Finish(0, false, time.Millisecond)
			}
		}
	}

	t.Run("fewest in flight", func(t *testing.T) {
		for _, tt := range []struct {
			loads []int
			want  string
		}{
			{[]int{2, 1, 0}, "c2"},
			{[]int{0, 1, 2}, "c0"},
			{[]int{5, 0, 5}, "c1"},
			{[]int{9, 8, 10}, "c1"},
		} {
			load(tt.loads...)
			for i := 0; i < 6; i++ { // whatever the rotation
				if got := svc.Pick(nil).ContainerID; got != tt.want {
					t.Fatalf("loads %v: picked %s, want %s", tt.loads, got, tt.want)
				}
			}
		}
	})

	t.Run("follows Begin and End", func(t *testing.T) {
		load(0, 0, 0)
		// Each request stays in flight: the picks fill the containers evenly.
		for i := 0; i < 30; i++ {
			svc.Pick(nil).Stats.Begin()
			lo, hi := c[0].Stats.InFlight.Load(), c[0].Stats.InFlight.Load()
			for _, x := range c[1:] {
				n := x.Stats.InFlight.Load()
				lo, hi = min(lo, n), max(hi, n)
			}
			if hi-lo > 1 {
				t.Fatalf("after %d picks loads differ by %d", i+1, hi-lo)
			}
		}
		// Finishing c1's requests makes it the choice.
		load(10, 0, 10)
		if got := svc.Pick(nil); got != c[1] {
			t.Fatalf("picked %s, want c1", got.ContainerID)
		}
	})

	t.Run("ties rotate", func(t *testing.T) {
		load(3, 3, 3)
		var picks []string
		for i := 0; i < 30; i++ {
			picks = append(picks, svc.Pick(nil).ContainerID)
		}
		checkRotation(t, picks, 3)
	})

	t.Run("ties among the least loaded share", func(t *testing.T) {
		load(0, 4, 0)
		counts := map[string]int{}
		for i := 0; i < 30; i++ {
			counts[svc.Pick(nil).ContainerID]++
		}
		if counts["c1"] != 0 || counts["c0"] == 0 || counts["c2"] == 0 {
			t.Fatalf("picks with loads 0,4,0: %v", counts)
		}
	})

	t.Run("tried beats load", func(t *testing.T) {
		load(0, 5, 7)
		if got := svc.Pick([]*ContainerStats{c[0].Stats}); got != c[1] {
			t.Fatalf("picked %s, want c1: least loaded of the untried", got.ContainerID)
		}
		all := []*ContainerStats{c[0].Stats, c[1].Stats, c[2].Stats}
		if got := svc.Pick(all); got != c[0] {
			t.Fatalf("all tried: picked %s, want the least loaded c0", got.ContainerID)
		}
	})
	load(0, 0, 0)
}

// TestLeastConnectionsPartialTies: with loads (0, 4, 0) the two idle
// containers share the picks exactly, whatever the busy one's position.
func TestLeastConnectionsPartialTies(t *testing.T) {
	r := newTestRegistry(t, Options{})
	svc := serviceWith(t, r, 1, LeastConnections, 3)
	for i := 0; i < 4; i++ {
		svc.Containers[1].Stats.Begin()
	}
	got := map[string]int{}
	for i := 0; i < 10; i++ {
		got[svc.Pick(nil).ContainerID]++
	}
	if got["c0"] != 5 || got["c2"] != 5 || got["c1"] != 0 {
		t.Fatalf("picks %v, want c0 and c2 five times each", got)
	}
}

func TestLeastConnectionsWeighted(t *testing.T) {
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, LeastConnections, ServiceOptions{}, wz("w2", 2, ""), wz("w1", 1, ""))
	w2, w1 := svc.Container("w2"), svc.Container("w1")
	for _, tt := range []struct {
		l2, l1 int64
		want   string // "" for a tie: both, alternating
	}{
		{0, 0, ""},
		{1, 0, "w1"}, // 1/2 > 0/1
		{1, 1, "w2"}, // 1/2 < 1/1
		{2, 1, ""},   // 2/2 = 1/1
		{3, 1, "w1"}, // 3/2 > 1/1
		{3, 2, "w2"}, // 3/2 < 2/1
		{4, 2, ""},
		{9, 4, "w1"}, // 4.5 > 4
	} {
		setInFlight(w2, tt.l2)
		setInFlight(w1, tt.l1)
		got := countPicks(t, r, &PickRequest{}, 10)
		switch {
		case tt.want == "" && (got["w2"] != 5 || got["w1"] != 5):
			t.Errorf("in flight w2=%d w1=%d: picks %v, want a tie rotating 5 and 5", tt.l2, tt.l1, got)
		case tt.want != "" && got[tt.want] != 10:
			t.Errorf("in flight w2=%d w1=%d: picks %v, want all %s", tt.l2, tt.l1, got, tt.want)
		}
	}

	// Requests that stay in flight fill the containers 2:1.
	setInFlight(w2, 0)
	setInFlight(w1, 0)
	for range 30 {
		r.Lookup(1).ChooseContainer(&PickRequest{}).Stats.Begin()
	}
	if a, b := w2.Stats.InFlight.Load(), w1.Stats.InFlight.Load(); a != 20 || b != 10 {
		t.Fatalf("after 30 picks kept in flight: w2=%d w1=%d, want 20 and 10", a, b)
	}
	setInFlight(w2, 0)
	setInFlight(w1, 0)
}
