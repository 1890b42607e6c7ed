package imagelb

import (
	"github.com/imagelb/caddy-imagelb/rollout"
)

// Progressive delivery in the app: the registry's rollout driver (package
// rollout) lives in the registry's holder, across reloads; each config
// that starts gives it its events and logger. The rollouts themselves are
// in the registry's records, so they outlive reloads and restarts.

// startRollouts gives the shared driver this configuration's events and
// logger, and starts it. On one node the driver drives every rollout on
// this registry's counters (rollout.Config's defaults); a cluster sets
// Config.Counts (every node's counts, registry.CountsSource) and
// Config.Drives (the node holding the rollout's claim).
func (a *App) startRollouts() {
	events, ctx := a.events, a.ctx
	d := a.holder.rollouts
	cfg := rollout.Config{
		Emit:   func(ev rollout.Event) { events.Emit(ctx, ev.Name, ev.Data) },
		Logger: a.logger.Named("rollout"),
		// a promote_url comes through the API: the health checks' rules
		// (never this Caddy's listeners, allowed_upstreams) apply to it
		DialControl: checkerDialControl,
	}
	a.holder.rolloutCluster.configure(&cfg, d) // in a cluster: one driver per rollout, every node's counts
	d.Configure(cfg)
	d.Start()
}
