package registry

import (
	"testing"
)

func TestPowerOfTwo(t *testing.T) {
	t.Run("fewer in flight wins", func(t *testing.T) {
		seedRandom(t, 2)
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, PowerOfTwo, ServiceOptions{}, wz("busy", 1, ""), wz("idle", 1, ""))
		setInFlight(svc.Container("busy"), 3)
		if got := countPicks(t, r, &PickRequest{}, 1000); got["idle"] != 1000 {
			t.Fatalf("two containers, busy has 3 in flight: picks %v, want all idle", got)
		}
	})
	t.Run("busiest of three never wins", func(t *testing.T) {
		seedRandom(t, 3)
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, PowerOfTwo, ServiceOptions{}, wz("c0", 1, ""), wz("c1", 1, ""), wz("c2", 1, ""))
		setInFlight(svc.Container("c0"), 5)
		const n = 30_000
		got := countPicks(t, r, &PickRequest{}, n)
		if got["c0"] != 0 {
			t.Fatalf("picks %v: c0 with 5 in flight loses every comparison", got)
		}
		checkShare(t, "c1", got["c1"], n, 0.5, 0.02)
		checkShare(t, "c2", got["c2"], n, 0.5, 0.02)
	})
	t.Run("equal loads split evenly", func(t *testing.T) {
		seedRandom(t, 4)
		r := newTestRegistry(t, Options{})
		registerTraffic(t, r, PowerOfTwo, ServiceOptions{}, wz("c0", 1, ""), wz("c1", 1, ""), wz("c2", 1, ""))
		const n = 30_000
		got := countPicks(t, r, &PickRequest{}, n)
		for _, id := range []string{"c0", "c1", "c2"} {
			checkShare(t, id, got[id], n, 1.0/3, 0.02)
		}
	})
	t.Run("load per weight", func(t *testing.T) {
		// (in flight + 1) / weight: 3 in flight on weight 4 costs 1, less
		// than 1 in flight on weight 1 (cost 2).
		seedRandom(t, 5)
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, PowerOfTwo, ServiceOptions{}, wz("big", 4, ""), wz("small", 1, ""))
		setInFlight(svc.Container("big"), 3)
		setInFlight(svc.Container("small"), 1)
		if got := countPicks(t, r, &PickRequest{}, 100); got["big"] != 100 {
			t.Fatalf("picks %v, want all big", got)
		}
	})
}
