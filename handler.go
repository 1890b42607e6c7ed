package imagelb

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/admin"
	"github.com/imagelb/caddy-imagelb/internal/recycle"
	"github.com/imagelb/caddy-imagelb/registry"
	"github.com/imagelb/caddy-imagelb/ui"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterDirective("imagelb", parseHandlerDirective)
	httpcaddyfile.RegisterDirectiveOrder("imagelb", httpcaddyfile.Before, "respond")
}

// The paths of the platform's original API served by the handler.
const (
	healthPath  = "/health"
	apiPrefix   = "/api/v1"
	proxyPrefix = "/api/v1/proxy"
)

// keepIdlePerHost is how many idle connections the handler keeps to each
// container.
const keepIdlePerHost = 1024

// Management API modes of the handler.
const (
	APIOn       = "on"
	APIReadOnly = "read_only"
	APIOff      = "off"
)

// Handler is the imagelb HTTP handler. On a site it serves GET /health, the
// management API under /api/v1/ and the proxy /api/v1/proxy/{image_id}/{path};
// everything else goes to the next handler. On a site marked mapped_ports it
// serves only the mapped external ports. Proxying is done by Caddy's reverse_proxy handler,
// provisioned inside this one with the imagelb upstream source and policy.
type Handler struct {
	// The management API on this site: on, read_only (GET only; writes
	// get 403) or off (management routes 404; /health and the proxy are
	// still served). Default: on.
	API string `json:"api,omitempty"`
	// Serve the dashboard at /api/v1/ui/ on this site (it is always on
	// the admin endpoint, at /imagelb/ui/). Default: off.
	Dashboard bool `json:"dashboard,omitempty"`
	// Browser origins allowed to call this site's API (CORS), such as
	// "https://ui.example.com", or "*" for any. Preflights are answered
	// 204; the API's answers carry Access-Control-Allow-Origin. Proxied
	// answers (containers, system services) are left to them. Default:
	// none (no CORS).
	CORS []string `json:"cors,omitempty"`
	// Client networks allowed to change the registry through this site's
	// management API: CIDRs or IP addresses, or ["any"]. The client
	// address is Caddy's, which takes X-Forwarded-For only from the
	// server's trusted_proxies. Reads are not restricted, nor is Caddy's
	// admin endpoint. Default: loopback and private networks (127.0.0.0/8,
	// ::1, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10,
	// fc00::/7).
	WritesFrom []string `json:"writes_from,omitempty"`
	// This site serves mapped external ports: a request is proxied, path
	// unchanged, to the image mapped to the port it arrived on (404 when
	// none is), and nothing else is served here (no API, /health or
	// docs). Only the ports of such sites, and those of the app's
	// port_range, may be mapped; a site without it never proxies by port,
	// so a mapping cannot answer for the API. Not combined with api,
	// dashboard or cors. Default: off.
	MappedPorts bool `json:"mapped_ports,omitempty"`
	// Forward the client's Authorization header to containers even when
	// Caddy's authentication on this site (basic_auth, or any
	// authentication provider) checked it. Off, the header that
	// authenticated the client to this site is the site's credential and
	// is removed from proxied requests (the proxy route, mapped ports,
	// mirror copies); a header Caddy did not check is the tenant's and is
	// forwarded, as the original did. Cookies are always forwarded: neither
	// basic_auth nor the dashboard uses one. Default: off.
	ForwardAuthorization bool `json:"forward_authorization,omitempty"`

	writers   *registry.Writers
	app       *App
	reg       *registry.Registry
	rp        *reverseproxy.Handler
	transport *recycle.Transport
	api       *admin.API
	system    map[string]*reverseproxy.Handler // by service_type
	logger    *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.imagelb",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision attaches the handler to the imagelb app and provisions the
// embedded reverse proxy.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.MappedPorts && (h.API != "" || h.Dashboard || len(h.CORS) > 0) {
		return fmt.Errorf("mapped_ports: a site of mapped ports serves no API, so api, dashboard and cors do not apply; " +
			"put them on the API's own site")
	}
	if h.API == "" {
		h.API = APIOn
	}
	appIface, err := ctx.App("imagelb")
	if err != nil {
		return fmt.Errorf("loading imagelb app: %v", err)
	}
	h.app = appIface.(*App)
	h.reg = h.app.reg
	if h.writers, err = registry.NewWriters(h.WritesFrom); err != nil {
		return err
	}
	h.api = h.app.newAPI(apiPrefix)
	h.system = map[string]*reverseproxy.Handler{}
	for _, sys := range h.app.system {
		rp, err := newSystemProxy(ctx, sys, h.app.timeout)
		if err != nil {
			return err
		}
		rp.StreamCloseDelay = h.app.streamCloseDelay()
		h.system[sys.ServiceType] = rp
	}
	if h.Dashboard {
		h.api.UI = ui.Dashboard(apiPrefix + "/ui/")
	}

	// The transport is rebuilt after every recycle.DefaultEvery container
	// addresses that left the registry, so nothing is kept for removed
	// containers (see package recycle).
	transport, err := recycle.New(func() (http.RoundTripper, error) {
		t := &reverseproxy.HTTPTransport{
			ResponseHeaderTimeout: caddy.Duration(h.app.timeout),
			DialTimeout:           caddy.Duration(min(h.app.timeout, 5*time.Second)),
			// Caddy keeps 32 idle connections per upstream by default, so
			// past 32 concurrent requests per container every response
			// closes a connection and the next request dials a new one
			// (bench/results: the collapse at 256 connections). Keep as
			// many as the traffic needs.
			KeepAlive: &reverseproxy.KeepAlive{MaxIdleConnsPerHost: keepIdlePerHost},
		}
		if err := t.Provision(ctx); err != nil {
			return nil, err
		}
		guardDials(t)
		return t, nil
	}, func(rt http.RoundTripper) { _ = rt.(*reverseproxy.HTTPTransport).Cleanup() }, h.reg.RetiredAddresses, 0)
	if err != nil {
		return fmt.Errorf("provisioning transport: %v", err)
	}
	h.transport = transport
	h.rp = &reverseproxy.Handler{
		Transport: transport,
		// one static upstream whose dial address each attempt's pick sets
		// (proxy.go, attemptPolicy)
		Upstreams: reverseproxy.UpstreamPool{{Dial: dialPlaceholder}},
		LoadBalancing: &reverseproxy.LoadBalancing{
			Retries:         h.app.maxRetries,
			SelectionPolicy: attemptPolicy{reg: h.reg},
		},
		// a config reload leaves the WebSockets it proxies open (reload.go)
		StreamCloseDelay: h.app.streamCloseDelay(),
	}
	if err := h.rp.Provision(ctx); err != nil {
		return fmt.Errorf("provisioning reverse proxy: %v", err)
	}
	h.app.warnWithoutHandoff(ctx, h.logger)
	return nil
}

