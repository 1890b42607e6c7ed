// The Caddyfile of a static service: the service block of the imagelb global
// option and its options (rate_limit, outlier, container, on_demand, split,
// mirror).

package imagelb

import (
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/imagelb/caddy-imagelb/registry"
)

// parseService parses: service <image_id> <image_name> { ... }
// prev are the services parsed before it. hashKeyAt is where a hash_key
// other than ip is (nil if none), for the caller's check against the global
// algorithm.
func parseService(d *caddyfile.Dispenser, prev []StaticService) (s StaticService, hashKeyAt *caddyfile.Dispenser, err error) {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return s, nil, d.Err("service needs an image_id and an image_name: service <image_id> <image_name> { ... }")
	}
	id, err := strconv.ParseInt(args[0], 10, 64)
	if err != nil || id <= 0 {
		return s, nil, d.Errf("service image_id %q must be a positive integer", args[0])
	}
	for _, p := range prev {
		if p.ImageID == id {
			return s, nil, d.Errf("service %d already specified", id)
		}
	}
	if args[1] == "" || !registry.ValidText(args[1], registry.MaxNameLength) {
		return s, nil, d.Errf("service image_name %q must be 1-%d characters without control characters", args[1], registry.MaxNameLength)
	}
	s.ImageID, s.ImageName = id, args[1]
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt != "container" && opt != "split" {
			if seen[opt] {
				return s, nil, d.Errf("%s already specified", opt)
			}
			seen[opt] = true
		}
		switch opt {
		case "algorithm":
			v, err := singleArg(d)
			if err != nil {
				return s, nil, err
			}
			if _, ok := registry.ParseAlgorithm(v); !ok {
				return s, nil, d.Errf("algorithm %q: use %s", v, registry.AlgorithmNames)
			}
			s.Algorithm = v
		case "external_port":
			v, err := singleArg(d)
			if err != nil {
				return s, nil, err
			}
			n, err := strconv.Atoi(v)
			if err != nil || !registry.ValidPort(int64(n)) {
				return s, nil, d.Errf("external_port %q: want a whole number from 1 to 65535", v)
			}
			s.ExternalPort = n
		case "container":
			c, err := parseContainer(d, s.Containers)
			if err != nil {
				return s, nil, err
			}
			s.Containers = append(s.Containers, c)
		case "hash_key":
			v, err := singleArg(d)
			if err != nil {
				return s, nil, err
			}
			if !registry.ValidHashKey(v) {
				return s, nil, d.Errf("hash_key %q: use ip, header:NAME or cookie:NAME, e.g. header:X-User", v)
			}
			s.HashKey = v
			if v != "ip" {
				at := *d
				hashKeyAt = &at
			}
		case "sticky":
			if d.NextArg() {
				return s, nil, d.ArgErr()
			}
			s.Sticky = true
		case "rate_limit":
			rl, err := parseRateLimit(d)
			if err != nil {
				return s, nil, err
			}
			s.RateLimit = rl
		case "max_in_flight":
			n, err := intArg(d, 0, registry.MaxOptionCount)
			if err != nil {
				return s, nil, err
			}
			s.MaxInFlight = n
		case "slow_start":
			v, err := durationArg(d, false)
			if err != nil {
				return s, nil, err
			}
			s.SlowStart = registry.Duration(v)
		case "outlier":
			o, err := parseOutlier(d)
			if err != nil {
				return s, nil, err
			}
			s.Outlier = o
		case "retry_budget":
			f, err := fractionArg(d)
			if err != nil {
				return s, nil, err
			}
			s.RetryBudget = f
		case "on_demand":
			od, err := parseServiceOnDemand(d)
			if err != nil {
				return s, nil, err
			}
			s.OnDemand = od
		case "split":
			t, err := parseSplit(d, s.ImageID, s.Split)
			if err != nil {
				return s, nil, err
			}
			s.Split = append(s.Split, t)
		case "mirror":
			m, err := parseMirror(d, s.ImageID)
			if err != nil {
				return s, nil, err
			}
			s.Mirror = m
		default:
			return s, nil, d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	if alg, _ := registry.ParseAlgorithm(s.Algorithm); alg == registry.IPHash && hashKeyAt != nil {
		return s, nil, hashKeyIPHashErr(hashKeyAt, s.HashKey, false)
	}
	return s, hashKeyAt, nil
}

// hashKeyIPHashErr refuses a hash_key other than ip for a service balanced by
// ip_hash, its own or (if global) the global algorithm; at is where the
// hash_key is.
func hashKeyIPHashErr(at *caddyfile.Dispenser, key string, global bool) error {
	if global {
		return at.Errf("hash_key %q: the global algorithm ip_hash always hashes the client IP; "+
			"give this service algorithm consistent_hash to hash a header or cookie", key)
	}
	return at.Errf("hash_key %q: ip_hash always hashes the client IP; use algorithm consistent_hash to hash a header or cookie", key)
}

