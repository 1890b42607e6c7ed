package registry

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newTestRegistry returns an empty registry whose snapshot invariants are
// checked when the test ends.
func newTestRegistry(t *testing.T, opts Options) *Registry {
	t.Helper()
	r := New(opts)
	t.Cleanup(func() { checkSnapshot(t, r.snap.Load()) })
	return r
}

// ctr is a healthy container of weight 1.
func ctr(id string, port int) ContainerSpec {
	return ContainerSpec{ContainerID: id, Port: port, Status: StatusHealthy, Weight: DefaultWeight}
}

func svcSpec(id int64, cs ...ContainerSpec) ServiceSpec {
	return ServiceSpec{ImageID: id, ImageName: fmt.Sprintf("image-%d", id), Containers: cs}
}

func mustRegister(t testing.TB, r *Registry, spec ServiceSpec) *Service {
	t.Helper()
	svc, err := r.Register(spec)
	if err != nil {
		t.Fatalf("Register(%d): %v", spec.ImageID, err)
	}
	return svc
}

func wantKind(t *testing.T, err error, want Kind) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want kind %d", want)
	}
	if got := KindOf(err); got != want {
		t.Fatalf("kind = %d, want %d: %v", got, want, err)
	}
}

func ids(cs []*Container) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.ContainerID
	}
	return out
}

// checkSnapshot verifies the invariants every published snapshot keeps.
func checkSnapshot(t testing.TB, s *snapshot) {
	t.Helper()
	count, total := 0, 0
	var byStatus [numStatuses]int
	for i, shard := range s.shards {
		for id, svc := range shard {
			count++
			total += len(svc.Containers)
			for _, c := range svc.Containers {
				byStatus[statusIndex(c.Status)]++
			}
			if svc.ImageID != id || uint64(id)%numShards != uint64(i) {
				t.Errorf("service %d filed under key %d in shard %d", svc.ImageID, id, i)
			}
			seen := map[string]bool{}
			var avail []*Container
			for _, c := range svc.Containers {
				if seen[c.ContainerID] {
					t.Errorf("service %d: duplicate container %q", id, c.ContainerID)
				}
				seen[c.ContainerID] = true
				if c.Stats == nil || c.DialAddr() != c.Dial() {
					t.Errorf("service %d container %q: stats %p dial %q", id, c.ContainerID, c.Stats, c.DialAddr())
				}
				if c.Available() {
					avail = append(avail, c)
				}
			}
			if !slices.Equal(avail, svc.Available()) {
				t.Errorf("service %d: available %v, want %v", id, ids(svc.Available()), ids(avail))
			}
			if svc.State == nil {
				t.Errorf("service %d: nil state", id)
			}
			if svc.ExternalPort != 0 && s.ports[svc.ExternalPort] != id {
				t.Errorf("service %d has port %d, mapped to %d", id, svc.ExternalPort, s.ports[svc.ExternalPort])
			}
		}
	}
	if count != s.count {
		t.Errorf("count = %d, %d services in the shards", s.count, count)
	}
	if total != s.total {
		t.Errorf("total = %d, %d containers in the shards", s.total, total)
	}
	if byStatus != s.byStatus {
		t.Errorf("by status %v, %v in the shards", s.byStatus, byStatus)
	}
	for port, id := range s.ports {
		if svc := s.lookup(id); svc == nil || svc.ExternalPort != port {
			t.Errorf("port %d mapped to image %d, which does not have it", port, id)
		}
	}
}

func TestRegisterCreates(t *testing.T) {
	r := newTestRegistry(t, Options{})
	spec := svcSpec(7, ctr("a", 8080), ContainerSpec{ContainerID: "b", Host: "::1", Port: 81, Status: StatusHealthy, Weight: 2})
	svc := mustRegister(t, r, spec)
	if r.Lookup(7) != svc {
		t.Fatal("Lookup does not return the registered version")
	}
	if svc.ImageName != "image-7" || svc.Algorithm != RoundRobin || svc.ExternalPort != 0 || svc.Static {
		t.Fatalf("service = %+v", svc)
	}
	if got := ids(svc.Containers); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("containers = %v", got)
	}
	if a := svc.Container("a"); a.Host != "127.0.0.1" || a.DialAddr() != "127.0.0.1:8080" {
		t.Fatalf("default host not filled: host %q dial %q", a.Host, a.DialAddr())
	}
	if b := svc.Container("b"); b.DialAddr() != "[::1]:81" {
		t.Fatalf("dial = %q", b.DialAddr())
	}
	if svc.Container("zzz") != nil || r.Lookup(8) != nil {
		t.Fatal("found what was never registered")
	}
	if got, err := r.Get(7); got != svc || err != nil {
		t.Fatalf("Get(7) = %v, %v", got, err)
	}
	got, err := r.Get(8)
	wantKind(t, err, KindNotFound)
	if got != nil {
		t.Fatal("Get of an unknown image returned a service")
	}
	if spec.Containers[0].Host != "" {
		t.Fatal("Register modified the caller's spec")
	}
}

