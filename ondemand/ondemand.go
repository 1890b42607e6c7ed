// Package ondemand starts images on demand and stops them when idle (scale
// to zero). A request for an image whose service has the on_demand option
// and no available container waits in Activator.Wait while the operator's
// start webhook asks the orchestrator for a container; the orchestrator
// registers it through the API as usual, the health checker passes it
// (health's fast lane), and the registry's change listener releases the
// waiting requests at once. An image without a request and without an open
// stream for its idle_timeout gets the stop webhook.
//
// The webhooks are the operator's (the app's on_demand block): a
// registration only says that its image may scale to zero, so no client of
// the API can make Caddy call a URL of its choosing.
//
// In a cluster (Cluster), the nodes claim each webhook call in the shared
// store, so one node calls it, and they share when each image was last
// active, so no node stops an image another node serves.
package ondemand

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

// Defaults of the app's on_demand block.
const (
	DefaultStartTimeout = 30 * time.Second
	DefaultMaxWaiting   = 100
	// webhookTimeout bounds one webhook call (and start_timeout, if shorter).
	webhookTimeout = 10 * time.Second
	// failedPause is how long requests are refused at once after start_url
	// failed, so that a failing orchestrator is not called per request.
	failedPause = 5 * time.Second
	// tick is how often idleness is judged.
	tick = time.Second
)

// Config is the operator's on_demand block.
type Config struct {
	// StartURL is POSTed when a request finds no available container;
	// StopURL after an image's idle_timeout. "{image_id}" in them is the
	// image's id. Empty StartURL: images are not started (requests get
	// 503); empty StopURL: idle images are only announced.
	StartURL, StopURL string
	// StartTimeout is how long a request waits for a container.
	StartTimeout time.Duration
	// MaxWaiting caps the requests waiting per image.
	MaxWaiting int
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.StartTimeout <= 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.MaxWaiting <= 0 {
		c.MaxWaiting = DefaultMaxWaiting
	}
	return c
}

// CheckURL reports what is wrong with a webhook URL ("" nothing): it must
// be an absolute http or https URL; "{image_id}" may appear in it.
func CheckURL(raw string) string {
	return registry.CheckWebhookURLAs(expand(raw, 1), raw)
}

func expand(raw string, id int64) string {
	return strings.ReplaceAll(raw, "{image_id}", strconv.FormatInt(id, 10))
}

// Cluster is what the nodes of a cluster share for start on demand (the
// etcd store); nil on a single node.
type Cluster interface {
	// Claim takes name for holder for ttl across the nodes; won is true
	// for the one node that took it, until release or ttl.
	Claim(ctx context.Context, name, holder string, ttl time.Duration) (release func(), won bool, err error)
	// MarkActive records that the image was active at t;
	// LastActive returns the latest such time of any node.
	MarkActive(ctx context.Context, imageID int64, t time.Time) error
	LastActive(ctx context.Context, imageID int64) (time.Time, error)
}

// Event is announced through Emit: imagelb.service_starting,
// imagelb.service_started or imagelb.service_idle, with its data.
type Event struct {
	Name string
	Data map[string]any
}

// Refusal is why a waiting request gets no container: the status (503,
// or 404 when the image was removed meanwhile), the Retry-After in
// seconds (0: none) and a detail for the client.
type Refusal struct {
	Status     int
	RetryAfter int
	Detail     string
}

func (r *Refusal) Error() string { return r.Detail }

// Activator holds the requests of images that start on demand and stops
// idle images. One lives as long as the registry, across config reloads;
// Configure sets the operator's config of the running one.
type Activator struct {
	reg    *registry.Registry
	client *http.Client

	mu      sync.Mutex
	cfg     Config
	cluster Cluster
	node    string
	logger  *zap.Logger
	emit    func(Event)
	images  map[int64]*image
	events  chan Event // announced in order by one goroutine, outside the registry's lock
	stop    context.CancelFunc
	done    chan struct{}
	unlist  func()
	changed map[int64]struct{} // images to look at again in the next tick
}

// image is the on-demand state of one image.
type image struct {
	// starting: a start is under way since startedAt (until a container
	// is available or StartTimeout passes); wake is closed and replaced
	// whenever the waiting requests should look again.
	starting  bool
	startedAt time.Time
	called    bool // this node called start_url for this start
	waiting   int
	wake      chan struct{}
	failed    *Refusal  // the latest start_url failure, refused until failedAt+failedPause
	failedAt  time.Time // when it failed
	release   func()    // gives the cluster's start claim back (nil: none)

	// idleness
	idle       time.Duration // the service's idle_timeout; 0: not on demand
	seen       bool          // lastReq holds a reading
	lastReq    int64         // the service's request count at the last tick
	lastActive time.Time     // the last tick that saw activity
	marked     time.Time     // when this node last shared activity with the cluster
	stopped    bool          // stop_url was called since the last activity
	nextStop   time.Time     // after a failed stop, not before
}

