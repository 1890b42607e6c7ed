package registry

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Circuit states of outlier ejection.
const (
	circuitClosed   int32 = iota // takes traffic
	circuitOpen                  // ejected until the cooldown ends
	circuitHalfOpen              // one probe request is in flight
)

// circuit is a container's outlier-ejection state.
type circuit struct {
	state       atomic.Int32
	until       atomic.Int64 // unix nanoseconds: when an open circuit lets a probe through
	consecutive atomic.Int64 // failed attempts in a row
	// Ejections counts the times the container was ejected.
	Ejections atomic.Int64

	mu          sync.Mutex // guards the error-rate window
	windowStart int64
	reqs, fails int
}

// admits reports whether the container may be chosen at time now: its
// circuit is closed, or its cooldown is over and no probe is in flight
// (a probe that never reports back frees the slot after another cooldown).
func (c *circuit) admits(now int64) bool {
	return c.state.Load() == circuitClosed || now >= c.until.Load()
}

// claim takes the container for a request: always when the circuit is
// closed; when it is open past its cooldown, only the one request that wins
// the probe slot, which half-opens it.
func (c *circuit) claim(now int64, cooldown time.Duration) bool {
	if c.state.Load() == circuitClosed {
		return true
	}
	until := c.until.Load()
	if now < until || !c.until.CompareAndSwap(until, now+int64(cooldown)) {
		return false
	}
	c.state.Store(circuitHalfOpen)
	return true
}

// Ejected reports whether the container is ejected (open or half-open).
func (c *ContainerStats) Ejected() bool { return c.circuit.state.Load() != circuitClosed }

// Ejections returns how many times the container was ejected.
func (c *ContainerStats) Ejections() int64 { return c.circuit.Ejections.Load() }

// Observe records the outcome of an attempt on c, which belongs to s: it
// feeds least_latency's response-time average and outlier ejection.
func (s *Service) Observe(c *Container, failed bool, d time.Duration) {
	if s.Algorithm == LeastLatency {
		c.Stats.observeLatency(now().UnixNano(), d, failed)
	}
	if od := s.Options.Outlier; od != nil {
		s.observeOutlier(c, od, failed, now().UnixNano())
	}
}

func (s *Service) observeOutlier(c *Container, od *Outlier, failed bool, at int64) {
	cb := &c.Stats.circuit
	state := cb.state.Load()
	if !failed {
		cb.consecutive.Store(0)
		if od.ErrorRate > 0 {
			cb.count(at, time.Duration(od.Interval), false)
		}
		if state == circuitHalfOpen {
			cb.state.CompareAndSwap(circuitHalfOpen, circuitClosed) // the probe passed
		}
		return
	}
	n := cb.consecutive.Add(1)
	eject := od.ConsecutiveFailures > 0 && n >= int64(od.ConsecutiveFailures)
	if od.ErrorRate > 0 {
		reqs, fails := cb.count(at, time.Duration(od.Interval), true)
		eject = eject || (reqs >= od.MinRequests && float64(fails) >= od.ErrorRate*float64(reqs))
	}
	switch {
	case state == circuitHalfOpen:
		// the probe failed: open again for another cooldown
		cb.until.Store(at + int64(od.Cooldown))
		if cb.state.CompareAndSwap(circuitHalfOpen, circuitOpen) {
			cb.Ejections.Add(1)
		}
	case state == circuitClosed && eject:
		s.State.ejecting.Lock()
		defer s.State.ejecting.Unlock()
		if !s.mayEject(od) {
			return
		}
		cb.until.Store(at + int64(od.Cooldown))
		if cb.state.CompareAndSwap(circuitClosed, circuitOpen) {
			cb.Ejections.Add(1)
			cb.reset()
		}
	}
}

// mayEject reports whether one more container may be ejected under the
// service's max_ejected_percent of its available containers.
func (s *Service) mayEject(od *Outlier) bool {
	ejected := 0
	for _, c := range s.available {
		if c.Stats.Ejected() {
			ejected++
		}
	}
	return (ejected+1)*100 <= od.MaxEjectedPercent*len(s.available)
}

// count adds an attempt to the error-rate window and returns its totals.
func (c *circuit) count(at int64, interval time.Duration, failed bool) (reqs, fails int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if at-c.windowStart > int64(interval) {
		c.windowStart, c.reqs, c.fails = at, 0, 0
	}
	c.reqs++
	if failed {
		c.fails++
	}
	return c.reqs, c.fails
}

func (c *circuit) reset() {
	c.consecutive.Store(0)
	c.mu.Lock()
	c.windowStart, c.reqs, c.fails = 0, 0, 0
	c.mu.Unlock()
}

// latencyDecay is the time constant of least_latency's moving average.
const latencyDecay = 10 * time.Second

// observeLatency folds one response time into the peak-EWMA: a slower
// response than the average replaces it at once (the peak), a faster one
// pulls it down with a time-based decay. A failure only ever raises it.
func (c *ContainerStats) observeLatency(at int64, d time.Duration, failed bool) {
	rtt := float64(d)
	for {
		bits := c.ewma.Load()
		cur := math.Float64frombits(bits)
		next := rtt
		if rtt < cur {
			if failed {
				if rtt <= c.latency(at) {
					return // below even the decayed average: nothing to raise
				}
				// the average decayed below it: a failure raises it
			} else {
				elapsed := float64(max(at-c.ewmaAt.Load(), 0))
				w := math.Exp(-elapsed / float64(latencyDecay))
				next = cur*w + rtt*(1-w)
			}
		}
		if c.ewma.CompareAndSwap(bits, math.Float64bits(next)) {
			c.ewmaAt.Store(at)
			return
		}
	}
}

