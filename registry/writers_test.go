package registry

import (
	"net/netip"
	"strings"
	"testing"
)

func TestWriters(t *testing.T) {
	tests := []struct {
		name    string
		rules   []string
		allowed []string
		refused []string
		err     string
	}{
		{name: "default: loopback and private networks", rules: nil,
			allowed: []string{"127.0.0.1", "127.9.9.9", "::1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
				"100.64.0.1", "100.127.255.255", "fd12::1", "fc00::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1"},
			refused: []string{"203.0.113.2", "8.8.8.8", "172.32.0.1", "100.128.0.1", "192.169.0.1", "2001:db8::1",
				"169.254.169.254", "fe80::1", "::ffff:203.0.113.2"}},
		{name: "a CIDR replaces the default", rules: []string{"203.0.113.0/24"},
			allowed: []string{"203.0.113.2", "::ffff:203.0.113.9"}, refused: []string{"127.0.0.1", "10.0.0.1", "203.0.114.1"}},
		{name: "an address", rules: []string{"198.51.100.7", "2001:db8::/32"},
			allowed: []string{"198.51.100.7", "2001:db8:1::1"}, refused: []string{"198.51.100.8"}},
		{name: "a mapped CIDR", rules: []string{"::ffff:203.0.113.0/120"}, allowed: []string{"203.0.113.200"}},
		{name: "any", rules: []string{"any"}, allowed: []string{"203.0.113.2", "8.8.8.8", "127.0.0.1", "2001:db8::1"}},
		{name: "any with others", rules: []string{"any", "10.0.0.0/8"}, err: "cannot be combined"},
		{name: "bad CIDR", rules: []string{"10.0.0.0/33"}, err: `writes_from "10.0.0.0/33": not a CIDR`},
		{name: "short mapped CIDR", rules: []string{"::ffff:0.0.0.0/80"}, err: "at least 96 bits"},
		{name: "hostname", rules: []string{"ops.example.com"}, err: `not a CIDR, an IP address or "any"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := NewWriters(tt.rules)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range tt.allowed {
				if !w.Allows(netip.MustParseAddr(a)) {
					t.Errorf("%s refused", a)
				}
			}
			for _, a := range tt.refused {
				if w.Allows(netip.MustParseAddr(a)) {
					t.Errorf("%s allowed", a)
				}
			}
		})
	}
}
