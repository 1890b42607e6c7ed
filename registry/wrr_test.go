package registry

import (
	"strings"
	"testing"
)

func TestSmoothWeightedRoundRobinSequence(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerTraffic(t, r, WeightedRoundRobin, ServiceOptions{},
		wz("a", 5, ""), wz("zero", 0, ""), wz("b", 1, ""), wz("c", 1, ""))
	var picks strings.Builder
	for range 14 {
		picks.WriteString(r.Lookup(1).ChooseContainer(&PickRequest{}).ContainerID)
	}
	if got, want := picks.String(), "aabacaaaabacaa"; got != want {
		t.Fatalf("14 picks with weights a=5 b=1 c=1 = %s, want %s", got, want)
	}
}

func TestSmoothWeightedRoundRobinWeightZero(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerTraffic(t, r, WeightedRoundRobin, ServiceOptions{}, wz("a", 2, ""), wz("zero", 0, ""), wz("c", 1, ""))
	got := countPicks(t, r, &PickRequest{}, 300)
	if got["zero"] != 0 || got["a"] != 200 || got["c"] != 100 {
		t.Fatalf("picks %v, want a 200, c 100 and never zero", got)
	}
	// A container patched to weight 0 stops being picked at once.
	zero := 0
	if _, err := r.PatchContainer(1, "a", ContainerPatch{Weight: &zero}); err != nil {
		t.Fatal(err)
	}
	if got := countPicks(t, r, &PickRequest{}, 50); got["c"] != 50 {
		t.Fatalf("after a's weight went to 0: picks %v, want only c", got)
	}
}

func TestSmoothWeightedRoundRobinAvoidsTried(t *testing.T) {
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, WeightedRoundRobin, ServiceOptions{}, wz("a", 5, ""), wz("b", 1, ""), wz("c", 1, ""))
	a, b, c := svc.Container("a"), svc.Container("b"), svc.Container("c")

	got := countPicks(t, r, &PickRequest{Tried: []*ContainerStats{a.Stats}}, 60)
	if got["a"] != 0 || got["b"] != 30 || got["c"] != 30 {
		t.Fatalf("with a tried: picks %v, want b and c 30 each", got)
	}
	got = countPicks(t, r, &PickRequest{Tried: []*ContainerStats{a.Stats, c.Stats}}, 20)
	if got["b"] != 20 {
		t.Fatalf("with a and c tried: picks %v, want only b", got)
	}
	got = countPicks(t, r, &PickRequest{Tried: []*ContainerStats{a.Stats, b.Stats, c.Stats}}, 70)
	if got[""] != 0 || got["a"] != 50 {
		t.Fatalf("with everything tried: picks %v, want the plain weighted rotation (a 50 of 70)", got)
	}
}
