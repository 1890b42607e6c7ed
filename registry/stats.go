package registry

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Counters are the request counters and latencies of a service or a
// container. Every field is an atomic so the request path never takes a lock.
//
// What only a finished request fills (the status classes, the latency
// histogram, the last minute) is allocated when the first one finishes,
// so that a registered container that never serves costs little: most
// containers of a scale-to-zero platform are idle.
type Counters struct {
	// Requests counts client requests (service) or attempts (container).
	Requests atomic.Int64
	// Failures counts requests or attempts that ended in an error or a 5xx.
	Failures atomic.Int64
	// InFlight is the number of requests or attempts not finished yet.
	InFlight atomic.Int64

	traffic atomic.Pointer[Traffic] // allocated when the first request finishes
	recent  atomic.Pointer[window]  // the last minute; allocated on first use
}

// Traffic is what finished requests or attempts filled in: their status
// classes and the distribution of their durations.
type Traffic struct {
	// Classes counts finished requests or attempts by the class of their
	// status: index 1 to 5 for 1xx to 5xx, 0 for no response at all.
	Classes [6]atomic.Int64
	// Latency is the distribution of every finished duration since the
	// start (the Prometheus histogram).
	Latency Histogram
	// BytesIn and BytesOut, a container's only, count the body bytes of
	// the requests whose last attempt it served: from the client, and to
	// it (ContainerStats.AddBytes).
	BytesIn, BytesOut atomic.Int64
}

// noTraffic is what Traffic returns before anything finished: zeros, never
// written to.
var noTraffic Traffic

// Traffic returns the status classes and latencies counted so far, for
// reading only: before the first request finished, a shared zero value.
func (c *Counters) Traffic() *Traffic {
	if t := c.traffic.Load(); t != nil {
		return t
	}
	return &noTraffic
}

// Begin counts one request or attempt.
func (c *Counters) Begin() {
	c.Requests.Add(1)
	c.InFlight.Add(1)
}

// Finish finishes a request or attempt started with Begin, which got the
// given status (0: none).
func (c *Counters) Finish(status int, failed bool, d time.Duration) {
	c.InFlight.Add(-1)
	c.record(status, failed, d)
}

// record counts the outcome of a finished request or attempt. The first
// one allocates what traffic fills; every later one allocates nothing.
func (c *Counters) record(status int, failed bool, d time.Duration) {
	if failed {
		c.Failures.Add(1)
	}
	class := status / 100
	if class < 0 || class > 5 {
		class = 0
	}
	t := c.traffic.Load()
	if t == nil {
		t = loadOrStore(&c.traffic)
	}
	t.Classes[class].Add(1)
	t.Latency.Observe(d)
	w := c.recent.Load()
	if w == nil {
		w = loadOrStore(&c.recent)
	}
	w.observe(now(), d)
}

// loadOrStore returns the value p points to, setting it to a new one when
// it is still nil: of racing first callers, one sets it and all get it.
func loadOrStore[T any](p *atomic.Pointer[T]) *T {
	if v := p.Load(); v != nil {
		return v
	}
	p.CompareAndSwap(nil, new(T))
	return p.Load()
}

// Refuse counts a request answered at once with status, without reaching
// anything (429, 503): it never was in flight.
func (c *Counters) Refuse(status int, failed bool) {
	c.Requests.Add(1)
	c.record(status, failed, 0)
}

// Recent returns the latency quantiles (in ms) and the request rate (per
// second) of the last minute; ok is false when nothing finished in it.
func (c *Counters) Recent(qs ...float64) (ms []float64, perSecond float64, ok bool) {
	w := c.recent.Load()
	if w == nil {
		return make([]float64, len(qs)), 0, false
	}
	return w.summary(now(), qs)
}

// Rate returns the request rate (per second) of the last minute, as
// Recent does, rounded as the API shows it, without reading the latencies.
func (c *Counters) Rate() float64 {
	w := c.recent.Load()
	if w == nil {
		return 0
	}
	return math.Round(w.rate(now())*1000) / 1000
}

// ServiceState is the runtime state of a service shared by all its versions.
type ServiceState struct {
	Counters
	// Usage is the image's usage counter (usage.go): it outlives the
	// service, and counts bytes as well as requests.
	Usage      *UsageCounter
	strategies strategyStates // what the balancing strategies keep across versions (strategy.go)
	ejecting   sync.Mutex     // makes "under the cap? then eject" one step

	// extra counts what the image's options turn away, hold or send
	// elsewhere; allocated by the first count (Extra).
	extra atomic.Pointer[ExtraCounters]

	limits   atomic.Pointer[limits]        // rate limiter, made on first use
	split    atomic.Pointer[splitRotation] // the split's rotation (split.go), made by its first turn
	rotation rotation                      // round robin's turn, kept here rather than made per image (rr.go)
	reg      *Registry                     // the registry the service is in, for the warning about other images (split.go); nil in tests
}

