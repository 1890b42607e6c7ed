package imagelb

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/dustin/go-humanize"

	"github.com/imagelb/caddy-imagelb/health"
	"github.com/imagelb/caddy-imagelb/ondemand"
	"github.com/imagelb/caddy-imagelb/registry"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("imagelb", parseGlobalOption)
}

// parseGlobalOption turns the imagelb global option into the imagelb app.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		d.Next() // point the error at the repeated option, not at line 0
		return nil, d.Err("imagelb global option already specified")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "imagelb", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the imagelb global option. Syntax:
//
//	imagelb {
//		health_interval <duration>
//		health_timeout  <duration>
//		health_path     <path>
//		health_status   <code>|<class, e.g. 2xx>|<lo-hi>
//		healthy_threshold   <n>
//		unhealthy_threshold <n>
//		health_concurrency  <n>
//		max_fails       <n>
//		fail_duration   <duration>
//		max_retries     <n>
//		timeout         <duration>
//		algorithm       <algorithm>
//		port_range      <lo>-<hi>
//		default_host    <host>
//		max_body        <size>
//		max_containers  <n>
//		max_services    <n>
//		max_total_containers <n>
//		mirror_budget   <size>
//		allowed_upstreams <cidr|ip|hostname>...
//		allowed_self_upstreams <ip:port|ip:lo-hi>...
//		store local|memory|etcd [{
//			endpoints    <url>...
//			prefix       <prefix>
//			username     <name>
//			password     <password>
//			tls {
//				cert_file   <path>
//				key_file    <path>
//				ca_file     <path>
//				server_name <name>
//				insecure_skip_verify
//			}
//			dial_timeout    <duration>
//			request_timeout <duration>
//		}]
//		node_id         <name>
//		usage_interval  <duration>
//		usage_flush     <duration>
//		usage_retention <duration>
//		persist         on|off
//		state_file      <path>
//		on_corrupt_state refuse|start_empty
//		zone            <zone>
//		zone_header     <header>
//		sticky_secret   <secret>
//		handoff         on|off
//		stream_close_delay <duration>
//		service <image_id> <image_name> {
//			algorithm     <algorithm>
//			external_port <port>
//			hash_key      ip|header:<name>|cookie:<name>
//			sticky
//			rate_limit    <requests>/<interval> [burst <n>] [per service|client_ip]
//			max_in_flight <n>
//			slow_start    <duration>
//			outlier [{
//				consecutive_failures <n>
//				error_rate           <0-1>|<percent>%
//				min_requests         <n>
//				interval             <duration>
//				cooldown             <duration>
//				max_ejected_percent  <1-100>
//			}]
//			retry_budget  <0-1>|<percent>%
//			split  <image_id> <percent>[%] [header <name>] [cookie <name>]
//			mirror <image_id> <percent>[%] [{
//				max_body      <size>
//				methods       <method>...
//				max_in_flight <n>
//			}]
//			container <container_id> <host:port> {
//				name   <name>
//				weight <0-1000>
//				status healthy|unhealthy|starting|draining|unknown
//				zone   <zone>
//			}
//		}
//		system_service <service_type> <host:port> {
//			name    <name>
//			paths   <path>...
//			default
//		}
//	}
//
// <algorithm> is one of round_robin, weighted_round_robin,
// least_connections (alias least_conn), random, power_of_two, ip_hash,
// consistent_hash or least_latency.
//
// Durations accept plain seconds ("30") as well as Go durations ("30s").
// The interval of rate_limit may be a bare unit: 100/s is 100/1s. A bare
// outlier (no block) ejects with the defaults. The durations of the
// traffic-control options are at most 24h. An option left out keeps its
// default, so a value that could only mean "the default" (a burst,
// consecutive_failures, min_requests, interval, cooldown or
// max_ejected_percent of 0) is refused. split may be given once per image
// it sends a share to (the shares together at most 100%); the images a
// split or mirror names must be registered, or be static services of the
// same configuration, when the configuration is applied. A mirror's
// percent is required; its methods default to GET HEAD OPTIONS.
// sticky_secret, and the etcd username, password and tls files, may be
// placeholders such as {env.IMAGELB_STICKY_SECRET}. persist off is store
// memory; the block of store is for etcd.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume option name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	// where each service's hash_key is, for the check against the global
	// algorithm, which may come after the service
	hashKeyAt := map[int64]*caddyfile.Dispenser{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt != "service" && opt != "system_service" && opt != "allowed_upstreams" {
			if seen[opt] {
				return d.Errf("%s already specified", opt)
			}
			seen[opt] = true
		}
		switch opt {
		case "allowed_upstreams":
			rules := d.RemainingArgs()
			if len(rules) == 0 {
				return d.ArgErr()
			}
			if _, err := registry.NewGuard(rules); err != nil {
				return d.Err(err.Error())
			}
			a.AllowedUpstreams = append(a.AllowedUpstreams, rules...)
		case "allowed_self_upstreams":
			addrs := d.RemainingArgs()
			if len(addrs) == 0 {
				return d.ArgErr()
			}
			for _, s := range addrs {
				if _, err := registry.ParseSelfAllow(s); err != nil {
					return d.Err(err.Error())
				}
			}
			a.AllowedSelfUpstreams = addrs
		case "health_interval", "health_timeout", "timeout", "fail_duration", "usage_interval", "usage_flush", "usage_retention":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			dur, err := parseSeconds(v)
			if err != nil {
				return d.Errf("%s %q: want seconds (e.g. 30) or a duration (e.g. 30s): %v", opt, v, err)
			}
			switch opt {
			case "health_interval":
				a.HealthInterval = caddy.Duration(dur)
			case "health_timeout":
				a.HealthTimeout = caddy.Duration(dur)
			case "fail_duration":
				a.FailDuration = caddy.Duration(dur)
			case "usage_interval":
				a.UsageInterval = caddy.Duration(dur)
			case "usage_flush":
				a.UsageFlush = caddy.Duration(dur)
			case "usage_retention":
				a.UsageRetention = caddy.Duration(dur)
			default:
				a.Timeout = caddy.Duration(dur)
			}
		case "health_path":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if v == "" || v[0] != '/' {
				return d.Errf("health_path %q must start with /", v)
			}
			a.HealthPath = v
		case "health_status":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if _, _, err := health.ParseStatusRange(v); err != nil {
				return d.Err(err.Error())
			}
			a.HealthStatus = v
		case "healthy_threshold", "unhealthy_threshold", "health_concurrency":
			n, err := intArg(d, 1, 100_000)
			if err != nil {
				return err
			}
			switch opt {
			case "healthy_threshold":
				a.HealthyThreshold = n
			case "unhealthy_threshold":
				a.UnhealthyThreshold = n
			default:
				a.HealthConcurrency = n
			}
		case "max_retries", "max_fails":
			n, err := intArg(d, 0, 100)
			if err != nil {
				return err
			}
			if opt == "max_retries" {
				a.MaxRetries = &n
			} else {
				a.MaxFails = &n
			}
		case "max_containers":
			n, err := intArg(d, 0, 1_000_000)
			if err != nil {
				return err
			}
			a.MaxContainers = n
		case "max_services", "max_total_containers":
			n, err := intArg(d, 1, 100_000_000)
			if err != nil {
				return err
			}
			if opt == "max_services" {
				a.MaxServices = n
			} else {
				a.MaxTotalContainers = n
			}
		case "algorithm":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if _, ok := registry.ParseAlgorithm(v); !ok {
				return d.Errf("algorithm %q: use %s", v, registry.AlgorithmNames)
			}
			a.Algorithm = v
		case "port_range":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if _, _, err := registry.ParsePortRange(v); err != nil {
				return d.Err(err.Error())
			}
			a.PortRange = v
		case "default_host":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if msg := registry.CheckHost(v); msg != "" {
				return d.Errf("default_host: %s", msg)
			}
			a.DefaultHost = v
		case "max_body", "mirror_budget":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			size, err := humanize.ParseBytes(v)
			if err != nil || size == 0 || size > math.MaxInt64 {
				return d.Errf("%s %q: want a size such as 1MiB or 65536", opt, v)
			}
			if opt == "max_body" {
				a.MaxBody = int64(size)
			} else {
				a.MirrorBudget = int64(size)
			}
		case "store":
			sc, err := parseStore(d)
			if err != nil {
				return err
			}
			a.Store = sc
		case "node_id":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			a.NodeID = v
		case "persist":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if v != "on" && v != "off" {
				return d.Errf("persist %q: use on or off", v)
			}
			on := v == "on"
			a.Persist = &on
		case "state_file":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			a.StateFile = v
		case "on_corrupt_state":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if v != "refuse" && v != "start_empty" {
				return d.Errf("on_corrupt_state %q: use refuse or start_empty", v)
			}
			a.OnCorruptState = v
		case "zone":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if err := checkZone(d, v); err != nil {
				return err
			}
			a.Zone = v
		case "zone_header":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if !registry.ValidToken(v) {
				return d.Errf("zone_header %q: want a request header name, e.g. X-Client-Zone", v)
			}
			a.ZoneHeader = v
		case "sticky_secret":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if v == "" {
				return d.Err("sticky_secret is empty: give a secret or a placeholder such as {env.IMAGELB_STICKY_SECRET}")
			}
			a.StickySecret = v
		case "on_demand":
			od, err := parseOnDemand(d)
			if err != nil {
				return err
			}
			a.OnDemand = od
		case "handoff", "stream_close_delay":
			if err := a.parseReloadOption(d, opt); err != nil {
				return err
			}
		case "service":
			svc, at, err := parseService(d, a.Services)
			if err != nil {
				return err
			}
			if at != nil {
				hashKeyAt[svc.ImageID] = at
			}
			a.Services = append(a.Services, svc)
		case "system_service":
			sys, err := parseSystemService(d, a.SystemServices)
			if err != nil {
				return err
			}
			a.SystemServices = append(a.SystemServices, sys)
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	// a service without an algorithm takes the global one
	if alg, _ := registry.ParseAlgorithm(a.Algorithm); alg == registry.IPHash {
		for _, s := range a.Services {
			if s.Algorithm == "" && hashKeyAt[s.ImageID] != nil {
				return hashKeyIPHashErr(hashKeyAt[s.ImageID], s.HashKey, true)
			}
		}
	}
	return nil
}

// parseReloadOption parses the options of what a config reload does to
// imagelb's servers and streams: handoff on|off and
// stream_close_delay <duration> (0 closes streams at the reload).
func (a *App) parseReloadOption(d *caddyfile.Dispenser, opt string) error {
	v, err := singleArg(d)
	if err != nil {
		return err
	}
	if opt == "handoff" {
		if v != HandoffOn && v != HandoffOff {
			return d.Errf("handoff %q: use on or off", v)
		}
		a.Handoff = v
		return nil
	}
	var dur time.Duration
	if v != "0" {
		if dur, err = parseSeconds(v); err != nil {
			return d.Errf("stream_close_delay %q: want seconds or a duration (e.g. 24h), or 0 to close streams at a reload", v)
		}
	}
	delay := caddy.Duration(dur)
	a.StreamCloseDelay = &delay
	return nil
}

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

// fractionArg reads the single argument of the current option as a share
// from 0 to 1, or a percentage from 0% to 100%.
func fractionArg(d *caddyfile.Dispenser) (float64, error) {
	opt := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	num, percent := strings.CutSuffix(v, "%")
	f, err := strconv.ParseFloat(num, 64)
	if percent {
		f /= 100
	}
	if err != nil || math.IsNaN(f) || f < 0 || f > 1 {
		return 0, d.Errf("%s %q: want a share from 0 to 1 (e.g. 0.2) or a percentage (e.g. 20%%)", opt, v)
	}
	return f, nil
}

// durationArg reads the single argument of the current option as a
// duration of at most registry.MaxOptionDuration, which must be positive if positive
// is set and may otherwise be 0.
func durationArg(d *caddyfile.Dispenser, positive bool) (time.Duration, error) {
	opt := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := registry.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("%s %q: want a duration such as 30s or a number of seconds", opt, v)
	}
	if dur < 0 || (positive && dur == 0) || dur > registry.MaxOptionDuration {
		if positive {
			return 0, d.Errf("%s %q: want a positive duration of at most %s", opt, v, registry.MaxOptionDuration)
		}
		return 0, d.Errf("%s %q: want a duration from 0 to %s", opt, v, registry.MaxOptionDuration)
	}
	return dur, nil
}

