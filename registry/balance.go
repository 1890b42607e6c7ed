// balance.go owns a pick, in call order: Choose, then the filter every strategy picks through (sticky pin, zones, tried, ejection, slow start), then Observe.

package registry

import (
	"math/rand/v2"
	"sync"
	"time"
)

// PickRequest is what a pick knows of the request it chooses for. The zero
// value (no key, no pin, no zone, nothing tried) is a plain pick.
type PickRequest struct {
	// Tried are the containers this request already attempted; they are
	// avoided while another container can take the request.
	Tried []*ContainerStats
	// Key is the request's hash key (for ip_hash and consistent_hash);
	// "" balances the request round robin instead.
	Key string
	// Pinned is the container_id a sticky cookie names; "" for none.
	Pinned string
	// Zone is the client's zone; "" for no locality preference.
	Zone string
}

// randUint64 is the random source of random, power_of_two and
// least_latency, and of zone spill-over; tests replace it with a seeded one.
var randUint64 = rand.Uint64

// zoneOverprovisioning is Envoy's overprovisioning factor: a zone with at
// least 1/1.4 (71%) of its containers available takes all its local
// traffic; below that, the missing share spills over to other zones.
const zoneOverprovisioning = 1.4

// slowStartMinShare is the share of its weight a container gets at the
// start of its slow start (Envoy's min_weight_percent).
const slowStartMinShare = 0.1

// weightScale turns weights into integers fine enough for slow start.
const weightScale = 1000

// maxClaimRetries bounds how often a pick starts over because the container
// it chose was taken meanwhile (an ejected container's single probe).
const maxClaimRetries = 4

// PickIndex chooses, by the service's algorithm, the index in Available() of
// the container for a new request or a retry, avoiding the containers in
// tried while another one is available. It returns -1 when no container can
// take the request, and allocates nothing.
func (s *Service) PickIndex(tried []*ContainerStats) int {
	if len(tried) == 0 {
		return s.Choose(&plainRequest)
	}
	req := triedRequests.Get().(*PickRequest)
	req.Tried = tried
	i := s.Choose(req)
	req.Tried = nil
	triedRequests.Put(req)
	return i
}

// plainRequest is the request of PickIndex without tried containers; a
// pick only reads it.
var plainRequest PickRequest

// triedRequests recycles PickIndex's requests: Choose hands its request to
// the strategy, so one made on PickIndex's stack would move to the heap on
// every call.
var triedRequests = sync.Pool{New: func() any { return new(PickRequest) }}

// Pick is PickIndex returning the container itself, or nil.
func (s *Service) Pick(tried []*ContainerStats) *Container {
	if i := s.PickIndex(tried); i >= 0 {
		return s.available[i]
	}
	return nil
}

// ChooseContainer is Choose returning the container itself, or nil.
func (s *Service) ChooseContainer(req *PickRequest) *Container {
	if i := s.Choose(req); i >= 0 {
		return s.available[i]
	}
	return nil
}

// Choose is PickIndex for a request with a hash key, a sticky pin or a
// zone. It allocates nothing, but req reaches the strategy through an
// interface call and so must not live on the caller's stack (the compiler
// would move it to the heap): keep it in the request's own state, as the
// handler does. A pick only reads it.
func (s *Service) Choose(req *PickRequest) int {
	if len(s.available) == 0 {
		return -1
	}
	f := filter{svc: s, req: req, rule: rule{excluded: -1}}
	if s.Options.SlowStart > 0 || s.Options.Outlier != nil || s.learns {
		f.now = now().UnixNano()
	}
	if req.Pinned != "" {
		if i := f.pinned(); i >= 0 {
			return i
		}
	}
	f.zoned, f.away = f.chooseZone()
	for range maxClaimRetries {
		i := s.strategy.pick(f.ready())
		if i < 0 && f.zoned {
			f.zoned = false // nothing in (or out of) the zone can take it: any zone
			i = s.strategy.pick(f.ready())
		}
		if i < 0 && len(req.Tried) > 0 && !f.anyTried {
			f.anyTried = true // everything was tried: try again
			i = s.strategy.pick(f.ready())
		}
		if i < 0 {
			return -1
		}
		if f.claim(s.available[i]) {
			return i
		}
		f.excluded = int32(i)
	}
	return -1
}

// filter is one pick's rule of which available containers may be chosen:
// the part every strategy shares (zone preference, the containers already
// tried, outlier ejection) and the slow-start weight they weigh by.
//
// Choose passes it by value and never takes its address: a pointer to it
// passed through the strategy's interface call would move it to the heap on
// every pick. It stays within 32 bytes and four fields per struct, so that
// the compiler keeps it in registers; copied through memory, it cost as much
// as a round robin pick (TestFilterFitsInRegisters). A strategy may take the
// address of its own copy: the methods it calls per container do.
type filter struct {
	svc *Service
	req *PickRequest
	now int64 // unix nanoseconds, when slow start, outlier ejection or the strategy needs it
	rule
}

