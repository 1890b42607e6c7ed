// Package rollout drives canary rollouts (progressive delivery). A rollout
// lives in the stable image's record in the registry (registry/rollout.go):
// the API starts, pauses, resumes, promotes and deletes it there, and the
// Driver follows every record that holds one. For each step it sets the
// stable image's split to the step's percent (the registry does, from the
// record), reads the counts of both images at the step's start, and judges
// the canary on the step's requests alone: it advances at the step's end
// when the canary is within its bounds, waits while the canary served fewer
// than min_requests, and rolls back at once, without waiting for the end,
// when the canary is over a bound or has no container that can take a
// request. The outcome is announced once (events, the promote_url webhook).
//
// Nothing of the driver's is durable but what it writes to the record, so
// a config reload keeps the one driver (it lives beside the registry) and a
// restart starts the running step again, with fresh counts.
//
// In a cluster, Config.Drives says which node drives which rollout (one
// node, through a claim in the shared store) and Config.Counts sums every
// node's counts; on one node the driver drives every rollout on the
// registry's own counters.
package rollout

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

// Tick is how often the driver checks each rollout: the bounds are watched
// continuously at this pace, and a step ends at most this late.
const Tick = 250 * time.Millisecond

// P99Floor is the least p99 latency the ratio compares: below it, a
// difference is noise (a pause of the collector, a busy core), not the
// version. A side's p99 under it counts as P99Floor.
const P99Floor = 5 * time.Millisecond

// Webhook calls: each attempt's timeout, and the pauses between attempts.
var (
	webhookTimeout = 10 * time.Second
	webhookRetries = []time.Duration{time.Second, 3 * time.Second}
)

// now is the driver's clock.
var now = time.Now

// Event is announced through Config.Emit: imagelb.rollout_step,
// imagelb.rollout_promoted or imagelb.rollout_rolled_back, with its data.
type Event struct {
	Name string
	Data map[string]any
}

// Event names.
const (
	EventStep       = "imagelb.rollout_step"
	EventPromoted   = "imagelb.rollout_promoted"
	EventRolledBack = "imagelb.rollout_rolled_back"
)

// Config is what the driver needs from the running configuration.
type Config struct {
	// Counts gives the cumulative counts a step is judged on. Default:
	// the registry's own counters (registry.LocalCounts).
	Counts registry.CountsSource
	// Drives reports whether this node drives the image's rollout (a
	// cluster's claim). Default: every rollout.
	Drives func(imageID int64) bool
	// Emit announces an event. Default: nothing.
	Emit func(Event)
	// Logger logs decisions and webhook calls. Default: none.
	Logger *zap.Logger
	// DialControl sees each address a promote_url call is about to
	// connect to (after name resolution) and may refuse it: the rules
	// that keep a URL set through the API off this Caddy's own listeners
	// (its admin endpoint) and off what allowed_upstreams forbids.
	// Default: none.
	DialControl func(network, address string, rc syscall.RawConn) error
}

// Driver drives every rollout of a registry. One lives as long as the
// registry, across config reloads; Configure sets the running config's part.
type Driver struct {
	reg    *registry.Registry
	client *http.Client

	control atomic.Pointer[func(network, address string, rc syscall.RawConn) error] // Config.DialControl

	mu      sync.Mutex
	cfg     Config
	changed map[int64]struct{} // images to look at in the next pass
	wake    chan struct{}
	stop    context.CancelFunc
	done    chan struct{}
	unlist  func()
	wg      sync.WaitGroup // webhook calls

	runs map[int64]*run // the loop's own: the rollouts followed
	// announcing holds the images whose outcome is being announced (on
	// mu): until the announcement ends, and then only if the record was
	// not marked, no other starts.
	announcing map[int64]bool
}

// run is what the driver knows of one rollout beyond its record: where the
// step being judged started, and both sides' counts then.
type run struct {
	started   time.Time // the rollout's Started: which rollout of the image
	step      int
	state     registry.RolloutState
	stepStart time.Time
	base      [2]registry.StepCounts // stable, canary
	based     bool
	waiting   bool // the step ended short of min_requests (logged once)
}