// New returns the activator of reg; it does nothing until Configure and Start.
func New(reg *registry.Registry) *Activator {
	return &Activator{
		reg:     reg,
		client:  &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		logger:  zap.NewNop(),
		emit:    func(Event) {},
		images:  map[int64]*image{},
		changed: map[int64]struct{}{},
	}
}

// Configure sets the operator's config, the cluster (nil: none), this
// node's id, where events go and the logger. It takes effect at once.
func (a *Activator) Configure(cfg Config, cluster Cluster, node string, emit func(Event), logger *zap.Logger) {
	if emit == nil {
		emit = func(Event) {}
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	a.mu.Lock()
	a.cfg, a.cluster, a.node, a.emit, a.logger = cfg.WithDefaults(), cluster, node, emit, logger
	a.mu.Unlock()
}

// Start starts the activator's loop (idleness, events) if it is not running.
func (a *Activator) Start() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stop != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.stop, a.done = cancel, make(chan struct{})
	a.events = make(chan Event, 1024)
	for _, svc := range a.reg.Services() {
		a.changed[svc.ImageID] = struct{}{}
	}
	a.unlist = a.reg.OnChange(a.noteChanged)
	go a.loop(ctx, a.done, a.events)
}

// Stop stops the loop and releases every waiting request.
func (a *Activator) Stop() {
	a.mu.Lock()
	stop, done, unlist := a.stop, a.done, a.unlist
	a.stop, a.done, a.unlist = nil, nil, nil
	for _, im := range a.images {
		if im.release != nil {
			go im.release()
			im.release = nil
		}
		if im.wake != nil {
			close(im.wake)
			im.wake = nil
		}
	}
	a.mu.Unlock()
	if stop == nil {
		return
	}
	unlist()
	stop()
	<-done
}

// state returns the image's state, made on first use; a.mu is held.
func (a *Activator) state(id int64) *image {
	im := a.images[id]
	if im == nil {
		im = &image{}
		a.images[id] = im
	}
	if im.wake == nil {
		im.wake = make(chan struct{})
	}
	return im
}

// announce queues an event for the loop; a.mu is held.
func (a *Activator) announce(name string, data map[string]any) {
	select {
	case a.events <- Event{Name: name, Data: data}:
	default:
		a.logger.Warn("too many on-demand events at once: one is not announced", zap.String("event", name))
	}
}

