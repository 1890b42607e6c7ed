package registry

import (
	"net/netip"
	"strings"
	"testing"
)

// TestRemoteKeepsThisNodesVerdicts: a record another node committed
// replaces what is registered, but a container keeps this node's health
// verdict while the orchestrator's pushed status is unchanged; a newly
// pushed status wins. Counters carry over.
func TestRemoteKeepsThisNodesVerdicts(t *testing.T) {
	r := newTestRegistry(t, Options{})
	if errs := r.ApplyRemote(RemoteEvent{Revision: 5, Records: []Remote{{ImageID: 1, Revision: 5,
		Record: &ServiceRecord{ImageID: 1, ImageName: "web", Algorithm: RoundRobin, Containers: []ContainerRecord{
			{ContainerID: "a", Host: "127.0.0.1", Port: 8001, Status: StatusHealthy, Weight: 1},
			{ContainerID: "b", Host: "127.0.0.1", Port: 8002, Status: StatusHealthy, Weight: 1}}}}}}); len(errs) != 0 {
		t.Fatal(errs)
	}
	if r.Lookup(1) == nil || r.Revision() != 5 {
		t.Fatalf("record not applied: %v, revision %d", r.Lookup(1), r.Revision())
	}
	if !r.CompareAndSwapStatus(1, "a", StatusHealthy, StatusUnhealthy) { // this node's checks fail a
		t.Fatal("CompareAndSwapStatus")
	}
	r.Lookup(1).Container("b").Stats.Begin()

	// Another node changes b's weight and drains nothing: a stays unhealthy here.
	rec := ServiceRecord{ImageID: 1, ImageName: "web", Algorithm: RoundRobin, Containers: []ContainerRecord{
		{ContainerID: "a", Host: "127.0.0.1", Port: 8001, Status: StatusHealthy, Weight: 1},
		{ContainerID: "b", Host: "127.0.0.1", Port: 8002, Status: StatusHealthy, Weight: 7}}}
	r.ApplyRemote(RemoteEvent{Revision: 6, Records: []Remote{{ImageID: 1, Revision: 6, Record: &rec}}})
	svc := r.Lookup(1)
	if a, b := svc.Container("a"), svc.Container("b"); a.Status != StatusUnhealthy || b.Weight != 7 || b.Stats.InFlight.Load() != 1 {
		t.Fatalf("after a remote weight change: a %s (want this node's unhealthy), b weight %d in flight %d",
			a.Status, b.Weight, b.Stats.InFlight.Load())
	}
	if got := svc.record().Containers[0].Status; got != StatusHealthy {
		t.Fatalf("a is stored as %s: a verdict must never reach the store", got)
	}

	// An old event (own commit coming back, a replay) changes nothing.
	before := r.Lookup(1)
	r.ApplyRemote(RemoteEvent{Revision: 6, Records: []Remote{{ImageID: 1, Revision: 6, Record: &rec}}})
	if r.Lookup(1) != before {
		t.Fatal("an event at a revision already applied was applied again")
	}

	// The orchestrator drains a through another node: the pushed status wins.
	rec.Containers[0].Status = StatusDraining
	r.ApplyRemote(RemoteEvent{Revision: 7, Records: []Remote{{ImageID: 1, Revision: 7, Record: &rec}}})
	if a := r.Lookup(1).Container("a"); a.Status != StatusDraining {
		t.Fatalf("a is %s after a pushed drain, want draining", a.Status)
	}

	// A re-list without image 1 removes it; a bad record is refused and named.
	bad := ServiceRecord{ImageID: 2, ImageName: "", Algorithm: RoundRobin}
	errs := r.ApplyRemote(RemoteEvent{Revision: 9, Reset: true, Records: []Remote{{ImageID: 2, Revision: 8, Record: &bad}}})
	if r.Lookup(1) != nil || r.Lookup(2) != nil || len(errs) != 1 {
		t.Fatalf("after a reset without image 1 and a bad image 2: 1=%v 2=%v errs=%v", r.Lookup(1), r.Lookup(2), errs)
	}
}

// TestRemoteLeavesOutSelfAddresses: a record received from the shared store
// with a container at this node's own listener (the admin endpoint) is
// applied without that container, which is named in the errors.
func TestRemoteLeavesOutSelfAddresses(t *testing.T) {
	g, _ := NewGuard(nil)
	g.SetSelf([]SelfListener{{Addr: netip.MustParseAddr("127.0.0.1"), Port: 2019, What: "admin endpoint"}}, nil, nil)
	r := newTestRegistry(t, Options{Guard: g})
	errs := r.ApplyRemote(RemoteEvent{Revision: 3, Records: []Remote{{ImageID: 1, Revision: 3,
		Record: &ServiceRecord{ImageID: 1, ImageName: "web", Algorithm: RoundRobin, Containers: []ContainerRecord{
			{ContainerID: "admin", Host: "127.0.0.1", Port: 2019, Status: StatusHealthy, Weight: 1},
			{ContainerID: "ok", Host: "127.0.0.1", Port: 8002, Status: StatusHealthy, Weight: 1}}}}}})
	svc := r.Lookup(1)
	if svc == nil || len(svc.Containers) != 1 || svc.Container("ok") == nil {
		t.Fatalf("after a record with a container at the admin endpoint: %+v, want container ok alone", svc)
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), `container "admin" left out`) || !strings.Contains(errs[0].Error(), "self rule") {
		t.Fatalf("errors %v, want the left-out container named with the rule", errs)
	}
}
