package imagelb

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
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
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("imagelb", parseHandlerCaddyfile)
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
// management API under /api/v1/, the proxy /api/v1/proxy/{image_id}/{path}
// and every request arriving on a mapped external port. Everything else goes
// to the next handler. Proxying is done by Caddy's reverse_proxy handler,
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
	if h.API == "" {
		h.API = APIOn
	}
	appIface, err := ctx.App("imagelb")
	if err != nil {
		return fmt.Errorf("loading imagelb app: %v", err)
	}
	h.app = appIface.(*App)
	h.reg = h.app.reg
	h.api = h.app.newAPI(apiPrefix)
	h.system = map[string]*reverseproxy.Handler{}
	for _, sys := range h.app.system {
		rp, err := newSystemProxy(ctx, sys, h.app.timeout)
		if err != nil {
			return err
		}
		h.system[sys.ServiceType] = rp
	}
	if h.Dashboard {
		h.api.UI = uiHandler(apiPrefix + "/ui/")
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
		return t, nil
	}, func(rt http.RoundTripper) { _ = rt.(*reverseproxy.HTTPTransport).Cleanup() }, h.reg.RetiredAddresses, 0)
	if err != nil {
		return fmt.Errorf("provisioning transport: %v", err)
	}
	h.transport = transport
	h.rp = &reverseproxy.Handler{
		Transport:        transport,
		DynamicUpstreams: &UpstreamSource{reg: h.reg, preselect: true},
		LoadBalancing: &reverseproxy.LoadBalancing{
			Retries:         h.app.maxRetries,
			SelectionPolicy: Selection{},
		},
	}
	if err := h.rp.Provision(ctx); err != nil {
		return fmt.Errorf("provisioning reverse proxy: %v", err)
	}
	return nil
}

// Validate checks the handler's options.
func (h *Handler) Validate() error {
	for _, o := range h.CORS {
		if msg := checkOrigin(o); msg != "" {
			return fmt.Errorf("cors: %s", msg)
		}
	}
	switch h.API {
	case APIOn, APIReadOnly, APIOff:
		return nil
	}
	return fmt.Errorf("api %q: use on, read_only or off", h.API)
}

// Cleanup releases the embedded reverse proxy and its transport; Caddy
// does not know about them.
func (h *Handler) Cleanup() error {
	if h.transport != nil {
		h.transport.Close()
	}
	for _, rp := range h.system {
		_ = rp.Cleanup()
	}
	if h.rp == nil {
		return nil
	}
	return h.rp.Cleanup()
}

// ServeHTTP serves the routes the handler owns and passes the rest on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.reg.HasPortMappings() {
		if svc := h.reg.ByPort(localPort(r)); svc != nil {
			return h.proxy(w, r, next, svc, nil)
		}
	}
	path := r.URL.Path
	if path == proxyPrefix || strings.HasPrefix(path, proxyPrefix+"/") {
		return h.serveProxy(w, r, next) // CORS is the container's business
	}
	api := path == apiPrefix || strings.HasPrefix(path, apiPrefix+"/")
	var sys *systemService
	if api && !h.api.Owns(r) {
		sys = matchSystem(h.app.system, strings.TrimPrefix(path, apiPrefix))
	}
	if sys != nil {
		return h.forwardSystem(w, r, next, sys) // so is a system service's
	}
	own := api || path == "/" || path == healthPath || path == "/openapi.json" || path == "/docs" || strings.HasPrefix(path, "/docs/")
	if !own {
		return next.ServeHTTP(w, r)
	}
	if len(h.CORS) > 0 && h.cors(w, r) {
		return nil // a preflight, answered
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
			serveDocs(w, r)
		}
	case path == apiPrefix+"/openapi.json" || !h.api.Owns(r):
		h.api.ServeHTTP(w, r) // the document, or a JSON 404 under /api/v1/
	case h.API == APIOff:
		admin.WriteError(w, http.StatusNotFound, "the management API is turned off on this site")
	case h.API == APIReadOnly && r.Method != http.MethodGet && r.Method != http.MethodHead:
		admin.WriteError(w, http.StatusForbidden, "the management API is read-only on this site: use GET, or Caddy's admin endpoint for changes")
	default:
		h.api.ServeHTTP(w, r)
	}
	return nil
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