func TestRegisterDefaultsFromOptions(t *testing.T) {
	r := newTestRegistry(t, Options{DefaultHost: "10.1.2.3", DefaultAlgorithm: LeastConnections})
	svc := mustRegister(t, r, svcSpec(1, ctr("a", 80), ContainerSpec{ContainerID: "b", Host: "b.internal", Port: 80, Status: StatusHealthy, Weight: 1}))
	if svc.Algorithm != LeastConnections {
		t.Fatalf("algorithm = %q, want the default least_connections", svc.Algorithm)
	}
	if h := svc.Container("a").Host; h != "10.1.2.3" {
		t.Fatalf("host = %q, want the default 10.1.2.3", h)
	}
	if h := svc.Container("b").Host; h != "b.internal" {
		t.Fatalf("explicit host replaced: %q", h)
	}
	explicit := svcSpec(2)
	explicit.Algorithm = RoundRobin
	if svc := mustRegister(t, r, explicit); svc.Algorithm != RoundRobin {
		t.Fatalf("explicit algorithm replaced: %q", svc.Algorithm)
	}

	// New options apply to later registrations only.
	r.SetOptions(Options{DefaultHost: "10.9.9.9"})
	if r.Lookup(1).Algorithm != LeastConnections {
		t.Fatal("SetOptions changed an existing service")
	}
	svc = mustRegister(t, r, svcSpec(3, ctr("a", 80)))
	if svc.Algorithm != RoundRobin || svc.Container("a").Host != "10.9.9.9" {
		t.Fatalf("after SetOptions: algorithm %q host %q", svc.Algorithm, svc.Container("a").Host)
	}
}

func TestRegisterReplacesAtomically(t *testing.T) {
	r := newTestRegistry(t, Options{})
	v1 := mustRegister(t, r, svcSpec(7, ctr("a", 1), ctr("b", 2)))
	a, b := v1.Container("a"), v1.Container("b")
	a.Stats.Begin() // a request in flight on a container about to leave
	b.Stats.Begin()
	b.Stats.Finish(0, true, time.Millisecond)
	b.Stats.Begin()
	v1.State.Begin()

	v2 := mustRegister(t, r, svcSpec(7, ctr("c", 3), ContainerSpec{ContainerID: "b", Port: 22, Status: StatusHealthy, Weight: 4}))
	if r.Lookup(7) != v2 || v2 == v1 {
		t.Fatal("re-registration did not publish a new version")
	}
	if got := ids(v2.Containers); !slices.Equal(got, []string{"c", "b"}) {
		t.Fatalf("containers = %v, want the new set in its order", got)
	}
	if v2.Container("a") != nil {
		t.Fatal("a container that left is still registered")
	}
	nb := v2.Container("b")
	if nb.Stats != b.Stats {
		t.Fatal("a container that stays lost its stats")
	}
	if nb.Port != 22 || nb.Weight != 4 {
		t.Fatalf("a container that stays was not updated: %+v", nb.ContainerSpec)
	}
	if nb.Stats.Requests.Load() != 2 || nb.Stats.Failures.Load() != 1 || nb.Stats.InFlight.Load() != 1 {
		t.Fatalf("kept counters changed: %d/%d/%d", nb.Stats.Requests.Load(), nb.Stats.Failures.Load(), nb.Stats.InFlight.Load())
	}
	if c := v2.Container("c").Stats; c.Requests.Load() != 0 || c == a.Stats || c == b.Stats {
		t.Fatal("a new container does not start with fresh counters")
	}
	if v2.State != v1.State || v2.State.Requests.Load() != 1 {
		t.Fatal("the service's counters were not kept")
	}
	// The old version is immutable: a request that picked from it still sees
	// the old set, and the departing container can finish its request.
	if got := ids(v1.Containers); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("old version changed: %v", got)
	}
	a.Stats.Finish(0, false, time.Millisecond)
	if a.Stats.InFlight.Load() != 0 || a.Stats.Requests.Load() != 1 {
		t.Fatal("departed container could not finish its request")
	}

	// A container that leaves and comes back later starts over.
	v3 := mustRegister(t, r, svcSpec(7, ctr("a", 1)))
	if v3.Container("a").Stats == a.Stats {
		t.Fatal("a container that left kept its stats when it came back")
	}
	// Registering an empty set is allowed: the service stays, with nothing to pick.
	v4 := mustRegister(t, r, svcSpec(7))
	if len(v4.Containers) != 0 || v4.Pick(nil) != nil || r.Lookup(7) != v4 {
		t.Fatal("empty registration")
	}
}

func TestRemoveAndRecreate(t *testing.T) {
	r := newTestRegistry(t, Options{})
	v1 := mustRegister(t, r, svcSpec(7, ctr("a", 1)))
	v1.State.Begin()
	removed, err := r.Remove(7)
	if err != nil || removed != v1 {
		t.Fatalf("Remove = %p, %v; want the last version %p", removed, err, v1)
	}
	if r.Lookup(7) != nil || len(r.Services()) != 0 {
		t.Fatal("service still registered after Remove")
	}
	_, err = r.Remove(7)
	wantKind(t, err, KindNotFound)

	v2 := mustRegister(t, r, svcSpec(7, ctr("a", 1)))
	if v2.State == v1.State || v2.State.Requests.Load() != 0 || v2.Container("a").Stats == v1.Container("a").Stats {
		t.Fatal("a re-created service inherited the removed one's counters")
	}
}

