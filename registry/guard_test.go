package registry

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestGuard(t *testing.T) {
	dns := map[string][]netip.Addr{
		"app.internal":             {netip.MustParseAddr("10.1.2.3")},
		"metadata.google.internal": {netip.MustParseAddr("169.254.169.254")},
		"split.example":            {netip.MustParseAddr("10.0.0.9"), netip.MustParseAddr("8.8.8.8")},
	}
	resolve := func(_ context.Context, host string) ([]netip.Addr, error) {
		if a, ok := dns[host]; ok {
			return a, nil
		}
		return nil, errors.New("no such host")
	}
	tests := []struct {
		name  string
		rules []string
		host  string
		want  string // "" allowed, else a substring of the error
	}{
		{"no rules: any address", nil, "203.0.113.7", ""},
		{"no rules: metadata refused", nil, "169.254.169.254", "link-local or cloud metadata"},
		{"no rules: v6 metadata refused", nil, "fd00:ec2::254", "cloud metadata"},
		{"no rules: v6 link-local refused", nil, "fe80::1", "link-local"},
		{"no rules: mapped v4 metadata refused", nil, "::ffff:169.254.169.254", "link-local"},
		{"no rules: hostname to metadata refused", nil, "metadata.google.internal", "169.254.169.254"},
		{"no rules: unresolvable hostname allowed", nil, "later.internal", ""},
		{"cidr allows", []string{"10.0.0.0/8"}, "10.9.8.7", ""},
		{"outside cidr", []string{"10.0.0.0/8"}, "192.168.1.1", "outside allowed_upstreams (10.0.0.0/8)"},
		{"hostname resolved into cidr", []string{"10.0.0.0/8"}, "app.internal", ""},
		{"hostname with one address outside", []string{"10.0.0.0/8"}, "split.example", "8.8.8.8"},
		{"unresolvable with rules", []string{"10.0.0.0/8"}, "nowhere.internal", "could not be resolved"},
		{"listed hostname, no lookup", []string{"10.0.0.0/8", "nowhere.internal"}, "nowhere.internal", ""},
		{"wildcard hostname", []string{"*.svc.local"}, "api.ns.svc.local", ""},
		{"wildcard does not match the bare suffix's neighbour", []string{"*.svc.local"}, "evilsvc.local", "could not be resolved"},
		{"single IP rule", []string{"127.0.0.1"}, "127.0.0.1", ""},
		{"0.0.0.0/0 does not unlock metadata", []string{"0.0.0.0/0"}, "169.254.169.254", "link-local"},
		{"explicit range unlocks metadata", []string{"169.254.0.0/16"}, "169.254.169.254", ""},
		{"hostname case-insensitive", []string{"DB.Internal"}, "db.internal", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := NewGuard(tt.rules)
			if err != nil {
				t.Fatal(err)
			}
			g.Resolve = resolve
			err = g.Check(tt.host, 80)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Check(%q) = %v, want allowed", tt.host, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Check(%q) = %v, want an error with %q", tt.host, err, tt.want)
			case err != nil && KindOf(err) != KindInvalid:
				t.Fatalf("kind %v, want KindInvalid (422)", KindOf(err))
			}
		})
	}
}

func TestNewGuardRejectsBadRules(t *testing.T) {
	for _, rule := range []string{"10.0.0.0/33", "not a host!", "http://x", "10.0.0.0/8/1"} {
		if _, err := NewGuard([]string{rule}); err == nil {
			t.Errorf("NewGuard(%q) accepted", rule)
		}
	}
}