// parseRateLimit parses: rate_limit <requests>/<interval> [burst <n>] [per service|client_ip]
func parseRateLimit(d *caddyfile.Dispenser) (*registry.RateLimit, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.ArgErr()
	}
	reqs, interval, ok := strings.Cut(args[0], "/")
	if !ok {
		return nil, d.Errf("rate_limit %q: want <requests>/<interval>, e.g. 100/1s", args[0])
	}
	n, err := strconv.Atoi(reqs)
	if err != nil || n < 1 || n > registry.MaxOptionCount {
		return nil, d.Errf("rate_limit %q: the requests must be a whole number from 1 to %d", args[0], registry.MaxOptionCount)
	}
	if interval == "s" || interval == "m" || interval == "h" {
		interval = "1" + interval
	}
	iv, err := registry.ParseDuration(interval)
	if err != nil || iv <= 0 || iv > registry.MaxOptionDuration {
		return nil, d.Errf("rate_limit %q: the interval must be a positive duration of at most %s, e.g. 100/1s or 100/1m", args[0], registry.MaxOptionDuration)
	}
	rl := &registry.RateLimit{Requests: n, Interval: registry.Duration(iv)}
	seen := map[string]bool{}
	for rest := args[1:]; len(rest) > 0; rest = rest[2:] {
		key := rest[0]
		if key != "burst" && key != "per" {
			return nil, d.Errf("rate_limit: unknown %q: after <requests>/<interval> use burst <n> and per service|client_ip", key)
		}
		if seen[key] {
			return nil, d.Errf("rate_limit: %s already specified", key)
		}
		seen[key] = true
		if len(rest) < 2 {
			return nil, d.Errf("rate_limit: %s needs a value", key)
		}
		v := rest[1]
		if key == "burst" {
			b, err := strconv.Atoi(v)
			if err != nil || b < 1 || b > registry.MaxOptionCount {
				return nil, d.Errf("rate_limit burst %q: want a whole number from 1 to %d (leave it out for a burst of <requests>)", v, registry.MaxOptionCount)
			}
			rl.Burst = b
			continue
		}
		if v != registry.PerService && v != registry.PerClientIP {
			return nil, d.Errf("rate_limit per %q: use service or client_ip", v)
		}
		rl.Per = v
	}
	return rl, nil
}

