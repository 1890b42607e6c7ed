package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/internal/recycle"
	"github.com/imagelb/caddy-imagelb/registry"
)

// Change is one status change of a container, applied exactly once.
type Change struct {
	ImageID     int64
	ContainerID string
	From, To    registry.Status
	Reason      string
}

// Result is the outcome of one check, as the on-demand API reports it.
type Result struct {
	ImageID        int64           `json:"image_id"`
	ContainerID    string          `json:"container_id"`
	Status         registry.Status `json:"status"`
	PreviousStatus registry.Status `json:"previous_status"`
	LatencyMS      float64         `json:"latency_ms"`
	Error          *string         `json:"error"`
	passed         bool
}

// Report is the answer of an on-demand check.
type Report struct {
	// Checked is the number of containers checked.
	Checked int `json:"checked"`
	// Healthy and Unhealthy count the checks that passed and failed.
	Healthy   int      `json:"healthy"`
	Unhealthy int      `json:"unhealthy"`
	Results   []Result `json:"results"`
}

// running counts the checkers whose loop runs, process-wide: there must be
// one per registry, however many config reloads happened.
var running atomic.Int64

// Running returns the number of checker loops running in the process.
func Running() int64 { return running.Load() }

// Checker checks the containers of one registry.
type Checker struct {
	reg         *registry.Registry
	client      *http.Client
	transitions sync.Mutex    // orders status changes and their announcements
	ejections   atomic.Uint64 // numbers passive ejections

	// the Control hook of the checks' dialer (SetDialControl)
	control atomic.Pointer[func(network, address string, rc syscall.RawConn) error]

	mu       sync.Mutex
	cfg      Config
	sem      chan struct{}
	onChange func(Change)
	extras   func() []Extra
	logger   *zap.Logger
	stop     context.CancelFunc
	done     chan struct{}
	wake     chan struct{}
	fast     *fastLane // containers waiting for their first pass (fast.go)
	queue    *queue    // the rounds' checks waiting for a slot (queue.go)
	unlisten func()    // removes the fast lane's registry listener
}

// NewChecker returns a checker of reg; it checks nothing until Start or CheckNow.
func NewChecker(reg *registry.Registry) *Checker {
	c := &Checker{reg: reg, logger: zap.NewNop(), wake: make(chan struct{}, 1), fast: newFastLane(),
		queue: newQueue()}
	// Checks of containers removed later leave state in the transport:
	// it is rebuilt after recycle.DefaultEvery of them (see package recycle).
	transport, _ := recycle.New(func() (http.RoundTripper, error) {
		return &http.Transport{
			DialContext:         (&net.Dialer{KeepAlive: 30 * time.Second, Control: c.dialControl}).DialContext,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     2 * time.Minute, // keeps connections across the default 30s interval
			DisableCompression:  true,
		}, nil
	}, func(rt http.RoundTripper) { rt.(*http.Transport).CloseIdleConnections() }, reg.RetiredAddresses, 0)
	c.client = &http.Client{
		Transport:     transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	c.Configure(Config{}, nil, nil)
	return c
}

// Configure sets how containers are checked, what is told of each status
// change, and where logs go; it takes effect from the next check.
func (c *Checker) Configure(cfg Config, onChange func(Change), logger *zap.Logger) {
	cfg = cfg.WithDefaults()
	if logger == nil {
		logger = zap.NewNop()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sem == nil || cap(c.sem) != cfg.MaxConcurrent {
		c.sem = make(chan struct{}, cfg.MaxConcurrent)
	}
	c.cfg, c.onChange, c.logger = cfg, onChange, logger
}

// SetDialControl sets the Control hook of the checks' dialer: it sees the
// address a check is about to connect to (after name resolution) and
// refuses it with an error. nil checks nothing.
func (c *Checker) SetDialControl(f func(network, address string, rc syscall.RawConn) error) {
	c.control.Store(&f)
}

func (c *Checker) dialControl(network, address string, rc syscall.RawConn) error {
	if f := c.control.Load(); f != nil && *f != nil {
		return (*f)(network, address, rc)
	}
	return nil
}

func (c *Checker) settings() (Config, chan struct{}, *zap.Logger) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg, c.sem, c.logger
}

// Config returns the settings in force.
func (c *Checker) Config() Config {
	cfg, _, _ := c.settings()
	return cfg
}

// Start starts the periodic checks if they are not running; the first round
// begins at once, so containers restored from storage are re-checked.
func (c *Checker) Start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stop != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stop, c.done = cancel, make(chan struct{})
	running.Add(1)
	c.unlisten = c.reg.OnChange(c.fast.noteChanged)
	go c.loop(ctx, c.done)
}