// TestRegistryAppliesGuard: registrations, single containers and static
// services outside the guard are refused and change nothing; the default
// host counts too.
func TestRegistryAppliesGuard(t *testing.T) {
	g, err := NewGuard([]string{"127.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	r := New(Options{Guard: g})
	if _, err := r.Register(svcSpec(1, ctr("a", 80))); err != nil { // default host 127.0.0.1
		t.Fatal(err)
	}
	bad := svcSpec(2, ctr("a", 80))
	bad.Containers[0].Host = "10.0.0.1"
	if _, err := r.Register(bad); KindOf(err) != KindInvalid || r.Lookup(2) != nil {
		t.Fatalf("register outside the guard: %v", err)
	}
	if _, err := r.PutContainer(1, ContainerSpec{ContainerID: "b", Host: "169.254.169.254", Port: 80, Status: StatusHealthy, Weight: 1}); KindOf(err) != KindInvalid {
		t.Fatalf("put metadata address: %v", err)
	}
	if err := r.ApplyStatic([]ServiceSpec{bad}); err == nil || r.Lookup(2) != nil {
		t.Fatalf("static service outside the guard: %v", err)
	}
	r2 := New(Options{Guard: g, DefaultHost: "10.0.0.1"})
	if _, err := r2.Register(svcSpec(1, ctr("a", 80))); KindOf(err) != KindInvalid {
		t.Fatalf("default host outside the guard: %v", err)
	}
}

// TestGuardSelfRule: no container may be at one of this Caddy's own
// listeners, whatever allowed_upstreams says; only allowed_self_upstreams
// opens one exact address.
func TestGuardSelfRule(t *testing.T) {
	dns := map[string][]netip.Addr{
		"admin.internal": {netip.MustParseAddr("127.0.0.1")},
		"lan.internal":   {netip.MustParseAddr("10.1.2.3")},
	}
	listeners := []SelfListener{
		{Addr: netip.MustParseAddr("127.0.0.1"), Port: 2019, What: "admin endpoint"},
		{Port: 3000, What: "listener :3000 of server srv0"},
		{Addr: netip.MustParseAddr("10.9.9.9"), Port: 2379, What: "etcd endpoint"},
	}
	local := []netip.Addr{netip.MustParseAddr("10.1.2.3")}
	tests := []struct {
		name    string
		rules   []string
		allowed []string
		host    string
		port    int
		want    string // "" allowed, else a substring of the error
	}{
		{"admin address", nil, nil, "127.0.0.1", 2019, "admin endpoint: the proxy never dials itself (the self rule"},
		{"admin, allowed_upstreams 127.0.0.0/8 does not unlock", []string{"127.0.0.0/8"}, nil, "127.0.0.1", 2019, "self rule"},
		{"admin, a listed name does not unlock", []string{"admin.internal"}, nil, "admin.internal", 2019, "self rule"},
		{"admin through a name", nil, nil, "admin.internal", 2019, `host "admin.internal" (127.0.0.1) port 2019`},
		{"admin through the unspecified address", nil, nil, "0.0.0.0", 2019, "admin endpoint"},
		{"admin through mapped v4", nil, nil, "::ffff:127.0.0.1", 2019, "admin endpoint"},
		{"another loopback port", nil, nil, "127.0.0.1", 2020, ""},
		{"wildcard listener on loopback", nil, nil, "127.0.0.1", 3000, "listener :3000"},
		{"wildcard listener on v6 loopback", nil, nil, "::1", 3000, "listener :3000"},
		{"wildcard listener on a local address", nil, nil, "10.1.2.3", 3000, "listener :3000"},
		{"wildcard listener through a name", nil, nil, "lan.internal", 3000, "listener :3000"},
		{"same port on another machine", nil, nil, "10.1.2.4", 3000, ""},
		{"etcd endpoint", nil, nil, "10.9.9.9", 2379, "etcd endpoint"},
		{"opt-in opens the exact address", nil, []string{"127.0.0.1:3000"}, "127.0.0.1", 3000, ""},
		{"opt-in range", nil, []string{"127.0.0.1:2999-3001"}, "127.0.0.1", 3000, ""},
		{"opt-in is exact: not ::1", nil, []string{"127.0.0.1:3000"}, "::1", 3000, "allowed_self_upstreams"},
		{"opt-in is exact: not another port", nil, []string{"127.0.0.1:3000"}, "127.0.0.1", 2019, "admin endpoint"},
		{"opt-in does not bypass allowed_upstreams", []string{"10.0.0.0/8"}, []string{"127.0.0.1:3000"}, "127.0.0.1", 3000, "outside allowed_upstreams"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := NewGuard(tt.rules)
			if err != nil {
				t.Fatal(err)
			}
			var allowed []SelfAllow
			for _, s := range tt.allowed {
				a, err := ParseSelfAllow(s)
				if err != nil {
					t.Fatal(err)
				}
				allowed = append(allowed, a)
			}
			g.SetSelf(listeners, local, allowed)
			g.Resolve = func(_ context.Context, host string) ([]netip.Addr, error) {
				if a, ok := dns[host]; ok {
					return a, nil
				}
				return nil, errors.New("no such host")
			}
			err = g.Check(tt.host, 80, tt.port)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Check(%q, %d) = %v, want allowed", tt.host, tt.port, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Check(%q, %d) = %v, want an error with %q", tt.host, tt.port, err, tt.want)
			case err != nil && KindOf(err) != KindInvalid:
				t.Fatalf("kind %v, want KindInvalid (422)", KindOf(err))
			}
			// the dialers apply the same rule to the address they connect to
			if a, perr := netip.ParseAddr(tt.host); perr == nil && len(tt.rules) == 0 {
				derr := g.CheckDial(netip.AddrPortFrom(a, uint16(tt.port)).String())
				if (derr != nil) != (tt.want != "") {
					t.Fatalf("CheckDial = %v, want refused %v", derr, tt.want != "")
				}
				if derr != nil && (strings.Contains(derr.Error(), tt.host) || !strings.Contains(derr.Error(), "self rule")) {
					t.Fatalf("CheckDial's error %q names the address or not the rule", derr)
				}
			}
		})
	}
}

func TestGuardCheckDialMetadata(t *testing.T) {
	var g *Guard // no configuration: the metadata rule still holds
	for _, addr := range []string{"169.254.169.254:80", "[fd00:ec2::254]:80", "[fe80::1%eth0]:80"} {
		err := g.CheckDial(addr)
		var refused *DialRefused
		if !errors.As(err, &refused) || refused.Rule != RuleMetadata {
			t.Errorf("CheckDial(%q) = %v, want the metadata rule", addr, err)
		}
	}
	if err := g.CheckDial("10.0.0.1:80"); err != nil {
		t.Errorf("CheckDial(10.0.0.1:80) = %v", err)
	}
	open, _ := NewGuard([]string{"169.254.0.0/16"})
	if err := open.CheckDial("169.254.169.254:80"); err != nil {
		t.Errorf("an explicit range did not unlock metadata at dial time: %v", err)
	}
}

func TestParseSelfAllow(t *testing.T) {
	for _, bad := range []string{"localhost:9001", ":9001", "0.0.0.0:9001", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:9004-9001", "127.0.0.1:70000",
		"127.0.0.1:+9001", "127.0.0.1:9001-+9004", "127.0.0.1:9001-70000", "127.0.0.1:9001-"} {
		if _, err := ParseSelfAllow(bad); err == nil {
			t.Errorf("ParseSelfAllow(%q) accepted", bad)
		}
	}
	if a, err := ParseSelfAllow("[::1]:9001-9004"); err != nil || a.Lo != 9001 || a.Hi != 9004 || !a.Addr.IsLoopback() {
		t.Errorf("ParseSelfAllow([::1]:9001-9004) = %+v, %v", a, err)
	}
}
