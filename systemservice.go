package imagelb

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/imagelb/caddy-imagelb/admin"
	"github.com/imagelb/caddy-imagelb/health"
	"github.com/imagelb/caddy-imagelb/registry"
)

// SystemService is one of the platform's own services behind the gateway
// (the original's orchestrator and billing): requests under /api/v1 whose
// path matches one of its paths are forwarded to it, with /api/v1 cut off.
type SystemService struct {
	// What the service is, e.g. "orchestrator" or "billing". Required,
	// unique.
	ServiceType string `json:"service_type"`
	// A display name. Default: the service_type.
	Name string `json:"name,omitempty"`
	// Where it listens: host:port. Required.
	Upstream string `json:"upstream"`
	// The paths it serves below /api/v1: "/auth/*" matches /auth and
	// everything below it, "/version" only itself. Default: none.
	Paths []string `json:"paths,omitempty"`
	// Unknown paths below /api/v1 go to this service. At most one service
	// may be the default. Default: false.
	Default bool `json:"default,omitempty"`
}

// systemState is the runtime state of a system service: it outlives config
// reloads, as the registry does, so its counters and status carry over.
type systemState struct {
	counters registry.Counters
	status   atomic.Pointer[registry.Status]
	mu       sync.Mutex
	lastAt   time.Time
	lastErr  string
}

// systemStates holds the state of every system service by type and
// upstream; entries are few (one per configured service) and kept.
var systemStates sync.Map // string -> *systemState

func stateOf(s SystemService) *systemState {
	v, _ := systemStates.LoadOrStore(s.ServiceType+"\x00"+s.Upstream, new(systemState))
	return v.(*systemState)
}

// record takes the result of a health check.
func (st *systemState) record(at time.Time, errText string) {
	status := registry.StatusHealthy
	if errText != "" {
		status = registry.StatusUnhealthy
	}
	st.status.Store(&status)
	st.mu.Lock()
	st.lastAt, st.lastErr = at, errText
	st.mu.Unlock()
}

func (st *systemState) currentStatus() registry.Status {
	if s := st.status.Load(); s != nil {
		return *s
	}
	return registry.StatusUnknown // not checked yet: the original's default
}

// systemService is a provisioned system service.
type systemService struct {
	SystemService
	host  string
	port  int
	state *systemState
}

// provisionSystemServices checks the configured services and attaches
// their state.
func provisionSystemServices(cfg []SystemService) ([]*systemService, error) {
	var out []*systemService
	seen := map[string]bool{}
	defaults := 0
	for i, s := range cfg {
		if s.ServiceType == "" || !registry.ValidText(s.ServiceType, registry.MaxNameLength) {
			return nil, fmt.Errorf("system_services[%d]: service_type is required (1-%d characters)", i, registry.MaxNameLength)
		}
		if seen[s.ServiceType] {
			return nil, fmt.Errorf("system service %q is declared twice", s.ServiceType)
		}
		seen[s.ServiceType] = true
		host, port, msg := checkUpstream(s.Upstream)
		if msg != "" {
			return nil, fmt.Errorf("system service %q: %s", s.ServiceType, msg)
		}
		for _, p := range s.Paths {
			if msg := checkSystemPath(p); msg != "" {
				return nil, fmt.Errorf("system service %q: %s", s.ServiceType, msg)
			}
		}
		if s.Default {
			defaults++
		}
		if s.Name == "" {
			s.Name = s.ServiceType
		}
		out = append(out, &systemService{SystemService: s, host: host, port: port, state: stateOf(s)})
	}
	if defaults > 1 {
		return nil, fmt.Errorf("%d system services are marked default: at most one may be", defaults)
	}
	return out, nil
}

// checkUpstream splits a system service's host:port, or says why it is not one.
func checkUpstream(addr string) (host string, port int, msg string) {
	host, portText, err := net.SplitHostPort(addr)
	port, perr := strconv.Atoi(portText)
	if err != nil || perr != nil || !registry.ValidPort(int64(port)) || registry.CheckHost(host) != "" {
		return "", 0, fmt.Sprintf("address %q must be host:port, e.g. 127.0.0.1:3003", addr)
	}
	return host, port, ""
}

// checkSystemPath says why p is not a system service's path, or "".
func checkSystemPath(p string) string {
	if !strings.HasPrefix(p, "/") || strings.Contains(strings.TrimSuffix(p, "/*"), "*") {
		return fmt.Sprintf("path %q must start with / and may end in /* only", p)
	}
	return ""
}

// matchSystem returns the service that serves path (below /api/v1), or nil:
// the service with the longest matching path, else the default.
func matchSystem(services []*systemService, path string) *systemService {
	var best, def *systemService
	bestLen := -1
	for _, s := range services {
		if s.Default {
			def = s
		}
		for _, p := range s.Paths {
			base, wild := strings.CutSuffix(p, "/*")
			ok := path == base || (wild && strings.HasPrefix(path, base+"/"))
			if ok && len(base) > bestLen {
				best, bestLen = s, len(base)
			}
		}
	}
	if best != nil {
		return best
	}
	return def
}

// view is the service's entry in GET /api/v1/system-services.
func (s *systemService) view() admin.SystemService {
	v := admin.SystemService{ServiceType: s.ServiceType, Name: s.Name, Host: s.host, Port: s.port,
		Status: s.state.currentStatus(), Paths: s.Paths, Default: s.Default,
		TotalRequests: s.state.counters.Requests.Load(), FailedRequests: s.state.counters.Failures.Load(),
		ActiveConnections: s.state.counters.InFlight.Load()}
	if v.Paths == nil {
		v.Paths = []string{}
	}
	s.state.mu.Lock()
	at, errText := s.state.lastAt, s.state.lastErr
	s.state.mu.Unlock()
	if !at.IsZero() {
		t := at.UTC().Format(time.RFC3339Nano)
		v.LastHealthCheck = &t
		if errText != "" {
			v.LastHealthError = &errText
		}
	}
	return v
}

