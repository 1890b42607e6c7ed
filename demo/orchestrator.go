// Package demo holds what the example (examples/Caddyfile) needs to show
// imagelb end to end inside one Caddy: the demo orchestrator,
// http.handlers.imagelb_demo_orchestrator, which answers the on_demand start
// and stop webhooks by registering and removing a demo container through the
// imagelb API. It is a demonstration, not an orchestrator: it starts no
// process and registers a server that already runs. It imports nothing of the
// root package github.com/imagelb/caddy-imagelb; the root blank-imports it,
// so that building Caddy with the root registers the module.
package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/internal/orchestrate"
	"github.com/imagelb/caddy-imagelb/registry"
)

func init() {
	caddy.RegisterModule(Orchestrator{})
	httpcaddyfile.RegisterHandlerDirective("imagelb_demo_orchestrator", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("imagelb_demo_orchestrator", httpcaddyfile.Before, "respond")
}

// DefaultAPI is the imagelb API the demo orchestrator registers through
// unless told otherwise: the admin endpoint of the example.
const DefaultAPI = "http://localhost:2019/imagelb"

// apiTimeout bounds each call the demo orchestrator makes to the imagelb API.
const apiTimeout = 10 * time.Second

// Orchestrator is a demo of the orchestrator's side of start on demand
// (README, Scale to zero), for trying scale to zero from the example. It
// serves the webhooks POST /api/images/{image_id}/start and
// POST /api/images/{image_id}/stop, the on_demand block's start_url and
// stop_url:
//
//   - start: for a registered image marked on_demand, it answers 202 at once
//     and then registers Container as the image's container
//     demo-{image_id}, status starting (imagelb checks it before routing to
//     it, as it would a real container's);
//   - stop: it removes the container demo-{image_id} and answers 200.
//
// A webhook that reaches it through a proxy (with X-Forwarded-For or
// Forwarded, as through the gateway's system service route) is refused with
// 403: imagelb calls the webhooks directly, and a client of the gateway must
// not register containers. An image that is not registered is a 404, one not
// marked on_demand a 409. Other paths are a 404: serve the rest of the site
// with other handlers (the example matches /api/images/* for this one).
//
// The registrations go through the imagelb API like any orchestrator's, so
// its rules apply: the container is a site of this same Caddy in the
// example, which the proxy dials only when allowed_self_upstreams lists it.
type Orchestrator struct {
	// The base of the imagelb API the containers are registered through:
	// the admin endpoint's .../imagelb or a site's .../api/v1 (a site takes
	// writes from loopback and private addresses only).
	// Default: http://localhost:2019/imagelb.
	API string `json:"api,omitempty"`
	// The host:port of the demo container registered for an image: a server
	// that already runs, such as the example's 127.0.0.1:9004. Required.
	Container string `json:"container,omitempty"`

	ctx    context.Context
	logger *zap.Logger
	api    orchestrate.API
	host   string
	port   int
}

// CaddyModule returns the Caddy module information.
func (Orchestrator) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.imagelb_demo_orchestrator",
		New: func() caddy.Module { return new(Orchestrator) },
	}
}

// Provision fills the default API and reads the container's address.
func (o *Orchestrator) Provision(ctx caddy.Context) error {
	o.ctx = ctx
	o.logger = ctx.Logger()
	if o.API == "" {
		o.API = DefaultAPI
	}
	o.api = orchestrate.API{Base: o.API, Client: &http.Client{Timeout: apiTimeout}}
	host, port, err := splitContainer(o.Container)
	if err != nil {
		return err
	}
	o.host, o.port = host, port
	return nil
}

// Validate checks the container's address.
func (o *Orchestrator) Validate() error {
	_, _, err := splitContainer(o.Container)
	return err
}

// splitContainer reads a container's host:port.
func splitContainer(addr string) (string, int, error) {
	if addr == "" {
		return "", 0, fmt.Errorf("container: the demo container's host:port is required (such as 127.0.0.1:9004)")
	}
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("container %q: want host:port, such as 127.0.0.1:9004: %v", addr, err)
	}
	if msg := registry.CheckHost(host); msg != "" {
		return "", 0, fmt.Errorf("container %q: %s", addr, msg)
	}
	port, err := strconv.ParseInt(portText, 10, 64)
	if err != nil || !registry.ValidPort(port) {
		return "", 0, fmt.Errorf("container %q: the port must be a number from 1 to 65535", addr)
	}
	return host, int(port), nil
}

