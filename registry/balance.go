package registry

import (
	"math"
	"math/rand/v2"
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
	return s.Choose(&PickRequest{Tried: tried})
}

// Pick is PickIndex returning the container itself, or nil.
func (s *Service) Pick(tried []*ContainerStats) *Container {
	return s.ChooseContainer(&PickRequest{Tried: tried})
}

// ChooseContainer is Choose returning the container itself, or nil.
func (s *Service) ChooseContainer(req *PickRequest) *Container {
	if i := s.Choose(req); i >= 0 {
		return s.available[i]
	}
	return nil
}

// Choose is PickIndex for a request with a hash key, a sticky pin or a
// zone. It allocates nothing.
func (s *Service) Choose(req *PickRequest) int {
	if len(s.available) == 0 {
		return -1
	}
	p := picker{svc: s, req: req, excluded: -1}
	if s.Options.SlowStart > 0 || s.Options.Outlier != nil || s.alg == algLeastLatency {
		p.now = now().UnixNano()
	}
	if req.Pinned != "" {
		for i, c := range s.available {
			if c.ContainerID == req.Pinned {
				if p.eligible(c) && p.claim(c) {
					return i
				}
				break
			}
		}
	}
	p.chooseZone()
	for range maxClaimRetries {
		i := p.pick()
		if i < 0 && p.zone != "" {
			p.zone = "" // nothing in (or out of) the zone can take it: any zone
			i = p.pick()
		}
		if i < 0 && len(req.Tried) > 0 && !p.anyTried {
			p.anyTried = true // everything was tried: try again
			i = p.pick()
		}
		if i < 0 {
			return -1
		}
		if p.claim(s.available[i]) {
			return i
		}
		p.excluded = i
	}
	return -1
}

// picker is one pick: which containers it may choose from.
type picker struct {
	svc      *Service
	req      *PickRequest
	now      int64  // unix nanoseconds, when slow start or outlier ejection needs it
	zone     string // the zone to choose in, or (with away) to avoid; "": any
	away     bool   // spill-over: choose outside zone
	anyTried bool   // tried containers may be chosen again
	excluded int    // an index that must not be chosen (-1: none)
	plain    bool   // every available container may be chosen (set by pick)
}

// filtered reports whether some available containers may not be chosen.
func (p *picker) filtered() bool {
	return p.zone != "" || p.excluded >= 0 || p.svc.Options.Outlier != nil || (len(p.req.Tried) > 0 && !p.anyTried)
}

// eligible reports whether c may be chosen.
func (p *picker) eligible(c *Container) bool {
	if p.zone != "" && (c.Zone == p.zone) == p.away {
		return false
	}
	if !p.anyTried && containsStats(p.req.Tried, c.Stats) {
		return false
	}
	return p.svc.Options.Outlier == nil || c.Stats.circuit.admits(p.now)
}

func (p *picker) eligibleAt(i int) bool {
	return p.plain || (i != p.excluded && p.eligible(p.svc.available[i]))
}

// claim takes c for the request: an ejected container past its cooldown
// lets exactly one probe request through.
func (p *picker) claim(c *Container) bool {
	od := p.svc.Options.Outlier
	return od == nil || c.Stats.circuit.claim(p.now, time.Duration(od.Cooldown))
}

// chooseZone restricts the pick to the client's zone when that zone has
// enough available containers; when it has too few, the missing share of
// the requests spills over to the other zones.
func (p *picker) chooseZone() {
	zone := p.req.Zone
	if zone == "" {
		return
	}
	total, up := 0, 0
	for _, c := range p.svc.Containers {
		if c.Zone == zone {
			total++
			if c.Available() && (p.svc.Options.Outlier == nil || c.Stats.circuit.admits(p.now)) {
				up++
			}
		}
	}
	if up == 0 {
		return // nothing local: any zone
	}
	p.zone = zone
	share := zoneOverprovisioning * float64(up) / float64(total)
	p.away = share < 1 && float64(randUint64()>>11)/(1<<53) >= share
}