// New returns the driver of reg; it does nothing until Start.
func New(reg *registry.Registry) *Driver {
	d := &Driver{
		reg:     reg,
		cfg:     Config{}.withDefaults(reg),
		changed: map[int64]struct{}{},
		wake:    make(chan struct{}, 1),
		runs:    map[int64]*run{},

		announcing: map[int64]bool{},
	}
	dialer := &net.Dialer{Timeout: webhookTimeout, Control: d.dialControl}
	d.client = &http.Client{
		Transport:     &http.Transport{DialContext: dialer.DialContext, Proxy: nil, MaxIdleConns: 4, IdleConnTimeout: time.Minute},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return d
}

func (d *Driver) dialControl(network, address string, rc syscall.RawConn) error {
	if f := d.control.Load(); f != nil && *f != nil {
		return (*f)(network, address, rc)
	}
	return nil
}

func (c Config) withDefaults(reg *registry.Registry) Config {
	if c.Counts == nil {
		c.Counts = registry.LocalCounts{Registry: reg}
	}
	if c.Drives == nil {
		c.Drives = func(int64) bool { return true }
	}
	if c.Emit == nil {
		c.Emit = func(Event) {}
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// Configure sets the running config's part; it takes effect at the next
// pass.
func (d *Driver) Configure(cfg Config) {
	d.control.Store(&cfg.DialControl)
	d.mu.Lock()
	d.cfg = cfg.withDefaults(d.reg)
	for _, svc := range d.reg.Services() { // a new Drives may hand this node others
		if svc.Rollout != nil {
			d.changed[svc.ImageID] = struct{}{}
		}
	}
	d.mu.Unlock()
	d.poke()
}

// Start starts the driver's loop if it is not running.
func (d *Driver) Start() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stop != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.stop, d.done = cancel, make(chan struct{})
	for _, svc := range d.reg.Services() {
		if svc.Rollout != nil {
			d.changed[svc.ImageID] = struct{}{}
		}
	}
	d.unlist = d.reg.OnChange(d.noteChanged)
	go d.loop(ctx, d.done)
}

// Stop stops the loop and waits for it and the webhook calls under way
// (which it cancels).
func (d *Driver) Stop() {
	d.mu.Lock()
	stop, done, unlist := d.stop, d.done, d.unlist
	d.stop, d.done, d.unlist = nil, nil, nil
	d.mu.Unlock()
	if stop == nil {
		return
	}
	unlist()
	stop()
	<-done
	d.wg.Wait()
}

// noteChanged is the registry's change listener: it runs under the
// registry's writer lock, so it only notes the images for the loop.
func (d *Driver) noteChanged(ids []int64) {
	d.mu.Lock()
	for _, id := range ids {
		d.changed[id] = struct{}{}
	}
	d.mu.Unlock()
	d.poke()
}

func (d *Driver) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *Driver) loop(ctx context.Context, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(Tick)
	defer t.Stop()
	for {
		d.pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.wake:
		}
	}
}

// pass looks at every rollout followed and at the images that changed.
func (d *Driver) pass(ctx context.Context) {
	d.mu.Lock()
	cfg := d.cfg
	for id := range d.changed {
		if _, ok := d.runs[id]; !ok {
			d.runs[id] = nil // followed from now on; made by step
		}
	}
	clear(d.changed)
	d.mu.Unlock()
	for id := range d.runs {
		d.safeStep(ctx, cfg, id)
	}
}

// safeStep runs step, logging a panic rather than ending the loop.
func (d *Driver) safeStep(ctx context.Context, cfg Config, id int64) {
	defer func() {
		if err := recover(); err != nil {
			cfg.Logger.Error("panic", zap.String("goroutine", "rollout"), zap.Int64("image_id", id),
				zap.Any("error", err), zap.ByteString("stack", debug.Stack()))
		}
	}()
	d.step(ctx, cfg, id)
}