// ExtraCounters count what a service's options did: only an image with a
// rate limit, max_in_flight, a retry budget, start on demand, a split or
// that another image mirrors to counts anything here, so they are allocated
// by the first count and every other registered image reads zeros.
type ExtraCounters struct {
	// RateLimited, Shed and RetriesDenied count requests answered 429 by
	// the rate limit, answered 503 by max_in_flight, and retries refused
	// by the retry budget.
	RateLimited, Shed, RetriesDenied atomic.Int64
	// Waiting is the number of requests held while the image starts on
	// demand.
	Waiting atomic.Int64
	// SplitRequests counts the requests of this image that its split sent
	// to another image (counted there, as the image that served them).
	SplitRequests atomic.Int64
	// Mirror counts the copies other images' mirrors sent this one.
	Mirror MirrorCounters

	retryDeficit atomic.Int64 // retry budget: milli-tokens below the cap
}

// noExtra is what Extra returns before anything was counted: zeros, never
// written to.
var noExtra ExtraCounters

// Extra returns the options' counters, for reading only: before the first
// count, a shared zero value.
func (s *ServiceState) Extra() *ExtraCounters {
	if e := s.extra.Load(); e != nil {
		return e
	}
	return &noExtra
}

// CountExtra returns the options' counters for counting, allocating them
// the first time.
func (s *ServiceState) CountExtra() *ExtraCounters {
	if e := s.extra.Load(); e != nil {
		return e
	}
	return loadOrStore(&s.extra)
}

// ContainerStats is the runtime state of a container shared by all its versions.
type ContainerStats struct {
	Counters
	// consecutive results of active health checks
	passes, fails atomic.Int32
	// ChecksPassed and ChecksFailed count active health checks by result.
	ChecksPassed, ChecksFailed atomic.Int64
	// PassiveEjection identifies the passive ejection in force (0: none),
	// so that its expiry does not undo a later judgement.
	PassiveEjection atomic.Uint64

	circuit      atomic.Pointer[circuit] // outlier ejection (outlier.go); allocated by the first outcome it judges
	healthySince atomic.Int64            // unix nanoseconds of the last change to healthy, for slow start
	wrr          wrrWeight               // weighted_round_robin's current weight (wrr.go)
	latency      peakEWMA                // least_latency's response-time average (leastlatency.go)

	mu              sync.Mutex
	lastHealthCheck int64 // unix nanoseconds; 0: none yet
	lastHealthError string
	passiveStart    int64 // unix nanoseconds: start of the current passive failure window
	passiveFails    int   // failures counted in it
}

// AddBytes counts the body bytes of a request whose last attempt the
// container served: in from the client, out to it.
func (c *ContainerStats) AddBytes(in, out int64) {
	if in == 0 && out == 0 {
		return
	}
	t := c.traffic.Load()
	if t == nil {
		t = loadOrStore(&c.traffic) // the attempt finished first: not reached in practice
	}
	t.BytesIn.Add(in)
	t.BytesOut.Add(out)
}

// RecordCheck counts the result of an active health check and returns the
// number of consecutive passes and failures, one of which is zero.
func (c *ContainerStats) RecordCheck(pass bool) (passes, fails int64) {
	if pass {
		c.ChecksPassed.Add(1)
		c.fails.Store(0)
		return int64(c.passes.Add(1)), 0
	}
	c.ChecksFailed.Add(1)
	c.passes.Store(0)
	return 0, int64(c.fails.Add(1))
}

// ResetChecks forgets the consecutive check results and any passive
// ejection in force: a new judgement (a passive ejection, a status set by the
// orchestrator) starts afresh.
func (c *ContainerStats) ResetChecks() {
	c.passes.Store(0)
	c.fails.Store(0)
	c.PassiveEjection.Store(0)
}

// RecordPassiveFailure counts a failed attempt at time at and returns how
// many failures fall in the current window of the given length (a window
// opens with the first failure after the previous one closed).
func (c *ContainerStats) RecordPassiveFailure(at time.Time, window time.Duration) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.passiveFails == 0 || at.UnixNano()-c.passiveStart > int64(window) {
		c.passiveStart, c.passiveFails = at.UnixNano(), 0
	}
	c.passiveFails++
	return c.passiveFails
}

// SetHealth records the outcome of a health check.
func (c *ContainerStats) SetHealth(at time.Time, errText string) {
	c.mu.Lock()
	c.lastHealthCheck, c.lastHealthError = at.UnixNano(), errText
	c.mu.Unlock()
}

