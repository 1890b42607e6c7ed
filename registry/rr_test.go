package registry

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

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
