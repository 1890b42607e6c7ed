package registry

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// trafficClock is a fake registry clock that moves only when told to.
type trafficClock struct{ ns atomic.Int64 }

// useTrafficClock replaces the registry's clock with a fake one for the
// rest of the test.
func useTrafficClock(t testing.TB) *trafficClock {
	t.Helper()
	c := new(trafficClock)
	c.ns.Store(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	prev := now
	now = c.Now
	t.Cleanup(func() { now = prev })
	return c
}

func (c *trafficClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *trafficClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// seedRandom makes the balancers' random source deterministic for the rest
// of the test. The seeded source is not safe for concurrent use: tests that
// use it pick from one goroutine.
func seedRandom(t testing.TB, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	prev := randUint64
	randUint64 = rng.Uint64
	t.Cleanup(func() { randUint64 = prev })
}

// wz is a healthy container with a weight and a zone.
func wz(id string, weight int, zone string) ContainerSpec {
	c := ctr(id, 9000)
	c.Weight, c.Zone = weight, zone
	return c
}

// registerTraffic registers image 1 with an algorithm, options and
// containers, and returns the new version.
func registerTraffic(t testing.TB, r *Registry, alg Algorithm, opts ServiceOptions, cs ...ContainerSpec) *Service {
	t.Helper()
	spec := svcSpec(1, cs...)
	spec.Algorithm, spec.Options = alg, opts
	return mustRegister(t, r, spec)
}

// countPicks makes n picks for req on the current version of image 1 and
// counts them by container_id ("" for no pick).
func countPicks(t testing.TB, r *Registry, req *PickRequest, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for range n {
		id := ""
		if c := r.Lookup(1).ChooseContainer(req); c != nil {
			id = c.ContainerID
		}
		counts[id]++
	}
	return counts
}

// checkShare asserts that got of n picks is within tol of the share want.
func checkShare(t testing.TB, what string, got, n int, want, tol float64) {
	t.Helper()
	if share := float64(got) / float64(n); math.Abs(share-want) > tol {
		t.Errorf("%s: %d of %d picks = %.4f, want %.4f ± %.4f", what, got, n, share, want, tol)
	}
}

func setInFlight(c *Container, n int64) {
	for c.Stats.InFlight.Load() < n {
		c.Stats.Begin()
	}
	for c.Stats.InFlight.Load() > n {
		c.Stats.Finish(200, false, time.Millisecond)
	}
}

// --- exact sequences ---

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

// --- distributions ---

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

func TestLeastLatencyPrefersFast(t *testing.T) {
	useTrafficClock(t)
	seedRandom(t, 6)
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, LeastLatency, ServiceOptions{}, wz("fast", 1, ""), wz("slow1", 1, ""), wz("slow2", 1, ""))
	for range 5 {
		svc.Observe(svc.Container("fast"), false, 10*time.Millisecond)
		svc.Observe(svc.Container("slow1"), false, 50*time.Millisecond)
		svc.Observe(svc.Container("slow2"), false, 50*time.Millisecond)
	}
	if got := svc.Container("fast").Stats.PeakLatency(); got != 10*time.Millisecond {
		t.Fatalf("fast PeakLatency = %v, want 10ms", got)
	}
	const n = 30_000
	got := countPicks(t, r, &PickRequest{}, n)
	// P2C over three: fast wins whenever it is one of the two drawn (2/3).
	checkShare(t, "fast", got["fast"], n, 2.0/3, 0.02)
	checkShare(t, "slow1", got["slow1"], n, 1.0/6, 0.02)
	checkShare(t, "slow2", got["slow2"], n, 1.0/6, 0.02)

	// Requests in flight count too: 10ms × (9+1) costs more than 50ms × 1.
	setInFlight(svc.Container("fast"), 9)
	if got := countPicks(t, r, &PickRequest{}, 1000); got["fast"] != 0 {
		t.Fatalf("fast with 9 in flight: picks %v, want none on fast", got)
	}
	setInFlight(svc.Container("fast"), 0)
}

func TestPeakEWMA(t *testing.T) {
	clock := useTrafficClock(t)
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, LeastLatency, ServiceOptions{}, wz("c0", 1, ""))
	c := svc.Container("c0")
	svc.Observe(c, false, 10*time.Millisecond)
	svc.Observe(c, false, 50*time.Millisecond)
	if got := c.Stats.PeakLatency(); got != 50*time.Millisecond {
		t.Fatalf("after a slower response PeakLatency = %v, want the peak 50ms at once", got)
	}
	// One time constant (10s) later a 10ms response pulls the average
	// 1-1/e of the way down: 50·e⁻¹ + 10·(1-e⁻¹) ≈ 24.72ms.
	clock.Advance(10 * time.Second)
	svc.Observe(c, false, 10*time.Millisecond)
	want := 50*math.Exp(-1) + 10*(1-math.Exp(-1))
	if got := float64(c.Stats.PeakLatency()) / float64(time.Millisecond); math.Abs(got-want) > 0.01 {
		t.Fatalf("after decay PeakLatency = %.3fms, want %.3fms", got, want)
	}
	// A failure never lowers the average; a slow failure raises it.
	before := c.Stats.PeakLatency()
	svc.Observe(c, true, time.Millisecond)
	if got := c.Stats.PeakLatency(); got != before {
		t.Fatalf("a fast failure moved PeakLatency from %v to %v", before, got)
	}
	svc.Observe(c, true, time.Second)
	if got := c.Stats.PeakLatency(); got != time.Second {
		t.Fatalf("a slow failure: PeakLatency = %v, want 1s", got)
	}
	// Without responses it decays toward 0, one time constant by 1/e.
	clock.Advance(10 * time.Second)
	if got, want := c.Stats.PeakLatency(), time.Duration(float64(time.Second)*math.Exp(-1)); got < want-time.Microsecond || got > want+time.Microsecond {
		t.Fatalf("10s without a response: PeakLatency = %v, want %v", got, want)
	}

	// Other algorithms keep no latency average.
	other := serviceWith(t, r, 2, RoundRobin, 1)
	other.Observe(other.Available()[0], false, 10*time.Millisecond)
	if got := other.Available()[0].Stats.PeakLatency(); got != 0 {
		t.Fatalf("round_robin service: PeakLatency = %v, want 0", got)
	}
}