// parseOutlier parses: outlier [{ ... }]; a bare outlier takes the defaults.
func parseOutlier(d *caddyfile.Dispenser) (*registry.Outlier, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	o := new(registry.Outlier)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "consecutive_failures":
			o.ConsecutiveFailures, err = intArg(d, 1, 1_000_000)
		case "error_rate":
			o.ErrorRate, err = fractionArg(d)
		case "min_requests":
			o.MinRequests, err = intArg(d, 1, registry.MaxOptionCount)
		case "interval", "cooldown":
			var v time.Duration
			v, err = durationArg(d, true)
			if opt == "interval" {
				o.Interval = registry.Duration(v)
			} else {
				o.Cooldown = registry.Duration(v)
			}
		case "max_ejected_percent":
			o.MaxEjectedPercent, err = intArg(d, 1, 100)
		default:
			return nil, d.Errf("unrecognized subdirective '%s'", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	return o, nil
}

// parseContainer parses: container <container_id> <host:port> { ... }
// prev are the service's containers parsed before it.
func parseContainer(d *caddyfile.Dispenser, prev []StaticContainer) (StaticContainer, error) {
	var c StaticContainer
	args := d.RemainingArgs()
	if len(args) != 2 {
		return c, d.Err("container needs an id and an address: container <container_id> <host:port>")
	}
	if args[0] == "" || !registry.ValidText(args[0], registry.MaxIDLength) {
		return c, d.Errf("container id %q must be 1-%d characters without control characters", args[0], registry.MaxIDLength)
	}
	c.ContainerID = args[0]
	for _, p := range prev {
		if p.ContainerID == c.ContainerID {
			return c, d.Errf("container %q already specified", c.ContainerID)
		}
	}
	addr, err := caddy.ParseNetworkAddress(args[1])
	if err != nil || addr.Network != "tcp" || addr.PortRangeSize() != 1 || !registry.ValidPort(int64(addr.StartPort)) {
		return c, d.Errf("container address %q: want host:port, e.g. 127.0.0.1:9001", args[1])
	}
	c.Host, c.Port = addr.Host, int(addr.StartPort)
	if msg := registry.CheckHost(c.Host); c.Host != "" && msg != "" {
		return c, d.Errf("container address %q: %s", args[1], msg)
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return c, d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		switch opt {
		case "name":
			v, err := singleArg(d)
			if err != nil {
				return c, err
			}
			if !registry.ValidText(v, registry.MaxNameLength) {
				return c, d.Errf("container name %q must be at most %d characters without control characters", v, registry.MaxNameLength)
			}
			c.Name = v
		case "weight":
			n, err := intArg(d, 0, registry.MaxWeight)
			if err != nil {
				return c, err
			}
			c.Weight = &n
		case "status":
			v, err := singleArg(d)
			if err != nil {
				return c, err
			}
			if _, ok := registry.ParseStatus(v); !ok {
				return c, d.Errf("status %q: use healthy, unhealthy, starting, draining or unknown", v)
			}
			c.Status = v
		case "zone":
			v, err := singleArg(d)
			if err != nil {
				return c, err
			}
			if err := checkZone(d, v); err != nil {
				return c, err
			}
			c.Zone = v
		default:
			return c, d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	// the registry's rules, the same the API and the JSON config apply
	if err := registry.FieldErrors(c.spec().Check()); err != nil {
		return c, d.Errf("container %q: %v", c.ContainerID, err)
	}
	return c, nil
}

// parseServiceOnDemand parses a service's on_demand option: on_demand,
// on_demand <idle_timeout>, or on_demand { idle_timeout <duration> }.
func parseServiceOnDemand(d *caddyfile.Dispenser) (*registry.OnDemand, error) {
	od := &registry.OnDemand{}
	if d.NextArg() {
		v, err := registry.ParseDuration(d.Val())
		if err != nil || v < registry.MinIdleTimeout || v > registry.MaxOptionDuration {
			return nil, d.Errf("on_demand %q: want an idle_timeout from %s to %s, such as 10m", d.Val(), registry.MinIdleTimeout, registry.MaxOptionDuration)
		}
		od.IdleTimeout = registry.Duration(v)
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() != "idle_timeout" {
			return nil, d.Errf("on_demand: unrecognized option '%s': use idle_timeout", d.Val())
		}
		v, err := durationArg(d, true)
		if err != nil {
			return nil, err
		}
		od.IdleTimeout = registry.Duration(v)
	}
	return od, nil
}

// parseSplit parses: split <image_id> <percent>[%] [header <name>] [cookie <name>]
// of service self; prev are its split entries parsed before.
func parseSplit(d *caddyfile.Dispenser, self int64, prev []registry.SplitTarget) (registry.SplitTarget, error) {
	var t registry.SplitTarget
	args := d.RemainingArgs()
	if len(args) < 2 {
		return t, d.Err("split needs an image_id and a percent: split <image_id> <percent>% [header <name>] [cookie <name>]")
	}
	id, err := imageIDArg(d, "split", args[0], self)
	if err != nil {
		return t, err
	}
	total := 0.0
	for _, p := range prev {
		if p.ImageID == id {
			return t, d.Errf("split to image %d already specified", id)
		}
		total += *p.Percent
	}
	p, err := percentArg(d, "split", args[1])
	if err != nil {
		return t, err
	}
	if total+p > 100+1e-9 {
		return t, d.Errf("split %d %s: the splits of this service add up to %v%%, more than 100%%", id, args[1], total+p)
	}
	t.ImageID, t.Percent = id, &p
	rest := args[2:]
	for len(rest) > 0 {
		key := rest[0]
		if key != "header" && key != "cookie" {
			return t, d.Errf("split: unknown %q: after <image_id> <percent> use header <name> and cookie <name>", key)
		}
		if len(rest) < 2 {
			return t, d.Errf("split: %s needs a name", key)
		}
		name := rest[1]
		if !registry.ValidToken(name) {
			return t, d.Errf("split %s %q: not a %s name", key, name, key)
		}
		field := &t.Header
		if key == "cookie" {
			field = &t.Cookie
		}
		if *field != "" {
			return t, d.Errf("split: %s already specified", key)
		}
		*field = name
		rest = rest[2:]
	}
	return t, nil
}

// parseMirror parses: mirror <image_id> <percent>[%] [{ max_body <size>;
// methods <method>...; max_in_flight <n> }] of service self.
func parseMirror(d *caddyfile.Dispenser, self int64) (*registry.Mirror, error) {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return nil, d.Err("mirror needs an image_id and a percent: mirror <image_id> <percent>% (say 100% to copy every request)")
	}
	id, err := imageIDArg(d, "mirror", args[0], self)
	if err != nil {
		return nil, err
	}
	p, err := percentArg(d, "mirror", args[1])
	if err != nil {
		return nil, err
	}
	m := &registry.Mirror{ImageID: id, Percent: &p}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("mirror: %s already specified", opt)
		}
		seen[opt] = true
		switch opt {
		case "max_body":
			v, err := singleArg(d)
			if err != nil {
				return nil, err
			}
			n, err := registry.ParseSize(v)
			if err != nil || n < 1 || n > registry.MaxMirrorBody {
				return nil, d.Errf("mirror max_body %q: want a size from 1 to %s, such as 64KiB", v, registry.Size(registry.MaxMirrorBody))
			}
			m.MaxBody = registry.Size(n)
		case "methods":
			m.Methods = d.RemainingArgs()
			if len(m.Methods) == 0 {
				return nil, d.Err("mirror methods: list the methods to copy, such as GET HEAD")
			}
			for _, v := range m.Methods {
				if !registry.ValidToken(v) || strings.ToUpper(v) != v {
					return nil, d.Errf("mirror methods %q: want an upper-case method such as GET or POST", v)
				}
			}
		case "max_in_flight":
			n, err := intArg(d, 1, registry.MaxMirrorInFlight)
			if err != nil {
				return nil, err
			}
			m.MaxInFlight = n
		default:
			return nil, d.Errf("mirror: unrecognized option '%s': use max_body, methods or max_in_flight", opt)
		}
	}
	return m, nil
}