// forwardSystem forwards a request below /api/v1 to a system service,
// with /api/v1 cut off the path, and counts it.
func (h *Handler) forwardSystem(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, sys *systemService) error {
	r2 := *r
	r2.URL = systemTarget(r, strings.TrimPrefix(r.URL.Path, apiPrefix))
	c := &sys.state.counters
	c.Begin()
	start := time.Now()
	sw := statusWriters.Get().(*statusWriter)
	sw.ResponseWriter, sw.status = w, 0
	err := h.system[sys.ServiceType].ServeHTTP(sw, &r2, next)
	status := sw.status
	sw.ResponseWriter = nil
	statusWriters.Put(sw)
	if err != nil && status == 0 {
		var herr caddyhttp.HandlerError
		status = http.StatusBadGateway
		if errors.As(err, &herr) && herr.StatusCode != 0 {
			status = herr.StatusCode
		}
		if status != 499 {
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
		"version":            moduleVersion(),
		"uptime_seconds":     h.reg.Uptime().Seconds(),
		"services":           sum.Services,
		"containers":         sum.Containers,
		"healthy_containers": sum.HealthyContainers,
	})
}

// moduleVersion is this module's version in the binary ("devel" when it
// has none, as in go run).
func moduleVersion() string {
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

// serveProxy serves /api/v1/proxy/{image_id}/{path...}: the container gets
// /{path...} with the query string unchanged.
func (h *Handler) serveProxy(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	id, target, status, detail := parseProxyPath(r.URL.EscapedPath())
	if status == http.StatusUnprocessableEntity {
		// the original's list form, at the path's image_id
		_, err := registry.ParseImageID(detail)
		admin.WriteRegistryError(w, err)
		return nil
	}
	if status != 0 {
		admin.WriteError(w, status, detail)
		return nil
	}
	svc := h.reg.Lookup(id)
	if svc == nil {
		admin.WriteError(w, http.StatusNotFound, fmt.Sprintf("image_id %d is not registered", id))
		return nil
	}
	u := *r.URL
	u.RawPath = target
	u.Path, _ = url.PathUnescape(target) // parseProxyPath checked it
	return h.proxy(w, r, next, svc, &u)
}

// parseProxyPath splits the escaped path of a proxy request,
// /api/v1/proxy/{image_id}[/{path...}], into the image id and the escaped
// path the container gets ("/" at least). The image id is the first
// segment exactly as sent: an encoded slash or a dot segment in it is no
// id, so no path can reach another image than the one it names. A non-zero
// status is the error to answer with (for 422, detail is the bad image_id).
func parseProxyPath(escaped string) (id int64, target string, status int, detail string) {
	rest, ok := strings.CutPrefix(escaped, proxyPrefix)
	if !ok || (rest != "" && rest[0] != '/') {
		return 0, "", http.StatusNotFound, "not a proxy path: use /api/v1/proxy/{image_id}/{path}"
	}
	idRaw, tail, _ := strings.Cut(strings.TrimPrefix(rest, "/"), "/")
	if idRaw == "" {
		return 0, "", http.StatusNotFound, "missing image_id: use /api/v1/proxy/{image_id}/{path}"
	}
	id, err := registry.ParseImageID(idRaw)
	if err != nil {
		return 0, "", http.StatusUnprocessableEntity, idRaw // the caller words it
	}
	target = "/" + tail
	if _, err := url.PathUnescape(target); err != nil {
		return 0, "", http.StatusBadRequest, fmt.Sprintf("malformed path: %v", err)
	}
	return id, target, 0, ""
}

// proxy sends the request to one of the service's containers through the
// embedded reverse proxy, counting it for the image and its attempts for
// the containers. target, when not nil, replaces the request's URL.
func (h *Handler) proxy(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, svc *registry.Service, target *url.URL) error {
	if len(svc.Available()) == 0 {
		svc.State.Refuse(http.StatusServiceUnavailable, true)
		admin.WriteError(w, http.StatusServiceUnavailable,
			fmt.Sprintf("no healthy container for image_id %d (%d registered, none healthy with weight > 0)", svc.ImageID, len(svc.Containers)))
		return nil
	}
	if rl := svc.Options.RateLimit; rl != nil && h.rateLimited(w, r, svc, rl) {
		return nil
	}
	if !svc.TryBegin() {
		admin.WriteError(w, http.StatusServiceUnavailable, fmt.Sprintf(
			"image_id %d has max_in_flight %d requests in flight; try again shortly", svc.ImageID, svc.Options.MaxInFlight))
		return nil
	}
	if target != nil {
		r2 := *r
		r2.URL = target
		r = &r2
	}
	q := newRequest(r, svc, h.app)
	q.watchBody(r)
	caddyhttp.SetVar(r.Context(), requestVar, q)
	sw := statusWriters.Get().(*statusWriter)
	sw.ResponseWriter, sw.status = w, 0
	err := h.rp.ServeHTTP(sw, r, next)
	status := sw.status
	sw.ResponseWriter = nil
	statusWriters.Put(sw)

	if err == nil {
		how := outcomeAnswered
		if status == 499 {
			how = outcomeClient // reverse_proxy's mark of a client that went away
		}
		q.finish(status, status >= 500, how)
		if c := h.logger.Check(zap.DebugLevel, "proxied"); c != nil && q.last != nil {
			c.Write(zap.Int64("image_id", svc.ImageID), zap.String("container_id", q.last.ContainerID),
				zap.String("upstream", q.last.DialAddr()), zap.Int("status", status), zap.Int("attempts", len(q.tried)))
		}
		return nil
	}
	if code, cause := q.clientFault(r); code != 0 {
		// the client's request failed, not the container: no passive
		// failure, no outlier count, no retry
		q.finish(code, false, outcomeClient)
		if c := h.logger.Check(zap.DebugLevel, "client request failed"); c != nil {
			c.Write(zap.Int64("image_id", svc.ImageID), zap.Int("status", code), zap.Error(cause))
		}
		if status == 0 && code != 499 {
			q.unstick(w)
			admin.WriteError(w, code, fmt.Sprintf("reading the request failed: %v; the container was not at fault", cause))
		}
		return nil
	}
	var herr caddyhttp.HandlerError
	code := http.StatusBadGateway
	if errors.As(err, &herr) && herr.StatusCode != 0 {
		code = herr.StatusCode
	}
	how := outcomeAnswered
	if code == http.StatusBadGateway || code == http.StatusGatewayTimeout {
		how = outcomeUnreachable
	}
	q.finish(code, code >= 500, how)
	if status != 0 || code == 499 {
		return nil // the client has its answer, or is gone
	}
	var detail string
	switch code {
	case http.StatusServiceUnavailable:
		detail = fmt.Sprintf("no healthy container for image_id %d could take the request", svc.ImageID)
	case http.StatusGatewayTimeout:
		detail = fmt.Sprintf("the container of image_id %d did not answer within %s", svc.ImageID, h.app.timeout)
	default:
		detail = fmt.Sprintf("every attempt to reach a container of image_id %d failed (%d attempts): %v", svc.ImageID, len(q.tried), unwrapHandlerError(err))
		if q.noRetry {
			detail += fmt.Sprintf("; the retry budget of image_id %d (%g of requests) allowed no more retries", svc.ImageID, svc.Options.RetryBudget)
		}
	}
	q.unstick(w) // the client got no answer from the container it would be pinned to
	if c := h.logger.Check(zap.WarnLevel, "proxy failed"); c != nil {
		fields := []zap.Field{zap.Int64("image_id", svc.ImageID), zap.Int("status", code), zap.Int("attempts", len(q.tried)), zap.Error(err)}
		if q.last != nil {
			fields = append(fields, zap.String("container_id", q.last.ContainerID), zap.String("upstream", q.last.DialAddr()))
		}
		c.Write(fields...)
	}
	admin.WriteError(w, code, detail)
	return nil
}

// rateLimited takes the request from the service's rate limit; past it, it
// answers 429 with Retry-After and reports true.
func (h *Handler) rateLimited(w http.ResponseWriter, r *http.Request, svc *registry.Service, rl *registry.RateLimit) bool {
	client := ""
	if rl.Per == registry.PerClientIP {
		client = clientIP(r)
	}
	ok, wait := svc.AllowRate(client, time.Now())
	if ok {
		return false
	}
	svc.State.Refuse(http.StatusTooManyRequests, false)
	w.Header().Set("Retry-After", strconv.Itoa(max(int(math.Ceil(wait.Seconds())), 1)))
	admin.WriteError(w, http.StatusTooManyRequests, fmt.Sprintf(
		"rate limit of image_id %d exceeded: %d requests per %s (burst %d) per %s; retry in %s",
		svc.ImageID, rl.Requests, time.Duration(rl.Interval), rl.Burst, strings.ReplaceAll(rl.Per, "_", " "), wait.Round(time.Millisecond)))
	return true
}

func unwrapHandlerError(err error) error {
	var herr caddyhttp.HandlerError
	if errors.As(err, &herr) && herr.Err != nil {
		return herr.Err
	}
	return err
}

// localPort is the port of the listener the request arrived on.
func localPort(r *http.Request) int {
	if addr, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok {
		return addr.Port
	}
	return 0
}

// statusWriter records the final status code written to the client.
// Unwrap lets reverse_proxy flush and hijack through it.
type statusWriter struct {
	caddyhttp.ResponseWriterWrapper
	status int
}

var statusWriters = sync.Pool{New: func() any { return new(statusWriter) }}

func (s *statusWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
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
