// Package admin serves the imagelb management API over HTTP. The same API
// value serves both mounts: Caddy's admin endpoint (prefix /imagelb) and a
// site's imagelb handler (prefix /api/v1).
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

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
}

// route is one management route: a pattern of path segments below the
// prefix, where "*" matches one segment, and its handlers by method.
type route struct {
	pattern []string
	methods map[string]func(a *API, reg *registry.Registry, w http.ResponseWriter, r *http.Request, args []string)
}

var routes = []route{
	{[]string{"services"}, map[string]handlerFunc{http.MethodGet: (*API).listServices}},
	{[]string{"services", "*"}, map[string]handlerFunc{
		http.MethodGet: (*API).getService, http.MethodDelete: (*API).deleteService}},
	{[]string{"services", "*", "register"}, map[string]handlerFunc{http.MethodPost: (*API).register}},
	{[]string{"services", "*", "containers", "*"}, map[string]handlerFunc{
		http.MethodPut: (*API).putContainer, http.MethodPatch: (*API).patchContainer,
		http.MethodDelete: (*API).deleteContainer}},
	{[]string{"port-mappings"}, map[string]handlerFunc{http.MethodGet: (*API).portMappings}},
	{[]string{"health-check"}, map[string]handlerFunc{http.MethodPost: (*API).healthCheck}},
	{[]string{"stats"}, map[string]handlerFunc{http.MethodGet: (*API).stats}},
}

type handlerFunc = func(a *API, reg *registry.Registry, w http.ResponseWriter, r *http.Request, args []string)

// Owns reports whether the request's path is one of the API's routes
// (whatever the method).
func (a *API) Owns(r *http.Request) bool {
	_, _, ok := a.match(r)
	return ok
}

// ServeHTTP serves a management request; a path that is not a route gets a
// JSON 404, a route with the wrong method a JSON 405.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt, args, ok := a.match(r)
	if !ok {
		WriteError(w, http.StatusNotFound, fmt.Sprintf("no such route: %s", r.URL.Path))
		return
	}
	h, ok := rt.methods[r.Method]
	if !ok {
		allow := make([]string, 0, len(rt.methods))
		for m := range rt.methods {
			allow = append(allow, m)
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		WriteError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed on %s; allowed: %s",
			r.Method, r.URL.Path, strings.Join(allow, ", ")))
		return
	}
	reg := a.Registry()
	if reg == nil {
		WriteError(w, http.StatusServiceUnavailable, "the imagelb app is not running: add an imagelb handler or global option to the config")
		return
	}
	h(a, reg, w, r, args)
}

// match finds the route of the request and the values of its "*" segments.
func (a *API) match(r *http.Request) (*route, []string, bool) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), a.Prefix+"/")
	if !ok {
		return nil, nil, false
	}
	segs := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	for i := range routes {
		rt := &routes[i]
		if len(rt.pattern) != len(segs) {
			continue
		}
		var args []string
		matched := true
		for j, p := range rt.pattern {
			if p == "*" {
				v, err := url.PathUnescape(segs[j])
				if err != nil || v == "" {
					matched = false
					break
				}
				args = append(args, v)
			} else if p != segs[j] {
				matched = false
				break
			}
		}
		if matched {
			return rt, args, true
		}
	}
	return nil, nil, false
}

func (a *API) listServices(reg *registry.Registry, w http.ResponseWriter, _ *http.Request, _ []string) {
	svcs := reg.Services()
	views := make([]registry.ServiceView, len(svcs))
	for i, s := range svcs {
		views[i] = s.View()
	}
	WriteJSON(w, http.StatusOK, map[string]any{"services": views, "total": len(views)})
}

func (a *API) getService(reg *registry.Registry, w http.ResponseWriter, _ *http.Request, args []string) {
	id, err := registry.ParseImageID(args[0])
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	svc := reg.Lookup(id)
	if svc == nil {
		WriteError(w, http.StatusNotFound, fmt.Sprintf("image_id %d is not registered", id))
		return
	}
	WriteJSON(w, http.StatusOK, svc.View())
}