// checkZone checks a zone name as the registry does.
func checkZone(d *caddyfile.Dispenser, v string) error {
	if v == "" || !registry.ValidText(v, registry.MaxNameLength) {
		return d.Errf("zone %q must be 1-%d characters without control characters", v, registry.MaxNameLength)
	}
	return nil
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

// parseStore parses the store option: its kind, and for etcd its block.
func parseStore(d *caddyfile.Dispenser) (*StoreConfig, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	sc := &StoreConfig{Kind: d.Val()}
	switch sc.Kind {
	case storeLocal, storeMemory, storeEtcd:
	default:
		return nil, d.Errf("store %q: use local, memory or etcd", sc.Kind)
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if sc.Kind != storeEtcd {
			return nil, d.Errf("store %s takes no options; %s is an option of store etcd", sc.Kind, opt)
		}
		if seen[opt] {
			return nil, d.Errf("store etcd: %s already specified", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "endpoints":
			sc.Endpoints = d.RemainingArgs()
			if len(sc.Endpoints) == 0 {
				return nil, d.ArgErr()
			}
		case "prefix":
			sc.Prefix, err = singleArg(d)
		case "username":
			sc.Username, err = singleArg(d)
		case "password":
			sc.Password, err = singleArg(d)
		case "dial_timeout", "request_timeout":
			var v string
			if v, err = singleArg(d); err != nil {
				return nil, err
			}
			dur, perr := caddy.ParseDuration(v)
			if perr != nil || dur <= 0 {
				return nil, d.Errf("store etcd: %s %q: want a duration such as 5s", opt, v)
			}
			if opt == "dial_timeout" {
				sc.DialTimeout = caddy.Duration(dur)
			} else {
				sc.RequestTimeout = caddy.Duration(dur)
			}
		case "tls":
			sc.TLS, err = parseStoreTLS(d)
		default:
			return nil, d.Errf("unrecognized subdirective '%s'", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	if sc.Kind == storeEtcd && len(sc.Endpoints) == 0 {
		return nil, d.Err("store etcd: endpoints is required, e.g. endpoints http://127.0.0.1:2379")
	}
	return sc, nil
}

// parseStoreTLS parses the tls block of store etcd.
func parseStoreTLS(d *caddyfile.Dispenser) (*StoreTLS, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	t := &StoreTLS{}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("store etcd: tls: %s already specified", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "cert_file":
			t.CertFile, err = singleArg(d)
		case "key_file":
			t.KeyFile, err = singleArg(d)
		case "ca_file":
			t.CAFile, err = singleArg(d)
		case "server_name":
			t.ServerName, err = singleArg(d)
		case "insecure_skip_verify":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			t.InsecureSkipVerify = true
		default:
			return nil, d.Errf("unrecognized subdirective '%s'", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, d.Err("store etcd: tls: cert_file and key_file go together")
	}
	return t, nil
}

// parseOnDemand parses the app's block:
//
//	on_demand {
//		start_url <url>
//		stop_url <url>
//		start_timeout <duration>
//		max_waiting <n>
//	}
func parseOnDemand(d *caddyfile.Dispenser) (*OnDemandConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	od := &OnDemandConfig{}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("on_demand: %s already specified", opt)
		}
		seen[opt] = true
		switch opt {
		case "start_url", "stop_url":
			v, err := singleArg(d)
			if err != nil {
				return nil, err
			}
			if msg := ondemand.CheckURL(v); msg != "" {
				return nil, d.Errf("on_demand %s %s", opt, msg)
			}
			if opt == "start_url" {
				od.StartURL = v
			} else {
				od.StopURL = v
			}
		case "start_timeout":
			v, err := durationArg(d, true)
			if err != nil {
				return nil, err
			}
			od.StartTimeout = caddy.Duration(v)
		case "max_waiting":
			n, err := intArg(d, 1, 1_000_000)
			if err != nil {
				return nil, err
			}
			od.MaxWaiting = n
		default:
			return nil, d.Errf("on_demand: unrecognized option '%s': use start_url, stop_url, start_timeout or max_waiting", opt)
		}
	}
	if od.StartURL == "" {
		return nil, d.Err("on_demand: start_url is required, e.g. start_url http://127.0.0.1:3003/api/images/{image_id}/start")
	}
	return od, nil
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

// imageIDArg reads the image_id a split or mirror of service self names.
func imageIDArg(d *caddyfile.Dispenser, opt, v string, self int64) (int64, error) {
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id <= 0 {
		return 0, d.Errf("%s image_id %q must be a positive integer", opt, v)
	}
	if id == self {
		return 0, d.Errf("%s %d: that is this service itself; name another image", opt, id)
	}
	return id, nil
}

// percentArg reads a percent from 0 to 100, with or without the % sign.
func percentArg(d *caddyfile.Dispenser, opt, v string) (float64, error) {
	f, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > 100 {
		return 0, d.Errf("%s percent %q: want a share from 0%% to 100%%, such as 10%%", opt, v)
	}
	return f, nil
}

func singleArg(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return v, nil
}

func intArg(d *caddyfile.Dispenser, lo, hi int) (int, error) {
	opt := d.Val()
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, d.Errf("%s %q: want a whole number from %d to %d", opt, v, lo, hi)
	}
	return n, nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*App)(nil)