// rule is what of the request a pick currently honours.
type rule struct {
	excluded int32 // an index that must not be chosen (-1: none)
	ruleFlags
}

type ruleFlags struct {
	zoned    bool // choose in req.Zone, or (with away) outside it
	away     bool // spill-over: choose outside the zone
	anyTried bool // tried containers may be chosen again
	plain    bool // every available container may be chosen (set by ready)
}

// pinned returns the index of the container the sticky pin names when it
// may be chosen and is claimed for the request, else -1.
func (f filter) pinned() int {
	for i, c := range f.svc.available {
		if c.ContainerID == f.req.Pinned {
			if f.eligible(c) && f.claim(c) {
				return i
			}
			break
		}
	}
	return -1
}

// ready returns f as a strategy gets it: plain when nothing is ruled out.
func (f filter) ready() filter {
	f.plain = !f.filtered()
	return f
}

// filtered reports whether some available containers may not be chosen.
func (f filter) filtered() bool {
	return f.zoned || f.excluded >= 0 || f.svc.Options.Outlier != nil || (len(f.req.Tried) > 0 && !f.anyTried)
}

// eligible reports whether c may be chosen.
func (f *filter) eligible(c *Container) bool {
	return (!f.zoned || (c.Zone == f.req.Zone) != f.away) &&
		(f.anyTried || !containsStats(f.req.Tried, c.Stats)) &&
		(f.svc.Options.Outlier == nil || c.Stats.circuit.Load().admits(f.now))
}

// eligibleAt reports whether the available container at index i may be
// chosen.
func (f *filter) eligibleAt(i int) bool {
	return f.plain || (i != int(f.excluded) && f.eligible(f.svc.available[i]))
}

// countEligible returns how many available containers may be chosen.
func (f *filter) countEligible() int {
	n := 0
	for i := range f.svc.available {
		if f.eligibleAt(i) {
			n++
		}
	}
	return n
}

// nthEligible returns the index of the n-th (from 0) eligible container;
// when fewer are eligible by now (ejections race with picks), the last one.
func (f *filter) nthEligible(n int) int {
	if f.plain {
		return n
	}
	last := -1
	for i := range f.svc.available {
		if f.eligibleAt(i) {
			if n == 0 {
				return i
			}
			n--
			last = i
		}
	}
	return last
}

// claim takes c for the request: an ejected container past its cooldown
// lets exactly one probe request through.
func (f filter) claim(c *Container) bool {
	od := f.svc.Options.Outlier
	return od == nil || c.Stats.circuit.Load().claim(f.now, time.Duration(od.Cooldown))
}

// chooseZone restricts the pick to the client's zone when that zone has
// enough available containers (zoned); when it has too few, the missing
// share of the requests spills over to the other zones (away).
func (f filter) chooseZone() (zoned, away bool) {
	zone := f.req.Zone
	if zone == "" {
		return false, false
	}
	total, up := 0, 0
	for _, c := range f.svc.Containers {
		if c.Zone == zone {
			total++
			if c.Available() && (f.svc.Options.Outlier == nil || c.Stats.circuit.Load().admits(f.now)) {
				up++
			}
		}
	}
	if up == 0 {
		return false, false // nothing local: any zone
	}
	share := zoneOverprovisioning * float64(up) / float64(total)
	return true, share < 1 && float64(randUint64()>>11)/(1<<53) >= share
}

// weight is c's effective weight: its weight, scaled down during its slow
// start.
func (f *filter) weight(c *Container) int64 {
	w := int64(c.Weight) * weightScale
	if ss := int64(f.svc.Options.SlowStart); ss > 0 && f.now > 0 {
		if since := c.Stats.healthySince.Load(); since > 0 && f.now-since < ss {
			share := max(float64(f.now-since)/float64(ss), slowStartMinShare)
			w = max(int64(float64(w)*share), 1)
		}
	}
	return w
}

// markHealthy starts the slow start of a container that became healthy.
func markHealthy(c *Container, prev Status, known bool) {
	if c.Status == StatusHealthy && (!known || prev != StatusHealthy) {
		c.Stats.healthySince.Store(now().UnixNano())
	}
}

func containsStats(set []*ContainerStats, s *ContainerStats) bool {
	for _, x := range set {
		if x == s {
			return true
		}
	}
	return false
}

// Observe records the outcome of an attempt on c, which belongs to s: it
// feeds the strategy when it learns from outcomes (least_latency) and
// outlier ejection.
func (s *Service) Observe(c *Container, failed bool, d time.Duration) {
	if s.learns {
		s.strategy.(observer).observe(c, failed, d)
	}
	if od := s.Options.Outlier; od != nil {
		s.observeOutlier(c, od, failed, now().UnixNano())
	}
}
