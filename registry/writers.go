package registry

import (
	"fmt"
	"net/netip"
	"strings"
)

// PrivateNetworks are the networks the management API takes writes from
// unless the handler's writes_from says otherwise: loopback, RFC 1918,
// RFC 4193 unique local addresses and RFC 6598 shared address space
// (carrier-grade NAT, also Tailscale's), where a platform's orchestrator
// lives.
var PrivateNetworks = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("fc00::/7"),
}

// WritersAny is the writes_from value that accepts writes from any address.
const WritersAny = "any"

// Writers decides which client addresses may change the registry through a
// site's management API.
type Writers struct {
	any      bool
	prefixes []netip.Prefix
}

// NewWriters compiles writes_from rules: CIDRs ("203.0.113.0/24"), IP
// addresses, or the single word "any". No rules means PrivateNetworks.
func NewWriters(rules []string) (*Writers, error) {
	w := &Writers{}
	if len(rules) == 0 {
		w.prefixes = PrivateNetworks
		return w, nil
	}
	for _, r := range rules {
		if r == WritersAny {
			if len(rules) > 1 {
				return nil, fmt.Errorf("writes_from: %q accepts every address and cannot be combined with others", WritersAny)
			}
			w.any = true
			continue
		}
		if strings.Contains(r, "/") {
			p, err := netip.ParsePrefix(r)
			if err != nil {
				return nil, fmt.Errorf("writes_from %q: not a CIDR (e.g. 203.0.113.0/24): %v", r, err)
			}
			if p.Addr().Is4In6() {
				if p.Bits() < 96 {
					return nil, fmt.Errorf("writes_from %q: an IPv4-mapped prefix needs at least 96 bits", r)
				}
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			w.prefixes = append(w.prefixes, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(r)
		if err != nil {
			return nil, fmt.Errorf("writes_from %q: not a CIDR, an IP address or %q", r, WritersAny)
		}
		a = a.Unmap()
		w.prefixes = append(w.prefixes, netip.PrefixFrom(a, a.BitLen()))
	}
	return w, nil
}

// Allows reports whether a write from the client address a is accepted.
func (w *Writers) Allows(a netip.Addr) bool {
	if w.any {
		return true
	}
	a = a.Unmap()
	for _, p := range w.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
