package registry

import (
	"fmt"
	"strconv"
	"strings"
)

// The port rules, written once: what a port is (1-65535), what a
// port_range is, and which ports external_port may map. The API decoder,
// the JSON configuration, the Caddyfile, the static services and the
// records restored or received from a shared store all call these.

// ValidPort reports whether p is a TCP port number, 1 to 65535.
func ValidPort(p int64) bool { return p >= 1 && p <= 65535 }

// ParsePortRange parses a port_range, "lo-hi" with 1 <= lo <= hi <= 65535
// (digits only, no sign).
func ParsePortRange(s string) (lo, hi int, err error) {
	loS, hiS, ok := strings.Cut(s, "-")
	lo, ok1 := parsePort(loS)
	hi, ok2 := parsePort(hiS)
	if !ok || !ok1 || !ok2 || lo > hi {
		return 0, 0, fmt.Errorf("port_range %q: want lo-hi with 1 <= lo <= hi <= 65535, e.g. 8000-8099", s)
	}
	return lo, hi, nil
}

// parsePort parses a port written in decimal digits, 1 to 65535.
func parsePort(s string) (int, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	p, err := strconv.Atoi(s)
	return p, err == nil && ValidPort(int64(p))
}

// SitePorts is what the registry knows of the ports this Caddy serves,
// to decide which ports external_port may map.
type SitePorts struct {
	// Served are the ports a site is served on (the API's site, a
	// reverse_proxy site, a redirect): never mapped, since a mapping
	// would answer for the site.
	Served map[int]bool
	// Mapping are the ports of sites whose imagelb handler is marked
	// mapped_ports: sites that exist to serve mapped ports.
	Mapping map[int]bool
}

// CheckExternalPort returns why p may not be an external port, or "". A
// port may be mapped when it is in port_range or a port of a mapped-port
// site, and never when another site is served on it. Until the sites are
// known (o.Sites nil: before the app starts, when restored records are
// loaded, or a registry used alone) any valid port passes; the app checks
// what it restored when it starts (Registry.SetOptions).
func (o *Options) CheckExternalPort(p int) string {
	if !ValidPort(int64(p)) {
		return portMsg("external_port", int64(p))
	}
	if o.Sites == nil {
		return ""
	}
	if o.Sites.Served[p] {
		return fmt.Sprintf("external_port %d is the port of a site this Caddy serves (the API's, or another one): "+
			"a mapping there would answer for that site; %s", p, o.mappable())
	}
	if (o.PortLo != 0 && p >= o.PortLo && p <= o.PortHi) || o.Sites.Mapping[p] {
		return ""
	}
	return fmt.Sprintf("external_port %d is not a port for mapping; %s", p, o.mappable())
}

// mappable says which ports can be mapped, for the errors.
func (o *Options) mappable() string {
	s := "use a port of a site whose imagelb handler has mapped_ports"
	if o.PortLo != 0 {
		s = fmt.Sprintf("use a port of port_range %d-%d, or of a site whose imagelb handler has mapped_ports", o.PortLo, o.PortHi)
	}
	return s
}
