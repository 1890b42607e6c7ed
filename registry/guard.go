package registry

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// deniedByDefault are addresses no container should ever be: link-local
// ranges, where cloud metadata services live (169.254.169.254,
// fd00:ec2::254). A container there is refused unless allowed_upstreams
// lists a range at least as specific that contains it.
var deniedByDefault = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
}

// Guard decides which hosts containers may be registered with: whoever can
// register a container decides where the proxy sends traffic, so an
// operator can confine that to the networks the containers live in.
type Guard struct {
	rules    []string // as configured, for messages
	prefixes []netip.Prefix
	names    []string // lower-case hostnames; "*.example" matches any subdomain
	// Resolve looks a hostname up; nil uses the system resolver with a
	// 2-second timeout.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
}

// NewGuard compiles allowed_upstreams rules: CIDRs ("10.0.0.0/8"), IP
// addresses, and hostnames ("db.internal", "*.svc.cluster.local"). No rules
// allows any host but the default-denied link-local ranges.
func NewGuard(rules []string) (*Guard, error) {
	g := &Guard{rules: rules}
	for _, r := range rules {
		switch {
		case strings.Contains(r, "/"):
			p, err := netip.ParsePrefix(r)
			if err != nil {
				return nil, fmt.Errorf("allowed_upstreams %q: not a CIDR: %v", r, err)
			}
			g.prefixes = append(g.prefixes, p.Masked())
		default:
			if a, err := netip.ParseAddr(r); err == nil {
				a = a.Unmap()
				g.prefixes = append(g.prefixes, netip.PrefixFrom(a, a.BitLen()))
				continue
			}
			name := strings.ToLower(r)
			if msg := CheckHost(strings.TrimPrefix(name, "*.")); msg != "" {
				return nil, fmt.Errorf("allowed_upstreams %q: not a CIDR, an IP address or a hostname", r)
			}
			g.names = append(g.names, name)
		}
	}
	return g, nil
}

// restricted reports whether rules were configured.
func (g *Guard) restricted() bool { return g != nil && len(g.rules) > 0 }

// Check returns why host may not be a container's host, or nil.
func (g *Guard) Check(host string) error {
	if a, err := netip.ParseAddr(host); err == nil {
		return g.checkAddr(host, a.Unmap())
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if g.restricted() && g.nameAllowed(name) {
		return nil
	}
	addrs, err := g.resolve(name)
	if err != nil {
		if !g.restricted() {
			return nil // nothing to check against; the link-local rule is checked again when it resolves
		}
		return guardError("host %q could not be resolved to check it against allowed_upstreams (%s): %v",
			host, strings.Join(g.rules, ", "), err)
	}
	for _, a := range addrs {
		if err := g.checkAddr(host, a.Unmap()); err != nil {
			return err
		}
	}
	return nil
}

func (g *Guard) checkAddr(host string, a netip.Addr) error {
	for _, d := range deniedByDefault {
		if d.Contains(a) && !g.explicitlyAllows(a, d) {
			return guardError("host %q (%s) is a link-local or cloud metadata address (%s), refused unless "+
				"allowed_upstreams lists a range that contains it, e.g. %s", host, a, d, d)
		}
	}
	if !g.restricted() {
		return nil
	}
	for _, p := range g.prefixes {
		if p.Contains(a) {
			return nil
		}
	}
	return guardError("host %q (%s) is outside allowed_upstreams (%s)", host, a, strings.Join(g.rules, ", "))
}

// explicitlyAllows reports whether a rule at least as specific as the
// denied range d contains a (so 0.0.0.0/0 does not unlock metadata).
func (g *Guard) explicitlyAllows(a netip.Addr, d netip.Prefix) bool {
	if g == nil {
		return false
	}
	for _, p := range g.prefixes {
		if p.Contains(a) && p.Bits() >= d.Bits() {
			return true
		}
	}
	return false
}

func (g *Guard) nameAllowed(name string) bool {
	for _, n := range g.names {
		if n == name || strings.HasPrefix(n, "*.") && strings.HasSuffix(name, n[1:]) {
			return true
		}
	}
	return false
}

func (g *Guard) resolve(name string) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if g != nil && g.Resolve != nil {
		return g.Resolve(ctx, name)
	}
	return net.DefaultResolver.LookupNetIP(ctx, "ip", name)
}

func guardError(format string, args ...any) *Error {
	return invalid(format, args...)
}
