// Package admin serves the imagelb management API over HTTP. The same API
// value serves both mounts: Caddy's admin endpoint (prefix /imagelb) and a
// site's imagelb handler (prefix /api/v1). It is one router (routes) and
// the JSON answers and errors of the contract. It imports net/http, zap and
// registry, never Caddy: the root wires it to Caddy.
package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

// DefaultMaxBody caps management request bodies unless configured otherwise.
const DefaultMaxBody = 1 << 20

// HealthChecker runs one active health check of every container (or of one
// image's, when imageID > 0) and returns the API's answer.
type HealthChecker func(ctx context.Context, imageID int64) (any, error)

// API is the management API over a registry.
type API struct {
	// Prefix is the path the routes hang below, e.g. "/api/v1".
	Prefix string
	// Registry returns the registry to act on; nil means the imagelb app is
	// not running (the API then answers 503).
	Registry func() *registry.Registry
	// MaxBody caps request bodies in bytes. Default: DefaultMaxBody.
	MaxBody int64
	// HealthCheck runs on-demand health checks; nil answers 501.
	HealthCheck HealthChecker
	// Logger logs the changes made through the API; nil logs nothing.
	Logger *zap.Logger
	// UI serves the dashboard below Prefix+"/ui/"; nil serves none.
	UI http.Handler
	// SystemServices lists the platform's system services; nil: none.
	SystemServices func() []SystemService
	// OpenAPI is the OpenAPI document served at Prefix+"/openapi.json".
	OpenAPI []byte
	// Cluster describes this node, its store and the nodes sharing it
	// (GET Prefix+"/cluster"); nil answers 404.
	Cluster func(ctx context.Context) (any, error)
	// Usage answers a usage query (GET Prefix+"/usage"); a zero Step is
	// the ledger's interval. nil answers 404.
	Usage func(ctx context.Context, q registry.UsageQuery) (any, error)
}

// SystemService is a system service as GET .../system-services shows it:
// the original's fields (service_type, name, host, port, status,
// last_health_check, total_requests) and ours.
type SystemService struct {
	ServiceType       string          `json:"service_type"`
	Name              string          `json:"name"`
	Host              string          `json:"host"`
	Port              int             `json:"port"`
	Status            registry.Status `json:"status"`
	LastHealthCheck   *string         `json:"last_health_check"`
	TotalRequests     int64           `json:"total_requests"`
	FailedRequests    int64           `json:"failed_requests"`
	ActiveConnections int64           `json:"active_connections"`
	Paths             []string        `json:"paths"`
	Default           bool            `json:"default"`
	LastHealthError   *string         `json:"last_health_error"`
}

// logChange logs an applied change at info level.
func (a *API) logChange(msg string, c *call, fields ...zap.Field) {
	if a.Logger == nil {
		return
	}
	a.Logger.Info(msg, append([]zap.Field{zap.Int64("image_id", c.imageID), zap.String("remote", c.r.RemoteAddr)}, fields...)...)
}

// call is one management request being served.
type call struct {
	reg         *registry.Registry
	w           http.ResponseWriter
	r           *http.Request
	imageID     int64  // from the path, when the route has one
	containerID string // from the path, when the route has one
}

// handlerFunc serves a call and returns the JSON answer (status 200) or an
// error, which is written with the status its registry kind maps to.
type handlerFunc = func(a *API, c *call) (any, error)

// route is one management route: a pattern of path segments below the
// prefix, where "{image_id}" and "{container_id}" match one segment, and its
// handlers by method.
type route struct {
	pattern []string
	methods map[string]handlerFunc
}

