package ondemand

import (
	"context"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// Idleness. Every tick, each on-demand image is active if its request
// count moved since the last tick (requests refused while starting count
// too) or it has a request in flight or waiting: an open WebSocket or
// stream is a request in flight until it closes. An image with containers
// that stayed inactive for its idle_timeout gets stop_url, once, until it
// is active again. In a cluster each node shares its images' activity
// (at most every idle_timeout/4 per image) and checks the others' before
// stopping, and the nodes claim the call.

// judge runs one tick of idleness.
func (a *Activator) judge(ctx context.Context, now time.Time) {
	a.mu.Lock()
	for id := range a.changed {
		svc := a.reg.Lookup(id)
		im := a.images[id]
		if svc == nil || svc.Options.OnDemand == nil {
			if im != nil {
				im.idle = 0
				if !im.starting && im.waiting == 0 && im.release == nil {
					delete(a.images, id)
				}
			}
			continue
		}
		if im == nil {
			im = &image{}
			a.images[id] = im
		}
		if im.idle == 0 {
			im.lastActive = now // newly on demand: idle from now on
		}
		im.idle = time.Duration(svc.Options.OnDemand.IdleTimeout)
	}
	clear(a.changed)
	cfg, cluster, node, logger := a.cfg, a.cluster, a.node, a.logger
	type due struct {
		id    int64
		name  string
		idle  time.Duration
		quiet time.Duration
	}
	var stops []due
	var marks []int64
	for id, im := range a.images {
		if im.idle == 0 {
			continue
		}
		svc := a.reg.Lookup(id)
		if svc == nil {
			continue
		}
		req := svc.State.Requests.Load()
		busy := svc.State.InFlight.Load() > 0 || svc.State.Extra().Waiting.Load() > 0 || im.waiting > 0
		if busy || (im.seen && req != im.lastReq) {
			im.lastActive, im.stopped = now, false
			if cluster != nil && now.Sub(im.marked) >= im.idle/4 {
				im.marked = now
				marks = append(marks, id)
			}
		}
		im.seen, im.lastReq = true, req
		if busy || im.stopped || len(svc.Containers) == 0 || now.Sub(im.lastActive) < im.idle || now.Before(im.nextStop) {
			continue
		}
		im.stopped = true // one call per idle period; a failure sets it back
		stops = append(stops, due{id, svc.ImageName, im.idle, now.Sub(im.lastActive)})
	}
	a.mu.Unlock()
	for _, id := range marks {
		go func() {
			c, cancel := context.WithTimeout(ctx, webhookTimeout)
			defer cancel()
			if err := cluster.MarkActive(c, id, now); err != nil {
				logger.Debug("could not share an image's activity with the cluster", zap.Int64("image_id", id), zap.Error(err))
			}
		}()
	}
	for _, d := range stops {
		go a.stopIdle(ctx, d.id, d.name, d.idle, d.quiet, cfg, cluster, node)
	}
}

// stopIdle calls stop_url for an idle image (in a cluster: unless another
// node saw it active lately, or claimed the call) and announces it.
func (a *Activator) stopIdle(ctx context.Context, id int64, name string, idle, quiet time.Duration, cfg Config, cluster Cluster, node string) {
	a.mu.Lock()
	logger := a.logger
	a.mu.Unlock()
	retry := func(after time.Duration) {
		a.mu.Lock()
		if im := a.images[id]; im != nil {
			im.stopped = false
			im.nextStop = time.Now().Add(after)
		}
		a.mu.Unlock()
	}
	called := false
	if cluster != nil {
		c, cancel := context.WithTimeout(ctx, webhookTimeout)
		last, err := cluster.LastActive(c, id)
		cancel()
		if err != nil {
			logger.Warn("idle image: the cluster's activity cannot be read; not stopping it yet", zap.Int64("image_id", id), zap.Error(err))
			retry(min(idle, 30*time.Second))
			return
		}
		if since := time.Since(last); since < idle {
			a.mu.Lock()
			if im := a.images[id]; im != nil {
				im.stopped = false
				im.lastActive = time.Now().Add(-since) // another node served it
			}
			a.mu.Unlock()
			return
		}
		c, cancel = context.WithTimeout(ctx, webhookTimeout)
		_, won, err := cluster.Claim(c, "stop/"+strconv.FormatInt(id, 10), node, idle)
		cancel()
		if err != nil {
			logger.Warn("idle image: the cluster could not decide which node stops it", zap.Int64("image_id", id), zap.Error(err))
			retry(min(idle, 30*time.Second))
			return
		}
		if !won {
			return // another node calls stop_url; the claim's lease ends with idle_timeout
		}
	}
	if cfg.StopURL != "" {
		if err := a.call(cfg.StopURL, id, map[string]any{"image_id": id, "image_name": name, "action": "stop", "node_id": node,
			"idle_seconds": int64(quiet.Round(time.Second) / time.Second)}, webhookTimeout); err != nil {
			logger.Warn("stop of an idle image failed; retrying later", zap.Int64("image_id", id), zap.Error(err))
			retry(min(idle, 30*time.Second))
			return
		}
		called = true
	}
	logger.Info("image idle", zap.Int64("image_id", id), zap.Duration("idle", quiet), zap.Bool("called_stop_url", called))
	a.mu.Lock()
	if a.events != nil {
		a.announce("imagelb.service_idle", map[string]any{"image_id": id, "image_name": name,
			"idle_ms": quiet.Milliseconds(), "called_stop_url": called})
	}
	a.mu.Unlock()
}