// TestLeastLatencyUnansweredContainerCountsInFlight: a container that has
// not answered yet (no latency observed) must not win every comparison
// whatever its requests in flight: with a cost of 0 × (in flight+1), a new
// container that hangs would take every request it is drawn for until its
// first response.
func TestLeastLatencyUnansweredContainerCountsInFlight(t *testing.T) {
	useTrafficClock(t)
	seedRandom(t, 7)
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, LeastLatency, ServiceOptions{}, wz("known", 1, ""), wz("hung", 1, ""))
	svc.Observe(svc.Container("known"), false, 10*time.Millisecond)
	setInFlight(svc.Container("hung"), 20) // 20 requests sent, none answered
	got := countPicks(t, r, &PickRequest{}, 100)
	if got["hung"] > 50 {
		t.Errorf("picks %v: the container with 20 unanswered requests in flight took most of the traffic", got)
	}
	setInFlight(svc.Container("hung"), 0)
}

// TestLeastLatencyPeakDecaysWithoutTraffic: one slow response must not
// shut a container out for good. A container that loses every comparison
// gets no request, so no new response would ever pull its average down;
// as in Finagle and linkerd the average decays when it is read (toward 0,
// so an idle container is tried again).
func TestLeastLatencyPeakDecaysWithoutTraffic(t *testing.T) {
	clock := useTrafficClock(t)
	seedRandom(t, 12)
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, LeastLatency, ServiceOptions{}, wz("steady", 1, ""), wz("spiked", 1, ""))
	svc.Observe(svc.Container("steady"), false, 10*time.Millisecond)
	svc.Observe(svc.Container("spiked"), false, 10*time.Millisecond)
	svc.Observe(svc.Container("spiked"), false, 500*time.Millisecond) // one slow response
	if got := countPicks(t, r, &PickRequest{}, 100); got["spiked"] != 0 {
		t.Fatalf("right after the spike: picks %v, want all on steady", got)
	}
	clock.Advance(5 * time.Minute) // steady keeps answering in 10ms meanwhile
	svc.Observe(svc.Container("steady"), false, 10*time.Millisecond)
	if got := countPicks(t, r, &PickRequest{}, 100); got["spiked"] == 0 {
		t.Errorf("5 minutes after a single slow response: picks %v, the spiked container is still shut out", got)
	}
}

// TestLeastLatencyFailureAfterIdleDoesNotLookFaster: "a failure only ever
// raises" the average, so after an idle spell a failed response must not
// leave a container looking faster than the same response as a success.
// FAILS since the average decays when read: observeLatency still compares
// a failure with the stored (undecayed) value and drops it when it is
// below, so the container keeps the decayed ~0 and wins every comparison
// while it fails.
func TestLeastLatencyFailureAfterIdleDoesNotLookFaster(t *testing.T) {
	clock := useTrafficClock(t)
	seedRandom(t, 13)
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, LeastLatency, ServiceOptions{}, wz("ok", 1, ""), wz("failing", 1, ""))
	ok, failing := svc.Container("ok"), svc.Container("failing")
	svc.Observe(ok, false, 50*time.Millisecond)
	svc.Observe(failing, false, 50*time.Millisecond)
	clock.Advance(5 * time.Minute)
	svc.Observe(ok, false, 20*time.Millisecond)
	svc.Observe(failing, true, 30*time.Millisecond)
	if got := failing.Stats.PeakLatency(); got < 30*time.Millisecond {
		t.Errorf("after a failure in 30ms: PeakLatency %v, want at least 30ms (ok answered in 20ms: %v)", got, ok.Stats.PeakLatency())
	}
	// so the container answering in 20ms is preferred to the one failing in 30ms
	if got := countPicks(t, r, &PickRequest{}, 20); got["failing"] != 0 {
		t.Errorf("picks %v: the container failing in 30ms beat the one answering in 20ms", got)
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

// --- hashing ---

func hashKeys(alg Algorithm, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		if alg == IPHash {
			keys[i] = fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		} else {
			keys[i] = fmt.Sprintf("user-%d", i)
		}
	}
	return keys
}

// assign maps every key to the container image 1 chooses for it.
func assign(t *testing.T, r *Registry, keys []string) map[string]string {
	t.Helper()
	out := make(map[string]string, len(keys))
	svc := r.Lookup(1)
	for _, k := range keys {
		c := svc.ChooseContainer(&PickRequest{Key: k})
		if c == nil {
			t.Fatalf("key %q: nothing picked", k)
		}
		out[k] = c.ContainerID
	}
	return out
}