// weight is c's effective weight: its weight, scaled down during its slow
// start.
func (p *picker) weight(c *Container) int64 {
	w := int64(c.Weight) * weightScale
	if ss := int64(p.svc.Options.SlowStart); ss > 0 && p.now > 0 {
		if since := c.Stats.healthySince.Load(); since > 0 && p.now-since < ss {
			share := max(float64(p.now-since)/float64(ss), slowStartMinShare)
			w = max(int64(float64(w)*share), 1)
		}
	}
	return w
}

// algorithmID numbers the algorithms, so that a pick switches on an int.
type algorithmID uint8

const (
	algRoundRobin algorithmID = iota // also the unknown or empty algorithm
	algLeastConnections
	algWeightedRoundRobin
	algRandom
	algPowerOfTwo
	algLeastLatency
	algHash
)

var algorithmIDs = map[Algorithm]algorithmID{
	RoundRobin: algRoundRobin, LeastConnections: algLeastConnections, WeightedRoundRobin: algWeightedRoundRobin,
	Random: algRandom, PowerOfTwo: algPowerOfTwo, LeastLatency: algLeastLatency, IPHash: algHash, ConsistentHash: algHash,
}

// pick chooses an eligible index by the service's algorithm, or -1.
func (p *picker) pick() int {
	p.plain = !p.filtered()
	switch p.svc.alg {
	case algLeastConnections:
		return p.leastConnections()
	case algWeightedRoundRobin:
		return p.smoothWeighted()
	case algRandom:
		return p.random()
	case algPowerOfTwo:
		return p.powerOfTwo(false)
	case algLeastLatency:
		return p.powerOfTwo(true)
	case algHash:
		return p.hashed()
	}
	return p.roundRobin()
}

// hashed is rendezvous hashing of the request's key; a request without
// one is balanced round robin.
func (p *picker) hashed() int {
	if p.req.Key == "" {
		return p.roundRobin()
	}
	return p.rendezvous(hashString(p.req.Key))
}

// roundRobin takes the next eligible container in rotation: with every
// container eligible, n consecutive picks reach each of n exactly once.
func (p *picker) roundRobin() int {
	turn := p.svc.State.rr.Add(1) - 1
	if p.plain {
		return int(turn % uint64(len(p.svc.available)))
	}
	// rotate over the containers that may be chosen, so that the
	// rotation stays exact while some are ruled out
	n := p.countEligible()
	if n == 0 {
		return -1
	}
	return p.nthEligible(int(turn % uint64(n)))
}

func (p *picker) countEligible() int {
	n := 0
	for i := range p.svc.available {
		if p.eligibleAt(i) {
			n++
		}
	}
	return n
}

// leastConnections returns an eligible container with the fewest requests
// in flight per unit of weight. Among the containers tied for the fewest,
// a rotation chooses, so ties rotate exactly whatever the loads of others.
func (p *picker) leastConnections() int {
	avail := p.svc.available
	turn := p.svc.State.rr.Add(1) - 1
	ties, best := 0, -1
	var bestLoad, bestW int64
	for i, c := range avail {
		if !p.eligibleAt(i) {
			continue
		}
		load, w := c.Stats.InFlight.Load(), p.weight(c)
		switch {
		case best < 0 || load*bestW < bestLoad*w:
			ties, best, bestLoad, bestW = 1, i, load, w
		case load*bestW == bestLoad*w:
			ties++
		}
	}
	if best < 0 {
		return -1
	}
	// loads may have moved since the first pass: take the chosen tie, or
	// failing that the best container of the first pass
	want := int(turn % uint64(ties))
	for i, c := range avail {
		if !p.eligibleAt(i) || c.Stats.InFlight.Load()*bestW != bestLoad*p.weight(c) {
			continue
		}
		if want == 0 {
			return i
		}
		want--
	}
	return best
}

// smoothWeighted is nginx's smooth weighted round robin: every pick adds
// each container's weight to its current value, takes the highest and
// subtracts the total from it. Weights 5, 1, 1 give a a b a c a a.
func (p *picker) smoothWeighted() int {
	st := p.svc.State
	st.mu.Lock()
	defer st.mu.Unlock()
	var total int64
	best := -1
	for i, c := range p.svc.available {
		if !p.eligibleAt(i) {
			continue
		}
		w := p.weight(c)
		c.Stats.swrr += w
		total += w
		if best < 0 || c.Stats.swrr > p.svc.available[best].Stats.swrr {
			best = i
		}
	}
	if best >= 0 {
		p.svc.available[best].Stats.swrr -= total
	}
	return best
}