func TestPutContainer(t *testing.T) {
	r := newTestRegistry(t, Options{DefaultHost: "10.0.0.1", MaxContainers: 2})
	v1 := mustRegister(t, r, svcSpec(7, ctr("a", 1)))
	aStats := v1.Container("a").Stats

	c, err := r.PutContainer(7, ctr("b", 2))
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "10.0.0.1" || c.DialAddr() != "10.0.0.1:2" {
		t.Fatalf("default host not filled: %q", c.DialAddr())
	}
	v2 := r.Lookup(7)
	if got := ids(v2.Containers); !slices.Equal(got, []string{"a", "b"}) || v2.Container("b") != c {
		t.Fatalf("containers = %v", got)
	}
	if len(v1.Containers) != 1 {
		t.Fatal("PutContainer modified the previous version")
	}

	// Replace keeps the position and the counters.
	repl := ctr("a", 11)
	repl.Status = StatusDraining
	c, err = r.PutContainer(7, repl)
	if err != nil {
		t.Fatal(err)
	}
	v3 := r.Lookup(7)
	if got := ids(v3.Containers); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("containers = %v", got)
	}
	if c.Stats != aStats || c.Port != 11 || c.Status != StatusDraining {
		t.Fatalf("replaced container: %+v, same stats %v", c.ContainerSpec, c.Stats == aStats)
	}
	if got := ids(v3.Available()); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("available = %v", got)
	}

	// MaxContainers: a third is refused, replacing one at the maximum is not.
	before := r.snap.Load()
	_, err = r.PutContainer(7, ctr("c", 3))
	wantKind(t, err, KindInvalid)
	if r.snap.Load() != before {
		t.Fatal("refused PutContainer published a snapshot")
	}
	if _, err := r.PutContainer(7, ctr("b", 22)); err != nil {
		t.Fatalf("replacing at the maximum: %v", err)
	}

	_, err = r.PutContainer(8, ctr("a", 1))
	wantKind(t, err, KindNotFound)
}

func TestPatchContainer(t *testing.T) {
	r := newTestRegistry(t, Options{})
	v1 := mustRegister(t, r, svcSpec(7, ctr("a", 1), ctr("b", 2), ctr("c", 3)))
	bStats := v1.Container("b").Stats
	draining, zero := StatusDraining, 0

	c, err := r.PatchContainer(7, "b", ContainerPatch{Status: &draining})
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != StatusDraining || c.Weight != 1 || c.Stats != bStats || c.Port != 2 {
		t.Fatalf("patched container: %+v", c.ContainerSpec)
	}
	if got := ids(r.Lookup(7).Available()); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("available = %v", got)
	}
	if _, err := r.PatchContainer(7, "c", ContainerPatch{Weight: &zero}); err != nil {
		t.Fatal(err)
	}
	v := r.Lookup(7)
	if got := ids(v.Available()); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("available = %v", got)
	}
	if got := ids(v.Containers); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("containers = %v", got)
	}
	if v.State != v1.State {
		t.Fatal("PatchContainer replaced the service's state")
	}

	_, err = r.PatchContainer(8, "a", ContainerPatch{Status: &draining})
	wantKind(t, err, KindNotFound)
	_, err = r.PatchContainer(7, "zzz", ContainerPatch{Status: &draining})
	wantKind(t, err, KindNotFound)
}

func TestRemoveContainer(t *testing.T) {
	r := newTestRegistry(t, Options{})
	v1 := mustRegister(t, r, svcSpec(7, ctr("a", 1), ctr("b", 2), ctr("c", 3)))
	removed, err := r.RemoveContainer(7, "b")
	if err != nil || removed != v1.Container("b") {
		t.Fatalf("RemoveContainer = %v, %v", removed, err)
	}
	v2 := r.Lookup(7)
	if got := ids(v2.Containers); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("containers = %v", got)
	}
	if got := ids(v2.Available()); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("available = %v", got)
	}
	if got := ids(v1.Containers); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("previous version changed: %v", got)
	}
	_, err = r.RemoveContainer(7, "b")
	wantKind(t, err, KindNotFound)
	_, err = r.RemoveContainer(8, "a")
	wantKind(t, err, KindNotFound)
}

func TestCompareAndSwapStatus(t *testing.T) {
	r := newTestRegistry(t, Options{})
	v1 := mustRegister(t, r, svcSpec(7, ctr("a", 1), ctr("b", 2)))

	if !r.CompareAndSwapStatus(7, "a", StatusHealthy, StatusUnhealthy) {
		t.Fatal("first swap healthy -> unhealthy returned false")
	}
	v2 := r.Lookup(7)
	if r.CompareAndSwapStatus(7, "a", StatusHealthy, StatusUnhealthy) {
		t.Fatal("second identical swap returned true")
	}
	if r.Lookup(7) != v2 {
		t.Fatal("a swap that changed nothing published a new version")
	}
	if c := v2.Container("a"); c.Status != StatusUnhealthy || c.Stats != v1.Container("a").Stats {
		t.Fatalf("after swap: %+v", c.ContainerSpec)
	}
	if got := ids(v2.Available()); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("available = %v", got)
	}
	for _, tt := range []struct {
		name      string
		image     int64
		container string
		from, to  Status
	}{
		{"from equals to", 7, "b", StatusHealthy, StatusHealthy},
		{"from does not match", 7, "b", StatusStarting, StatusUnhealthy},
		{"unknown image", 8, "a", StatusUnhealthy, StatusHealthy},
		{"unknown container", 7, "zzz", StatusHealthy, StatusUnhealthy},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := r.snap.Load()
			if r.CompareAndSwapStatus(tt.image, tt.container, tt.from, tt.to) {
				t.Fatal("returned true")
			}
			if r.snap.Load() != before {
				t.Fatal("published a snapshot")
			}
		})
	}
	if !r.CompareAndSwapStatus(7, "a", StatusUnhealthy, StatusHealthy) {
		t.Fatal("swap back returned false")
	}
}

