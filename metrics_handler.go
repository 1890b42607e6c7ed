package imagelb

import (
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(MetricsHandler{})
	httpcaddyfile.RegisterHandlerDirective("imagelb_metrics", parseMetricsHandler)
	// after basic_auth and forward_auth, before the imagelb handler (which
	// is before respond), so that its matcher decides even on a path under
	// the imagelb handler's /api/v1/
	httpcaddyfile.RegisterDirectiveOrder("imagelb_metrics", httpcaddyfile.Before, "abort")
}

// MetricsHandler serves on a site what the admin /imagelb/metrics serves:
// the streamed Prometheus exposition of the imagelb app, with what its
// metrics options add to Caddy's bounded set. For configs with the admin
// endpoint off, or a scraper that must not reach it; like Caddy's own
// metrics handler, put it behind a matcher and, on a public site,
// authentication:
//
//	imagelb_metrics /imagelb/metrics
type MetricsHandler struct {
	app *App
}

// CaddyModule returns the Caddy module information.
func (MetricsHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.imagelb_metrics",
		New: func() caddy.Module { return new(MetricsHandler) },
	}
}

// Provision loads the imagelb app (started with the config if no other
// part of it asked for it).
func (m *MetricsHandler) Provision(ctx caddy.Context) error {
	app, err := ctx.App("imagelb")
	if err != nil {
		return fmt.Errorf("loading imagelb app: %v", err)
	}
	m.app = app.(*App)
	return nil
}

// ServeHTTP answers the scrape; it never calls the next handler.
func (m *MetricsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	writeMetrics(w, r, m.app)
	return nil
}

// UnmarshalCaddyfile: imagelb_metrics [<matcher>], no arguments, no block.
func (m *MetricsHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("imagelb_metrics takes no options (the metrics block of the imagelb app chooses the series)")
	}
	return nil
}

func parseMetricsHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(MetricsHandler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*MetricsHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*MetricsHandler)(nil)
	_ caddyfile.Unmarshaler       = (*MetricsHandler)(nil)
)