// Stop stops the periodic checks and waits for the loop and its checks to end.
func (c *Checker) Stop() {
	c.mu.Lock()
	stop, done, unlisten := c.stop, c.done, c.unlisten
	c.stop, c.done, c.unlisten = nil, nil, nil
	c.mu.Unlock()
	if stop == nil {
		return
	}
	unlisten()
	stop()
	<-done
	c.client.CloseIdleConnections()
}

// Wake starts the next round now (after a config change, for example).
func (c *Checker) Wake() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// target is one container to check, as it was when the round began, or
// an extra target.
type target struct {
	imageID int64
	c       *registry.Container
	extra   *Extra
}

// Extra is a target that is not a container of the registry (a system
// service of the platform): it is probed in every round like a container,
// and each result goes to Record, which keeps its status.
type Extra struct {
	// Addr is the host:port probed.
	Addr string
	// Record receives each result: when, and why it failed ("" passed).
	Record func(at time.Time, errText string)
}

// SetExtras sets what returns the extra targets of each round (nil: none).
func (c *Checker) SetExtras(extras func() []Extra) {
	c.mu.Lock()
	c.extras = extras
	c.mu.Unlock()
}

// roundTargets are the targets of one periodic round: every container and
// the extras.
func (c *Checker) roundTargets() []target {
	ts := c.targets(0)
	c.mu.Lock()
	extras := c.extras
	c.mu.Unlock()
	if extras != nil {
		for _, e := range extras() {
			ts = append(ts, target{extra: &e})
		}
	}
	return ts
}

func (c *Checker) targets(imageID int64) []target {
	var svcs []*registry.Service
	if imageID > 0 {
		if svc := c.reg.Lookup(imageID); svc != nil {
			svcs = []*registry.Service{svc}
		}
	} else {
		svcs = c.reg.Services()
	}
	var ts []target
	for _, s := range svcs {
		for _, ctr := range s.Containers {
			ts = append(ts, target{imageID: s.ImageID, c: ctr})
		}
	}
	return ts
}

// loop runs one round per interval. A round spreads its checks evenly over
// the interval, starting at a random offset, so that many containers are
// not probed at the same instant; it queues them, and the dispatcher runs
// them concurrently, bounded by MaxConcurrent and cheapest first (queue.go),
// so a slow container does not hold up the others.
func (c *Checker) loop(ctx context.Context, done chan struct{}) {
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		c.queue.reset()
		running.Add(-1)
		close(done)
	}()
	defer c.recoverPanic("health check loop")
	wg.Add(2)
	go func() {
		defer wg.Done()
		c.fastLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		c.dispatch(ctx, &wg)
	}()
	// the first round checks everything at once (bounded by MaxConcurrent):
	// statuses restored from storage are not trusted
	first := true
	for {
		cfg, _, _ := c.settings()
		roundStart := time.Now()
		ts := c.roundTargets()
		c.queue.keep(ts)
		spacing := time.Duration(0)
		if len(ts) > 0 && !first {
			spacing = cfg.Interval / time.Duration(len(ts))
		}
		first = false
		offset := time.Duration(0)
		if spacing > 0 {
			offset = rand.N(spacing)
		}
		timer := time.NewTimer(0)
		woken := false
		for i := 0; i < len(ts) && !woken; i++ {
			var ok bool
			if ok, woken = sleepUntil(ctx, timer, roundStart.Add(offset+time.Duration(i)*spacing), c.wake); !ok {
				timer.Stop()
				return
			}
			if woken {
				break // new settings or services: start a new round now
			}
			c.queue.push(ts[i], cfg.Timeout/2, nil)
		}
		if !woken {
			if ok, _ := sleepUntil(ctx, timer, roundStart.Add(cfg.Interval), c.wake); !ok {
				timer.Stop()
				return
			}
		}
		timer.Stop()
	}
}

// sleepUntil waits for the deadline, a wake-up, or the end of ctx; ok is
// false when ctx ended, woken true when a wake-up came first.
func sleepUntil(ctx context.Context, timer *time.Timer, deadline time.Time, wake <-chan struct{}) (ok, woken bool) {
	d := time.Until(deadline)
	if d <= 0 {
		return ctx.Err() == nil, false
	}
	timer.Reset(d)
	select {
	case <-timer.C:
		return true, false
	case <-wake:
		timer.Stop() // Go 1.23+: no stale tick is left behind
		return true, true
	case <-ctx.Done():
		return false, false
	}
}