func TestCompareAndSwapStatusOncePerChange(t *testing.T) {
	// Health checkers racing to report the same change: exactly one wins.
	r := newTestRegistry(t, Options{})
	mustRegister(t, r, svcSpec(7, ctr("a", 1)))
	const checkers = 16
	for round := 0; round < 20; round++ {
		from, to := StatusHealthy, StatusUnhealthy
		if round%2 == 1 {
			from, to = to, from
		}
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i := 0; i < checkers; i++ {
			wg.Go(func() {
				if r.CompareAndSwapStatus(7, "a", from, to) {
					wins.Add(1)
				}
			})
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("round %d: %d winners, want 1", round, wins.Load())
		}
	}
}

func TestPortMappings(t *testing.T) {
	withPort := func(id int64, port int) ServiceSpec {
		s := svcSpec(id, ctr("a", 1))
		s.ExternalPort = port
		return s
	}

	t.Run("explicit", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		if r.ByPort(9001) != nil {
			t.Fatal("empty registry has port mappings")
		}
		svc := mustRegister(t, r, withPort(1, 9001))
		if svc.ExternalPort != 9001 || r.ByPort(9001) != svc {
			t.Fatal("explicit external_port not mapped")
		}
		mustRegister(t, r, withPort(2, 80))
		mustRegister(t, r, svcSpec(3)) // no port: no mapping
		want := []PortMapping{{80, 2, "image-2", 1, 0}, {9001, 1, "image-1", 1, 0}}
		if got := r.PortMappings(); !reflect.DeepEqual(got, want) {
			t.Fatalf("PortMappings = %+v, want %+v", got, want)
		}

		// The same image may ask for its own port again, or keep it by not asking.
		if svc := mustRegister(t, r, withPort(1, 9001)); svc.ExternalPort != 9001 {
			t.Fatal("re-asking for the own port")
		}
		if svc := mustRegister(t, r, svcSpec(1, ctr("b", 2))); svc.ExternalPort != 9001 || r.ByPort(9001) != svc {
			t.Fatal("port not kept on re-register")
		}
		// Moving to another port frees the old one.
		mustRegister(t, r, withPort(1, 9002))
		if r.ByPort(9001) != nil || r.ByPort(9002) != r.Lookup(1) {
			t.Fatal("moving the port")
		}
		// PutContainer and PatchContainer keep the port.
		if _, err := r.PutContainer(1, ctr("c", 3)); err != nil {
			t.Fatal(err)
		}
		if r.ByPort(9002) != r.Lookup(1) {
			t.Fatal("PutContainer lost the port mapping")
		}
		// Removing the service frees its port for another image.
		if _, err := r.Remove(1); err != nil {
			t.Fatal(err)
		}
		if r.ByPort(9002) != nil {
			t.Fatal("port still mapped after Remove")
		}
		mustRegister(t, r, withPort(4, 9002))
	})

	t.Run("conflict", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		first := mustRegister(t, r, withPort(1, 9001))
		before, services := r.snap.Load(), r.Services()
		_, err := r.Register(withPort(2, 9001))
		wantKind(t, err, KindConflict)
		if r.snap.Load() != before || !slices.Equal(r.Services(), services) || r.ByPort(9001) != first {
			t.Fatal("a conflicting registration changed the registry")
		}
		// Also when the other image already exists.
		mustRegister(t, r, withPort(2, 9002))
		before = r.snap.Load()
		_, err = r.Register(withPort(2, 9001))
		wantKind(t, err, KindConflict)
		if r.snap.Load() != before || r.ByPort(9002) != r.Lookup(2) {
			t.Fatal("a conflicting re-registration changed the registry")
		}
	})

	t.Run("range", func(t *testing.T) {
		r := newTestRegistry(t, Options{PortLo: 10000, PortHi: 10003})
		if p := mustRegister(t, r, svcSpec(1)).ExternalPort; p != 10000 {
			t.Fatalf("first port = %d, want 10000", p)
		}
		// An explicit port inside the range is honoured and then skipped.
		if p := mustRegister(t, r, withPort(2, 10001)).ExternalPort; p != 10001 {
			t.Fatalf("explicit port = %d", p)
		}
		// An explicit port outside the range is fine too.
		if p := mustRegister(t, r, withPort(3, 8080)).ExternalPort; p != 8080 {
			t.Fatalf("explicit port = %d", p)
		}
		if p := mustRegister(t, r, svcSpec(4)).ExternalPort; p != 10002 {
			t.Fatalf("allocated port = %d, want 10002", p)
		}
		// Re-registration keeps the allocated port.
		if p := mustRegister(t, r, svcSpec(1, ctr("x", 1))).ExternalPort; p != 10000 {
			t.Fatalf("port after re-register = %d, want 10000", p)
		}
		if p := mustRegister(t, r, svcSpec(5)).ExternalPort; p != 10003 {
			t.Fatalf("allocated port = %d, want 10003", p)
		}
		// Exhausted: a conflict that changes nothing.
		before := r.snap.Load()
		_, err := r.Register(svcSpec(6))
		wantKind(t, err, KindConflict)
		if r.snap.Load() != before || r.Lookup(6) != nil {
			t.Fatal("refused registration changed the registry")
		}
		// An existing service with a port is still re-registrable when full.
		mustRegister(t, r, svcSpec(4, ctr("y", 2)))
		// Remove frees a port; the lowest free one is given next.
		if _, err := r.Remove(4); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Remove(1); err != nil {
			t.Fatal(err)
		}
		if p := mustRegister(t, r, svcSpec(6)).ExternalPort; p != 10000 {
			t.Fatalf("allocated port = %d, want the lowest free 10000", p)
		}
		if p := mustRegister(t, r, svcSpec(7)).ExternalPort; p != 10002 {
			t.Fatalf("allocated port = %d, want 10002", p)
		}
		want := []PortMapping{{8080, 3, "image-3", 1, 0}, {10000, 6, "image-6", 0, 0}, {10001, 2, "image-2", 1, 0}, {10002, 7, "image-7", 0, 0}, {10003, 5, "image-5", 0, 0}}
		if got := r.PortMappings(); !reflect.DeepEqual(got, want) {
			t.Fatalf("PortMappings = %+v\nwant %+v", got, want)
		}
	})
}