var routes = []route{
	{[]string{"services"}, map[string]handlerFunc{http.MethodGet: (*API).listServices}},
	{[]string{"services", "{image_id}"}, map[string]handlerFunc{
		http.MethodGet: (*API).getService, http.MethodDelete: (*API).deleteService}},
	{[]string{"services", "{image_id}", "register"}, map[string]handlerFunc{http.MethodPost: (*API).register}},
	{[]string{"services", "{image_id}", "containers", "{container_id}"}, map[string]handlerFunc{
		http.MethodPut: (*API).putContainer, http.MethodPatch: (*API).patchContainer,
		http.MethodDelete: (*API).deleteContainer}},
	{[]string{"port-mappings"}, map[string]handlerFunc{http.MethodGet: (*API).portMappings}},
	{[]string{"health-check"}, map[string]handlerFunc{http.MethodPost: (*API).healthCheck}},
	{[]string{"stats"}, map[string]handlerFunc{http.MethodGet: (*API).stats}},
	{[]string{"system-services"}, map[string]handlerFunc{http.MethodGet: (*API).systemServices}},
	{[]string{"openapi.json"}, map[string]handlerFunc{http.MethodGet: (*API).openAPI}},
	{[]string{"cluster"}, map[string]handlerFunc{http.MethodGet: (*API).cluster}},
	{[]string{"usage"}, map[string]handlerFunc{http.MethodGet: (*API).usage}},
	{[]string{"services", "{image_id}", "rollout"}, map[string]handlerFunc{
		http.MethodPost: (*API).startRollout, http.MethodGet: (*API).getRollout, http.MethodDelete: (*API).deleteRollout}},
	{[]string{"services", "{image_id}", "rollout", "pause"}, map[string]handlerFunc{http.MethodPost: (*API).pauseRollout}},
	{[]string{"services", "{image_id}", "rollout", "resume"}, map[string]handlerFunc{http.MethodPost: (*API).resumeRollout}},
	{[]string{"services", "{image_id}", "rollout", "promote"}, map[string]handlerFunc{http.MethodPost: (*API).promoteRollout}},
}

// The errors of unknown routes and methods, worded as the original's.
const (
	NotFound         = "Not Found"
	MethodNotAllowed = "Method Not Allowed"
)

// Routes lists the API's routes as "METHOD /path" below the prefix, with
// {image_id} and {container_id} as written in the OpenAPI document.
func Routes() []string {
	var out []string
	for _, rt := range routes {
		for m := range rt.methods {
			out = append(out, m+" /"+strings.Join(rt.pattern, "/"))
		}
	}
	slices.Sort(out)
	return out
}

// Owns reports whether the request's path is one of the API's routes
// (whatever the method).
func (a *API) Owns(r *http.Request) bool {
	if a.isUI(r) {
		return true
	}
	_, _, ok := a.match(r)
	return ok
}

// isUI reports whether the request is for the dashboard.
func (a *API) isUI(r *http.Request) bool {
	return a.UI != nil && (r.URL.Path == a.Prefix+"/ui" || strings.HasPrefix(r.URL.Path, a.Prefix+"/ui/"))
}

// serveUI serves the dashboard's files (GET and HEAD only).
func (a *API) serveUI(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		WriteError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed on the dashboard; use GET", r.Method))
		return
	}
	if r.URL.Path == a.Prefix+"/ui" {
		http.Redirect(w, r, a.Prefix+"/ui/", http.StatusPermanentRedirect)
		return
	}
	// the page loads nothing from elsewhere, and may not
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	a.UI.ServeHTTP(w, r)
}

// ServeHTTP serves a management request; a path that is not a route gets a
// JSON 404, a route with the wrong method a JSON 405.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a.isUI(r) {
		a.serveUI(w, r)
		return
	}
	rt, args, ok := a.match(r)
	if !ok {
		WriteError(w, http.StatusNotFound, NotFound)
		return
	}
	h, ok := rt.methods[r.Method]
	if !ok && r.Method == http.MethodHead {
		h, ok = rt.methods[http.MethodGet]
	}
	if !ok {
		allow := make([]string, 0, len(rt.methods))
		for m := range rt.methods {
			allow = append(allow, m)
		}
		slices.Sort(allow)
		w.Header().Set("Allow", strings.Join(allow, ", "))
		WriteError(w, http.StatusMethodNotAllowed, MethodNotAllowed)
		return
	}
	c := &call{reg: a.Registry(), w: w, r: r}
	if c.reg == nil {
		WriteError(w, http.StatusServiceUnavailable, "the imagelb app is not running: add an imagelb handler or global option to the config")
		return
	}
	if v, ok := args["image_id"]; ok {
		id, err := registry.ParseImageID(v)
		if err != nil {
			writeRegistryError(w, err)
			return
		}
		c.imageID = id
	}
	c.containerID = args["container_id"]
	v, err := h(a, c)
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	if write, ok := v.(streamed); ok {
		if err := streamJSON(w, write); err != nil && a.Logger != nil {
			a.Logger.Debug("answer cut short", zap.String("path", r.URL.Path), zap.String("remote", r.RemoteAddr), zap.Error(err))
		}
		return
	}
	if c, ok := v.(created); ok {
		WriteJSON(w, http.StatusCreated, c.v)
		return
	}
	WriteJSON(w, http.StatusOK, v)
}