func TestHashing(t *testing.T) {
	containers := func(n int) []ContainerSpec {
		var cs []ContainerSpec
		for i := range n {
			cs = append(cs, wz(fmt.Sprintf("c%d", i), 1, ""))
		}
		return cs
	}
	for _, alg := range []Algorithm{IPHash, ConsistentHash} {
		t.Run(string(alg), func(t *testing.T) {
			const n = 10_000
			keys := hashKeys(alg, n)
			r := newTestRegistry(t, Options{})
			registerTraffic(t, r, alg, ServiceOptions{}, containers(4)...)
			before := assign(t, r, keys)

			t.Run("same key same container", func(t *testing.T) {
				for _, k := range keys[:200] {
					for range 3 {
						if got := r.Lookup(1).ChooseContainer(&PickRequest{Key: k}).ContainerID; got != before[k] {
							t.Fatalf("key %q: %s, earlier %s", k, got, before[k])
						}
					}
				}
				// Stable across registries and registration order: the
				// score depends on the key and the container_id only.
				other := newTestRegistry(t, Options{})
				cs := containers(4)
				slices.Reverse(cs)
				registerTraffic(t, other, alg, ServiceOptions{}, cs...)
				if got := assign(t, other, keys); !mapsEqual(got, before) {
					t.Fatal("another registry with the containers in another order maps keys differently")
				}
			})

			t.Run("spread", func(t *testing.T) {
				counts := map[string]int{}
				for _, id := range before {
					counts[id]++
				}
				for i := range 4 {
					id := fmt.Sprintf("c%d", i)
					if share := float64(counts[id]) / n; share < 0.20 || share > 0.30 {
						t.Errorf("%s has %.3f of the keys, want 0.20-0.30 (%v)", id, share, counts)
					}
				}
			})

			t.Run("adding a container moves only keys to it", func(t *testing.T) {
				registerTraffic(t, r, alg, ServiceOptions{}, containers(5)...)
				after := assign(t, r, keys)
				moved := 0
				for k, was := range before {
					if after[k] != was {
						moved++
						if after[k] != "c4" {
							t.Fatalf("key %q moved from %s to %s, not to the new c4", k, was, after[k])
						}
					}
				}
				if share := float64(moved) / n; share < 0.15 || share > 0.25 {
					t.Errorf("adding a 5th container moved %.3f of the keys, want 0.15-0.25", share)
				}
				// Going back restores the mapping exactly.
				registerTraffic(t, r, alg, ServiceOptions{}, containers(4)...)
				if got := assign(t, r, keys); !mapsEqual(got, before) {
					t.Fatal("removing c4 again did not restore the mapping")
				}
			})

			t.Run("removing a container moves only its keys", func(t *testing.T) {
				if _, err := r.RemoveContainer(1, "c1"); err != nil {
					t.Fatal(err)
				}
				after := assign(t, r, keys)
				for k, was := range before {
					if was == "c1" && after[k] == "c1" || was != "c1" && after[k] != was {
						t.Fatalf("key %q: %s before removing c1, %s after", k, was, after[k])
					}
				}
				// An unavailable container (unhealthy) behaves the same.
				registerTraffic(t, r, alg, ServiceOptions{}, containers(4)...)
				down := StatusUnhealthy
				if _, err := r.PatchContainer(1, "c1", ContainerPatch{Status: &down}); err != nil {
					t.Fatal(err)
				}
				if got := assign(t, r, keys); !mapsEqual(got, after) {
					t.Fatal("c1 unhealthy maps keys differently from c1 removed")
				}
				registerTraffic(t, r, alg, ServiceOptions{}, containers(4)...)
			})

			t.Run("tried goes to the next choice", func(t *testing.T) {
				svc := r.Lookup(1)
				for _, k := range keys[:100] {
					first := svc.Container(before[k])
					second := svc.ChooseContainer(&PickRequest{Key: k, Tried: []*ContainerStats{first.Stats}})
					if second == nil || second == first {
						t.Fatalf("key %q: retry picked %v after %s", k, second, first.ContainerID)
					}
					if again := svc.ChooseContainer(&PickRequest{Key: k, Tried: []*ContainerStats{first.Stats}}); again != second {
						t.Fatalf("key %q: the retry choice is not stable", k)
					}
				}
			})

			t.Run("empty key rotates", func(t *testing.T) {
				var picks []string
				for range 40 {
					picks = append(picks, r.Lookup(1).ChooseContainer(&PickRequest{}).ContainerID)
				}
				checkRotation(t, picks, 4)
			})
		})
	}
}

func TestHashingIsWeighted(t *testing.T) {
	r := newTestRegistry(t, Options{})
	registerTraffic(t, r, ConsistentHash, ServiceOptions{}, wz("heavy", 3, ""), wz("light", 1, ""))
	const n = 10_000
	counts := map[string]int{}
	for _, id := range assign(t, r, hashKeys(ConsistentHash, n)) {
		counts[id]++
	}
	checkShare(t, "heavy (weight 3 of 4)", counts["heavy"], n, 0.75, 0.02)
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// --- sticky pin ---

func TestPinned(t *testing.T) {
	cs := []ContainerSpec{wz("c0", 1, "a"), wz("c1", 1, "a"), wz("c2", 1, "b")}
	notPinned := func(t *testing.T, r *Registry, req *PickRequest) {
		t.Helper()
		var picks []string
		for range 30 {
			c := r.Lookup(1).ChooseContainer(req)
			if c == nil || c.ContainerID == "c2" {
				t.Fatalf("picked %v although the pinned c2 cannot take the request", c)
			}
			picks = append(picks, c.ContainerID)
		}
		// the algorithm (round robin) decides: an exact rotation when c2 is
		// out of the available set, else both of the others
		if r.Lookup(1).Container("c2").Available() {
			if !slices.Contains(picks, "c0") || !slices.Contains(picks, "c1") {
				t.Fatalf("picks %v, want both c0 and c1", picks)
			}
			return
		}
		checkRotation(t, picks, 2)
	}

	t.Run("available", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		registerTraffic(t, r, RoundRobin, ServiceOptions{}, cs...)
		// The pin beats the algorithm and the client's zone.
		if got := countPicks(t, r, &PickRequest{Pinned: "c2", Zone: "a"}, 20); got["c2"] != 20 {
			t.Fatalf("picks %v, want all on the pinned c2", got)
		}
	})
	t.Run("unknown pin", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		registerTraffic(t, r, RoundRobin, ServiceOptions{}, cs...)
		var picks []string
		for range 30 {
			picks = append(picks, r.Lookup(1).ChooseContainer(&PickRequest{Pinned: "gone"}).ContainerID)
		}
		checkRotation(t, picks, 3)
	})
	for _, tt := range []struct {
		name  string
		patch ContainerPatch
	}{
		{"draining", ContainerPatch{Status: statusPtr(StatusDraining)}},
		{"unhealthy", ContainerPatch{Status: statusPtr(StatusUnhealthy)}},
		{"weight 0", ContainerPatch{Weight: intPtr(0)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			registerTraffic(t, r, RoundRobin, ServiceOptions{}, cs...)
			if _, err := r.PatchContainer(1, "c2", tt.patch); err != nil {
				t.Fatal(err)
			}
			notPinned(t, r, &PickRequest{Pinned: "c2"})
		})
	}
	t.Run("ejected", func(t *testing.T) {
		useTrafficClock(t)
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, ServiceOptions{Outlier: &Outlier{ConsecutiveFailures: 1}}, cs...)
		svc.Observe(svc.Container("c2"), true, time.Millisecond)
		if !svc.Container("c2").Stats.Ejected() {
			t.Fatal("c2 not ejected")
		}
		notPinned(t, r, &PickRequest{Pinned: "c2"})
	})
	t.Run("tried", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, ServiceOptions{}, cs...)
		notPinned(t, r, &PickRequest{Pinned: "c2", Tried: []*ContainerStats{svc.Container("c2").Stats}})
	})
}

// --- zones ---