// ServeHTTP answers a webhook.
func (o *Orchestrator) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	id, action, ok := orchestrate.ParseWebhook(r)
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]any{"detail": "the demo orchestrator serves only POST " +
			orchestrate.WebhookPrefix + "{image_id}/start and .../stop, the on_demand block's start_url and stop_url"})
		return nil
	}
	if r.Header.Get("X-Forwarded-For") != "" || r.Header.Get("Forwarded") != "" {
		writeJSON(w, http.StatusForbidden, map[string]any{"detail": "the demo orchestrator takes webhooks from " +
			"imagelb directly, not through a proxy: set the on_demand block's start_url and stop_url to its own address"})
		return nil
	}
	svc, found, err := o.api.Service(r.Context(), id)
	switch {
	case err != nil:
		writeJSON(w, http.StatusBadGateway, map[string]any{"detail": fmt.Sprintf(
			"the demo orchestrator could not read image_id %d through the imagelb API at %s: %v (check its api option)", id, o.API, err)})
		return nil
	case !found:
		writeJSON(w, http.StatusNotFound, map[string]any{"detail": fmt.Sprintf("image_id %d is not registered: register it with "+
			`"on_demand": {"idle_timeout": "..."} first`, id)})
		return nil
	case len(svc.OnDemand) == 0 || string(svc.OnDemand) == "null":
		writeJSON(w, http.StatusConflict, map[string]any{"detail": fmt.Sprintf("image_id %d is not on_demand: the demo orchestrator "+
			`starts and stops only images registered with "on_demand": {"idle_timeout": "..."}`, id)})
		return nil
	}
	name := containerID(id)
	if action == orchestrate.Stop {
		if err := o.api.Remove(r.Context(), id, name); err != nil {
			writeJSON(w, http.StatusBadGateway, map[string]any{"detail": fmt.Sprintf("the demo orchestrator could not stop image_id %d: %v", id, err)})
			return nil
		}
		o.logger.Info("demo container removed", zap.Int64("image_id", id), zap.String("container_id", name))
		writeJSON(w, http.StatusOK, map[string]any{"image_id": id, "action": action, "container_id": name})
		return nil
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"image_id": id, "action": action, "container_id": name})
	go o.register(id, name) // the start goes on after the answer, as the contract asks
	return nil
}

// register registers the demo container for the image, until the config
// that runs this handler is unloaded.
func (o *Orchestrator) register(id int64, name string) {
	defer func() {
		if v := recover(); v != nil {
			o.logger.Error("demo orchestrator panicked", zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
		}
	}()
	ctx, cancel := context.WithTimeout(o.ctx, apiTimeout)
	defer cancel()
	if err := o.api.Register(ctx, id, name, o.host, o.port, "starting"); err != nil {
		o.logger.Warn("demo container not registered", zap.Int64("image_id", id), zap.Error(err))
		return
	}
	o.logger.Info("demo container registered", zap.Int64("image_id", id), zap.String("container_id", name),
		zap.String("upstream", net.JoinHostPort(o.host, strconv.Itoa(o.port))))
}

// containerID is the id of the demo container of the image.
func containerID(id int64) string { return "demo-" + strconv.FormatInt(id, 10) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// parseCaddyfile sets up the handler from Caddyfile tokens.
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	o := new(Orchestrator)
	err := o.UnmarshalCaddyfile(h.Dispenser)
	return o, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	imagelb_demo_orchestrator [<matcher>] {
//		api       <url>          # default http://localhost:2019/imagelb
//		container <host:port>    # required
//	}
func (o *Orchestrator) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		var field *string
		switch opt {
		case "api":
			field = &o.API
		case "container":
			field = &o.Container
		default:
			return d.Errf("unrecognized subdirective '%s'", opt)
		}
		if *field != "" {
			return d.Errf("%s already specified", opt)
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		*field = d.Val()
		if *field == "" {
			return d.Errf("%s must not be empty", opt)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
		if opt == "container" {
			if _, _, err := splitContainer(o.Container); err != nil {
				return d.Err(err.Error())
			}
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Orchestrator)(nil)
	_ caddy.Validator             = (*Orchestrator)(nil)
	_ caddyhttp.MiddlewareHandler = (*Orchestrator)(nil)
	_ caddyfile.Unmarshaler       = (*Orchestrator)(nil)
)