func (a *API) deleteService(reg *registry.Registry, w http.ResponseWriter, _ *http.Request, args []string) {
	id, err := registry.ParseImageID(args[0])
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	svc, err := reg.Remove(id)
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, svc.View())
}

func (a *API) register(reg *registry.Registry, w http.ResponseWriter, r *http.Request, args []string) {
	id, err := registry.ParseImageID(args[0])
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	body, ok := a.readBody(w, r)
	if !ok {
		return
	}
	spec, err := registry.DecodeRegistration(id, body, r.URL.Query())
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	svc, err := reg.Register(spec)
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, svc.View())
}

func (a *API) putContainer(reg *registry.Registry, w http.ResponseWriter, r *http.Request, args []string) {
	id, err := registry.ParseImageID(args[0])
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	body, ok := a.readBody(w, r)
	if !ok {
		return
	}
	spec, err := registry.DecodeContainer(id, args[1], body)
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	c, err := reg.PutContainer(id, spec)
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, c.View(id))
}

func (a *API) patchContainer(reg *registry.Registry, w http.ResponseWriter, r *http.Request, args []string) {
	id, err := registry.ParseImageID(args[0])
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	body, ok := a.readBody(w, r)
	if !ok {
		return
	}
	p, err := registry.DecodePatch(body)
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	c, err := reg.PatchContainer(id, args[1], p)
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, c.View(id))
}

func (a *API) deleteContainer(reg *registry.Registry, w http.ResponseWriter, _ *http.Request, args []string) {
	id, err := registry.ParseImageID(args[0])
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	c, err := reg.RemoveContainer(id, args[1])
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, c.View(id))
}

func (a *API) portMappings(reg *registry.Registry, w http.ResponseWriter, _ *http.Request, _ []string) {
	WriteJSON(w, http.StatusOK, map[string]any{"port_mappings": reg.PortMappings()})
}

func (a *API) healthCheck(_ *registry.Registry, w http.ResponseWriter, r *http.Request, _ []string) {
	imageID, ok := optionalImageID(w, r)
	if !ok {
		return
	}
	if a.HealthCheck == nil {
		WriteError(w, http.StatusNotImplemented, "on-demand health checks are not available in this build")
		return
	}
	res, err := a.HealthCheck(r.Context(), imageID)
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, res)
}

func (a *API) stats(reg *registry.Registry, w http.ResponseWriter, r *http.Request, _ []string) {
	imageID, ok := optionalImageID(w, r)
	if !ok {
		return
	}
	svcs := reg.Services()
	if imageID > 0 {
		svc := reg.Lookup(imageID)
		if svc == nil {
			WriteError(w, http.StatusNotFound, fmt.Sprintf("image_id %d is not registered", imageID))
			return
		}
		svcs = []*registry.Service{svc}
	}
	WriteJSON(w, http.StatusOK, reg.Stats(svcs))
}

// optionalImageID reads the ?image_id= filter; 0 means none.
func optionalImageID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	v := r.URL.Query().Get("image_id")
	if v == "" {
		return 0, true
	}
	id, err := registry.ParseImageID(v)
	if err != nil {
		writeRegistryError(w, err)
		return 0, false
	}
	return id, true
}

// readBody reads the request body up to MaxBody; past it the answer is 413.
func (a *API) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	limit := a.MaxBody
	if limit <= 0 {
		limit = DefaultMaxBody
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			WriteError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than the limit of %d bytes", limit))
		} else {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("reading request body: %v", err))
		}
		return nil, false
	}
	return body, true
}

// writeRegistryError answers with the status that the registry error's kind maps to.
func writeRegistryError(w http.ResponseWriter, err error) {
	var re *registry.Error
	if !errors.As(err, &re) {
		WriteError(w, http.StatusInternalServerError, err.Error())
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

// WriteJSON writes v as JSON with the status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body = []byte(`{"detail":"encoding the response failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