func TestZonePreference(t *testing.T) {
	healthy := func(id, zone string) ContainerSpec { return wz(id, 1, zone) }
	down := func(id, zone string) ContainerSpec {
		c := wz(id, 1, zone)
		c.Status = StatusUnhealthy
		return c
	}
	zoneOf := func(id string) string { return id[:1] }

	t.Run("local zone fully available", func(t *testing.T) {
		seedRandom(t, 8)
		r := newTestRegistry(t, Options{})
		registerTraffic(t, r, RoundRobin, ServiceOptions{},
			healthy("a1", "a"), healthy("b1", "b"), healthy("a2", "a"), healthy("b2", "b"), healthy("a3", "a"), healthy("b3", "b"))
		got := countPicks(t, r, &PickRequest{Zone: "a"}, 300)
		if got["a1"] != 100 || got["a2"] != 100 || got["a3"] != 100 {
			t.Fatalf("picks %v, want every pick in zone a, shared evenly", got)
		}
	})
	t.Run("local zone partly available spills over", func(t *testing.T) {
		seedRandom(t, 9)
		r := newTestRegistry(t, Options{})
		registerTraffic(t, r, RoundRobin, ServiceOptions{},
			healthy("a1", "a"), down("a2", "a"), down("a3", "a"), healthy("b1", "b"), healthy("b2", "b"), healthy("c1", "c"))
		const n = 20_000
		got := countPicks(t, r, &PickRequest{Zone: "a"}, n)
		// At least the overprovisioned share 1.4 × 1/3 stays local; the
		// rest reaches the other zones.
		if share := float64(got["a1"]) / n; share < 1.4/3-0.05 {
			t.Errorf("local share %.3f, want at least %.3f", share, 1.4/3-0.05)
		}
		if got["b1"] == 0 || got["b2"] == 0 || got["c1"] == 0 || got[""] != 0 {
			t.Errorf("picks %v: the spill-over must reach the other zones", got)
		}
	})
	t.Run("local zone down", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		registerTraffic(t, r, RoundRobin, ServiceOptions{},
			down("a1", "a"), down("a2", "a"), healthy("b1", "b"), healthy("b2", "b"))
		got := countPicks(t, r, &PickRequest{Zone: "a"}, 100)
		if got["b1"] != 50 || got["b2"] != 50 {
			t.Fatalf("picks %v, want everything in zone b", got)
		}
	})
	for _, zone := range []string{"", "unknown"} {
		t.Run("no preference for zone "+zone, func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			registerTraffic(t, r, RoundRobin, ServiceOptions{},
				healthy("a1", "a"), healthy("a2", "a"), healthy("b1", "b"), healthy("x1", ""))
			var picks []string
			for range 40 {
				picks = append(picks, r.Lookup(1).ChooseContainer(&PickRequest{Zone: zone}).ContainerID)
			}
			checkRotation(t, picks, 4)
		})
	}
	t.Run("local containers tried", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, ServiceOptions{}, healthy("a1", "a"), healthy("b1", "b"), healthy("b2", "b"))
		req := &PickRequest{Zone: "a", Tried: []*ContainerStats{svc.Container("a1").Stats}}
		for id, n := range countPicks(t, r, req, 20) {
			if zoneOf(id) != "b" {
				t.Fatalf("picked %s %d times after a1 was tried", id, n)
			}
		}
	})
	t.Run("ejected local containers count as unavailable", func(t *testing.T) {
		useTrafficClock(t)
		seedRandom(t, 10)
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, ServiceOptions{Outlier: &Outlier{ConsecutiveFailures: 1}},
			healthy("a1", "a"), healthy("a2", "a"), healthy("a3", "a"), healthy("b1", "b"), healthy("b2", "b"), healthy("b3", "b"))
		svc.Observe(svc.Container("a2"), true, time.Millisecond)
		svc.Observe(svc.Container("a3"), true, time.Millisecond)
		const n = 20_000
		got := countPicks(t, r, &PickRequest{Zone: "a"}, n)
		if got["a2"] != 0 || got["a3"] != 0 {
			t.Fatalf("picks %v: ejected containers picked", got)
		}
		if share := float64(got["a1"]) / n; share < 1.4/3-0.05 || share > 0.75 {
			t.Errorf("local share %.3f with 1 of 3 local containers admitted, want spill-over", share)
		}
	})
}

// TestZoneSpillOverGoesToOtherZones: with 1 of 3 local containers
// available, 1.4 × 1/3 ≈ 47% of the requests stay local and the rest
// spill over to the other zones (the doc comment of chooseZone): a spilled
// request picked among all zones, local included, would make the local
// share 47% + 53% × (local share of all available containers), here
// 47% + 53%/4 ≈ 60%.
func TestZoneSpillOverGoesToOtherZones(t *testing.T) {
	down := func(id, zone string) ContainerSpec {
		c := wz(id, 1, zone)
		c.Status = StatusUnhealthy
		return c
	}
	for _, tt := range []struct {
		name string
		cs   []ContainerSpec
		want float64
	}{
		{"1 of 3", []ContainerSpec{wz("a1", 1, "a"), down("a2", "a"), down("a3", "a"), wz("b1", 1, "b"), wz("b2", 1, "b"), wz("b3", 1, "b")}, 1.4 / 3},
		{"2 of 3", []ContainerSpec{wz("a1", 1, "a"), wz("a2", 1, "a"), down("a3", "a"), wz("b1", 1, "b"), wz("b2", 1, "b"), wz("b3", 1, "b")}, 1.4 * 2 / 3},
		{"3 of 4", []ContainerSpec{wz("a1", 1, "a"), wz("a2", 1, "a"), wz("a3", 1, "a"), down("a4", "a"), wz("b1", 1, "b")}, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			seedRandom(t, 11)
			r := newTestRegistry(t, Options{})
			registerTraffic(t, r, RoundRobin, ServiceOptions{}, tt.cs...)
			const n = 20_000
			local := 0
			for id, k := range countPicks(t, r, &PickRequest{Zone: "a"}, n) {
				if strings.HasPrefix(id, "a") {
					local += k
				}
			}
			checkShare(t, "local zone a", local, n, tt.want, 0.05)
		})
	}
}

// --- slow start ---

// weightRatio makes n picks of image 1 (weighted_round_robin) and returns
// the picks of fresh per pick of old.
func weightRatio(t *testing.T, r *Registry, fresh, old string, n int) float64 {
	t.Helper()
	got := countPicks(t, r, &PickRequest{}, n)
	if got[old] == 0 {
		t.Fatalf("picks %v: %s never picked", got, old)
	}
	return float64(got[fresh]) / float64(got[old])
}

