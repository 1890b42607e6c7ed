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
			err = g.Check(tt.host)
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