func TestMaxContainers(t *testing.T) {
	r := newTestRegistry(t, Options{MaxContainers: 3})
	mustRegister(t, r, svcSpec(1, ctr("a", 1), ctr("b", 2), ctr("c", 3)))
	before := r.snap.Load()
	_, err := r.Register(svcSpec(1, ctr("a", 1), ctr("b", 2), ctr("c", 3), ctr("d", 4)))
	wantKind(t, err, KindInvalid)
	_, err = r.Register(svcSpec(2, ctr("a", 1), ctr("b", 2), ctr("c", 3), ctr("d", 4)))
	wantKind(t, err, KindInvalid)
	if r.snap.Load() != before {
		t.Fatal("refused registration changed the registry")
	}
}

func TestRejectedOperationsChangeNothing(t *testing.T) {
	setup := func(t *testing.T) *Registry {
		t.Helper()
		r := newTestRegistry(t, Options{PortLo: 9000, PortHi: 9001, MaxContainers: 2})
		mustRegister(t, r, svcSpec(1, ctr("a", 1), ctr("b", 2))) // gets 9000
		mustRegister(t, r, svcSpec(2, ctr("a", 1)))              // gets 9001
		// The port range is full: the static service needs an explicit port.
		static := []ServiceSpec{svcSpec(3, ctr("s", 1))}
		static[0].ExternalPort = 7000
		if err := r.ApplyStatic(static); err != nil {
			t.Fatal(err)
		}
		return r
	}
	draining := StatusDraining
	tests := []struct {
		name string
		op   func(r *Registry) error
		kind Kind
	}{
		{"register image_id 0", func(r *Registry) error { _, err := r.Register(svcSpec(0)); return err }, KindInvalid},
		{"register negative image_id", func(r *Registry) error { _, err := r.Register(svcSpec(-4)); return err }, KindInvalid},
		{"register without name", func(r *Registry) error {
			s := svcSpec(1, ctr("x", 1))
			s.ImageName = ""
			_, err := r.Register(s)
			return err
		}, KindInvalid},
		{"register too many containers", func(r *Registry) error {
			_, err := r.Register(svcSpec(1, ctr("a", 1), ctr("b", 2), ctr("c", 3)))
			return err
		}, KindInvalid},
		{"register port taken", func(r *Registry) error {
			s := svcSpec(1, ctr("x", 1))
			s.ExternalPort = 9001
			_, err := r.Register(s)
			return err
		}, KindConflict},
		{"register range exhausted", func(r *Registry) error { _, err := r.Register(svcSpec(4)); return err }, KindConflict},
		{"remove unknown", func(r *Registry) error { _, err := r.Remove(99); return err }, KindNotFound},
		{"put unknown image", func(r *Registry) error { _, err := r.PutContainer(99, ctr("a", 1)); return err }, KindNotFound},
		{"put over the maximum", func(r *Registry) error { _, err := r.PutContainer(1, ctr("c", 3)); return err }, KindInvalid},
		{"patch unknown image", func(r *Registry) error {
			_, err := r.PatchContainer(99, "a", ContainerPatch{Status: &draining})
			return err
		}, KindNotFound},
		{"patch unknown container", func(r *Registry) error {
			_, err := r.PatchContainer(1, "zzz", ContainerPatch{Status: &draining})
			return err
		}, KindNotFound},
		{"remove unknown container", func(r *Registry) error { _, err := r.RemoveContainer(1, "zzz"); return err }, KindNotFound},
		{"remove container of unknown image", func(r *Registry) error { _, err := r.RemoveContainer(99, "a"); return err }, KindNotFound},
		{"apply static with a conflict", func(r *Registry) error {
			// 5 would be added and 3 dropped before 6 fails.
			five, six := svcSpec(5), svcSpec(6)
			five.ExternalPort, six.ExternalPort = 7005, 9000
			return r.ApplyStatic([]ServiceSpec{five, six})
		}, KindConflict},
		{"apply static with an invalid service", func(r *Registry) error {
			bad := svcSpec(6)
			bad.ImageName = ""
			three := svcSpec(3, ctr("changed", 1))
			three.ExternalPort = 7000
			return r.ApplyStatic([]ServiceSpec{three, bad})
		}, KindInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := setup(t)
			snap, services, ports := r.snap.Load(), r.Services(), r.PortMappings()
			summary := r.Summary()
			wantKind(t, tt.op(r), tt.kind)
			if r.snap.Load() != snap {
				t.Error("a new snapshot was published")
			}
			if !slices.Equal(r.Services(), services) {
				t.Error("Services() changed")
			}
			if !reflect.DeepEqual(r.PortMappings(), ports) {
				t.Error("PortMappings() changed")
			}
			if r.Summary() != summary {
				t.Error("Summary() changed")
			}
		})
	}
}