func TestSlowStart(t *testing.T) {
	opts := ServiceOptions{SlowStart: Duration(30 * time.Second)}
	steps := []struct {
		at   time.Duration // since the container became healthy
		want float64       // its effective weight relative to the old one
	}{
		{0, 0.1},
		{time.Second, 0.1}, // the 10% floor
		{6 * time.Second, 0.2},
		{15 * time.Second, 0.5},
		{24 * time.Second, 0.8},
		{30 * time.Second, 1},
		{time.Hour, 1},
	}
	for _, how := range []string{"registered", "put", "patched healthy", "health check"} {
		t.Run(how, func(t *testing.T) {
			clock := useTrafficClock(t)
			r := newTestRegistry(t, Options{})
			fresh := wz("fresh", 1, "")
			if how != "registered" && how != "put" {
				fresh.Status = StatusUnhealthy
			}
			if how == "put" {
				registerTraffic(t, r, WeightedRoundRobin, opts, wz("old", 1, ""))
			} else {
				registerTraffic(t, r, WeightedRoundRobin, opts, wz("old", 1, ""), fresh)
			}
			clock.Advance(time.Hour) // old is past its own slow start
			switch how {
			case "registered":
				// the container is new to the service in this registration
				registerTraffic(t, r, WeightedRoundRobin, opts, wz("old", 1, ""), wz("fresh2", 1, ""))
			case "put":
				if _, err := r.PutContainer(1, fresh); err != nil {
					t.Fatal(err)
				}
			case "patched healthy":
				if _, err := r.PatchContainer(1, "fresh", ContainerPatch{Status: statusPtr(StatusHealthy)}); err != nil {
					t.Fatal(err)
				}
			case "health check":
				if !r.CompareAndSwapStatus(1, "fresh", StatusUnhealthy, StatusHealthy) {
					t.Fatal("status not changed")
				}
			}
			name := "fresh"
			if how == "registered" {
				name = "fresh2"
			}
			start := clock.Now()
			for _, st := range steps {
				clock.ns.Store(start.Add(st.at).UnixNano())
				// n picks make one full smooth-WRR cycle of both weights.
				n := int(math.Round(1000 * (1 + st.want)))
				if got := weightRatio(t, r, name, "old", n); math.Abs(got-st.want) > 0.01 {
					t.Errorf("%v after becoming healthy: weight ratio %.3f, want %.2f ± 0.01", st.at, got, st.want)
				}
			}
		})
	}

	t.Run("unchanged status does not restart it", func(t *testing.T) {
		clock := useTrafficClock(t)
		r := newTestRegistry(t, Options{})
		registerTraffic(t, r, WeightedRoundRobin, opts, wz("old", 1, ""))
		clock.Advance(time.Hour)
		registerTraffic(t, r, WeightedRoundRobin, opts, wz("old", 1, ""), wz("fresh", 1, ""))
		clock.Advance(time.Minute)
		// re-registering, and patching the weight, keep the ramp finished
		registerTraffic(t, r, WeightedRoundRobin, opts, wz("old", 1, ""), wz("fresh", 1, ""))
		if _, err := r.PatchContainer(1, "fresh", ContainerPatch{Weight: intPtr(1)}); err != nil {
			t.Fatal(err)
		}
		if got := weightRatio(t, r, "fresh", "old", 200); got != 1 {
			t.Fatalf("weight ratio %.3f, want 1", got)
		}
	})
	t.Run("all new together share evenly", func(t *testing.T) {
		useTrafficClock(t)
		r := newTestRegistry(t, Options{})
		registerTraffic(t, r, WeightedRoundRobin, opts, wz("x", 1, ""), wz("y", 1, ""))
		if got := weightRatio(t, r, "x", "y", 200); got != 1 {
			t.Fatalf("weight ratio %.3f, want 1", got)
		}
	})
	t.Run("off without slow_start", func(t *testing.T) {
		clock := useTrafficClock(t)
		r := newTestRegistry(t, Options{})
		registerTraffic(t, r, WeightedRoundRobin, ServiceOptions{}, wz("old", 1, ""))
		clock.Advance(time.Hour)
		if _, err := r.PutContainer(1, wz("fresh", 1, "")); err != nil {
			t.Fatal(err)
		}
		if got := weightRatio(t, r, "fresh", "old", 200); got != 1 {
			t.Fatalf("weight ratio %.3f, want 1", got)
		}
	})
}

// --- outlier ejection ---

func TestOutlierConsecutiveFailures(t *testing.T) {
	clock := useTrafficClock(t)
	r := newTestRegistry(t, Options{})
	opts := ServiceOptions{Outlier: &Outlier{ConsecutiveFailures: 3, Cooldown: Duration(10 * time.Second)}}
	svc := registerTraffic(t, r, RoundRobin, opts, wz("bad", 1, ""), wz("good", 1, ""))
	bad := svc.Container("bad")
	fail := func(n int) {
		for range n {
			r.Lookup(1).Observe(bad, true, time.Millisecond)
		}
	}
	onlyGood := func(when string) {
		t.Helper()
		if got := countPicks(t, r, &PickRequest{}, 20); got["good"] != 20 {
			t.Fatalf("%s: picks %v, want only good", when, got)
		}
	}

	fail(2)
	r.Lookup(1).Observe(bad, false, time.Millisecond) // a success resets the count
	fail(2)
	if bad.Stats.Ejected() {
		t.Fatal("ejected after 2 failures in a row")
	}
	fail(1)
	if !bad.Stats.Ejected() || bad.Stats.Ejections() != 1 {
		t.Fatalf("after 3 failures in a row: ejected %v, ejections %d; want true, 1", bad.Stats.Ejected(), bad.Stats.Ejections())
	}
	onlyGood("ejected")
	clock.Advance(10*time.Second - 1)
	onlyGood("just before the cooldown ends")

	// After the cooldown, concurrent picks let exactly one probe through.
	clock.Advance(1)
	probes := concurrentPicks(r, bad, 16, 50)
	if probes != 1 {
		t.Fatalf("after the cooldown %d concurrent picks got the ejected container, want exactly 1 probe", probes)
	}
	if !bad.Stats.Ejected() {
		t.Fatal("not ejected while the probe is in flight (half-open)")
	}
	// The probe succeeds: the circuit closes.
	r.Lookup(1).Observe(bad, false, time.Millisecond)
	if bad.Stats.Ejected() {
		t.Fatal("still ejected after the probe succeeded")
	}
	if got := countPicks(t, r, &PickRequest{}, 20); got["bad"] != 10 {
		t.Fatalf("closed again: picks %v, want the rotation back", got)
	}

	// Ejected again; this time the probe fails and the circuit re-opens.
	fail(3)
	if !bad.Stats.Ejected() || bad.Stats.Ejections() != 2 {
		t.Fatalf("ejected %v, ejections %d; want true, 2", bad.Stats.Ejected(), bad.Stats.Ejections())
	}
	clock.Advance(10 * time.Second)
	if got := countPicks(t, r, &PickRequest{}, 20); got["bad"] != 1 {
		t.Fatalf("after the cooldown: picks %v, want exactly one probe on bad", got)
	}
	r.Lookup(1).Observe(bad, true, time.Millisecond)
	if !bad.Stats.Ejected() || bad.Stats.Ejections() != 3 {
		t.Fatalf("after a failed probe: ejected %v, ejections %d; want true, 3", bad.Stats.Ejected(), bad.Stats.Ejections())
	}
	clock.Advance(10*time.Second - 1)
	onlyGood("a cooldown after the failed probe")

	// A probe that never reports back frees the slot after a cooldown.
	clock.Advance(1)
	if got := countPicks(t, r, &PickRequest{}, 20); got["bad"] != 1 {
		t.Fatalf("picks %v, want one probe", got)
	}
	clock.Advance(10 * time.Second)
	if got := countPicks(t, r, &PickRequest{}, 20); got["bad"] != 1 {
		t.Fatalf("the probe never reported back: picks %v, want another probe a cooldown later", got)
	}
}

