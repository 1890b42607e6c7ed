package imagelb

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/admin"
	"github.com/imagelb/caddy-imagelb/ondemand"
	"github.com/imagelb/caddy-imagelb/registry"
)

// OnDemandConfig is the app's on_demand block: start on demand (scale to
// zero) for the images whose service has the on_demand option.
type OnDemandConfig struct {
	// POSTed when a request finds no available container of such an
	// image; "{image_id}" in it is the image's id. Required.
	StartURL string `json:"start_url,omitempty"`
	// POSTed when such an image had no request and no open stream for its
	// idle_timeout. Default: none (idle images are only announced).
	StopURL string `json:"stop_url,omitempty"`
	// How long a request waits for a container. Default: 30s.
	StartTimeout caddy.Duration `json:"start_timeout,omitempty"`
	// The most requests held per image; more get 503 at once. Default: 100.
	MaxWaiting int `json:"max_waiting,omitempty"`
}

// checkOnDemand checks the on_demand block.
func (a *App) checkOnDemand() error {
	od := a.OnDemand
	if od == nil {
		return nil
	}
	if od.StartURL == "" {
		return fmt.Errorf("on_demand: start_url is required: the URL imagelb POSTs to have the orchestrator start an image, e.g. http://127.0.0.1:3003/api/images/{image_id}/start")
	}
	for name, u := range map[string]string{"start_url": od.StartURL, "stop_url": od.StopURL} {
		if u == "" {
			continue
		}
		if msg := ondemand.CheckURL(u); msg != "" {
			return fmt.Errorf("on_demand: %s %s", name, msg)
		}
	}
	if od.StartTimeout < 0 || time.Duration(od.StartTimeout) > registry.MaxOptionDuration {
		return fmt.Errorf("on_demand: start_timeout must be a positive duration of at most %s, got %s", registry.MaxOptionDuration, time.Duration(od.StartTimeout))
	}
	if od.MaxWaiting < 0 || od.MaxWaiting > 1_000_000 {
		return fmt.Errorf("on_demand: max_waiting must be from 1 to 1000000, got %d", od.MaxWaiting)
	}
	return nil
}

// startOnDemand gives the shared activator this configuration's webhooks,
// cluster and events, and starts it.
func (a *App) startOnDemand() {
	var cfg ondemand.Config
	if od := a.OnDemand; od != nil {
		cfg = ondemand.Config{StartURL: od.StartURL, StopURL: od.StopURL,
			StartTimeout: time.Duration(od.StartTimeout), MaxWaiting: od.MaxWaiting}
	}
	var cluster ondemand.Cluster
	if a.holder.etcd != nil {
		cluster = a.holder.etcd
	}
	events, ctx := a.events, a.ctx
	act := a.holder.activator
	act.Configure(cfg, cluster, a.holder.nodeID, func(ev ondemand.Event) {
		events.Emit(ctx, ev.Name, ev.Data)
	}, a.logger.Named("on_demand"))
	act.Start()
}

// waitToStart holds a request for an on-demand image without an available
// container until one is; it returns the service's version to proxy to,
// or nil when the request has been answered.
func (h *Handler) waitToStart(w http.ResponseWriter, r *http.Request, svc *registry.Service) *registry.Service {
	started, err := h.app.holder.activator.Wait(r.Context(), svc)
	if err == nil {
		return started
	}
	var ref *ondemand.Refusal
	if !errors.As(err, &ref) {
		svc.State.Refuse(499, false) // the client went away while it waited
		return nil
	}
	svc.State.Refuse(ref.Status, ref.Status >= 500)
	if ref.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(ref.RetryAfter))
	}
	if c := h.logger.Check(zap.DebugLevel, "on-demand request refused"); c != nil {
		c.Write(zap.Int64("image_id", svc.ImageID), zap.Int("status", ref.Status), zap.String("detail", ref.Detail))
	}
	admin.WriteError(w, ref.Status, ref.Detail)
	return nil
}