func (c *Checker) recoverPanic(what string) {
	if err := recover(); err != nil {
		_, _, logger := c.settings()
		logger.Error("panic in "+what, zap.Any("error", err), zap.ByteString("stack", debug.Stack()))
	}
}

// CheckNow checks every container (or those of one image, when imageID >
// 0) now, waits for all the checks, applies their results and reports them.
func (c *Checker) CheckNow(ctx context.Context, imageID int64) (Report, error) {
	ts := c.targets(imageID)
	if imageID > 0 && c.reg.Lookup(imageID) == nil {
		return Report{}, &registry.Error{Kind: registry.KindNotFound, Detail: fmt.Sprintf("image_id %d is not registered", imageID)}
	}
	_, sem, _ := c.settings()
	results := make([]Result, len(ts))
	var wg sync.WaitGroup
	for i, t := range ts {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			wg.Wait()
			return Report{}, ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[i] = c.checkOne(ctx, t)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return Report{}, ctx.Err()
	}
	rep := Report{Checked: len(results), Results: results}
	for _, r := range results {
		if r.passed {
			rep.Healthy++
		} else {
			rep.Unhealthy++
		}
	}
	return rep, nil
}

// checkOne probes one container and applies the result.
func (c *Checker) checkOne(ctx context.Context, t target) Result {
	cfg, _, _ := c.settings()
	if t.extra != nil {
		errText := c.probe(ctx, cfg, t.extra.Addr)
		if ctx.Err() == nil {
			t.extra.Record(time.Now(), errText)
		}
		return Result{passed: errText == ""}
	}
	start := time.Now()
	errText := c.probe(ctx, cfg, t.c.DialAddr())
	latency := time.Since(start)
	res := Result{ImageID: t.imageID, ContainerID: t.c.ContainerID,
		LatencyMS: float64(latency.Microseconds()) / 1000, passed: errText == ""}
	if errText != "" {
		res.Error = &errText
	}
	if ctx.Err() != nil {
		// the caller gave up or the checker is stopping: that says
		// nothing about the container, so nothing is recorded
		res.PreviousStatus, res.Status = t.c.Status, t.c.Status
		return res
	}
	res.PreviousStatus, res.Status = c.apply(cfg, t, errText)
	return res
}

// probe sends one check and returns why it failed, or "". Timeout bounds
// the whole check: the dial, the answer's headers and the body read.
func (c *Checker) probe(ctx context.Context, cfg Config, addr string) string {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	url := "http://" + addr + cfg.Path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return c.failed(ctx, cfg, addr, err)
	}
	req.Header.Set("User-Agent", "imagelb-health-check")
	resp, err := c.client.Do(req)
	if err != nil {
		return c.failed(ctx, cfg, addr, err)
	}
	// read a little, within the deadline, so that the connection can be
	// reused; a body that does not come is a failed check
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if err != nil {
		return c.failed(ctx, cfg, addr, err)
	}
	if resp.StatusCode < cfg.ExpectLo || resp.StatusCode > cfg.ExpectHi {
		return "status " + strconv.Itoa(resp.StatusCode) + " from " + cfg.Path +
			" (expected " + strconv.Itoa(cfg.ExpectLo) + "-" + strconv.Itoa(cfg.ExpectHi) + ")"
	}
	return ""
}

// failed logs why a check failed (at debug level: the error may quote what
// the peer sent) and returns it in fixed words.
func (c *Checker) failed(ctx context.Context, cfg Config, addr string, err error) string {
	text := failureText(ctx, cfg, err)
	_, _, logger := c.settings()
	if ce := logger.Check(zap.DebugLevel, "health check failed"); ce != nil {
		ce.Write(zap.String("upstream", addr), zap.String("reason", text), zap.Error(err))
	}
	return text
}

// failureText says what failed in a check in fixed words, whatever err
// says: last_health_error is shown by the API and the dashboard, and Go's
// errors quote the peer's bytes (malformed HTTP status code "..."), which
// would make the checker a banner reader for whoever registers containers.
func failureText(ctx context.Context, cfg Config, err error) string {
	var rerr *registry.Error
	var refused *registry.DialRefused
	var dnsErr *net.DNSError
	var netErr net.Error
	msg := err.Error()
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout: no answer within " + cfg.Timeout.String()
	case errors.As(err, &refused):
		return "dial refused by the " + refused.Rule + " rule"
	case errors.As(err, &rerr):
		return "dial refused by the self/metadata rule"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable"
	case errors.As(err, &dnsErr):
		return "host name not resolved"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), strings.Contains(msg, "server closed idle connection"):
		return "connection closed without an answer"
	case strings.Contains(msg, "malformed"), strings.Contains(msg, "transport connection broken"),
		strings.Contains(msg, "invalid"), strings.Contains(msg, "too long"), strings.Contains(msg, "chunk"):
		// net/http's parse errors are plain strings: "malformed HTTP
		// response", "malformed MIME header", "invalid Content-Length",
		// "header line too long", "bad chunk length"…
		return "not HTTP"
	}
	return "check failed (the debug log has the details)"
}