func TestApplyStatic(t *testing.T) {
	r := newTestRegistry(t, Options{})
	api := mustRegister(t, r, svcSpec(3, ctr("api", 1)))

	err := r.ApplyStatic([]ServiceSpec{svcSpec(1, ctr("a", 1)), svcSpec(2, ctr("b", 2)), svcSpec(3, ctr("static", 3))})
	if err != nil {
		t.Fatal(err)
	}
	one, two := r.Lookup(1), r.Lookup(2)
	if one == nil || two == nil || !one.Static || !two.Static {
		t.Fatal("static services not added as static")
	}
	if r.Lookup(3) != api || api.Static {
		t.Fatal("a service registered through the API was replaced by a static one")
	}
	one.Container("a").Stats.Begin()

	// A reload drops 2 and changes 1's containers; 1 keeps its counters.
	if err := r.ApplyStatic([]ServiceSpec{svcSpec(1, ctr("a", 11), ctr("c", 3))}); err != nil {
		t.Fatal(err)
	}
	if r.Lookup(2) != nil {
		t.Fatal("a static service dropped from the configuration is still registered")
	}
	nOne := r.Lookup(1)
	if got := ids(nOne.Containers); !slices.Equal(got, []string{"a", "c"}) || !nOne.Static {
		t.Fatalf("static service 1 = %v static %v", got, nOne.Static)
	}
	if nOne.Container("a").Stats != one.Container("a").Stats || nOne.State != one.State {
		t.Fatal("a static service lost its counters on reload")
	}
	if r.Lookup(3) != api {
		t.Fatal("API service touched")
	}

	// The API may take over a static service; the configuration then leaves it alone.
	taken := mustRegister(t, r, svcSpec(1, ctr("api-1", 1)))
	if taken.Static {
		t.Fatal("an API registration is marked static")
	}
	if err := r.ApplyStatic(nil); err != nil {
		t.Fatal(err)
	}
	if r.Lookup(1) != taken || r.Lookup(3) != api || len(r.Services()) != 2 {
		t.Fatal("an empty static configuration removed API services")
	}

	// All or nothing: an error leaves even the earlier services of the list out.
	mustRegister(t, r, ServiceSpec{ImageID: 10, ImageName: "port-holder", ExternalPort: 7000})
	if err := r.ApplyStatic([]ServiceSpec{svcSpec(20, ctr("x", 1))}); err != nil {
		t.Fatal(err)
	}
	before, services := r.snap.Load(), r.Services()
	bad := svcSpec(22)
	bad.ExternalPort = 7000
	err = r.ApplyStatic([]ServiceSpec{svcSpec(21, ctr("y", 1)), bad})
	wantKind(t, err, KindConflict)
	if r.snap.Load() != before || !slices.Equal(r.Services(), services) {
		t.Fatal("a failed ApplyStatic changed the registry")
	}
	if r.Lookup(21) != nil || r.Lookup(20) == nil {
		t.Fatal("a failed ApplyStatic applied part of its list")
	}
}

func TestServicesSortedAndSpread(t *testing.T) {
	const n = 4 * numShards
	r := newTestRegistry(t, Options{})
	rng := rand.New(rand.NewPCG(1, 2))
	order := rng.Perm(n)
	for _, i := range order {
		id := int64(i)*7919 + 1 // spread and not contiguous
		mustRegister(t, r, svcSpec(id, ctr("a", 1)))
	}
	svcs := r.Services()
	if len(svcs) != n {
		t.Fatalf("%d services, want %d", len(svcs), n)
	}
	if !slices.IsSortedFunc(svcs, func(a, b *Service) int { return cmpInt64(a.ImageID, b.ImageID) }) {
		t.Fatal("Services() not sorted by image_id")
	}
	for i := 0; i < n; i++ {
		id := int64(i)*7919 + 1
		svc := r.Lookup(id)
		if svc == nil || svc.ImageID != id || svcs[i] != svc {
			t.Fatalf("Lookup(%d) = %v", id, svc)
		}
		if r.Lookup(id+1) != nil {
			t.Fatalf("Lookup(%d) found a service never registered", id+1)
		}
	}
	used := 0
	for _, shard := range r.snap.Load().shards {
		if len(shard) > 0 {
			used++
		}
	}
	if used != numShards {
		t.Fatalf("services spread over %d of %d shards", used, numShards)
	}
	if s := r.Summary(); s.Services != n || s.Containers != n || s.HealthyContainers != n {
		t.Fatalf("Summary = %+v", s)
	}
	// Large and boundary ids.
	for _, id := range []int64{1<<63 - 1, 1 << 62, 64, 128} {
		mustRegister(t, r, svcSpec(id))
		if r.Lookup(id) == nil {
			t.Fatalf("Lookup(%d) after Register", id)
		}
	}
}

func TestSummary(t *testing.T) {
	r := newTestRegistry(t, Options{})
	if s := r.Summary(); s != (Summary{}) {
		t.Fatalf("empty Summary = %+v", s)
	}
	sick := ctr("b", 2)
	sick.Status = StatusUnhealthy
	light := ctr("c", 3)
	light.Weight = 0 // healthy but takes nothing: counted as healthy
	mustRegister(t, r, svcSpec(1, ctr("a", 1), sick, light))
	mustRegister(t, r, svcSpec(2))
	drain := ctr("d", 4)
	drain.Status = StatusDraining
	mustRegister(t, r, svcSpec(3, drain, ctr("e", 5)))
	want := Summary{Services: 3, Containers: 5, HealthyContainers: 3}
	if s := r.Summary(); s != want {
		t.Fatalf("Summary = %+v, want %+v", s, want)
	}
	if h := r.Lookup(1).HealthyCount(); h != 2 {
		t.Fatalf("HealthyCount = %d, want 2", h)
	}
}