// random picks an eligible container with probability proportional to its
// weight.
func (p *picker) random() int {
	var total int64
	for i, c := range p.svc.available {
		if p.eligibleAt(i) {
			total += p.weight(c)
		}
	}
	if total == 0 {
		return -1
	}
	r := int64(randUint64() % uint64(total))
	last := -1
	for i, c := range p.svc.available {
		if !p.eligibleAt(i) {
			continue
		}
		if r -= p.weight(c); r < 0 {
			return i
		}
		last = i
	}
	return last // weights changed between the passes (slow start)
}

// powerOfTwo picks two different eligible containers at random and takes
// the one with the lower cost (Envoy's least request, Finagle's P2C).
func (p *picker) powerOfTwo(byLatency bool) int {
	n := len(p.svc.available)
	if !p.plain {
		n = p.countEligible()
	}
	switch n {
	case 0:
		return -1
	case 1:
		return p.nthEligible(0)
	}
	a := int(randUint64() % uint64(n))
	b := int(randUint64() % uint64(n-1))
	if b >= a {
		b++
	}
	ia, ib := p.nthEligible(a), p.nthEligible(b)
	switch {
	case ib < 0:
		return ia
	case ia < 0 || ia == ib:
		return ib
	}
	if p.cost(p.svc.available[ib], byLatency) < p.cost(p.svc.available[ia], byLatency) {
		return ib
	}
	return ia
}

// nthEligible returns the index of the n-th (from 0) eligible container;
// when fewer are eligible by now (ejections race with picks), the last one.
func (p *picker) nthEligible(n int) int {
	if p.plain {
		return n
	}
	last := -1
	for i := range p.svc.available {
		if p.eligibleAt(i) {
			if n == 0 {
				return i
			}
			n--
			last = i
		}
	}
	return last
}

// cost is power_of_two's cost, the requests in flight (plus this one) per
// unit of weight, multiplied for least_latency by the peak-EWMA response
// time. A container without a response time yet costs nothing while it is
// idle (so it gets tried) and the most while it has requests in flight (one
// that never answers must not look fast), as in Finagle.
func (p *picker) cost(c *Container, byLatency bool) float64 {
	inFlight := c.Stats.InFlight.Load()
	cost := float64(inFlight+1) / float64(p.weight(c))
	if byLatency {
		lat := c.Stats.latency(p.now)
		if lat == 0 && inFlight > 0 {
			return math.MaxFloat64
		}
		cost *= lat
	}
	return cost
}

// rendezvous is weighted rendezvous hashing: each container scores the key,
// the highest score wins. Adding or removing one of n containers moves only
// the keys it wins or won, about 1/n of them.
func (p *picker) rendezvous(key uint64) int {
	if p.svc.uniform && p.svc.Options.SlowStart == 0 {
		// equal weights: the order of the scores is the order of u, so
		// compare the hashes themselves
		best, bestHash := -1, uint64(0)
		for i, c := range p.svc.available {
			if !p.eligibleAt(i) {
				continue
			}
			if h := mix64(key^c.key) >> 11; best < 0 || h > bestHash {
				best, bestHash = i, h
			}
		}
		return best
	}
	best, bestScore := -1, 0.0
	for i, c := range p.svc.available {
		if !p.eligibleAt(i) {
			continue
		}
		// a uniform number in (0, 1) from the pair, then -w/ln(u)
		u := (float64(mix64(key^c.key)>>11) + 0.5) / (1 << 53)
		score := -float64(p.weight(c)) / math.Log(u)
		if best < 0 || score > bestScore {
			best, bestScore = i, score
		}
	}
	return best
}

// hashString is 64-bit FNV-1a: stable across processes and nodes, so a key
// maps to the same container everywhere.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix64 is the SplitMix64 finalizer: it spreads every input bit over the
// output, so pairs differing in a few bits score independently.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func containsStats(set []*ContainerStats, s *ContainerStats) bool {
	for _, x := range set {
		if x == s {
			return true
		}
	}
	return false
}