// healthTarget makes the service a target of the health checker.
func (s *systemService) healthTarget() health.Extra {
	return health.Extra{Addr: net.JoinHostPort(s.host, strconv.Itoa(s.port)), Record: s.state.record}
}

// newSystemProxy provisions the reverse proxy that forwards to a system
// service: Caddy's reverse_proxy with the service as its one upstream.
func newSystemProxy(ctx caddy.Context, s *systemService, timeout time.Duration) (*reverseproxy.Handler, error) {
	rp := &reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: net.JoinHostPort(s.host, strconv.Itoa(s.port))}}}
	rp.Transport = &reverseproxy.HTTPTransport{ResponseHeaderTimeout: caddy.Duration(timeout),
		DialTimeout: caddy.Duration(min(timeout, 5*time.Second))}
	if err := rp.Transport.(*reverseproxy.HTTPTransport).Provision(ctx); err != nil {
		return nil, fmt.Errorf("system service %q: provisioning transport: %v", s.ServiceType, err)
	}
	if err := rp.Provision(ctx); err != nil {
		return nil, fmt.Errorf("system service %q: provisioning reverse proxy: %v", s.ServiceType, err)
	}
	return rp, nil
}

// systemRoute picks the system service of a request below /api/v1 that
// the API does not serve, as Caddy's path matcher would: on the decoded
// path (%2e is a dot, %2F a slash), with its dot segments resolved and its
// slashes merged (caddyhttp.CleanPath). The service gets the path that was
// matched, /api/v1 cut off, and never the path as sent: a backend that
// resolves "/users/../internal/admin" itself would otherwise serve a path
// its service was not given. A path that was clean already keeps its
// escapes, unless it has an encoded slash (forwarded as the slash it was
// matched as). A path that resolves outside /api/v1, or to a route of the
// API or the proxy, gets msg for a 400: its own path is the way there.
// sys is nil when no service serves the path.
func (h *Handler) systemRoute(r *http.Request) (sys *systemService, target *url.URL, msg string) {
	if len(h.app.system) == 0 {
		return nil, nil, ""
	}
	clean := caddyhttp.CleanPath(r.URL.Path, true)
	if clean != apiPrefix && !strings.HasPrefix(clean, apiPrefix+"/") {
		return nil, nil, fmt.Sprintf("path %q resolves to %q, outside /api/v1, once its dot segments are resolved: "+
			"send the path itself", r.URL.EscapedPath(), clean)
	}
	u := *r.URL
	u.Path, u.RawPath = clean, ""
	if clean == r.URL.Path && !strings.Contains(strings.ToLower(r.URL.RawPath), "%2f") {
		u.RawPath = r.URL.RawPath // clean already: its own escapes
	}
	if clean != r.URL.Path {
		probe := *r
		probe.URL = &u
		if clean == proxyPrefix || strings.HasPrefix(clean, proxyPrefix+"/") || h.api.Owns(&probe) {
			return nil, nil, fmt.Sprintf("path %q resolves to %q, a route of the load balancer, once its dot segments "+
				"are resolved: send that path itself", r.URL.EscapedPath(), clean)
		}
	}
	sys = matchSystem(h.app.system, strings.TrimPrefix(clean, apiPrefix))
	if sys == nil {
		return nil, nil, ""
	}
	u.Path = strings.TrimPrefix(u.Path, apiPrefix)
	u.RawPath = strings.TrimPrefix(u.RawPath, apiPrefix)
	return sys, &u, ""
}

// parseSystemService parses:
//
//	system_service <service_type> <host:port> {
//		name <name>
//		paths <path>...
//		default
//	}
func parseSystemService(d *caddyfile.Dispenser, prev []SystemService) (SystemService, error) {
	var s SystemService
	args := d.RemainingArgs()
	if len(args) != 2 {
		return s, d.Err("system_service needs a type and an address: system_service <service_type> <host:port>")
	}
	s.ServiceType, s.Upstream = args[0], args[1]
	for _, p := range prev {
		if p.ServiceType == s.ServiceType {
			return s, d.Errf("system_service %q already specified", s.ServiceType)
		}
	}
	if _, _, msg := checkUpstream(s.Upstream); msg != "" {
		return s, d.Errf("system_service %s", msg)
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return s, d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		switch opt {
		case "name":
			if !d.NextArg() {
				return s, d.ArgErr()
			}
			s.Name = d.Val()
			if d.NextArg() {
				return s, d.ArgErr()
			}
		case "paths":
			s.Paths = d.RemainingArgs()
			if len(s.Paths) == 0 {
				return s, d.Err("paths needs at least one path, e.g. paths /auth/* /images/*")
			}
			for _, p := range s.Paths {
				if msg := checkSystemPath(p); msg != "" {
					return s, d.Err(msg)
				}
			}
		case "default":
			if d.NextArg() {
				return s, d.ArgErr()
			}
			for _, p := range prev {
				if p.Default {
					return s, d.Errf("system_service %q is the default already: at most one may be", p.ServiceType)
				}
			}
			s.Default = true
		default:
			return s, d.Errf("unrecognized subdirective '%s'", opt)
		}
	}
	return s, nil
}