// Validate checks the handler's options.
func (h *Handler) Validate() error {
	for _, o := range h.CORS {
		if msg := checkOrigin(o); msg != "" {
			return fmt.Errorf("cors: %s", msg)
		}
	}
	if _, err := registry.NewWriters(h.WritesFrom); err != nil {
		return err
	}
	switch h.API {
	case APIOn, APIReadOnly, APIOff:
		return nil
	}
	return fmt.Errorf("api %q: use on, read_only or off", h.API)
}

// Cleanup releases the embedded reverse proxy and its transport; Caddy
// does not know about them. After a reload the proxies' WebSockets stay
// open for stream_close_delay; on the final stop they are closed at once.
func (h *Handler) Cleanup() error {
	if h.transport != nil {
		h.transport.Close()
	}
	for _, rp := range h.system {
		closeStreamsNow(rp)
		_ = rp.Cleanup()
	}
	if h.rp == nil {
		return nil
	}
	closeStreamsNow(h.rp)
	return h.rp.Cleanup()
}

// ServeHTTP serves the routes the handler owns and passes the rest on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.MappedPorts {
		return h.serveMappedPort(w, r, next)
	}
	path := r.URL.Path
	if path == proxyPrefix || strings.HasPrefix(path, proxyPrefix+"/") {
		return h.serveProxy(w, r, next) // CORS is the container's business
	}
	api := path == apiPrefix || strings.HasPrefix(path, apiPrefix+"/")
	managed := api && h.api.Owns(r)
	if api && !managed {
		sys, target, msg := h.systemRoute(r)
		if msg != "" {
			admin.WriteError(w, http.StatusBadRequest, msg)
			return nil
		}
		if sys != nil {
			return h.forwardSystem(w, r, next, sys, target) // so is a system service's
		}
	}
	own := api || path == "/" || path == healthPath || path == "/openapi.json" || path == "/docs" || strings.HasPrefix(path, "/docs/")
	if !own {
		return next.ServeHTTP(w, r)
	}
	if len(h.CORS) > 0 && h.cors(w, r) {
		return nil // a preflight, answered
	}
	var refused string // why a write is refused (intent.go)
	if managed && h.API == APIOn && isWrite(r.Method) {
		refused = h.refuseWrite(r)
	}
	switch {
	case path == "/":
		if allowGet(w, r) {
			admin.WriteJSON(w, http.StatusOK, map[string]string{"message": "Load Balancer API is running", "docs": "/docs"})
		}
	case path == healthPath:
		if allowGet(w, r) {
			h.serveHealth(w, r)
		}
	case path == "/openapi.json":
		if allowGet(w, r) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(openAPIDocument)
		}
	case path == "/docs" || path == "/docs/" || path == "/docs/docs.js" || path == "/docs/docs.css":
		if allowGet(w, r) {
			ui.Docs(w, r)
		}
	case path == apiPrefix+"/openapi.json" || !managed:
		h.api.ServeHTTP(w, r) // the document, or a JSON 404 under /api/v1/
	case h.API == APIOff:
		admin.WriteError(w, http.StatusNotFound, "the management API is turned off on this site")
	case h.API == APIReadOnly && r.Method != http.MethodGet && r.Method != http.MethodHead:
		admin.WriteError(w, http.StatusForbidden, "the management API is read-only on this site: use GET, or Caddy's admin endpoint for changes")
	case refused != "":
		admin.WriteError(w, http.StatusForbidden, refused)
	default:
		h.api.ServeHTTP(w, r)
	}
	return nil
}