// concurrentPicks picks from image 1 on g goroutines, each making n picks,
// and returns how many times target was picked.
func concurrentPicks(r *Registry, target *Container, g, n int) int64 {
	var hits atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range g {
		wg.Go(func() {
			<-start
			for range n {
				if c := r.Lookup(1).ChooseContainer(&PickRequest{}); c != nil && c.ContainerID == target.ContainerID {
					hits.Add(1)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	return hits.Load()
}

func TestOutlierErrorRate(t *testing.T) {
	clock := useTrafficClock(t)
	r := newTestRegistry(t, Options{})
	opts := ServiceOptions{Outlier: &Outlier{ErrorRate: 0.5, Cooldown: Duration(5 * time.Second)}}
	svc := registerTraffic(t, r, RoundRobin, opts, wz("flaky", 1, ""), wz("good", 1, ""))
	if od := svc.Options.Outlier; od.MinRequests != 10 || od.ConsecutiveFailures != 0 || time.Duration(od.Interval) != 10*time.Second {
		t.Fatalf("normalized outlier %+v, want min_requests 10, interval 10s, no consecutive count", *od)
	}
	flaky := svc.Container("flaky")
	// Every other attempt fails: never two failures in a row.
	for i := range 9 {
		svc.Observe(flaky, i%2 == 0, time.Millisecond)
	}
	if flaky.Stats.Ejected() {
		t.Fatal("ejected with fewer than min_requests attempts")
	}
	for i := 9; i < 12; i++ {
		svc.Observe(flaky, i%2 == 0, time.Millisecond)
	}
	if !flaky.Stats.Ejected() || flaky.Stats.Ejections() != 1 {
		t.Fatalf("after 12 attempts half failed: ejected %v, ejections %d", flaky.Stats.Ejected(), flaky.Stats.Ejections())
	}
	if got := countPicks(t, r, &PickRequest{}, 10); got["good"] != 10 {
		t.Fatalf("picks %v, want only good", got)
	}
	clock.Advance(5 * time.Second)
	if got := countPicks(t, r, &PickRequest{}, 10); got["flaky"] != 1 {
		t.Fatalf("after the cooldown: picks %v, want one probe", got)
	}
	svc.Observe(flaky, false, time.Millisecond)
	if flaky.Stats.Ejected() {
		t.Fatal("still ejected after a successful probe")
	}
	if got := countPicks(t, r, &PickRequest{}, 10); got["flaky"] != 5 {
		t.Fatalf("back: picks %v, want the rotation", got)
	}

	// Failures spread over more than the interval do not add up.
	for range 30 {
		clock.Advance(11 * time.Second)
		svc.Observe(flaky, true, time.Millisecond)
		svc.Observe(flaky, false, time.Millisecond)
	}
	if flaky.Stats.Ejected() {
		t.Fatal("ejected by failures in different intervals")
	}
}

func TestOutlierMaxEjectedPercent(t *testing.T) {
	useTrafficClock(t)
	for _, tt := range []struct {
		name       string
		containers int
		percent    int
		want       int // containers ejected when all fail
	}{
		{"one container never", 1, 50, 0},
		{"half of two", 2, 50, 1},
		{"half of four", 4, 50, 2},
		{"a third of three at 34%", 3, 34, 1},
		{"all of two at 100%", 2, 100, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			var cs []ContainerSpec
			for i := range tt.containers {
				cs = append(cs, wz(fmt.Sprintf("c%d", i), 1, ""))
			}
			svc := registerTraffic(t, r, RoundRobin,
				ServiceOptions{Outlier: &Outlier{ConsecutiveFailures: 1, MaxEjectedPercent: tt.percent}}, cs...)
			for range 5 {
				for _, c := range svc.Containers {
					svc.Observe(c, true, time.Millisecond)
				}
			}
			ejected := 0
			for _, c := range svc.Containers {
				if c.Stats.Ejected() {
					ejected++
				}
			}
			if ejected != tt.want {
				t.Fatalf("%d of %d ejected at max_ejected_percent %d, want %d", ejected, tt.containers, tt.percent, tt.want)
			}
			if got := countPicks(t, r, &PickRequest{}, 10); tt.want < tt.containers && got[""] != 0 {
				t.Fatalf("picks %v: the containers left must take the requests", got)
			}
		})
	}
}

// --- retry budget ---

func TestRetryBudget(t *testing.T) {
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, RoundRobin, ServiceOptions{RetryBudget: 0.2}, wz("c0", 1, ""))
	const requests = 1000
	allowed, denied := 0, 0
	for range requests {
		svc.DepositRetry()
		for range 3 {
			if !svc.AllowRetry() {
				denied++
				break
			}
			allowed++
		}
	}
	if lo, hi := int(0.2*requests)-1, int(0.2*requests)+retryTokenCap; allowed < lo || allowed > hi {
		t.Fatalf("%d retries allowed over %d requests, want %d-%d", allowed, requests, lo, hi)
	}
	if got := svc.State.RetriesDenied.Load(); got != int64(denied) || denied == 0 {
		t.Fatalf("RetriesDenied = %d, want %d (> 0)", got, denied)
	}

	// The bucket holds at most 10: a long quiet spell saves no more.
	r2 := newTestRegistry(t, Options{})
	quiet := registerTraffic(t, r2, RoundRobin, ServiceOptions{RetryBudget: 0.5}, wz("c0", 1, ""))
	for range 1000 {
		quiet.DepositRetry()
	}
	n := 0
	for quiet.AllowRetry() {
		n++
	}
	if n != retryTokenCap {
		t.Fatalf("after 1000 quiet requests %d retries allowed in a row, want %d", n, retryTokenCap)
	}

	// Without a budget every retry is allowed.
	r3 := newTestRegistry(t, Options{})
	free := registerTraffic(t, r3, RoundRobin, ServiceOptions{}, wz("c0", 1, ""))
	for range 1000 {
		if !free.AllowRetry() {
			t.Fatal("retry denied without a budget")
		}
	}
	if got := free.State.RetriesDenied.Load(); got != 0 {
		t.Fatalf("RetriesDenied = %d without a budget", got)
	}
}

// --- rate limit ---

func TestRateLimit(t *testing.T) {
	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	limit := func(per string) ServiceOptions {
		return ServiceOptions{RateLimit: &RateLimit{Requests: 10, Interval: Duration(time.Second), Burst: 5, Per: per}}
	}
	checkRetryAfter := func(t *testing.T, got, want time.Duration) {
		t.Helper()
		if d := got - want; d < -time.Millisecond || d > time.Millisecond {
			t.Fatalf("retryAfter = %v, want %v", got, want)
		}
	}

	t.Run("burst then denied", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, limit(PerService), wz("c0", 1, ""))
		for i := range 5 {
			if ok, wait := svc.AllowRate("1.2.3.4", t0); !ok || wait != 0 {
				t.Fatalf("request %d of the burst: %v %v", i, ok, wait)
			}
		}
		ok, wait := svc.AllowRate("1.2.3.4", t0)
		if ok {
			t.Fatal("6th request at the same instant allowed")
		}
		checkRetryAfter(t, wait, 100*time.Millisecond)
		// Half a token later, half the wait is left.
		_, wait = svc.AllowRate("1.2.3.4", t0.Add(50*time.Millisecond))
		checkRetryAfter(t, wait, 50*time.Millisecond)
		if ok, _ := svc.AllowRate("1.2.3.4", t0.Add(100*time.Millisecond)); !ok {
			t.Fatal("denied 100ms later")
		}
		if got := svc.State.RateLimited.Load(); got != 2 {
			t.Fatalf("RateLimited = %d, want 2", got)
		}
	})

	t.Run("sustained rate", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, limit(PerService), wz("c0", 1, ""))
		allowed, denied := 0, 0
		for i := range 1000 { // 10 simulated seconds in 10ms steps
			for range 2 {
				if ok, _ := svc.AllowRate("1.2.3.4", t0.Add(time.Duration(i)*10*time.Millisecond)); ok {
					allowed++
				} else {
					denied++
				}
			}
		}
		if allowed < 103 || allowed > 107 {
			t.Fatalf("%d allowed over 10s, want 5 + 100 ± 2", allowed)
		}
		if got := svc.State.RateLimited.Load(); got != int64(denied) {
			t.Fatalf("RateLimited = %d, want %d", got, denied)
		}
	})

	t.Run("per client_ip", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, limit(PerClientIP), wz("c0", 1, ""))
		for _, client := range []string{"10.0.0.1", "10.0.0.2"} {
			for i := range 5 {
				if ok, _ := svc.AllowRate(client, t0); !ok {
					t.Fatalf("%s request %d denied: each client has its own bucket", client, i)
				}
			}
			if ok, _ := svc.AllowRate(client, t0); ok {
				t.Fatalf("%s: 6th request allowed", client)
			}
		}
		if got := svc.State.RateLimited.Load(); got != 2 {
			t.Fatalf("RateLimited = %d, want 2", got)
		}
	})

	t.Run("per service shares one bucket", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, limit(PerService), wz("c0", 1, ""))
		for i := range 5 {
			svc.AllowRate(fmt.Sprintf("10.0.0.%d", i), t0)
		}
		if ok, _ := svc.AllowRate("10.0.0.99", t0); ok {
			t.Fatal("a new client got past the service's limit")
		}
	})

	t.Run("a new configuration takes effect", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		registerTraffic(t, r, RoundRobin, limit(PerService), wz("c0", 1, ""))
		for range 6 {
			r.Lookup(1).AllowRate("", t0)
		}
		// The same configuration again keeps the bucket (still empty).
		registerTraffic(t, r, RoundRobin, limit(PerService), wz("c0", 1, ""), wz("c1", 1, ""))
		if ok, _ := r.Lookup(1).AllowRate("", t0); ok {
			t.Fatal("re-registering the same rate_limit refilled the bucket")
		}
		slow := ServiceOptions{RateLimit: &RateLimit{Requests: 1, Interval: Duration(2 * time.Second)}}
		registerTraffic(t, r, RoundRobin, slow, wz("c0", 1, ""))
		if ok, _ := r.Lookup(1).AllowRate("", t0); !ok {
			t.Fatal("first request under the new rate_limit denied")
		}
		ok, wait := r.Lookup(1).AllowRate("", t0)
		if ok {
			t.Fatal("second request allowed: burst defaults to requests (1)")
		}
		checkRetryAfter(t, wait, 2*time.Second)
		// Removing the limit lifts it.
		registerTraffic(t, r, RoundRobin, ServiceOptions{}, wz("c0", 1, ""))
		for range 100 {
			if ok, wait := r.Lookup(1).AllowRate("", t0); !ok || wait != 0 {
				t.Fatal("denied without a rate_limit")
			}
		}
	})
}

