package etcdstore

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/internal/testkit"
	"github.com/imagelb/caddy-imagelb/registry"
)

// node is a registry on a shared store, kept current by its watch, as the
// app runs one: what the tests below race against each other in one
// process, under -race.
type node struct {
	reg   *registry.Registry
	store *Store
}

func startNode(t *testing.T, endpoints []string) *node {
	t.Helper()
	return startNodeOn(t, open(t, endpoints, bolt(t)))
}

// startNodeOn is startNode on a store the test opened.
func startNodeOn(t *testing.T, st *Store) *node {
	t.Helper()
	loaded := load(t, st)
	reg := registry.New(registry.Options{})
	if _, err := reg.Restore(loaded); err != nil {
		t.Fatal(err)
	}
	reg.SetStore(st)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.Watch(ctx, loaded.Revision, func(ev registry.RemoteEvent) {
			for _, err := range reg.ApplyRemote(ev) {
				t.Errorf("apply: %v", err)
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return &node{reg: reg, store: st}
}

func containerIDs(svc *registry.Service) []string {
	var out []string
	for _, c := range svc.Containers {
		out = append(out, c.ContainerID)
	}
	slices.Sort(out)
	return out
}

// TestTwoNodesWriteOneImage: two nodes add containers to one image at the
// same time, 25 writers each. Their commits race on the image's record;
// the loser of each race applies what the winner wrote and makes its
// change again, so every acknowledged container is in the end on both
// nodes and in etcd: no update is lost.
func TestTwoNodesWriteOneImage(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	if _, err := a.reg.Register(registry.ServiceSpec{ImageID: 1, ImageName: "shared"}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "node b sees image 1", func() bool { return b.reg.Lookup(1) != nil })

	const each = 25
	var wg sync.WaitGroup
	var want []string
	for _, n := range []struct {
		name string
		node *node
	}{{"a", a}, {"b", b}} {
		for i := range each {
			id := fmt.Sprintf("%s-%02d", n.name, i)
			want = append(want, id)
			wg.Go(func() {
				spec := registry.ContainerSpec{ContainerID: id, Host: "127.0.0.1", Port: 8000 + i,
					Status: registry.StatusHealthy, Weight: 1}
				if _, err := n.node.reg.PutContainer(1, spec); err != nil {
					t.Errorf("node %s: put %s: %v", n.name, id, err)
				}
			})
		}
	}
	wg.Wait()
	slices.Sort(want)
	for name, n := range map[string]*node{"a": a, "b": b} {
		testkit.Eventually(t, "node "+name+" has all 50 containers", func() bool {
			return slices.Equal(containerIDs(n.reg.Lookup(1)), want)
		})
	}
	stored := load(t, a.store).Records
	if len(stored) != 1 || len(stored[0].Containers) != 2*each {
		t.Fatalf("etcd holds %d records, the first with %d containers, want 1 with %d", len(stored), len(stored[0].Containers), 2*each)
	}
}

// TestTwoNodesRaceForAPort: two nodes register two images asking for the
// same external port at the same moment. etcd decides: exactly one gets
// it, the other is refused with a conflict naming the port, and both nodes
// agree on the owner.
func TestTwoNodesRaceForAPort(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startNode(t, c.Endpoints()), startNode(t, c.Endpoints())
	for round := range 20 {
		port := 9000 + round
		x, y := int64(2*round+1), int64(2*round+2)
		var errA, errB error
		var wg sync.WaitGroup
		wg.Go(func() {
			_, errA = a.reg.Register(registry.ServiceSpec{ImageID: x, ImageName: "x", ExternalPort: port})
		})
		wg.Go(func() {
			_, errB = b.reg.Register(registry.ServiceSpec{ImageID: y, ImageName: "y", ExternalPort: port})
		})
		wg.Wait()
		if (errA == nil) == (errB == nil) {
			t.Fatalf("round %d: node a: %v, node b: %v; want exactly one refused", round, errA, errB)
		}
		winner, loserErr := x, errB
		if errA != nil {
			winner, loserErr = y, errA
		}
		if registry.KindOf(loserErr) != registry.KindConflict || !containsPort(loserErr.Error(), port) {
			t.Fatalf("round %d: the loser got %v, want a conflict naming port %d", round, loserErr, port)
		}
		for name, n := range map[string]*node{"a": a, "b": b} {
			testkit.Eventually(t, fmt.Sprintf("node %s maps port %d to image %d", name, port, winner), func() bool {
				svc := n.reg.ByPort(port)
				return svc != nil && svc.ImageID == winner
			})
		}
	}
}

func containsPort(s string, port int) bool {
	return slices.Contains(splitWords(s), fmt.Sprint(port))
}

func splitWords(s string) []string {
	var out []string
	word := []rune{}
	for _, r := range s {
		if r >= '0' && r <= '9' {
			word = append(word, r)
			continue
		}
		if len(word) > 0 {
			out = append(out, string(word))
			word = word[:0]
		}
	}
	if len(word) > 0 {
		out = append(out, string(word))
	}
	return out
}
