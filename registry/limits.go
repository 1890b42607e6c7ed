// limits.go owns what turns requests away before a pick (max_in_flight, the retry budget and rate limits) and
// the registry's quotas (max_services, max_total_containers).

package registry

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// TryBegin counts a request for the service unless max_in_flight requests
// are in flight already; then it counts the request as shed (answered 503)
// and returns false.
func (s *Service) TryBegin() bool {
	st := s.State
	if max := int64(s.Options.MaxInFlight); max > 0 {
		if st.InFlight.Add(1) > max {
			st.InFlight.Add(-1)
			st.CountExtra().Shed.Add(1)
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
		ex := s.State.CountExtra()
		for {
			d := ex.retryDeficit.Load()
			next := max(d-max(int64(math.Round(b*1000)), 1), 0)
			if next == d || ex.retryDeficit.CompareAndSwap(d, next) {
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
	ex := s.State.CountExtra()
	for {
		d := ex.retryDeficit.Load()
		if d+1000 > retryTokenCap*1000 {
			ex.RetriesDenied.Add(1)
			return false
		}
		if ex.retryDeficit.CompareAndSwap(d, d+1000) {
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
	st.CountExtra().RateLimited.Add(1)
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

// Defaults of the registry's quotas, sized for a platform: 100,000 images,
// and twice as many containers. A container costs about 4.5 KB of memory
// (README, Performance), so 200,000 containers are about 0.9 GB.
const (
	DefaultMaxServices        = 100_000
	DefaultMaxTotalContainers = 200_000
)

// checkQuotas refuses (422, like a service over max_containers) a change from before to next that makes the registry
// hold more services or containers than its quotas allow. A change that
// does not grow a count past its quota passes, so that a registry already
// over a lowered quota can still shrink or stay as it is. What is
// restored or received from a shared store is not checked: it is there
// already.
func (r *Registry) checkQuotas(before, next *snapshot) error {
	if max := r.opts.MaxServices; max > 0 && next.count > max && next.count > before.count {
		return invalid("the registry holds %d services, the most max_services allows: remove services, or raise max_services (now %d)",
			before.count, max)
	}
	if max := r.opts.MaxTotalContainers; max > 0 && next.total > max && next.total > before.total {
		return invalid("this change would make %d containers in all, more than max_total_containers %d allows (%d now): "+
			"remove containers, or raise max_total_containers", next.total, max, before.total)
	}
	return nil
}