// created is an answer with status 201.
type created struct{ v any }

// match finds the route of the request and the values of its parameters.
func (a *API) match(r *http.Request) (*route, map[string]string, bool) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), a.Prefix+"/")
	if !ok {
		return nil, nil, false
	}
	segs := strings.Split(strings.TrimSuffix(rest, "/"), "/")
outer:
	for i := range routes {
		rt := &routes[i]
		if len(rt.pattern) != len(segs) {
			continue
		}
		var args map[string]string
		for j, p := range rt.pattern {
			name, isParam := strings.CutPrefix(p, "{")
			if !isParam {
				if p != segs[j] {
					continue outer
				}
				continue
			}
			v, err := url.PathUnescape(segs[j])
			if err != nil || v == "" {
				continue outer
			}
			if args == nil {
				args = map[string]string{}
			}
			args[strings.TrimSuffix(name, "}")] = v
		}
		return rt, args, true
	}
	return nil, nil, false
}

func (a *API) listServices(c *call) (any, error) {
	q, err := registry.ParseListQuery(c.r.URL.Query(), false)
	if err != nil {
		return nil, err
	}
	var svcs []*registry.Service
	if q.Paged() {
		var next *registry.Cursor
		svcs, next = c.reg.Page(q)
		setNext(c, next)
	} else {
		svcs = c.reg.Services()
	}
	return streamed(func(js *jsonStream) {
		js.list(len(svcs), func(i int) any { return svcs[i].View() }) // a bare array, as the original answered
	}), nil
}

func (a *API) getService(c *call) (any, error) {
	svc, err := c.reg.Get(c.imageID)
	if err != nil {
		return nil, err
	}
	return svc.View(), nil
}

func (a *API) deleteService(c *call) (any, error) {
	svc, err := c.reg.Remove(c.imageID)
	if err != nil {
		return nil, err
	}
	a.logChange("service removed", c, zap.String("image_name", svc.ImageName), zap.Int("containers", len(svc.Containers)))
	return svc.View(), nil
}

func (a *API) register(c *call) (any, error) {
	body, err := a.readBody(c)
	if err != nil {
		return nil, err
	}
	spec, err := registry.DecodeRegistration(c.imageID, body, c.r.URL.Query())
	if err != nil {
		return nil, err
	}
	old := c.reg.Lookup(c.imageID)
	svc, err := c.reg.Register(spec)
	if err != nil {
		return nil, err
	}
	a.logChange("service registered", c, zap.String("image_name", svc.ImageName),
		zap.String("algorithm", string(svc.Algorithm)), zap.Int("containers", len(svc.Containers)))
	ans := registerAnswer{ServiceView: svc.View(),
		Message: fmt.Sprintf("Service %s registered successfully with %d containers", svc.ImageName, len(svc.Containers))}
	if old != nil && old.Static {
		ans.Warning = fmt.Sprintf("image_id %d was declared in the configuration (a static service); this registration "+
			"takes it over: config reloads no longer change it, and removing it from the configuration no longer removes it", c.imageID)
		if a.Logger != nil {
			a.Logger.Warn("registration took over a static service", zap.Int64("image_id", c.imageID), zap.String("remote", c.r.RemoteAddr))
		}
	}
	return ans, nil
}

// registerAnswer is the Service plus the original's message.
type registerAnswer struct {
	registry.ServiceView
	Message string `json:"message"`
	Warning string `json:"warning,omitempty"`
}

func (a *API) putContainer(c *call) (any, error) {
	body, err := a.readBody(c)
	if err != nil {
		return nil, err
	}
	spec, err := registry.DecodeContainer(c.imageID, c.containerID, body)
	if err != nil {
		return nil, err
	}
	ctr, err := c.reg.PutContainer(c.imageID, spec)
	if err != nil {
		return nil, err
	}
	a.logChange("container registered", c, zap.String("container_id", ctr.ContainerID), zap.String("upstream", ctr.DialAddr()))
	return ctr.View(c.imageID), nil
}

