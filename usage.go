package imagelb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

// The usage ledger's defaults.
const (
	DefaultUsageInterval  = time.Minute
	DefaultUsageFlush     = 10 * time.Second
	DefaultUsageRetention = 35 * 24 * time.Hour
)

// usageConfig is the ledger's configuration, fixed at the first start.
type usageConfig struct {
	interval, flush, retention time.Duration
}

func (a *App) usageConfig() usageConfig {
	c := usageConfig{interval: time.Duration(a.UsageInterval), flush: time.Duration(a.UsageFlush),
		retention: time.Duration(a.UsageRetention)}
	if c.interval == 0 {
		c.interval = DefaultUsageInterval
	}
	if c.flush == 0 {
		c.flush = min(DefaultUsageFlush, c.interval)
	}
	if c.retention == 0 {
		c.retention = DefaultUsageRetention
	}
	return c
}

// checkUsage validates the ledger's options (Provision).
func (a *App) checkUsage() error {
	c := a.usageConfig()
	switch {
	case c.interval < time.Second || c.interval%time.Second != 0:
		return fmt.Errorf("usage_interval %s: want whole seconds, at least 1s (e.g. 1m)", c.interval)
	case c.flush < 100*time.Millisecond || c.interval%c.flush != 0:
		return fmt.Errorf("usage_flush %s: want at least 100ms, dividing usage_interval %s (e.g. 10s for 1m)", c.flush, c.interval)
	case c.retention < c.interval:
		return fmt.Errorf("usage_retention %s: want at least usage_interval %s (e.g. 840h, 35 days)", c.retention, c.interval)
	}
	return nil
}

// keepLedger loads this node's usage totals (retrying while the store
// cannot be reached: the counters count meanwhile, and nothing counted is
// lost) and then flushes the ledger every usage_flush, at multiples of it,
// until ctx is done; then it flushes once more.
func (h *registryHolder) keepLedger(ctx context.Context, logger *zap.Logger) {
	c := h.usageCfg
	var ledger *registry.Ledger
	for wait := 100 * time.Millisecond; ledger == nil; wait = min(2*wait, 5*time.Second) {
		l, err := registry.NewLedger(ctx, h.Registry, h.usageStore, h.nodeID, c.interval, c.retention)
		if err == nil {
			ledger = l
			break
		}
		logger.Warn("usage ledger not loaded yet; retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	h.ledger.Store(ledger)
	for {
		now := time.Now()
		next := now.Truncate(c.flush).Add(c.flush)
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := ledger.Flush(fctx); err != nil {
				logger.Error("the last usage flush failed: what was counted since the previous one is lost", zap.Error(err))
			}
			cancel()
			return
		case <-time.After(next.Sub(now)):
		}
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := ledger.Flush(fctx); err != nil && ctx.Err() == nil {
			logger.Warn("usage flush failed; the next one writes it again", zap.Error(err))
		}
		cancel()
	}
}

// usage answers GET /api/v1/usage.
func (h *registryHolder) usage(ctx context.Context, q registry.UsageQuery) (any, error) {
	l := h.ledger.Load()
	if l == nil {
		return nil, &registry.Error{Kind: registry.KindUnavailable, Detail: "the usage ledger is not loaded yet: " +
			"the store could not be read at start; it loads as soon as the store answers"}
	}
	if q.Step == 0 {
		q.Step = l.Interval()
	}
	rep, err := l.Query(ctx, q)
	if err != nil && registry.KindOf(err) == 0 {
		if errors.Is(err, registry.ErrStoreUnavailable) {
			return nil, &registry.Error{Kind: registry.KindUnavailable, Detail: "reading the usage ledger: " + err.Error()}
		}
		return nil, fmt.Errorf("reading the usage ledger: %w", err)
	}
	return rep, err
}
