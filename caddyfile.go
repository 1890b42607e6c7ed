package imagelb

import (
	"math"
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
//		allow_other_listeners
//		stream_close_delay <duration>
//		metrics {
//			per_image
//			per_container
//			top_images <n>
//		}
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
		case "allow_other_listeners":
			if d.NextArg() {
				return d.ArgErr()
			}
			a.AllowOtherListeners = true
		case "handoff", "stream_close_delay":
			if err := a.parseReloadOption(d, opt); err != nil {
				return err
			}
		case "metrics":
			m, err := parseMetrics(d)
			if err != nil {
				return err
			}
			a.Metrics = m
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

// parseMetrics parses the app's block of Prometheus options:
//
//	metrics {
//		per_image
//		per_container
//		top_images <n>
//	}
func parseMetrics(d *caddyfile.Dispenser) (*MetricsConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	m := &MetricsConfig{}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("metrics: %s already specified", opt)
		}
		seen[opt] = true
		switch opt {
		case "per_image", "per_container":
			if d.NextArg() {
				return nil, d.Errf("metrics %s takes no argument", opt)
			}
			if opt == "per_image" {
				m.PerImage = true
			} else {
				m.PerContainer = true
			}
		case "top_images":
			n, err := intArg(d, 0, 1_000_000)
			if err != nil {
				return nil, err
			}
			m.TopImages = &n
		default:
			return nil, d.Errf("metrics: unrecognized option '%s': use per_image, per_container or top_images", opt)
		}
	}
	return m, nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*App)(nil)