// Health returns the time and error of the last health check (zero and
// empty when none has run).
func (c *ContainerStats) Health() (time.Time, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastHealthCheck == 0 {
		return time.Time{}, c.lastHealthError
	}
	return time.Unix(0, c.lastHealthCheck).UTC(), c.lastHealthError
}

// Histogram is a fixed-bucket latency histogram made of atomics: recording is
// two atomic adds and never allocates. Bucket i holds durations up to
// bucketBound(i); the bounds grow by about 19% per bucket from 50µs to
// about 12.5 minutes (longer durations count in the last bucket), so a
// quantile is exact to within one bucket.
type Histogram struct {
	buckets [numBuckets]atomic.Uint64
	sum     atomic.Int64 // nanoseconds
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
	h.sum.Add(int64(d))
}

// NumBuckets is the number of buckets of a Histogram.
const NumBuckets = numBuckets

// BucketBound is the upper bound of bucket i.
func BucketBound(i int) time.Duration { return bucketBound(i) }

// Snapshot returns the count of each bucket and the sum of all durations.
func (h *Histogram) Snapshot() (counts [numBuckets]uint64, sum time.Duration) {
	for i := range h.buckets {
		counts[i] = h.buckets[i].Load()
	}
	return counts, time.Duration(h.sum.Load())
}

// Quantiles returns the upper bounds of the buckets holding the given
// quantiles (0 < q ≤ 1), in milliseconds; ok is false when nothing was observed.
func (h *Histogram) Quantiles(qs ...float64) (ms []float64, ok bool) {
	counts, _ := h.Snapshot()
	return quantiles(&counts, qs)
}

// quantiles computes quantiles from bucket counts.
func quantiles(counts *[numBuckets]uint64, qs []float64) (ms []float64, ok bool) {
	var total uint64
	for _, n := range counts {
		total += n
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

// The recent window: the last minute in slots of slotSeconds, each slot a
// small histogram of its own, recycled when its time comes round again.
const (
	windowSlots = 6
	slotSeconds = 10
)

type window struct {
	slots [windowSlots]windowSlot
}

type windowSlot struct {
	epoch   atomic.Int64 // unix time / slotSeconds of the data in the slot
	count   atomic.Uint32
	buckets [numBuckets]atomic.Uint32
}

// observe records d at time at. A slot found holding data of an older
// epoch is cleared first; an observation racing with the clearing may be
// lost, which the recent figures (not the counters) can afford. A slot
// never used (epoch 0) is zero already: the first requests of a new
// window, which race to it, are all counted.
func (w *window) observe(at time.Time, d time.Duration) {
	epoch := at.Unix() / slotSeconds
	s := &w.slots[epoch%windowSlots]
	if old := s.epoch.Load(); old != epoch && s.epoch.CompareAndSwap(old, epoch) && old != 0 {
		s.count.Store(0)
		for i := range s.buckets {
			s.buckets[i].Store(0)
		}
	}
	s.count.Add(1)
	s.buckets[bucketOf(d)].Add(1)
}

// summary merges the slots of the last minute.
func (w *window) summary(at time.Time, qs []float64) (ms []float64, perSecond float64, ok bool) {
	epoch := at.Unix() / slotSeconds
	var counts [numBuckets]uint64
	var total uint64
	for i := range w.slots {
		s := &w.slots[i]
		e := s.epoch.Load()
		if e <= epoch-windowSlots || e > epoch {
			continue
		}
		total += uint64(s.count.Load())
		for j := range s.buckets {
			counts[j] += uint64(s.buckets[j].Load())
		}
	}
	ms, ok = quantiles(&counts, qs)
	return ms, perMinuteRate(at, epoch, total), ok
}

// rate is summary's request rate alone: the slots' counts, not their
// buckets (the order of a page by requests_per_second reads it for every
// image).
func (w *window) rate(at time.Time) float64 {
	epoch := at.Unix() / slotSeconds
	var total uint64
	for i := range w.slots {
		s := &w.slots[i]
		if e := s.epoch.Load(); e > epoch-windowSlots && e <= epoch {
			total += uint64(s.count.Load())
		}
	}
	return perMinuteRate(at, epoch, total)
}

// perMinuteRate is total requests over the window ending at at (epoch is
// at's slot). One definition for every counter: requests over the whole
// window (its oldest slot's start to now), whenever the counter began;
// dividing by the span of a young counter's own data made a new
// container's rate look many times its service's.
func perMinuteRate(at time.Time, epoch int64, total uint64) float64 {
	span := at.Sub(time.Unix((epoch-windowSlots+1)*slotSeconds, 0)).Seconds()
	if total > 0 && span > 0 {
		return float64(total) / span
	}
	return 0
}
