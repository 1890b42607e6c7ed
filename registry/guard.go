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

	// the self rule (SetSelf): addresses this Caddy listens on
	selfAt    map[netip.AddrPort]string // a listener on one address
	selfAny   map[uint16]string         // a wildcard listener: the port on every local address
	selfPorts map[uint16]bool           // every port of either kind
	local     map[netip.Addr]bool       // this machine's interface addresses
	selfOK    []SelfAllow               // allowed_self_upstreams
}

// SelfListener is an address this Caddy listens on, which no container may
// be: a request proxied there would reach this Caddy itself (its admin
// endpoint, one of its sites: a loop, or its etcd).
type SelfListener struct {
	// Addr is the listener's address; the zero Addr is a wildcard
	// listener (":3000"), on every local address.
	Addr netip.Addr
	Port uint16
	// What names the listener in messages, e.g. "admin endpoint".
	What string
}

// SelfAllow is an entry of allowed_self_upstreams: an IP address and a
// port range of this Caddy that containers may nonetheless be at.
type SelfAllow struct {
	Addr   netip.Addr
	Lo, Hi uint16
}

// ParseSelfAllow parses an allowed_self_upstreams entry: an IP address and
// a port or port range, "127.0.0.1:9001" or "127.0.0.1:9001-9004" ("[::1]:9001"
// for IPv6). A host name or a wildcard is refused: the opt-in names exactly
// what it opens.
func ParseSelfAllow(s string) (SelfAllow, error) {
	host, ports, err := net.SplitHostPort(s)
	if err != nil {
		return SelfAllow{}, fmt.Errorf("allowed_self_upstreams %q: want IP:port or IP:lo-hi, e.g. 127.0.0.1:9001-9004", s)
	}
	a, err := netip.ParseAddr(host)
	if err != nil || a.IsUnspecified() {
		return SelfAllow{}, fmt.Errorf("allowed_self_upstreams %q: the host must be one IP address (not a name or a "+
			"wildcard), e.g. 127.0.0.1:9001", s)
	}
	if !strings.Contains(ports, "-") {
		ports += "-" + ports // one port is the range of that port
	}
	lo, hi, err := ParsePortRange(ports)
	if err != nil {
		return SelfAllow{}, fmt.Errorf("allowed_self_upstreams %q: want a port 1-65535 or a range lo-hi, e.g. 127.0.0.1:9001-9004", s)
	}
	return SelfAllow{Addr: a.Unmap(), Lo: uint16(lo), Hi: uint16(hi)}, nil
}

// SetSelf sets the self rule: containers may not be at one of the
// listeners (IP and port, or the port of a wildcard listener on a local
// address: loopback, unspecified or one of local) unless allowed lists that
// exact address. Call it before the guard is shared.
func (g *Guard) SetSelf(listeners []SelfListener, local []netip.Addr, allowed []SelfAllow) {
	g.selfAt = map[netip.AddrPort]string{}
	g.selfAny = map[uint16]string{}
	g.selfPorts = map[uint16]bool{}
	g.local = map[netip.Addr]bool{}
	for _, l := range listeners {
		if l.Addr.IsValid() && !l.Addr.IsUnspecified() {
			g.selfAt[netip.AddrPortFrom(l.Addr.Unmap(), l.Port)] = l.What
		} else {
			g.selfAny[l.Port] = l.What
		}
		g.selfPorts[l.Port] = true
	}
	for _, a := range local {
		g.local[a.Unmap()] = true
	}
	g.selfOK = allowed
}

// self returns what listener of this Caddy a:port is, or "".
func (g *Guard) self(a netip.Addr, port uint16) string {
	if g == nil || !g.selfPorts[port] {
		return ""
	}
	for _, ok := range g.selfOK {
		if ok.Addr == a && ok.Lo <= port && port <= ok.Hi {
			return ""
		}
	}
	if what, ok := g.selfAt[netip.AddrPortFrom(a, port)]; ok {
		return what
	}
	localAddr := a.IsLoopback() || a.IsUnspecified() || g.local[a]
	if what, ok := g.selfAny[port]; ok && localAddr {
		return what
	}
	if a.IsUnspecified() { // 0.0.0.0 and [::] reach the loopback listeners
		for ap, what := range g.selfAt {
			if ap.Port() == port && (ap.Addr().IsLoopback() || g.local[ap.Addr()]) {
				return what
			}
		}
	}
	return ""
}