func (a *API) patchContainer(c *call) (any, error) {
	body, err := a.readBody(c)
	if err != nil {
		return nil, err
	}
	p, err := registry.DecodePatch(body)
	if err != nil {
		return nil, err
	}
	ctr, err := c.reg.PatchContainer(c.imageID, c.containerID, p)
	if err != nil {
		return nil, err
	}
	a.logChange("container changed", c, zap.String("container_id", ctr.ContainerID),
		zap.String("status", string(ctr.Status)), zap.Int("weight", ctr.Weight))
	return ctr.View(c.imageID), nil
}

func (a *API) deleteContainer(c *call) (any, error) {
	ctr, err := c.reg.RemoveContainer(c.imageID, c.containerID)
	if err != nil {
		return nil, err
	}
	a.logChange("container removed", c, zap.String("container_id", ctr.ContainerID))
	return ctr.View(c.imageID), nil
}

func (a *API) portMappings(c *call) (any, error) {
	q, err := registry.ParseListQuery(c.r.URL.Query(), false)
	if err != nil {
		return nil, err
	}
	var ms []registry.PortMapping
	if q.Paged() { // ordered by image_id, the cursor's order
		var next *registry.Cursor
		ms, next = c.reg.PortMappingsPage(q)
		setNext(c, next)
	} else {
		ms = c.reg.PortMappings() // at most one per port, sorted by port
	}
	return streamed(func(js *jsonStream) {
		js.list(len(ms), func(i int) any { return ms[i] }) // a bare array, as the original answered
	}), nil
}

func (a *API) systemServices(c *call) (any, error) {
	if a.SystemServices == nil {
		return []SystemService{}, nil
	}
	return a.SystemServices(), nil
}

func (a *API) cluster(c *call) (any, error) {
	if a.Cluster == nil {
		return nil, &registry.Error{Kind: registry.KindNotFound, Detail: "this server does not describe its cluster"}
	}
	return a.Cluster(c.r.Context())
}

// usage reads ?image_id=N&from=T&to=T&step=D: times in RFC 3339, the
// step a Go duration (1m, 1h); by default the last hour.
func (a *API) usage(c *call) (any, error) {
	if a.Usage == nil {
		return nil, &registry.Error{Kind: registry.KindNotFound, Detail: "this server keeps no usage ledger"}
	}
	imageID, err := optionalImageID(c.r)
	if err != nil {
		return nil, err
	}
	query := c.r.URL.Query()
	q := registry.UsageQuery{ImageID: imageID, To: time.Now()}
	var fields []registry.FieldError
	parseTime := func(name string, into *time.Time) {
		if v := query.Get(name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				fields = append(fields, registry.FieldError{Loc: []any{"query", name}, Type: "datetime_parsing",
					Msg: fmt.Sprintf("%s %q is not an RFC 3339 time, e.g. 2026-12-01T10:00:00Z", name, v)})
			}
			*into = t
		}
	}
	parseTime("to", &q.To)
	q.From = q.To.Add(-time.Hour)
	parseTime("from", &q.From)
	if v := query.Get("step"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			fields = append(fields, registry.FieldError{Loc: []any{"query", "step"}, Type: "duration_parsing",
				Msg: fmt.Sprintf("step %q is not a positive duration, e.g. 1m or 1h", v)})
		}
		q.Step = d
	}
	list, err := registry.ParseListQuery(query, false)
	if err != nil {
		fields = append(fields, err.(*registry.Error).Fields...)
	}
	q.List = list
	if len(fields) > 0 {
		return nil, &registry.Error{Kind: registry.KindInvalid, Fields: fields}
	}
	v, err := a.Usage(c.r.Context(), q)
	if p, ok := v.(interface{ NextPage() *registry.Cursor }); ok && err == nil {
		setNext(c, p.NextPage())
	}
	return v, err
}

// setNext writes the next page's URL in a Link header (RFC 8288): the
// request's path and parameters, with after set to the cursor. A last
// page (next nil) has none.
func setNext(c *call, next *registry.Cursor) {
	if next == nil {
		return
	}
	q := c.r.URL.Query()
	q.Set("after", next.String())
	u := url.URL{Path: c.r.URL.Path, RawPath: c.r.URL.RawPath, RawQuery: q.Encode()}
	c.w.Header().Set("Link", "<"+u.String()+`>; rel="next"`)
}

func (a *API) openAPI(c *call) (any, error) {
	return json.RawMessage(a.OpenAPI), nil
}

func (a *API) healthCheck(c *call) (any, error) {
	imageID, err := optionalImageID(c.r)
	if err != nil {
		return nil, err
	}
	if a.HealthCheck == nil {
		return nil, errNotImplemented
	}
	return a.HealthCheck(c.r.Context(), imageID)
}