func TestUptime(t *testing.T) {
	base := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := base
	now = func() time.Time { return clock }
	t.Cleanup(func() { now = time.Now })

	r := New(Options{})
	if !r.Started().Equal(base) || r.Uptime() != 0 {
		t.Fatalf("started %v uptime %v", r.Started(), r.Uptime())
	}
	clock = base.Add(90 * time.Second)
	if r.Uptime() != 90*time.Second {
		t.Fatalf("uptime = %v, want 90s", r.Uptime())
	}
}

// TestConcurrentWritersAndReaders hammers the registry from writers that
// register, patch, put and remove while readers look up, pick and count; run
// it with -race. Each writer owns its images and keeps a model of them; at the
// end the registry must equal the models and every counter must add up.
func TestConcurrentWritersAndReaders(t *testing.T) {
	const (
		writers       = 4
		readers       = 6
		imagesEach    = 8
		writerOps     = 400
		minReaderRuns = 2000
	)
	r := newTestRegistry(t, Options{PortLo: 20000, PortHi: 20000 + writers*imagesEach - 1, MaxContainers: 6})
	imageOf := func(w, i int) int64 { return int64(w*1000 + i + 1) }

	type model struct {
		containers []ContainerSpec // nil and !present: not registered
		present    bool
	}
	models := make([]map[int64]*model, writers)
	var stop atomic.Bool
	var writersWG, readersWG sync.WaitGroup

	for w := 0; w < writers; w++ {
		models[w] = map[int64]*model{}
		writersWG.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			mine := models[w]
			for i := 0; i < imagesEach; i++ {
				mine[imageOf(w, i)] = &model{}
			}
			statuses := []Status{StatusHealthy, StatusHealthy, StatusUnhealthy, StatusStarting, StatusDraining}
			randomContainer := func(id string) ContainerSpec {
				return ContainerSpec{ContainerID: id, Host: "127.0.0.1", Port: 1 + rng.IntN(65535),
					Status: statuses[rng.IntN(len(statuses))], Weight: rng.IntN(3)}
			}
			for op := 0; op < writerOps; op++ {
				id := imageOf(w, rng.IntN(imagesEach))
				m := mine[id]
				switch k := rng.IntN(10); {
				case k < 4 || !m.present: // register a random subset of c0..c5
					spec := svcSpec(id)
					for _, c := range rng.Perm(6)[:rng.IntN(7)] {
						spec.Containers = append(spec.Containers, randomContainer(fmt.Sprintf("c%d", c)))
					}
					if _, err := r.Register(spec); err != nil {
						t.Errorf("Register(%d): %v", id, err)
						return
					}
					m.present, m.containers = true, spec.Containers
				case k < 6 && len(m.containers) > 0: // patch
					i := rng.IntN(len(m.containers))
					st, wt := statuses[rng.IntN(len(statuses))], rng.IntN(3)
					if _, err := r.PatchContainer(id, m.containers[i].ContainerID, ContainerPatch{Status: &st, Weight: &wt}); err != nil {
						t.Errorf("PatchContainer: %v", err)
						return
					}
					m.containers = slices.Clone(m.containers)
					m.containers[i].Status, m.containers[i].Weight = st, wt
				case k < 7: // put a new or existing container
					c := randomContainer(fmt.Sprintf("c%d", rng.IntN(6)))
					i := slices.IndexFunc(m.containers, func(x ContainerSpec) bool { return x.ContainerID == c.ContainerID })
					_, err := r.PutContainer(id, c)
					if i < 0 && len(m.containers) >= 6 {
						if KindOf(err) != KindInvalid {
							t.Errorf("PutContainer over the maximum: %v", err)
						}
						continue
					}
					if err != nil {
						t.Errorf("PutContainer: %v", err)
						return
					}
					m.containers = slices.Clone(m.containers)
					if i >= 0 {
						m.containers[i] = c
					} else {
						m.containers = append(m.containers, c)
					}
				case k < 8 && len(m.containers) > 0: // remove a container
					i := rng.IntN(len(m.containers))
					if _, err := r.RemoveContainer(id, m.containers[i].ContainerID); err != nil {
						t.Errorf("RemoveContainer: %v", err)
						return
					}
					m.containers = slices.Delete(slices.Clone(m.containers), i, i+1)
				default: // remove the service
					if _, err := r.Remove(id); err != nil {
						t.Errorf("Remove(%d): %v", id, err)
						return
					}
					m.present, m.containers = false, nil
				}
			}
		})
	}

	// What the readers counted, per counter owner, merged after the run.
	type tally struct{ requests, failures int64 }
	serviceTallies := make([]map[*ServiceState]*tally, readers)
	containerTallies := make([]map[*ContainerStats]*tally, readers)
	for rd := 0; rd < readers; rd++ {
		serviceTallies[rd] = map[*ServiceState]*tally{}
		containerTallies[rd] = map[*ContainerStats]*tally{}
		readersWG.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(rd), 7))
			st, ct := serviceTallies[rd], containerTallies[rd]
			var tried []*ContainerStats
			for i := 0; !stop.Load() || i < minReaderRuns; i++ {
				id := imageOf(rng.IntN(writers), rng.IntN(imagesEach))
				switch i % 50 {
				case 0:
					checkSnapshot(t, r.snap.Load())
				case 1:
					_ = r.Stats(r.Services())
					_ = r.PortMappings()
					_ = r.Summary()
				case 2:
					if svc := r.ByPort(20000 + rng.IntN(writers*imagesEach)); svc != nil && svc.ExternalPort == 0 {
						t.Errorf("ByPort returned service %d without a port", svc.ImageID)
					}
				}
				svc := r.Lookup(id)
				if svc == nil {
					continue
				}
				if svc.ImageID != id {
					t.Errorf("Lookup(%d) returned %d", id, svc.ImageID)
				}
				svc.State.Begin()
				failed := rng.IntN(5) == 0
				tried = tried[:0]
				for attempt := 0; attempt < 2; attempt++ {
					c := svc.Pick(tried)
					if c == nil {
						if len(svc.Available()) != 0 {
							t.Errorf("Pick returned nil with %d available", len(svc.Available()))
						}
						break
					}
					if !c.Available() || !slices.Contains(svc.Available(), c) {
						t.Errorf("picked unavailable container %q (%s, weight %d)", c.ContainerID, c.Status, c.Weight)
					}
					c.Stats.Begin()
					// Another version may be published between Begin and End.
					_ = r.Lookup(id)
					c.Stats.Finish(0, failed, time.Duration(rng.IntN(1000))*time.Microsecond)
					ctl := ct[c.Stats]
					if ctl == nil {
						ctl = &tally{}
						ct[c.Stats] = ctl
					}
					ctl.requests++
					if failed {
						ctl.failures++
					}
					tried = append(tried, c.Stats)
				}
				svc.State.Finish(0, failed, time.Millisecond)
				stl := st[svc.State]
				if stl == nil {
					stl = &tally{}
					st[svc.State] = stl
				}
				stl.requests++
				if failed {
					stl.failures++
				}
			}
		})
	}
	writersWG.Wait()
	stop.Store(true)
	readersWG.Wait()
	if t.Failed() {
		return
	}

	// The registry equals the writers' models.
	for w := 0; w < writers; w++ {
		for id, m := range models[w] {
			svc := r.Lookup(id)
			if !m.present {
				if svc != nil {
					t.Errorf("image %d registered, the model says removed", id)
				}
				continue
			}
			if svc == nil {
				t.Errorf("image %d missing", id)
				continue
			}
			got := make([]ContainerSpec, len(svc.Containers))
			for i, c := range svc.Containers {
				got[i] = c.ContainerSpec
			}
			if len(got) != 0 || len(m.containers) != 0 {
				if !reflect.DeepEqual(got, m.containers) {
					t.Errorf("image %d containers =\n%+v\nwant %+v", id, got, m.containers)
				}
			}
			if svc.ExternalPort < 20000 || svc.ExternalPort >= 20000+writers*imagesEach || r.ByPort(svc.ExternalPort) != svc {
				t.Errorf("image %d external port %d", id, svc.ExternalPort)
			}
		}
	}

	// Every counter equals what the readers counted, and nothing is in flight.
	sums := map[*ServiceState]tally{}
	for _, m := range serviceTallies {
		for k, v := range m {
			s := sums[k]
			s.requests += v.requests
			s.failures += v.failures
			sums[k] = s
		}
	}
	for s, want := range sums {
		if s.Requests.Load() != want.requests || s.Failures.Load() != want.failures || s.InFlight.Load() != 0 {
			t.Errorf("service counters %d/%d/%d, readers counted %d/%d/0",
				s.Requests.Load(), s.Failures.Load(), s.InFlight.Load(), want.requests, want.failures)
		}
	}
	csums := map[*ContainerStats]tally{}
	for _, m := range containerTallies {
		for k, v := range m {
			s := csums[k]
			s.requests += v.requests
			s.failures += v.failures
			csums[k] = s
		}
	}
	for s, want := range csums {
		if s.Requests.Load() != want.requests || s.Failures.Load() != want.failures || s.InFlight.Load() != 0 {
			t.Errorf("container counters %d/%d/%d, readers counted %d/%d/0",
				s.Requests.Load(), s.Failures.Load(), s.InFlight.Load(), want.requests, want.failures)
		}
	}
	if len(sums) == 0 || len(csums) == 0 {
		t.Fatal("the readers never found a service to pick from")
	}
	t.Logf("%d service states and %d containers counted", len(sums), len(csums))
}