// --- max_in_flight ---

func TestTryBegin(t *testing.T) {
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, RoundRobin, ServiceOptions{MaxInFlight: 2}, wz("c0", 1, ""))
	st := svc.State
	first, second := svc.TryBegin(), svc.TryBegin()
	if !first || !second {
		t.Fatal("the first two requests were shed")
	}
	if svc.TryBegin() {
		t.Fatal("a third request in flight was admitted with max_in_flight 2")
	}
	if st.Shed.Load() != 1 || st.Failures.Load() != 1 || st.Classes[5].Load() != 1 ||
		st.Requests.Load() != 3 || st.InFlight.Load() != 2 {
		t.Fatalf("shed %d failures %d 5xx %d requests %d in flight %d; want 1 1 1 3 2",
			st.Shed.Load(), st.Failures.Load(), st.Classes[5].Load(), st.Requests.Load(), st.InFlight.Load())
	}
	st.Finish(200, false, time.Millisecond)
	if !svc.TryBegin() {
		t.Fatal("shed after a request finished")
	}
	if svc.TryBegin() {
		t.Fatal("admitted over the cap again")
	}
	if st.Shed.Load() != 2 {
		t.Fatalf("Shed = %d, want 2", st.Shed.Load())
	}

	t.Run("concurrent", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, ServiceOptions{MaxInFlight: 5}, wz("c0", 1, ""))
		var admitted atomic.Int64
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				if svc.TryBegin() {
					admitted.Add(1)
				}
			})
		}
		wg.Wait()
		if admitted.Load() != 5 || svc.State.Shed.Load() != 27 || svc.State.InFlight.Load() != 5 {
			t.Fatalf("admitted %d shed %d in flight %d, want 5 27 5", admitted.Load(), svc.State.Shed.Load(), svc.State.InFlight.Load())
		}
	})

	t.Run("no cap", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, ServiceOptions{}, wz("c0", 1, ""))
		for range 100 {
			if !svc.TryBegin() {
				t.Fatal("shed without max_in_flight")
			}
		}
		if svc.State.InFlight.Load() != 100 || svc.State.Shed.Load() != 0 {
			t.Fatalf("in flight %d shed %d", svc.State.InFlight.Load(), svc.State.Shed.Load())
		}
	})
}

