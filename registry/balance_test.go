package registry

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
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
// containers exactly once.
func checkRotation(t *testing.T, picks []string, n int) {
	t.Helper()
	for i := 0; i+n <= len(picks); i++ {
		window := slices.Clone(picks[i : i+n])
		slices.Sort(window)
		if len(slices.Compact(window)) != n {
			t.Fatalf("picks %d..%d = %v: not each of the %d containers once", i, i+n-1, picks[i:i+n], n)
		}
	}
}

func TestRoundRobinPerService(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	random := make([]byte, 997)
	for i := range random {
		random[i] = "ab"[rng.IntN(2)]
	}
	tests := []struct {
		name    string
		pattern string // which service each pick goes to
	}{
		{"alternating", "abababababababababababababababab"},
		{"a,b,a,a,b", "abaababaababaababaababaababaab"},
		{"bursts", "aaaaaaabbbbbbbbbbbaaabababbbbbbbaaaaaaaaaaaab"},
		{"only a", "aaaaaaaaaaaaaaaaaaaaaa"},
		{"random", string(random)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			svcs := map[byte]*Service{'a': serviceWith(t, r, 1, RoundRobin, 3), 'b': serviceWith(t, r, 2, RoundRobin, 4)}
			picks := map[byte][]string{}
			for i := 0; i < len(tt.pattern); i++ {
				s := tt.pattern[i]
				// Each pick reads the current version, as a request does.
				c := r.Lookup(svcs[s].ImageID).Pick(nil)
				if c == nil || svcs[s].Container(c.ContainerID) == nil {
					t.Fatalf("pick %d for %c: %v", i, s, c)
				}
				picks[s] = append(picks[s], c.ContainerID)
			}
			checkRotation(t, picks['a'], 3)
			checkRotation(t, picks['b'], 4)
			if len(picks['a']) > 0 && picks['a'][0] != "c0" {
				t.Fatalf("first pick = %s, want c0", picks['a'][0])
			}
		})
	}
}

func TestRoundRobinSurvivesReregistration(t *testing.T) {
	// The rotation lives in the service's state, so a re-registration with
	// the same containers does not restart it at the first container.
	r := newTestRegistry(t, Options{})
	var picks []string
	for i := 0; i < 30; i++ {
		if i%4 == 0 {
			serviceWith(t, r, 1, RoundRobin, 3)
		}
		picks = append(picks, r.Lookup(1).Pick(nil).ContainerID)
	}
	checkRotation(t, picks, 3)
}

func TestRoundRobinConcurrentIsExact(t *testing.T) {
	// Picks from many goroutines still share out exactly.
	r := newTestRegistry(t, Options{})
	svc := serviceWith(t, r, 1, RoundRobin, 5)
	const goroutines, each = 8, 500
	counts := make([]map[string]int, goroutines)
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		counts[g] = map[string]int{}
		wg.Go(func() {
			for i := 0; i < each; i++ {
				counts[g][svc.Pick(nil).ContainerID]++
			}
		})
	}
	wg.Wait()
	total := map[string]int{}
	for _, m := range counts {
		for k, v := range m {
			total[k] += v
		}
	}
	for i := 0; i < 5; i++ {
		if got := total[fmt.Sprintf("c%d", i)]; got != goroutines*each/5 {
			t.Fatalf("c%d picked %d times, want %d (all: %v)", i, got, goroutines*each/5, total)
		}
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