// TestRetiredAddresses: every change that takes a dial address out of a
// service counts it once; changes that keep the addresses count nothing.
func TestRetiredAddresses(t *testing.T) {
	r := newTestRegistry(t, Options{})
	weight := 3
	steps := []struct {
		name   string
		change func() error
		want   uint64
	}{
		{"register two", func() error { _, err := r.Register(svcSpec(1, ctr("a", 9001), ctr("b", 9002))); return err }, 0},
		{"re-register the same", func() error { _, err := r.Register(svcSpec(1, ctr("a", 9001), ctr("b", 9002))); return err }, 0},
		{"re-register reordered", func() error { _, err := r.Register(svcSpec(1, ctr("b", 9002), ctr("a", 9001))); return err }, 0},
		{"patch a weight", func() error { _, err := r.PatchContainer(1, "a", ContainerPatch{Weight: &weight}); return err }, 0},
		{"move a to another port", func() error { _, err := r.PutContainer(1, ctr("a", 9003)); return err }, 1},
		{"remove a container", func() error { _, err := r.RemoveContainer(1, "b"); return err }, 2},
		{"replace the set", func() error { _, err := r.Register(svcSpec(1, ctr("c", 9004), ctr("d", 9005))); return err }, 3},
		{"remove the service", func() error { _, err := r.Remove(1); return err }, 5},
		{"a refused change", func() error { _, err := r.Remove(1); return err }, 5},
	}
	for _, s := range steps {
		err := s.change()
		if s.name != "a refused change" && err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := r.RetiredAddresses(); got != s.want {
			t.Fatalf("%s: %d retired addresses, want %d", s.name, got, s.want)
		}
	}
}
