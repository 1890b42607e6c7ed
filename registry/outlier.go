// outlier.go owns outlier ejection: a circuit per container, opened by failures, probed after a cooldown.

package registry

import (
	"sync"
	"sync/atomic"
	"time"
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
// circuit is closed (or was never made), or its cooldown is over and no
// probe is in flight (a probe that never reports back frees the slot after
// another cooldown).
func (c *circuit) admits(now int64) bool {
	return c == nil || c.state.Load() == circuitClosed || now >= c.until.Load()
}

// claim takes the container for a request: always when the circuit is
// closed; when it is open past its cooldown, only the one request that wins
// the probe slot, which half-opens it.
func (c *circuit) claim(now int64, cooldown time.Duration) bool {
	if c == nil || c.state.Load() == circuitClosed {
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
func (c *ContainerStats) Ejected() bool {
	cb := c.circuit.Load()
	return cb != nil && cb.state.Load() != circuitClosed
}

// Ejections returns how many times the container was ejected.
func (c *ContainerStats) Ejections() int64 {
	if cb := c.circuit.Load(); cb != nil {
		return cb.Ejections.Load()
	}
	return 0
}

// observeOutlier feeds the outcome of an attempt on c at time at into its
// circuit, and opens the circuit when the outlier settings od say so.
func (s *Service) observeOutlier(c *Container, od *Outlier, failed bool, at int64) {
	cb := c.Stats.circuit.Load()
	if cb == nil {
		cb = loadOrStore(&c.Stats.circuit)
	}
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
