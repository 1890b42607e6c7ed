package imagelb

import (
	"math"
	"strconv"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/dustin/go-humanize"

	"github.com/imagelb/caddy-imagelb/health"
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
//		algorithm       round_robin|least_connections
//		port_range      <lo>-<hi>
//		default_host    <host>
//		max_body        <size>
//		max_containers  <n>
//		allowed_upstreams <cidr|ip|hostname>...
//		persist         on|off
//		state_file      <path>
//		on_corrupt_state refuse|start_empty
//		service <image_id> <image_name> {
//			algorithm     round_robin|least_connections
//			external_port <port>
//			container <container_id> <host:port> {
//				name   <name>
//				weight <0-1000>
//				status healthy|unhealthy|starting|draining
//			}
//		}
//	}
//
// Durations accept plain seconds ("30") as well as Go durations ("30s").
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume option name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt != "service" && opt != "allowed_upstreams" {
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
		case "health_interval", "health_timeout", "timeout", "fail_duration":
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
		case "algorithm":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if _, ok := registry.ParseAlgorithm(v); !ok {
				return d.Errf("algorithm %q: use round_robin or least_connections (alias least_conn)", v)
			}
			a.Algorithm = v
		case "port_range":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if _, _, err := parsePortRange(v); err != nil {
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
		case "max_body":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			size, err := humanize.ParseBytes(v)
			if err != nil || size == 0 || size > math.MaxInt64 {
				return d.Errf("max_body %q: want a size such as 1MiB or 65536", v)
			}
			a.MaxBody = int64(size)
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
		case "service":
			svc, err := parseService(d, a.Services)
			if err != nil {
				return err
			}
			a.Services = append(a.Services, svc)
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return nil
}

// parseService parses: service <image_id> <image_name> { ... }
// prev are the services parsed before it.
func parseService(d *caddyfile.Dispenser, prev []StaticService) (StaticService, error) {
	var s StaticService
	args := d.RemainingArgs()
	if len(args) != 2 {
		return s, d.Err("service needs an image_id and an image_name: service <image_id> <image_name> { ... }")
	}
	id, err := strconv.ParseInt(args[0], 10, 64)
	if err != nil || id <= 0 {
		return s, d.Errf("service image_id %q must be a positive integer", args[0])
	}
	for _, p := range prev {
		if p.ImageID == id {
			return s, d.Errf("service %d already specified", id)
		}
	}
	if args[1] == "" || len(args[1]) > registry.MaxNameLength || hasControl(args[1]) {
		return s, d.Errf("service image_name %q must be 1-%d characters without control characters", args[1], registry.MaxNameLength)
	}
	s.ImageID, s.ImageName = id, args[1]
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt != "container" {
			if seen[opt] {
				return s, d.Errf("%s already specified", opt)
			}
			seen[opt] = true
		}
		switch opt {
		case "algorithm":
			v, err := singleArg(d)
			if err != nil {
				return s, err
			}
			if _, ok := registry.ParseAlgorithm(v); !ok {
				return s, d.Errf("algorithm %q: use round_robin or least_connections (alias least_conn)", v)
			}
			s.Algorithm = v
		case "external_port":
			n, err := intArg(d, 1, 65535)
			if err != nil {
				return s, err
			}
			s.ExternalPort = n
		case "container":
			c, err := parseContainer(d, s.Containers)
			if err != nil {
				return s, err
			}
			s.Containers = append(s.Containers, c)
		default:
			return s, d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return s, nil
}

// parseContainer parses: container <container_id> <host:port> { ... }
// prev are the service's containers parsed before it.
func parseContainer(d *caddyfile.Dispenser, prev []StaticContainer) (StaticContainer, error) {
	var c StaticContainer
	args := d.RemainingArgs()
	if len(args) != 2 {
		return c, d.Err("container needs an id and an address: container <container_id> <host:port>")
	}
	if args[0] == "" || len(args[0]) > registry.MaxIDLength || hasControl(args[0]) {
		return c, d.Errf("container id %q must be 1-%d characters without control characters", args[0], registry.MaxIDLength)
	}
	c.ContainerID = args[0]
	for _, p := range prev {
		if p.ContainerID == c.ContainerID {
			return c, d.Errf("container %q already specified", c.ContainerID)
		}
	}
	addr, err := caddy.ParseNetworkAddress(args[1])
	if err != nil || addr.Network != "tcp" || addr.PortRangeSize() != 1 || addr.StartPort == 0 {
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
			if len(v) > registry.MaxNameLength || hasControl(v) {
				return c, d.Errf("container name %q must be at most %d characters without control characters", v, registry.MaxNameLength)
			}
			c.Name = v
		case "weight":
			n, err := intArg(d, 0, 1000)
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
				return c, d.Errf("status %q: use healthy, unhealthy, starting or draining", v)
			}
			c.Status = v
		default:
			return c, d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return c, nil
}

// hasControl reports whether s has a control character or invalid UTF-8,
// which the API refuses in every field too.
func hasControl(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return true
		}
	}
	return false
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