// stats answers the statistics: of every image, of one (image_id), or, with
// the parameters of a paged list, of a page of images beside the
// registry-wide totals.
func (a *API) stats(c *call) (any, error) {
	imageID, err := optionalImageID(c.r)
	if err != nil {
		return nil, err
	}
	q, err := registry.ParseListQuery(c.r.URL.Query(), true)
	if err != nil {
		return nil, err
	}
	var st statsAnswer
	var svcs []*registry.Service
	var entries []registry.ServiceStatsView
	switch {
	case imageID != 0: // one image: the totals are its own
		svc, err := c.reg.Get(imageID)
		if err != nil {
			return nil, err
		}
		svcs = []*registry.Service{svc}
		st.StatsView, entries = c.reg.StatsParts(svcs)
		st.totalsOf(svcs, entries)
	case q.Paged(): // a page: the totals are the registry's
		var next *registry.Cursor
		var t registry.Totals
		svcs, next, t = c.reg.PageWithTotals(q)
		setNext(c, next)
		st.StatsView, entries = c.reg.StatsParts(svcs)
		st.TotalRequests, st.FailedRequests = t.TotalRequests, t.FailedRequests
		st.ActiveConnections, st.RequestsPerSecond = t.ActiveConnections, t.RequestsPerSecond
		st.UserServices.TotalServices, st.UserServices.TotalContainers = t.Services, t.Containers
		st.UserServices.HealthyContainers, st.UserServices.TotalRequests = t.HealthyContainers, t.TotalRequests
		st.ContainersByStatus = t.ContainersByStatus
	default: // every image, as the original answered
		svcs = c.reg.Services()
		st.StatsView, entries = c.reg.StatsParts(svcs)
		st.totalsOf(svcs, entries)
	}
	st.PortMappingsCount = c.reg.PortMappingsCount()
	if a.SystemServices != nil {
		for _, s := range a.SystemServices() {
			st.SystemServices.TotalServices++
			if s.Status == registry.StatusHealthy {
				st.SystemServices.HealthyServices++
			}
			st.SystemServices.TotalRequests += s.TotalRequests
		}
	}
	// The document is written around its services, which are written one
	// at a time with their containers.
	st.Services = []registry.ServiceStatsView{}
	return streamed(func(js *jsonStream) {
		js.around(st, `"services":[]`, func() {
			js.list(len(entries), func(i int) any {
				e := entries[i]
				e.Containers = svcs[i].ContainerStats()
				return e
			})
		})
	}), nil
}

// statsAnswer is the statistics plus the original's summaries.
type statsAnswer struct {
	registry.StatsView
	UserServices struct {
		TotalServices     int   `json:"total_services"`
		TotalContainers   int   `json:"total_containers"`
		HealthyContainers int   `json:"healthy_containers"`
		TotalRequests     int64 `json:"total_requests"`
	} `json:"user_services"`
	SystemServices struct {
		TotalServices   int   `json:"total_services"`
		HealthyServices int   `json:"healthy_services"`
		TotalRequests   int64 `json:"total_requests"`
	} `json:"system_services"`
	PortMappingsCount int `json:"port_mappings_count"`
	// ContainersByStatus counts the containers in each status, every
	// status present (the dashboard's summary).
	ContainersByStatus map[registry.Status]int `json:"containers_by_status"`
}

// totalsOf sets the original's summary of the services shown.
func (st *statsAnswer) totalsOf(svcs []*registry.Service, entries []registry.ServiceStatsView) {
	st.UserServices.TotalServices = len(svcs)
	for i, s := range entries {
		st.UserServices.TotalContainers += len(svcs[i].Containers)
		st.UserServices.HealthyContainers += s.HealthyContainers
		st.UserServices.TotalRequests += s.TotalRequests
	}
	st.ContainersByStatus = registry.CountByStatus(svcs)
}

// optionalImageID reads the ?image_id= filter; 0 means none.
func optionalImageID(r *http.Request) (int64, error) {
	v := r.URL.Query().Get("image_id")
	if v == "" {
		return 0, nil
	}
	return registry.ParseImageIDQuery(v)
}

