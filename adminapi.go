package imagelb

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"

	"github.com/imagelb/caddy-imagelb/admin"
)

const errAppNotRunning = "the imagelb app is not running: add the imagelb global option or an imagelb handler to the config"

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI mounts the management API on Caddy's admin endpoint under
// /imagelb/ (e.g. POST /imagelb/services/1/register), and the streamed
// Prometheus exposition at /imagelb/metrics. Caddy's own admin protections (Host and Origin checks, remote admin with mTLS) apply.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.imagelb",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/imagelb/", Handler: caddy.AdminHandlerFunc(serveAdmin)},
		{Pattern: metricsPath, Handler: caddy.AdminHandlerFunc(serveMetrics)}}
}

// serveAdmin serves one admin request with the running app's API. The app is
// looked up per request: admin modules are provisioned before apps and may
// outlive a failed reload.
func serveAdmin(w http.ResponseWriter, r *http.Request) error {
	a := running.Load()
	if a == nil {
		admin.WriteError(w, http.StatusServiceUnavailable, errAppNotRunning)
		return nil
	}
	a.api.ServeHTTP(w, r)
	return nil
}

// Interface guards
var _ caddy.AdminRouter = (*AdminAPI)(nil)
