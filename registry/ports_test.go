package registry

import (
	"strings"
	"testing"
)

// TestCheckExternalPort: a port may be mapped when it is in port_range or a
// port of a mapped-port site, never when another site is served on it.
func TestCheckExternalPort(t *testing.T) {
	sites := &SitePorts{Served: map[int]bool{3000: true, 8050: true}, Mapping: map[int]bool{9001: true}}
	for _, tc := range []struct {
		name string
		opts Options
		port int
		want string // a substring of the refusal; "" when allowed
	}{
		{"in port_range", Options{PortLo: 8000, PortHi: 8099, Sites: sites}, 8001, ""},
		{"a mapped-port site", Options{Sites: sites}, 9001, ""},
		{"the API's site", Options{PortLo: 8000, PortHi: 8099, Sites: sites}, 3000, "the port of a site this Caddy serves"},
		{"a served port inside port_range", Options{PortLo: 8000, PortHi: 8099, Sites: sites}, 8050, "the port of a site this Caddy serves"},
		{"outside port_range", Options{PortLo: 8000, PortHi: 8099, Sites: sites}, 8100, "use a port of port_range 8000-8099"},
		{"no range, no mapped-port site", Options{Sites: &SitePorts{}}, 8001, "is not a port for mapping"},
		{"sites not known yet", Options{}, 3000, ""},
		{"not a port", Options{}, 70000, "from 1 to 65535"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.opts.CheckExternalPort(tc.port)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("CheckExternalPort(%d) = %q, want %q", tc.port, got, tc.want)
			}
		})
	}
}

// TestExternalPortRuleOnEveryPath: a registration, the allocation from
// port_range, a record received from another node and one restored before
// the sites were known all follow the rule.
func TestExternalPortRuleOnEveryPath(t *testing.T) {
	sites := &SitePorts{Served: map[int]bool{3000: true, 8000: true}, Mapping: map[int]bool{9001: true}}
	r := newTestRegistry(t, Options{})
	ctr := []ContainerRecord{{ContainerID: "a", Host: "127.0.0.1", Port: 7001, Status: StatusHealthy, Weight: 1}}
	// restored while the sites were not known: accepted, then left out
	if _, err := r.Restore(&Loaded{Records: []ServiceRecord{
		{ImageID: 1, ImageName: "evil", Algorithm: RoundRobin, ExternalPort: 3000, Containers: ctr},
		{ImageID: 2, ImageName: "fine", Algorithm: RoundRobin, ExternalPort: 9001, Containers: ctr}}}); err != nil {
		t.Fatal(err)
	}
	left := r.SetOptions(Options{PortLo: 8000, PortHi: 8001, Sites: sites})
	if len(left) != 1 || !strings.Contains(left[0], "service 1") || r.Lookup(1) != nil || r.ByPort(3000) != nil {
		t.Fatalf("left out %q; image 1 %v", left, r.Lookup(1))
	}
	if r.ByPort(9001) == nil || r.ByPort(9001).ImageID != 2 {
		t.Fatal("the allowed mapping of image 2 was not kept")
	}

	_, err := r.Register(ServiceSpec{ImageID: 3, ImageName: "evil", ExternalPort: 3000})
	if KindOf(err) != KindInvalid || !strings.Contains(err.Error(), "external_port 3000") {
		t.Fatalf("register on the API's port: %v", err)
	}
	svc, err := r.Register(ServiceSpec{ImageID: 4, ImageName: "auto"})
	if err != nil || svc.ExternalPort != 8001 {
		t.Fatalf("allocation skips the served 8000 of the range: %v, port %v", err, svc)
	}

	errs := r.ApplyRemote(RemoteEvent{Revision: 5, Records: []Remote{{ImageID: 5, Revision: 5,
		Record: &ServiceRecord{ImageID: 5, ImageName: "evil", Algorithm: RoundRobin, ExternalPort: 3000, Containers: ctr}}}})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "external_port 3000") || r.Lookup(5) != nil || r.ByPort(3000) != nil {
		t.Fatalf("a received record on the API's port: %v, image 5 %v", errs, r.Lookup(5))
	}
}

// TestParsePortRange: the one parser of port_range.
func TestParsePortRange(t *testing.T) {
	for _, tc := range []struct {
		in     string
		lo, hi int
		ok     bool
	}{{"8000-8099", 8000, 8099, true}, {"1-65535", 1, 65535, true}, {"9-8", 0, 0, false}, {"0-10", 0, 0, false},
		{"8000", 0, 0, false}, {"a-b", 0, 0, false}, {"1-65536", 0, 0, false},
		// digits only: a sign is not part of a port
		{"+8000-8099", 0, 0, false}, {"8000-+8099", 0, 0, false}, {"8000--8099", 0, 0, false}} {
		lo, hi, err := ParsePortRange(tc.in)
		if (err == nil) != tc.ok || lo != tc.lo || hi != tc.hi {
			t.Errorf("ParsePortRange(%q) = %d, %d, %v", tc.in, lo, hi, err)
		}
	}
}

// TestReplaceKeepsAnotherOwnersPort: a re-list can set image 101 on a port
// before it removes image 102, which held that port in the node's older
// view; removing 102 must not free 101's port (the chaos check's seed 60001:
// the node then took a registration of 102 on that port for free, 200).
func TestReplaceKeepsAnotherOwnersPort(t *testing.T) {
	old102 := &Service{ImageID: 102, ExternalPort: 9400}
	snap := emptySnapshot().replace(nil, old102)
	snap = snap.replace(nil, &Service{ImageID: 101, ExternalPort: 9400})
	snap = snap.replace(old102, nil)
	if got, ok := snap.ports[9400]; !ok || got != 101 {
		t.Fatalf("port 9400 after 102's removal: owner %d (held: %v), want 101", got, ok)
	}
	// and its own port is freed as before
	snap = snap.replace(&Service{ImageID: 101, ExternalPort: 9400}, nil)
	if got, ok := snap.ports[9400]; ok {
		t.Fatalf("port 9400 still owned by %d after its owner's removal", got)
	}
}