// readBody reads the request body up to MaxBody; past it the answer is 413.
func (a *API) readBody(c *call) ([]byte, error) {
	limit := a.MaxBody
	if limit <= 0 {
		limit = DefaultMaxBody
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.w, c.r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &registry.Error{Kind: registry.KindTooLarge,
				Detail: fmt.Sprintf("request body is larger than the limit of %d bytes", limit)}
		}
		return nil, &registry.Error{Kind: registry.KindInvalid, Detail: fmt.Sprintf("reading request body: %v", err)}
	}
	return body, nil
}

// errNotImplemented answers the on-demand health check until the checker lands.
var errNotImplemented = errors.New("on-demand health checks are not available in this build")

// WriteRegistryError answers with the status that the registry error's
// kind maps to, in the list form when it has field errors.
func WriteRegistryError(w http.ResponseWriter, err error) { writeRegistryError(w, err) }

// writeRegistryError answers with the status that the registry error's kind maps to.
func writeRegistryError(w http.ResponseWriter, err error) {
	var re *registry.Error
	if !errors.As(err, &re) {
		status := http.StatusInternalServerError
		if errors.Is(err, errNotImplemented) {
			status = http.StatusNotImplemented
		}
		WriteError(w, status, err.Error())
		return
	}
	status := http.StatusUnprocessableEntity
	switch re.Kind {
	case registry.KindNotFound:
		status = http.StatusNotFound
	case registry.KindConflict:
		status = http.StatusConflict
	case registry.KindTooLarge:
		status = http.StatusRequestEntityTooLarge
	case registry.KindStorage:
		status = http.StatusInternalServerError
	case registry.KindUnavailable:
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "5")
	}
	if len(re.Fields) > 0 {
		WriteJSON(w, status, map[string]any{"detail": re.Fields})
		return
	}
	WriteError(w, status, re.Detail)
}

// WriteError writes {"detail": detail} with the status.
func WriteError(w http.ResponseWriter, status int, detail string) {
	WriteJSON(w, status, map[string]string{"detail": detail})
}

// streamed is an answer written piece by piece (the lists, which grow with
// the registry): the memory it takes is one element's, not the answer's.
type streamed func(js *jsonStream)

// streamJSON writes a streamed answer with status 200 and the bytes
// WriteJSON would write for the whole. An element that cannot be encoded
// cuts the answer short (the status is sent already): the error says why.
func streamJSON(w http.ResponseWriter, write streamed) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	js := &jsonStream{w: bufio.NewWriterSize(w, 32<<10)}
	js.enc = json.NewEncoder(&js.buf)
	js.enc.SetEscapeHTML(false)
	write(js)
	js.raw("\n")
	if js.err == nil {
		js.err = js.w.Flush()
	}
	return js.err
}

// jsonStream writes JSON through a buffer; after the first error it writes
// nothing more.
type jsonStream struct {
	w   *bufio.Writer
	buf bytes.Buffer // one value's encoding
	enc *json.Encoder
	err error
}

// raw writes JSON text as it is.
func (js *jsonStream) raw(text string) {
	if js.err == nil {
		_, js.err = js.w.WriteString(text)
	}
}

// encode returns v's encoding, as WriteJSON's encoder makes it, without
// the final newline; it stays valid until the next encode.
func (js *jsonStream) encode(v any) []byte {
	js.buf.Reset()
	if err := js.enc.Encode(v); err != nil {
		js.err = err
		return nil
	}
	return bytes.TrimSuffix(js.buf.Bytes(), []byte("\n"))
}

// list writes a JSON array of n elements, made one at a time by elem.
func (js *jsonStream) list(n int, elem func(i int) any) {
	js.raw("[")
	for i := 0; i < n && js.err == nil; i++ {
		if i > 0 {
			js.raw(",")
		}
		if b := js.encode(elem(i)); js.err == nil {
			_, js.err = js.w.Write(b)
		}
	}
	js.raw("]")
}

// around writes doc, with body written where its encoding has mark.
func (js *jsonStream) around(doc any, mark string, body func()) {
	text := string(js.encode(doc))
	before, after, ok := strings.Cut(text, mark)
	if js.err == nil && !ok {
		js.err = fmt.Errorf("%s is not in the answer", mark)
	}
	js.raw(before + strings.TrimSuffix(mark, "[]"))
	body()
	js.raw(after)
}

// WriteJSON writes v as JSON with the status.
// It does not escape <, > and & as HTML: the answers are JSON, not HTML,
// and "\u003e" in a detail is hard to read.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"detail":"encoding the response failed"}` + "\n")
	}
	body := buf.Bytes()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
