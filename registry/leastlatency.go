// leastlatency.go owns least_latency: two random choices by peak-EWMA response time, and that average.

package registry

import (
	"math"
	"sync/atomic"
	"time"
)

// LeastLatency draws two containers at random and takes the one with the
// lower peak-EWMA response time × (requests in flight + 1) per unit of
// weight (Finagle, Linkerd).
const LeastLatency Algorithm = "least_latency"

// latencyDecay is the time constant of least_latency's moving average.
const latencyDecay = 10 * time.Second

// leastLatency is power_of_two by a latency-weighted cost; it observes
// every attempt's response time.
type leastLatency struct{ powerOfTwo }

func newLeastLatency(*Service) strategy { return leastLatency{powerOfTwo{cost: latencyCost}} }

func (leastLatency) observe(c *Container, failed bool, d time.Duration) {
	c.Stats.latency.observe(now().UnixNano(), d, failed)
}

// latencyCost is power_of_two's loadPerWeight multiplied by the peak-EWMA response
// time. A container without a response time yet costs nothing while it is
// idle (so it gets tried) and the most while it has requests in flight (one
// that never answers must not look fast), as in Finagle.
func latencyCost(f filter, c *Container) float64 {
	inFlight := c.Stats.InFlight.Load()
	cost := float64(inFlight+1) / float64(f.weight(c))
	lat := c.Stats.latency.at(f.now)
	if lat == 0 && inFlight > 0 {
		return math.MaxFloat64
	}
	return cost * lat
}

// peakEWMA is a container's peak-EWMA response time (in its ContainerStats,
// so that it lasts as long as the container stays in the service).
type peakEWMA struct {
	ewma   atomic.Uint64 // float64 bits, nanoseconds
	ewmaAt atomic.Int64  // unix nanoseconds of its last update
}

// observe folds one response time into the peak-EWMA: a slower response
// than the average replaces it at once (the peak), a faster one pulls it
// down with a time-based decay. A failure only ever raises it.
func (p *peakEWMA) observe(at int64, d time.Duration, failed bool) {
	rtt := float64(d)
	for {
		bits := p.ewma.Load()
		cur := math.Float64frombits(bits)
		next := rtt
		if rtt < cur {
			if failed {
				if rtt <= p.at(at) {
					return // below even the decayed average: nothing to raise
				}
				// the average decayed below it: a failure raises it
			} else {
				elapsed := float64(max(at-p.ewmaAt.Load(), 0))
				w := math.Exp(-elapsed / float64(latencyDecay))
				next = cur*w + rtt*(1-w)
			}
		}
		if p.ewma.CompareAndSwap(bits, math.Float64bits(next)) {
			p.ewmaAt.Store(at)
			return
		}
	}
}

// at is the peak-EWMA response time in nanoseconds at time at (0 before
// any): it decays while no response comes, so a container that was slow
// once and then got no traffic is tried again.
func (p *peakEWMA) at(at int64) float64 {
	lat := math.Float64frombits(p.ewma.Load())
	if idle := at - p.ewmaAt.Load(); lat > 0 && idle > 0 {
		lat *= math.Exp(-float64(idle) / float64(latencyDecay))
	}
	return lat
}

// PeakLatency returns least_latency's current peak-EWMA response time.
func (c *ContainerStats) PeakLatency() time.Duration {
	return time.Duration(c.latency.at(now().UnixNano()))
}