// latency is the peak-EWMA response time in nanoseconds at time at (0
// before any): it decays while no response comes, so a container that was
// slow once and then got no traffic is tried again.
func (c *ContainerStats) latency(at int64) float64 {
	lat := math.Float64frombits(c.ewma.Load())
	if idle := at - c.ewmaAt.Load(); lat > 0 && idle > 0 {
		lat *= math.Exp(-float64(idle) / float64(latencyDecay))
	}
	return lat
}

// PeakLatency returns least_latency's current peak-EWMA response time.
func (c *ContainerStats) PeakLatency() time.Duration {
	return time.Duration(c.latency(now().UnixNano()))
}

// markHealthy starts the slow start of a container that became healthy.
func markHealthy(c *Container, prev Status, known bool) {
	if c.Status == StatusHealthy && (!known || prev != StatusHealthy) {
		c.Stats.healthySince.Store(now().UnixNano())
	}
}

// TryBegin counts a request for the service unless max_in_flight requests
// are in flight already; then it counts the request as shed (answered 503)
// and returns false.
func (s *Service) TryBegin() bool {
	st := s.State
	if max := int64(s.Options.MaxInFlight); max > 0 {
		if st.InFlight.Add(1) > max {
			st.InFlight.Add(-1)
			st.Shed.Add(1)
			st.Refuse(503, true)
			return false
		}
		st.Requests.Add(1)
		return true
	}
	st.Begin()
	return true
}

// retryTokenCap is the most retries the budget saves up (in tokens).
const retryTokenCap = 10

// DepositRetry adds a request's share of the retry budget.
func (s *Service) DepositRetry() {
	if b := s.Options.RetryBudget; b > 0 {
		st := s.State
		for {
			d := st.retryDeficit.Load()
			next := max(d-max(int64(math.Round(b*1000)), 1), 0)
			if next == d || st.retryDeficit.CompareAndSwap(d, next) {
				return
			}
		}
	}
}

// AllowRetry takes one retry from the budget, and reports whether there
// was one. Without a budget every retry is allowed (max_retries still caps
// them). The budget holds up to 10 retries and each request adds
// retry_budget of one, so over time retries stay within that share of the
// requests.
func (s *Service) AllowRetry() bool {
	if s.Options.RetryBudget <= 0 {
		return true
	}
	st := s.State
	for {
		d := st.retryDeficit.Load()
		if d+1000 > retryTokenCap*1000 {
			st.RetriesDenied.Add(1)
			return false
		}
		if st.retryDeficit.CompareAndSwap(d, d+1000) {
			return true
		}
	}
}

// limits are the token buckets of one rate_limit setting.
type limits struct {
	cfg     RateLimit
	service *rate.Limiter

	mu        sync.Mutex
	byClient  map[string]*rate.Limiter
	lastSweep time.Time
}

// maxClients bounds the per-client buckets kept per service; past it, full
// buckets (clients that stayed within the limit) are dropped.
const maxClients = 100_000

// AllowRate takes one request from the service's rate limit, per client
// address when the limit is per client_ip. When the limit is exceeded it
// returns false and how long until a request would be allowed, and counts
// the request as rate limited.
func (s *Service) AllowRate(client string, at time.Time) (bool, time.Duration) {
	rl := s.Options.RateLimit
	if rl == nil {
		return true, 0
	}
	st := s.State
	l := st.limits.Load()
	if l == nil || l.cfg != *rl {
		fresh := &limits{cfg: *rl}
		if rl.Per == PerService {
			fresh.service = newLimiter(*rl)
		} else {
			fresh.byClient = map[string]*rate.Limiter{}
		}
		if !st.limits.CompareAndSwap(l, fresh) {
			fresh = st.limits.Load()
		}
		l = fresh
	}
	lim := l.service
	if lim == nil {
		lim = l.forClient(client, at)
	}
	if lim.AllowN(at, 1) {
		return true, 0
	}
	st.RateLimited.Add(1)
	missing := 1 - lim.TokensAt(at)
	return false, time.Duration(missing / float64(lim.Limit()) * float64(time.Second))
}

func newLimiter(rl RateLimit) *rate.Limiter {
	perSecond := float64(rl.Requests) / time.Duration(rl.Interval).Seconds()
	return rate.NewLimiter(rate.Limit(perSecond), rl.Burst)
}

func (l *limits) forClient(client string, at time.Time) *rate.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.byClient[client]
	if lim == nil {
		if len(l.byClient) >= maxClients || at.Sub(l.lastSweep) > time.Minute {
			l.sweep(at)
		}
		lim = newLimiter(l.cfg)
		l.byClient[client] = lim
	}
	return lim
}

// sweep drops the buckets that are full again: a fresh one is the same.
func (l *limits) sweep(at time.Time) {
	l.lastSweep = at
	for k, lim := range l.byClient {
		if lim.TokensAt(at) >= float64(lim.Burst()) {
			delete(l.byClient, k)
		}
	}
	if len(l.byClient) >= maxClients {
		clear(l.byClient) // every client is busy: start afresh rather than grow
	}
}