// apply records a check result and changes the container's status when a
// threshold is crossed. Draining containers are checked but keep their
// status: draining is the orchestrator's decision.
func (c *Checker) apply(cfg Config, t target, errText string) (before, after registry.Status) {
	svc := c.reg.Lookup(t.imageID)
	if svc == nil {
		return t.c.Status, t.c.Status
	}
	cur := svc.Container(t.c.ContainerID)
	if cur == nil || cur.Stats != t.c.Stats {
		return t.c.Status, t.c.Status // removed or replaced meanwhile
	}
	cur.Stats.SetHealth(time.Now(), errText)
	cur.Stats.PassiveEjection.Store(0) // an active check has the last word now
	passes, fails := cur.Stats.RecordCheck(errText == "")
	before = cur.Status
	switch {
	case errText == "" && (before == registry.StatusUnhealthy || before == registry.StatusStarting || before == registry.StatusUnknown) &&
		passes >= int64(cfg.HealthyThreshold):
		c.transition(t.imageID, cur.ContainerID, before, registry.StatusHealthy,
			fmt.Sprintf("%d consecutive passing checks", passes))
	case errText != "" && before == registry.StatusHealthy && fails >= int64(cfg.UnhealthyThreshold):
		c.transition(t.imageID, cur.ContainerID, before, registry.StatusUnhealthy,
			fmt.Sprintf("%d consecutive failing checks: %s", fails, errText))
	}
	after = before
	if now := c.reg.Lookup(t.imageID); now != nil {
		if ctr := now.Container(t.c.ContainerID); ctr != nil {
			after = ctr.Status
		}
	}
	return before, after
}

// PassiveFailure counts a failed attempt to reach a container while
// proxying (a connection failure or a timeout); past MaxFails within
// FailDuration the container is made unhealthy at once. It comes back
// after FailDuration (as with Caddy's passive checks and Envoy's ejection
// time), or sooner when enough active checks pass; an active check that
// fails meanwhile keeps it out.
func (c *Checker) PassiveFailure(imageID int64, ctr *registry.Container) {
	cfg, _, _ := c.settings()
	if cfg.MaxFails <= 0 {
		return
	}
	n := ctr.Stats.RecordPassiveFailure(time.Now(), cfg.FailDuration)
	if n < cfg.MaxFails {
		return
	}
	ctr.Stats.ResetChecks()
	if !c.transition(imageID, ctr.ContainerID, registry.StatusHealthy, registry.StatusUnhealthy,
		fmt.Sprintf("passive: %d failed attempts within %s", n, cfg.FailDuration)) {
		return
	}
	token := c.ejections.Add(1)
	ctr.Stats.PassiveEjection.Store(token)
	// The timer holds the ids, not the container: a container removed
	// meanwhile is not kept alive for FailDuration.
	containerID := ctr.ContainerID
	time.AfterFunc(cfg.FailDuration, func() {
		svc := c.reg.Lookup(imageID)
		if svc == nil {
			return
		}
		cur := svc.Container(containerID)
		// only if nothing has judged the container since
		if cur != nil && cur.Stats.PassiveEjection.CompareAndSwap(token, 0) {
			c.transition(imageID, containerID, registry.StatusUnhealthy, registry.StatusHealthy,
				fmt.Sprintf("passive: ejection of %s over", cfg.FailDuration))
		}
	})
}

// transition changes a status with a compare-and-swap, so that each change
// is logged and announced exactly once however many checks race; changes
// are announced in the order they were made.
func (c *Checker) transition(imageID int64, containerID string, from, to registry.Status, reason string) bool {
	c.transitions.Lock()
	defer c.transitions.Unlock()
	if !c.reg.CompareAndSwapStatus(imageID, containerID, from, to) {
		return false
	}
	c.mu.Lock()
	onChange, logger := c.onChange, c.logger
	c.mu.Unlock()
	logger.Info("container status changed",
		zap.Int64("image_id", imageID), zap.String("container_id", containerID),
		zap.String("old_status", string(from)), zap.String("new_status", string(to)),
		zap.String("reason", reason))
	if onChange != nil {
		onChange(Change{ImageID: imageID, ContainerID: containerID, From: from, To: to, Reason: reason})
	}
	return true
}
