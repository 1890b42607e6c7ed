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

	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

// serviceWith registers a service of n healthy containers c0..c(n-1) with
// the given algorithm and returns it.
func serviceWith(t testing.TB, r *Registry, id int64, alg Algorithm, n int) *Service {
	t.Helper()
	spec := svcSpec(id)
	spec.Algorithm = alg
	for i := 0; i < n; i++ {
		spec.Containers = append(spec.Containers, ctr(fmt.Sprintf("c%d", i), 8000+i))
	}
	return mustRegister(t, r, spec)
}

var algorithms = []Algorithm{RoundRobin, LeastConnections}

// checkRotation asserts that every n consecutive picks hit each of the n
// containers exactly once (shared with the root's tests).
var checkRotation = testkit.CheckRotation

// trafficClock is a fake registry clock that moves only when told to.
type trafficClock struct{ ns atomic.Int64 }

func (c *trafficClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *trafficClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

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

func TestPickSkipsUnavailable(t *testing.T) {
	with := func(id string, status Status, weight int) ContainerSpec {
		c := ctr(id, 1)
		c.Status, c.Weight = status, weight
		return c
	}
	for _, alg := range algorithms {
		t.Run(string(alg), func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			spec := svcSpec(1,
				with("unhealthy", StatusUnhealthy, 1),
				with("ok-1", StatusHealthy, 1),
				with("starting", StatusStarting, 1),
				with("draining", StatusDraining, 5),
				with("weight-0", StatusHealthy, 0),
				with("ok-2", StatusHealthy, 1000),
			)
			spec.Algorithm = alg
			svc := mustRegister(t, r, spec)
			if got := ids(svc.Available()); !slices.Equal(got, []string{"ok-1", "ok-2"}) {
				t.Fatalf("available = %v", got)
			}
			var picks []string
			for i := 0; i < 100; i++ {
				picks = append(picks, svc.Pick(nil).ContainerID)
			}
			checkRotation(t, picks, 2)

			// A container that becomes unavailable stops being picked at once.
			zero := 0
			if _, err := r.PatchContainer(1, "ok-2", ContainerPatch{Weight: &zero}); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 10; i++ {
				if c := r.Lookup(1).Pick(nil); c.ContainerID != "ok-1" {
					t.Fatalf("picked %q", c.ContainerID)
				}
			}
		})
	}
}

func TestPickNoneAvailable(t *testing.T) {
	for _, alg := range algorithms {
		t.Run(string(alg), func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			empty := svcSpec(1)
			empty.Algorithm = alg
			down := svcSpec(2, ctr("a", 1), ctr("b", 2), ctr("c", 3))
			down.Algorithm = alg
			down.Containers[0].Status = StatusUnhealthy
			down.Containers[1].Status = StatusDraining
			down.Containers[2].Weight = 0
			for _, spec := range []ServiceSpec{empty, down} {
				svc := mustRegister(t, r, spec)
				if i := svc.PickIndex(nil); i != -1 {
					t.Fatalf("service %d: PickIndex = %d, want -1", spec.ImageID, i)
				}
				if i := svc.PickIndex([]*ContainerStats{new(ContainerStats)}); i != -1 {
					t.Fatalf("service %d: PickIndex(tried) = %d, want -1", spec.ImageID, i)
				}
				if c := svc.Pick(nil); c != nil {
					t.Fatalf("service %d: Pick = %q, want nil", spec.ImageID, c.ContainerID)
				}
			}
		})
	}
}

func TestPickAvoidsTried(t *testing.T) {
	for _, alg := range algorithms {
		t.Run(string(alg), func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			svc := serviceWith(t, r, 1, alg, 3)
			c0, c1, c2 := svc.Container("c0"), svc.Container("c1"), svc.Container("c2")
			stranger := new(ContainerStats) // a container of another version: irrelevant

			for i := 0; i < 12; i++ {
				tried := []*ContainerStats{c0.Stats}
				if c := svc.Pick(tried); c == nil || c == c0 {
					t.Fatalf("call %d: picked %v although c0 was tried and others are available", i, c)
				}
				tried = []*ContainerStats{c2.Stats, stranger, c0.Stats}
				if c := svc.Pick(tried); c != c1 {
					t.Fatalf("call %d: picked %v, want the only untried c1", i, c)
				}
				// All tried: still one of them, so the request can retry somewhere.
				tried = []*ContainerStats{c0.Stats, c1.Stats, c2.Stats}
				if got := svc.PickIndex(tried); got < 0 || got >= 3 {
					t.Fatalf("call %d: PickIndex with all tried = %d", i, got)
				}
			}
		})
	}
}

func TestPickAvoidsTriedSpreads(t *testing.T) {
	// With one container tried, round robin spreads the retries over the others.
	r := newTestRegistry(t, Options{})
	svc := serviceWith(t, r, 1, RoundRobin, 4)
	tried := []*ContainerStats{svc.Container("c1").Stats}
	counts := map[string]int{}
	for i := 0; i < 400; i++ {
		counts[svc.Pick(tried).ContainerID]++
	}
	if counts["c1"] != 0 || counts["c0"] == 0 || counts["c2"] == 0 || counts["c3"] == 0 {
		t.Fatalf("picks with c1 tried: %v", counts)
	}
}

func TestPickAllocatesNothing(t *testing.T) {
	r := newTestRegistry(t, Options{})
	for i, tt := range []struct {
		name  string
		alg   Algorithm
		tried bool
	}{
		{"round_robin", RoundRobin, false},
		{"round_robin with tried", RoundRobin, true},
		{"least_connections", LeastConnections, false},
		{"least_connections with tried", LeastConnections, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			svc := serviceWith(t, r, int64(i+1), tt.alg, 10)
			var tried []*ContainerStats
			if tt.tried {
				tried = []*ContainerStats{svc.Available()[3].Stats}
			}
			allocs := testing.AllocsPerRun(1000, func() {
				if c := svc.Pick(tried); c == nil {
					t.Fatal("nothing picked")
				}
			})
			if allocs != 0 {
				t.Fatalf("Pick allocates %.1f times per call, want 0", allocs)
			}
		})
	}
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

// --- allocations and races ---

// allAlgorithms are the rows of algorithmTable: a new algorithm is in every
// test that loops over them.
var allAlgorithms = func() (all []Algorithm) {
	for _, row := range algorithmTable {
		all = append(all, row.name)
	}
	return all
}()

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
