package registry

import (
	"fmt"
	"slices"
	"testing"
)

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
