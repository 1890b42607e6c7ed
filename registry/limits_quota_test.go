package registry

import (
	"fmt"
	"strings"
	"testing"
)

// TestMaxServices: past max_services a new service is refused (422, with
// the option named) and nothing changes; a service already there may still
// be registered again, and removing one makes room.
func TestMaxServices(t *testing.T) {
	r := newTestRegistry(t, Options{MaxServices: 3})
	for id := int64(1); id <= 3; id++ {
		mustRegister(t, r, svcSpec(id, ctr("a", 1)))
	}
	before := r.snap.Load()
	_, err := r.Register(svcSpec(4, ctr("a", 1)))
	wantKind(t, err, KindInvalid)
	if !strings.Contains(err.Error(), "max_services") {
		t.Fatalf("the refusal does not name the option: %v", err)
	}
	if r.snap.Load() != before || r.Lookup(4) != nil {
		t.Fatal("a refused registration changed the registry")
	}
	mustRegister(t, r, svcSpec(2, ctr("a", 1), ctr("b", 2))) // not a new service
	if _, err := r.Remove(1); err != nil {
		t.Fatal(err)
	}
	mustRegister(t, r, svcSpec(4, ctr("a", 1)))
}

// TestMaxTotalContainers: a registration or a PUT that would cross the
// quota of containers in all is refused whole (not the containers that
// fit), and one that does not grow the total passes even at the quota.
func TestMaxTotalContainers(t *testing.T) {
	r := newTestRegistry(t, Options{MaxTotalContainers: 5})
	mustRegister(t, r, svcSpec(1, ctr("a", 1), ctr("b", 2), ctr("c", 3)))
	before := r.snap.Load()

	_, err := r.Register(svcSpec(2, ctr("a", 1), ctr("b", 2), ctr("c", 3)))
	wantKind(t, err, KindInvalid)
	if !strings.Contains(err.Error(), "max_total_containers") {
		t.Fatalf("the refusal does not name the option: %v", err)
	}
	_, err = r.Register(svcSpec(1, ctr("a", 1), ctr("b", 2), ctr("c", 3), ctr("d", 4), ctr("e", 5), ctr("f", 6)))
	wantKind(t, err, KindInvalid)
	if r.snap.Load() != before || r.Lookup(2) != nil || len(r.Lookup(1).Containers) != 3 {
		t.Fatal("a refused registration changed the registry")
	}

	mustRegister(t, r, svcSpec(2, ctr("a", 1), ctr("b", 2))) // 5: at the quota
	_, err = r.PutContainer(2, ctr("c", 3))
	wantKind(t, err, KindInvalid)
	if len(r.Lookup(2).Containers) != 2 {
		t.Fatal("a refused PUT added the container")
	}
	if _, err := r.PutContainer(2, ctr("b", 22)); err != nil {
		t.Fatalf("replacing a container at the quota: %v", err)
	}
	mustRegister(t, r, svcSpec(1, ctr("x", 1), ctr("y", 2), ctr("z", 3))) // same count, other containers
	if _, err := r.RemoveContainer(1, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.PutContainer(2, ctr("c", 3)); err != nil {
		t.Fatalf("a PUT after a removal made room: %v", err)
	}
}

// TestQuotasLowered: a registry already over lowered quotas keeps what it
// has, may shrink, and takes nothing more.
func TestQuotasLowered(t *testing.T) {
	r := newTestRegistry(t, Options{})
	for id := int64(1); id <= 4; id++ {
		mustRegister(t, r, svcSpec(id, ctr("a", 1), ctr("b", 2)))
	}
	r.SetOptions(Options{MaxServices: 2, MaxTotalContainers: 4})
	mustRegister(t, r, svcSpec(1, ctr("a", 1))) // shrinks
	_, err := r.Register(svcSpec(5, ctr("a", 1)))
	wantKind(t, err, KindInvalid)
	_, err = r.Register(svcSpec(2, ctr("a", 1), ctr("b", 2), ctr("c", 3)))
	wantKind(t, err, KindInvalid)
}

// TestStaticServicesQuota: static services count against the quotas too;
// a configuration over them is refused whole.
func TestStaticServicesQuota(t *testing.T) {
	r := newTestRegistry(t, Options{MaxServices: 2})
	mustRegister(t, r, svcSpec(1, ctr("a", 1)))
	before := r.snap.Load()
	err := r.ApplyStatic([]ServiceSpec{svcSpec(10, ctr("a", 1)), svcSpec(11, ctr("a", 1))})
	if err == nil || !strings.Contains(err.Error(), "max_services") {
		t.Fatalf("static services over max_services: %v", err)
	}
	if r.snap.Load() != before {
		t.Fatal("refused static services changed the registry")
	}
}

// TestQuotasConcurrent: writers racing for the last places never take the
// registry past its quota.
func TestQuotasConcurrent(t *testing.T) {
	r := newTestRegistry(t, Options{MaxServices: 50, MaxTotalContainers: 120})
	errs := make(chan error, 200)
	for i := range 200 {
		go func() {
			_, err := r.Register(svcSpec(int64(i+1), ctr("a", 1), ctr(fmt.Sprint("b", i%3), 2)))
			errs <- err
		}()
	}
	ok := 0
	for range 200 {
		if <-errs == nil {
			ok++
		}
	}
	s := r.Summary()
	if s.Services != ok || s.Services > 50 || s.Containers > 120 {
		t.Fatalf("%d registrations passed; the registry holds %d services and %d containers", ok, s.Services, s.Containers)
	}
}