// step moves the image's rollout on if it should.
func (d *Driver) step(ctx context.Context, cfg Config, id int64) {
	svc := d.reg.Lookup(id)
	if svc == nil || svc.Rollout == nil || !cfg.Drives(id) {
		delete(d.runs, id)
		return
	}
	ro := svc.Rollout
	r := d.runs[id]
	if r == nil || !r.started.Equal(ro.Started) {
		r = &run{started: ro.Started}
		d.runs[id] = r
	}
	log := cfg.Logger.With(zap.Int64("image_id", id), zap.Int64("canary_image_id", ro.CanaryImageID))
	if !ro.State.Active() || ro.State == registry.RolloutPromoted {
		if ro.Notified {
			delete(d.runs, id) // over, and told: nothing more to do
			return
		}
		d.mu.Lock()
		busy := d.announcing[id]
		d.announcing[id] = true
		d.mu.Unlock()
		if !busy {
			d.announce(ctx, cfg, log, id, ro)
		}
		return
	}

	// progressing or paused: a new step, or a resumed one, starts afresh
	if !r.based || r.step != ro.Step || (ro.State == registry.RolloutProgressing && r.state == registry.RolloutPaused) {
		stable, err1 := cfg.Counts.Counts(ctx, id)
		canary, err2 := cfg.Counts.Counts(ctx, ro.CanaryImageID)
		if err := firstErr(err1, err2); err != nil {
			log.Warn("rollout: reading the counts failed; the step starts when they can be read", zap.Error(err))
			return
		}
		newStep := !r.based || r.step != ro.Step
		r.step, r.state, r.stepStart, r.base, r.based, r.waiting = ro.Step, ro.State, now(), [2]registry.StepCounts{stable, canary}, true, false
		if newStep && ro.State == registry.RolloutProgressing {
			log.Info("rollout step", zap.Int("step", ro.Step), zap.Float64("percent", ro.Percent))
			cfg.Emit(Event{EventStep, map[string]any{"image_id": id, "canary_image_id": ro.CanaryImageID,
				"step": ro.Step, "steps": len(ro.Steps), "percent": ro.Percent}})
		}
	}
	r.state = ro.State

	if !d.reg.CanaryAvailable(ro.CanaryImageID) {
		reason := fmt.Sprintf("canary image %d has no available container (removed, unhealthy or ejected)", ro.CanaryImageID)
		if d.reg.Lookup(ro.CanaryImageID) == nil {
			reason = fmt.Sprintf("canary image %d is not registered", ro.CanaryImageID)
		}
		d.decide(ctx, cfg, log, id, ro, registry.DecisionRollback, reason, nil, nil)
		return
	}
	stableNow, err1 := cfg.Counts.Counts(ctx, id)
	canaryNow, err2 := cfg.Counts.Counts(ctx, ro.CanaryImageID)
	if err := firstErr(err1, err2); err != nil {
		log.Warn("rollout: reading the counts failed", zap.Error(err))
		return
	}
	stable, canary := stableNow.Sub(r.base[0]), canaryNow.Sub(r.base[1])
	if reason := overBound(ro, stable, canary); reason != "" {
		d.decide(ctx, cfg, log, id, ro, registry.DecisionRollback, reason, &stable, &canary)
		return
	}
	if ro.State != registry.RolloutProgressing || now().Sub(r.stepStart) < time.Duration(ro.Interval) {
		return
	}
	if canary.Requests < uint64(ro.MinRequests) {
		if !r.waiting {
			r.waiting = true
			log.Info("rollout step ended short of min_requests: it waits for them", zap.Int("step", ro.Step),
				zap.Uint64("canary_requests", canary.Requests), zap.Int("min_requests", ro.MinRequests))
		}
		return
	}
	reason := withinBounds(ro, stable, canary)
	if ro.Step < len(ro.Steps) {
		d.decide(ctx, cfg, log, id, ro, registry.DecisionAdvance, reason, &stable, &canary)
	} else {
		d.decide(ctx, cfg, log, id, ro, registry.DecisionPromote, reason, &stable, &canary)
	}
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// decide writes a decision to the record, if the rollout is still at the
// step and state it was judged in.
func (d *Driver) decide(ctx context.Context, cfg Config, log *zap.Logger, id int64, judged *registry.Rollout,
	decision, reason string, stable, canary *registry.StepCounts) {
	a := registry.RolloutAnalysis{Step: judged.Step, Percent: judged.Percent, Decision: decision, Reason: reason, At: now().UTC()}
	if stable != nil {
		a.Stable, a.Canary = figures(*stable), figures(*canary)
	}
	_, err := d.reg.ChangeRollout(id, func(ro *registry.Rollout) error {
		if !ro.Started.Equal(judged.Started) || ro.Step != judged.Step || ro.State != judged.State {
			return registry.ErrRolloutStale
		}
		ro.Record(a)
		switch decision {
		case registry.DecisionAdvance:
			ro.Step++
			ro.Percent = ro.StepPercent(ro.Step)
		case registry.DecisionPromote:
			ro.State, ro.Percent, ro.Notified = registry.RolloutPromoted, 100, false
		case registry.DecisionRollback:
			ro.State, ro.Percent, ro.Notified = registry.RolloutRolledBack, 0, false
		}
		return nil
	})
	switch {
	case err == registry.ErrRolloutStale || registry.KindOf(err) == registry.KindNotFound:
		return // changed meanwhile: the next pass looks again
	case err != nil:
		log.Warn("rollout: writing the decision failed; it is made again at the next pass", zap.String("decision", decision), zap.Error(err))
		return
	}
	fields := []zap.Field{zap.Int("step", judged.Step), zap.Float64("percent", judged.Percent), zap.String("reason", reason)}
	if decision == registry.DecisionRollback {
		log.Warn("rollout rolled back", fields...)
	} else {
		log.Info("rollout "+decision, fields...)
	}
}

// figures are a side's figures in a step, for the analysis.
func figures(c registry.StepCounts) *registry.SideFigures {
	f := &registry.SideFigures{Requests: c.Requests, Errors: c.Errors}
	if c.Requests > 0 {
		f.ErrorRate = math.Round(float64(c.Errors)/float64(c.Requests)*1e4) / 1e4
	}
	if p99, ok := c.Latency.Quantile(0.99); ok {
		f.P99Ms = &p99
	}
	return f
}

// overBound returns why the canary is over a bound in the step so far, or
// "". The error rate is judged from the first failure on, against at least
// min_requests: a canary whose failures already put it over the bound at
// min_requests is rolled back before it served them. The p99 ratio is
// judged once both sides served min_requests in the step.
func overBound(ro *registry.Rollout, stable, canary registry.StepCounts) string {
	min := uint64(ro.MinRequests)
	if canary.Errors > 0 {
		n := max(canary.Requests, min)
		if rate := float64(canary.Errors) / float64(n); rate > ro.MaxErrorRate {
			if canary.Requests < min {
				return fmt.Sprintf("canary error rate over max_error_rate %g: %d of its first %d requests failed, more than %g of min_requests %d",
					ro.MaxErrorRate, canary.Errors, canary.Requests, ro.MaxErrorRate, ro.MinRequests)
			}
			return fmt.Sprintf("canary error rate %.4g (%d of %d requests failed) is over max_error_rate %g",
				rate, canary.Errors, canary.Requests, ro.MaxErrorRate)
		}
	}
	if ratio, cp, sp, ok := p99Ratio(ro, stable, canary); ok && ratio > ro.MaxP99Ratio {
		return fmt.Sprintf("canary p99 %g ms is %.2f times the stable image's %g ms, over max_p99_ratio %g", cp, ratio, sp, ro.MaxP99Ratio)
	}
	return ""
}

// p99Ratio is the canary's p99 over the stable image's in the step, each
// at least P99Floor; ok is false when the ratio is off or a side has
// served fewer than min_requests.
func p99Ratio(ro *registry.Rollout, stable, canary registry.StepCounts) (ratio, canaryMs, stableMs float64, ok bool) {
	min := uint64(ro.MinRequests)
	if ro.MaxP99Ratio == 0 || canary.Requests < min || stable.Requests < min {
		return 0, 0, 0, false
	}
	cp, ok1 := canary.Latency.Quantile(0.99)
	sp, ok2 := stable.Latency.Quantile(0.99)
	if !ok1 || !ok2 {
		return 0, 0, 0, false
	}
	floor := float64(P99Floor) / float64(time.Millisecond)
	return math.Max(cp, floor) / math.Max(sp, floor), cp, sp, true
}

// withinBounds says why a judged step passes.
func withinBounds(ro *registry.Rollout, stable, canary registry.StepCounts) string {
	rate := float64(canary.Errors) / float64(max(canary.Requests, 1))
	s := fmt.Sprintf("canary within bounds: error rate %.4g of %d requests (max_error_rate %g)", rate, canary.Requests, ro.MaxErrorRate)
	if ratio, _, _, ok := p99Ratio(ro, stable, canary); ok {
		s += fmt.Sprintf(", p99 ratio %.2f (max_p99_ratio %g)", ratio, ro.MaxP99Ratio)
	} else if ro.MaxP99Ratio > 0 {
		s += ", p99 ratio not judged (the stable image served fewer than min_requests in the step)"
	}
	return s
}

// Outcome is the body POSTed to promote_url.
type Outcome struct {
	ImageID       int64     `json:"image_id"`
	CanaryImageID int64     `json:"canary_image_id"`
	State         string    `json:"state"`
	Step          int       `json:"step"`
	Percent       float64   `json:"percent"`
	Reason        string    `json:"reason"`
	At            time.Time `json:"at"`
}

// announce tells of a rollout's outcome: the event (promoted, rolled
// back), then the webhook in the background, then the record is marked
// notified.
func (d *Driver) announce(ctx context.Context, cfg Config, log *zap.Logger, id int64, ro *registry.Rollout) {
	out := Outcome{ImageID: id, CanaryImageID: ro.CanaryImageID, State: string(ro.State), Step: ro.Step, Percent: ro.Percent, At: ro.Updated}
	if n := len(ro.Analysis); n > 0 {
		out.Reason = ro.Analysis[n-1].Reason
	}
	data := map[string]any{"image_id": id, "canary_image_id": ro.CanaryImageID, "step": ro.Step, "reason": out.Reason}
	switch ro.State {
	case registry.RolloutPromoted:
		cfg.Emit(Event{EventPromoted, data})
	case registry.RolloutRolledBack:
		cfg.Emit(Event{EventRolledBack, data})
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer func() {
			if err := recover(); err != nil {
				log.Error("panic", zap.String("goroutine", "rollout webhook"), zap.Any("error", err), zap.ByteString("stack", debug.Stack()))
			}
		}()
		if ro.PromoteURL != "" {
			d.callWebhook(ctx, log, ro.PromoteURL, out)
		}
		if ctx.Err() != nil {
			d.mu.Lock()
			delete(d.announcing, id)
			d.mu.Unlock()
			return // stopping: the next start announces it again
		}
		_, err := d.reg.ChangeRollout(id, func(cur *registry.Rollout) error {
			if !cur.Started.Equal(ro.Started) || cur.State != ro.State {
				return registry.ErrRolloutStale
			}
			cur.Notified = true
			return nil
		})
		if err != nil && err != registry.ErrRolloutStale && registry.KindOf(err) != registry.KindNotFound {
			log.Warn("rollout: marking the outcome announced failed; it may be announced again", zap.Error(err))
		}
		d.mu.Lock()
		delete(d.announcing, id) // not marked (the store failed): the next pass announces it again
		d.changed[id] = struct{}{}
		d.mu.Unlock()
		d.poke()
	}()
}

// callWebhook POSTs the outcome to url: a few attempts, each bounded;
// a 2xx answer is success. Every failure is logged.
func (d *Driver) callWebhook(ctx context.Context, log *zap.Logger, url string, out Outcome) {
	body, _ := json.Marshal(out)
	log = log.With(zap.String("promote_url", url), zap.String("state", out.State))
	for attempt := 0; ; attempt++ {
		status, err := d.post(ctx, url, body)
		if err == nil && status/100 == 2 {
			log.Info("rollout outcome sent to promote_url", zap.Int("status", status), zap.Int("attempt", attempt+1))
			return
		}
		if err == nil {
			err = fmt.Errorf("answered %d", status)
		}
		if attempt >= len(webhookRetries) {
			log.Error("rollout outcome not sent to promote_url: giving up", zap.Int("attempts", attempt+1), zap.Error(err))
			return
		}
		log.Warn("rollout outcome not sent to promote_url: trying again", zap.Int("attempt", attempt+1),
			zap.Duration("in", webhookRetries[attempt]), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(webhookRetries[attempt]):
		}
	}
}

func (d *Driver) post(ctx context.Context, url string, body []byte) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, webhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "imagelb-rollout")
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, nil
}