// Wait holds a request for svc, an on-demand service without an available
// container, until one is available (it returns the service's version
// that has it), the bounds pass or start_url fails (a *Refusal), or ctx
// ends (its error). The caller counts the refusals.
func (a *Activator) Wait(ctx context.Context, svc *registry.Service) (*registry.Service, error) {
	id := svc.ImageID
	arrived := time.Now()
	a.mu.Lock()
	cfg := a.cfg
	if a.stop == nil {
		a.mu.Unlock()
		return nil, &Refusal{Status: http.StatusServiceUnavailable, RetryAfter: 1,
			Detail: fmt.Sprintf("image_id %d has no available container, and this Caddy is stopping", id)}
	}
	if cfg.StartURL == "" {
		a.mu.Unlock()
		return nil, &Refusal{Status: http.StatusServiceUnavailable, Detail: fmt.Sprintf(
			"image_id %d has no available container; it is on_demand, but this Caddy's imagelb app has no on_demand start_url to start it: set one, or register a container", id)}
	}
	im := a.state(id)
	if im.failed != nil && arrived.Sub(im.failedAt) < failedPause {
		r := *im.failed
		r.RetryAfter = retryAfter(failedPause - arrived.Sub(im.failedAt))
		a.mu.Unlock()
		return nil, &r
	}
	if im.waiting >= cfg.MaxWaiting {
		a.mu.Unlock()
		return nil, &Refusal{Status: http.StatusServiceUnavailable, RetryAfter: retryAfter(cfg.StartTimeout - arrived.Sub(im.startedAt)),
			Detail: fmt.Sprintf("image_id %d is starting and already holds max_waiting %d requests; retry shortly", id, cfg.MaxWaiting)}
	}
	if !im.starting || arrived.Sub(im.startedAt) >= cfg.StartTimeout {
		a.begin(id, svc.ImageName, im, arrived, cfg)
	}
	im.waiting++
	svc.State.CountExtra().Waiting.Add(1)
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		im.waiting--
		a.mu.Unlock()
		svc.State.CountExtra().Waiting.Add(-1)
	}()

	timer := time.NewTimer(cfg.StartTimeout)
	defer timer.Stop()
	for {
		a.mu.Lock()
		wake := im.wake
		failed, failedAt := im.failed, im.failedAt
		a.mu.Unlock()
		cur := a.reg.Lookup(id)
		switch {
		case cur == nil:
			return nil, &Refusal{Status: http.StatusNotFound, Detail: fmt.Sprintf("image_id %d was removed while the request waited for it to start", id)}
		case len(cur.Available()) > 0:
			return cur, nil
		case failed != nil && !failedAt.Before(arrived):
			r := *failed
			return nil, &r
		case wake == nil:
			return nil, &Refusal{Status: http.StatusServiceUnavailable, RetryAfter: 1,
				Detail: fmt.Sprintf("image_id %d has no available container, and this Caddy is stopping", id)}
		}
		select {
		case <-wake:
		case <-timer.C:
			return nil, &Refusal{Status: http.StatusServiceUnavailable, RetryAfter: retryAfter(cfg.StartTimeout / 4),
				Detail: fmt.Sprintf("no container of image_id %d became available within the on_demand start_timeout of %s; it may still be starting: retry shortly", id, cfg.StartTimeout)}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// retryAfter is a Retry-After of d, at least a second.
func retryAfter(d time.Duration) int {
	return max(int(math.Ceil(d.Seconds())), 1)
}

// begin starts a start of the image: it announces it and calls start_url
// (in a cluster, if this node claims the call). a.mu is held.
func (a *Activator) begin(id int64, name string, im *image, at time.Time, cfg Config) {
	im.starting, im.startedAt, im.called = true, at, false
	im.failed = nil
	cluster, node, logger := a.cluster, a.node, a.logger
	logger.Info("starting image on demand", zap.Int64("image_id", id))
	a.announce("imagelb.service_starting", map[string]any{"image_id": id, "image_name": name})
	go func() {
		err := a.callStart(id, name, im, at, cfg, cluster, node)
		if err == nil {
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if !im.starting || !im.startedAt.Equal(at) {
			return // the start is over (a container came up all the same)
		}
		im.starting = false
		im.failed = &Refusal{Status: http.StatusServiceUnavailable, RetryAfter: retryAfter(failedPause), Detail: fmt.Sprintf(
			"image_id %d has no available container and could not be started: %v; retry shortly", id, err)}
		im.failedAt = time.Now()
		logger.Warn("start on demand failed", zap.Int64("image_id", id), zap.Error(err))
		a.broadcast(im)
	}()
}

// callStart calls start_url for the image unless another node of the
// cluster claimed the call; im.called records that this node called it.
func (a *Activator) callStart(id int64, name string, im *image, at time.Time, cfg Config, cluster Cluster, node string) error {
	var release func()
	if cluster != nil {
		ctx, cancel := context.WithTimeout(context.Background(), webhookTimeout)
		rel, won, err := cluster.Claim(ctx, "start/"+strconv.FormatInt(id, 10), node, cfg.StartTimeout)
		cancel()
		if err != nil {
			return fmt.Errorf("the cluster could not decide which node starts it: %v", err)
		}
		if !won {
			return nil // another node calls start_url; its container reaches us through the store
		}
		release = rel
	}
	a.mu.Lock()
	if im.starting && im.startedAt.Equal(at) {
		im.called = true
		im.release = release
	} else if release != nil {
		go release() // a container came up already
	}
	a.mu.Unlock()
	return a.call(cfg.StartURL, id, map[string]any{"image_id": id, "image_name": name, "action": "start", "node_id": node}, min(cfg.StartTimeout, webhookTimeout))
}

// call POSTs the webhook; any answer but 2xx is a failure.
func (a *Activator) call(rawURL string, id int64, body map[string]any, timeout time.Duration) error {
	target := expand(rawURL, id)
	b, _ := json.Marshal(body)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "imagelb-on-demand")
	resp, err := a.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("POST %s: no answer within %s", target, timeout)
		}
		return fmt.Errorf("POST %s: %v", target, err)
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("POST %s answered %d %s", target, resp.StatusCode, strings.TrimSpace(string(msg)))
	}
	return nil
}

// broadcast wakes the image's waiting requests; a.mu is held.
func (a *Activator) broadcast(im *image) {
	if im.wake != nil {
		close(im.wake)
		im.wake = make(chan struct{})
	}
}

// noteChanged is the registry's change listener. It runs under the
// registry's writer lock: it wakes waiting requests and ends starts, and
// leaves everything else to the loop.
func (a *Activator) noteChanged(ids []int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		a.changed[id] = struct{}{}
		im := a.images[id]
		if im == nil || (!im.starting && im.waiting == 0) {
			continue
		}
		svc := a.reg.Lookup(id)
		if svc != nil && len(svc.Available()) == 0 {
			continue
		}
		if im.starting && svc != nil {
			wait := time.Since(im.startedAt)
			a.logger.Info("image started on demand", zap.Int64("image_id", id), zap.Duration("wait", wait))
			a.announce("imagelb.service_started", map[string]any{"image_id": id, "image_name": svc.ImageName,
				"wait_ms": float64(wait.Microseconds()) / 1000, "called_start_url": im.called})
		}
		im.starting = false
		if im.release != nil {
			go im.release()
			im.release = nil
		}
		a.broadcast(im)
	}
}

// loop announces events in order and judges idleness every tick.
func (a *Activator) loop(ctx context.Context, done chan struct{}, events chan Event) {
	defer close(done)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case ev := <-events:
			a.mu.Lock()
			emit := a.emit
			a.mu.Unlock()
			emit(ev)
		case now := <-t.C:
			a.judge(ctx, now)
		case <-ctx.Done():
			return
		}
	}
}
