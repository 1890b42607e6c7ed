package registry

import (
	"testing"
)

func TestRandomWeightedShare(t *testing.T) {
	seedRandom(t, 1)
	r := newTestRegistry(t, Options{})
	registerTraffic(t, r, Random, ServiceOptions{}, wz("heavy", 3, ""), wz("light", 1, ""), wz("zero", 0, ""))
	const n = 40_000
	got := countPicks(t, r, &PickRequest{}, n)
	checkShare(t, "heavy (weight 3 of 4)", got["heavy"], n, 0.75, 0.02)
	checkShare(t, "light (weight 1 of 4)", got["light"], n, 0.25, 0.02)
	if got["zero"] != 0 || got[""] != 0 {
		t.Fatalf("picks %v", got)
	}
}