// --- allocations and races ---

var allAlgorithms = []Algorithm{RoundRobin, LeastConnections, WeightedRoundRobin, Random, PowerOfTwo, IPHash, ConsistentHash, LeastLatency}

func TestChooseAllocatesNothing(t *testing.T) {
	useTrafficClock(t)
	full := ServiceOptions{
		SlowStart: Duration(30 * time.Second),
		Outlier:   &Outlier{ConsecutiveFailures: 3, ErrorRate: 0.5},
	}
	for _, alg := range allAlgorithms {
		t.Run(string(alg), func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			var cs []ContainerSpec
			for i := range 10 {
				cs = append(cs, wz(fmt.Sprintf("c%d", i), 1+i%3, []string{"a", "b"}[i%2]))
			}
			svc := registerTraffic(t, r, alg, full, cs...)
			for i, c := range svc.Available() {
				c.Stats.InFlight.Store(int64(i % 4))
				svc.Observe(c, false, time.Duration(i+1)*time.Millisecond)
			}
			svc.Observe(svc.Available()[5], true, time.Millisecond) // a failure on record
			reqs := map[string]*PickRequest{
				"plain":  {},
				"key":    {Key: "user-42"},
				"zone":   {Key: "user-42", Zone: "a"},
				"tried":  {Key: "user-7", Zone: "b", Tried: []*ContainerStats{svc.Available()[1].Stats}},
				"pinned": {Pinned: "c3", Zone: "a"},
			}
			for name, req := range reqs {
				allocs := testing.AllocsPerRun(500, func() {
					if svc.Choose(req) < 0 {
						t.Fatal("nothing picked")
					}
				})
				if allocs != 0 {
					t.Errorf("%s: Choose allocates %.1f times per call, want 0", name, allocs)
				}
			}
		})
	}
}

// TestTrafficHammer runs picks, outcomes, rate limits, retry budgets and
// re-registrations concurrently for every algorithm; run it with -race.
func TestTrafficHammer(t *testing.T) {
	opts := ServiceOptions{
		SlowStart:   Duration(time.Second),
		Outlier:     &Outlier{ConsecutiveFailures: 2, Cooldown: Duration(time.Millisecond)},
		RateLimit:   &RateLimit{Requests: 1000, Per: PerClientIP},
		MaxInFlight: 50,
		RetryBudget: 0.3,
	}
	for _, alg := range allAlgorithms {
		t.Run(string(alg), func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			var cs []ContainerSpec
			for i := range 6 {
				cs = append(cs, wz(fmt.Sprintf("c%d", i), 1+i%2, []string{"a", "b", "c"}[i%3]))
			}
			registerTraffic(t, r, alg, opts, cs...)
			var wg sync.WaitGroup
			var stop atomic.Bool
			for g := range 6 {
				wg.Go(func() {
					for i := 0; !stop.Load() || i < 300; i++ {
						svc := r.Lookup(1)
						client := fmt.Sprintf("10.0.0.%d", i%7)
						svc.AllowRate(client, time.Now())
						if !svc.TryBegin() {
							continue
						}
						svc.DepositRetry()
						req := PickRequest{Key: client, Zone: []string{"", "a", "b"}[g%3], Pinned: fmt.Sprintf("c%d", i%8)}
						for attempt := 0; attempt < 3; attempt++ {
							c := svc.ChooseContainer(&req)
							if c == nil {
								break
							}
							c.Stats.Begin()
							failed := (i+g+attempt)%5 == 0
							c.Stats.Finish(200, failed, time.Millisecond)
							svc.Observe(c, failed, time.Duration(1+i%9)*time.Millisecond)
							if !failed || !svc.AllowRetry() {
								break
							}
							req.Tried = append(req.Tried, c.Stats)
						}
						svc.State.Finish(200, false, time.Millisecond)
					}
				})
			}
			for i := range 200 {
				next := slices.Clone(cs)
				next[i%len(next)].Status = []Status{StatusHealthy, StatusUnhealthy, StatusDraining}[i%3]
				registerTraffic(t, r, alg, opts, next...)
				r.CompareAndSwapStatus(1, "c1", StatusHealthy, StatusUnhealthy)
				r.CompareAndSwapStatus(1, "c1", StatusUnhealthy, StatusHealthy)
			}
			stop.Store(true)
			wg.Wait()
			if got := r.Lookup(1).State.InFlight.Load(); got != 0 {
				t.Fatalf("service in flight = %d after every request finished", got)
			}
		})
	}
}