// DialRefused is the error of a dial the guard refused. Its message names
// the rule, never the address: it reaches clients in a 502's detail.
type DialRefused struct {
	Rule string
}

func (e *DialRefused) Error() string {
	switch e.Rule {
	case RuleSelf:
		return "the container's address is one of this Caddy's own listeners, which the proxy never dials " +
			"(the self rule; allowed_self_upstreams lists the exceptions)"
	default:
		return "the container's address is link-local or a cloud metadata address, which the proxy never dials " +
			"(the metadata rule; allowed_upstreams unlocks it with a range at least as specific)"
	}
}

// The rules a dial can be refused by.
const (
	RuleSelf     = "self"
	RuleMetadata = "metadata"
)

// CheckDial checks the address a connection is about to be made to (an
// "IP:port", after name resolution) against the metadata and self rules;
// it is the dialers' Control hook, so a name that resolves elsewhere after
// its registration cannot get past it. allowed_upstreams itself is checked
// at registration only.
func (g *Guard) CheckDial(address string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil // not an IP socket (a Unix socket): nothing to check
	}
	a := ap.Addr().Unmap().WithZone("")
	for _, d := range deniedByDefault {
		if d.Contains(a) && !g.explicitlyAllows(a, d) {
			return &DialRefused{Rule: RuleMetadata}
		}
	}
	if g.self(a, ap.Port()) != "" {
		return &DialRefused{Rule: RuleSelf}
	}
	return nil
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

// Check returns why host may not be the host of containers at ports, or
// nil. A hostname is looked up once for all the ports.
func (g *Guard) Check(host string, ports ...int) error {
	if a, err := netip.ParseAddr(host); err == nil {
		return g.checkAddr(host, a.Unmap(), ports)
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	listed := g.restricted() && g.nameAllowed(name)
	if listed && !g.anySelfPort(ports) {
		return nil // a listed name is not looked up, unless it could be this Caddy
	}
	addrs, err := g.resolve(name)
	if err != nil {
		if !g.restricted() || listed {
			return nil // nothing to check against; the dialers check the address they connect to
		}
		return guardError("host %q could not be resolved to check it against allowed_upstreams (%s): %v",
			host, strings.Join(g.rules, ", "), err)
	}
	for _, a := range addrs {
		a = a.Unmap()
		if listed {
			err = g.checkSelf(host, a, ports)
		} else {
			err = g.checkAddr(host, a, ports)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// CheckAddress is Check without a lookup, for records received under the
// registry's lock: a host that is an IP address meets every rule; a name is
// left to the dialers (CheckDial).
func (g *Guard) CheckAddress(host string, port int) error {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return nil
	}
	return g.checkAddr(host, a.Unmap(), []int{port})
}

// anySelfPort reports whether one of ports is a port this Caddy listens on.
func (g *Guard) anySelfPort(ports []int) bool {
	for _, p := range ports {
		if g != nil && ValidPort(int64(p)) && g.selfPorts[uint16(p)] {
			return true
		}
	}
	return false
}

// checkSelf applies the self rule to containers at host (address a).
func (g *Guard) checkSelf(host string, a netip.Addr, ports []int) error {
	for _, port := range ports {
		if !ValidPort(int64(port)) {
			continue // the port's own check says what is wrong
		}
		if what := g.self(a.WithZone(""), uint16(port)); what != "" {
			return guardError("host %q (%s) port %d is this Caddy's own %s: the proxy never dials itself (the self "+
				"rule, whatever allowed_upstreams says); if a container really is there, list %s in "+
				"allowed_self_upstreams", host, a, port, what, netip.AddrPortFrom(a, uint16(port)))
		}
	}
	return nil
}

func (g *Guard) checkAddr(host string, a netip.Addr, ports []int) error {
	if err := g.checkSelf(host, a, ports); err != nil {
		return err
	}
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