// serveMappedPort serves a request on a site of mapped ports: the image
// mapped to the port it arrived on gets it, path unchanged.
func (h *Handler) serveMappedPort(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	port := localPort(r)
	svc := h.reg.ByPort(port)
	if svc == nil {
		admin.WriteError(w, http.StatusNotFound, fmt.Sprintf(
			"no image is mapped to port %d: register one with external_port=%d, or see GET /api/v1/port-mappings on the API's site", port, port))
		return nil
	}
	return h.proxy(w, r, next, svc)
}

// dropSiteCredentials removes from a request about to be proxied to a
// container the Authorization header that Caddy's authentication on this
// site checked (it set {http.auth.user.id}): the operator's credentials
// for this site are not the tenant's to see, unless forward_authorization
// says so.
func (h *Handler) dropSiteCredentials(r *http.Request) {
	if h.ForwardAuthorization || r.Header.Get("Authorization") == "" {
		return
	}
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		if _, authenticated := repl.Get("http.auth.user.id"); authenticated {
			r.Header.Del("Authorization")
		}
	}
}

// allowGet answers 405 to a method other than GET and HEAD, and reports
// whether the request may go on.
func allowGet(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	admin.WriteError(w, http.StatusMethodNotAllowed, admin.MethodNotAllowed)
	return false
}

// cors sets the CORS headers of an answer of the API to an allowed origin,
// and answers a preflight (reporting true).
func (h *Handler) cors(w http.ResponseWriter, r *http.Request) bool {
	hdr := w.Header()
	hdr.Add("Vary", "Origin")
	origin := r.Header.Get("Origin")
	if origin == "" || !h.allowsOrigin(origin) {
		return false
	}
	if slices.Contains(h.CORS, "*") {
		hdr.Set("Access-Control-Allow-Origin", "*")
	} else {
		// a listed origin may send credentials (basic_auth in front of the API)
		hdr.Set("Access-Control-Allow-Origin", origin)
		hdr.Set("Access-Control-Allow-Credentials", "true")
	}
	hdr.Set("Access-Control-Expose-Headers", "Link") // a paged list's next page
	if r.Method != http.MethodOptions || r.Header.Get("Access-Control-Request-Method") == "" {
		return false
	}
	hdr.Add("Vary", "Access-Control-Request-Method")
	hdr.Add("Vary", "Access-Control-Request-Headers")
	hdr.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
	if asked := r.Header.Get("Access-Control-Request-Headers"); asked != "" {
		hdr.Set("Access-Control-Allow-Headers", asked)
	}
	hdr.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
	return true
}

