package registry

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Counters are the request counters and latencies of a service or a
// container. Every field is an atomic so the request path never takes a lock.
type Counters struct {
	// Requests counts client requests (service) or attempts (container).
	Requests atomic.Int64
	// Failures counts requests or attempts that ended in an error or a 5xx.
	Failures atomic.Int64
	// InFlight is the number of requests or attempts not finished yet.
	InFlight atomic.Int64
	// Latency is the distribution of finished requests' or attempts' durations.
	Latency Histogram
}

// Begin counts one request or attempt.
func (c *Counters) Begin() {
	c.Requests.Add(1)
	c.InFlight.Add(1)
}

// End finishes a request or attempt started with Begin.
func (c *Counters) End(failed bool, d time.Duration) {
	c.InFlight.Add(-1)
	if failed {
		c.Failures.Add(1)
	}
	c.Latency.Observe(d)
}

// ServiceState is the runtime state of a service shared by all its versions.
type ServiceState struct {
	Counters
	rr atomic.Uint64 // rotation counter of round robin and of tie-breaks
}

// ContainerStats is the runtime state of a container shared by all its versions.
type ContainerStats struct {
	Counters

	// consecutive results of active health checks
	passes, fails atomic.Int64

	mu              sync.Mutex
	lastHealthCheck time.Time
	lastHealthError string
	passiveStart    time.Time // start of the current passive failure window
	passiveFails    int       // failures counted in it
}

// RecordCheck counts the result of an active health check and returns the
// number of consecutive passes and failures, one of which is zero.
func (c *ContainerStats) RecordCheck(pass bool) (passes, fails int64) {
	if pass {
		c.fails.Store(0)
		return c.passes.Add(1), 0
	}
	c.passes.Store(0)
	return 0, c.fails.Add(1)
}

// ResetChecks forgets the consecutive check results, so that a container
// ejected by passive checks needs fresh passing checks to come back.
func (c *ContainerStats) ResetChecks() {
	c.passes.Store(0)
	c.fails.Store(0)
}

// RecordPassiveFailure counts a failed attempt at time at and returns how
// many failures fall in the current window of the given length (a window
// opens with the first failure after the previous one closed).
func (c *ContainerStats) RecordPassiveFailure(at time.Time, window time.Duration) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.passiveFails == 0 || at.Sub(c.passiveStart) > window {
		c.passiveStart, c.passiveFails = at, 0
	}
	c.passiveFails++
	return c.passiveFails
}

// SetHealth records the outcome of a health check.
func (c *ContainerStats) SetHealth(at time.Time, errText string) {
	c.mu.Lock()
	c.lastHealthCheck, c.lastHealthError = at, errText
	c.mu.Unlock()
}

// Health returns the time and error of the last health check (zero and
// empty when none has run).
func (c *ContainerStats) Health() (time.Time, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastHealthCheck, c.lastHealthError
}

// Histogram is a fixed-bucket latency histogram made of atomics: recording is
// one atomic add and never allocates. Bucket i holds durations up to
// bucketBound(i); the bounds grow by about 19% per bucket from 50µs to
// about 12.5 minutes (longer durations count in the last bucket), so a
// quantile is exact to within one bucket.
type Histogram struct {
	buckets [numBuckets]atomic.Uint64
}

const (
	numBuckets    = 96
	firstBound    = 50 * time.Microsecond
	bucketGrowth  = 1.19
	logGrowthBase = 0.17395330712343798 // math.Log(bucketGrowth)
)

func bucketBound(i int) time.Duration {
	return time.Duration(float64(firstBound) * math.Pow(bucketGrowth, float64(i)))
}

func bucketOf(d time.Duration) int {
	if d <= firstBound {
		return 0
	}
	i := int(math.Ceil(math.Log(float64(d)/float64(firstBound)) / logGrowthBase))
	if i >= numBuckets {
		return numBuckets - 1
	}
	return i
}

// Observe records one duration.
func (h *Histogram) Observe(d time.Duration) {
	h.buckets[bucketOf(d)].Add(1)
}

// Quantiles returns the upper bounds of the buckets holding the given
// quantiles (0 < q ≤ 1), in milliseconds; ok is false when nothing was observed.
func (h *Histogram) Quantiles(qs ...float64) (ms []float64, ok bool) {
	var counts [numBuckets]uint64
	var total uint64
	for i := range h.buckets {
		counts[i] = h.buckets[i].Load()
		total += counts[i]
	}
	ms = make([]float64, len(qs))
	if total == 0 {
		return ms, false
	}
	for j, q := range qs {
		rank := uint64(math.Ceil(q * float64(total)))
		if rank == 0 {
			rank = 1
		}
		var seen uint64
		for i, n := range counts {
			seen += n
			if seen >= rank {
				ms[j] = math.Round(float64(bucketBound(i))/float64(time.Millisecond)*1000) / 1000
				break
			}
		}
	}
	return ms, true
}