func (h *Handler) allowsOrigin(origin string) bool {
	for _, o := range h.CORS {
		if o == "*" || strings.EqualFold(o, origin) {
			return true
		}
	}
	return false
}

// checkOrigin returns why o is not a CORS origin ("*" or scheme://host[:port]), or "".
func checkOrigin(o string) string {
	if o == "*" {
		return ""
	}
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
		return fmt.Sprintf("origin %q must be * or scheme://host[:port], e.g. https://ui.example.com", o)
	}
	return ""
}

// forwardSystem forwards a request below /api/v1 to a system service, at
// target (the path systemRoute matched, /api/v1 cut off), and counts it.
func (h *Handler) forwardSystem(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, sys *systemService, target *url.URL) error {
	r2 := *r
	r2.URL = target
	c := &sys.state.counters
	c.Begin()
	start := time.Now()
	status, _, err := serveRecorded(h.system[sys.ServiceType], w, &r2, next, nil, nil)
	if err != nil && status == 0 {
		if status = errorStatus(err); status != 499 {
			admin.WriteError(w, status, fmt.Sprintf("system service %s (%s) could not be reached: %v",
				sys.ServiceType, sys.Upstream, unwrapHandlerError(err)))
		}
	}
	c.Finish(status, status >= 500 || status == 0, time.Since(start))
	return nil
}

func (h *Handler) serveHealth(w http.ResponseWriter, r *http.Request) {
	sum := h.reg.Summary()
	admin.WriteJSON(w, http.StatusOK, map[string]any{
		"status":             "healthy",
		"service":            "load-balancer",
		"version":            moduleVersion,
		"uptime_seconds":     h.reg.Uptime().Seconds(),
		"services":           sum.Services,
		"containers":         sum.Containers,
		"healthy_containers": sum.HealthyContainers,
		"store":              h.app.holder.storeState().Status,
		"hitless_reloads":    h.app.hitlessReloads(),
	})
}

// moduleVersion is this module's version in the binary ("devel" when it
// has none, as in go run); the build info does not change, so it is read once.
var moduleVersion = readModuleVersion()

func readModuleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Path == modulePath && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
		for _, m := range bi.Deps {
			if m.Path == modulePath {
				return m.Version
			}
		}
	}
	return "devel"
}

// modulePath is this module's import path.
const modulePath = "github.com/imagelb/caddy-imagelb"

// localPort is the port of the listener the request arrived on.
func localPort(r *http.Request) int {
	if addr, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok {
		return addr.Port
	}
	return 0
}

// parseHandlerCaddyfile sets up the handler from Caddyfile tokens.
func parseHandlerCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	imagelb {
//		api on|read_only|off
//		dashboard
//		cors <origin>...
//		writes_from <cidr|ip>...|any
//		mapped_ports
//		forward_authorization
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "api":
			if h.API != "" {
				return d.Err("api already specified")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.API = d.Val()
			switch h.API {
			case APIOn, APIReadOnly, APIOff:
			default:
				return d.Errf("api %q: use on, read_only or off", h.API)
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "dashboard":
			if h.Dashboard {
				return d.Err("dashboard already specified")
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			h.Dashboard = true
		case "mapped_ports":
			if h.MappedPorts {
				return d.Err("mapped_ports already specified")
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			h.MappedPorts = true
		case "forward_authorization":
			if h.ForwardAuthorization {
				return d.Err("forward_authorization already specified")
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			h.ForwardAuthorization = true
		case "cors":
			if h.CORS != nil {
				return d.Err("cors already specified")
			}
			h.CORS = d.RemainingArgs()
			if len(h.CORS) == 0 {
				return d.Err("cors needs at least one origin, e.g. cors https://ui.example.com (or * for any)")
			}
			for _, o := range h.CORS {
				if msg := checkOrigin(o); msg != "" {
					return d.Err(msg)
				}
			}
		case "writes_from":
			if h.WritesFrom != nil {
				return d.Err("writes_from already specified")
			}
			h.WritesFrom = d.RemainingArgs()
			if len(h.WritesFrom) == 0 {
				return d.Err("writes_from needs at least one network, e.g. writes_from 203.0.113.0/24 (or any)")
			}
			if _, err := registry.NewWriters(h.WritesFrom); err != nil {
				return d.Err(err.Error())
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
