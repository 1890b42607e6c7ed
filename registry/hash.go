// hash.go owns ip_hash and consistent_hash: weighted rendezvous hashing of the request's key.

package registry

import "math"

// The hashing algorithms: rendezvous hashing of the client IP (ip_hash) or
// of the service's hash_key (consistent_hash). A request without its key is
// balanced round robin.
const (
	IPHash         Algorithm = "ip_hash"
	ConsistentHash Algorithm = "consistent_hash"
)

// rendezvous is weighted rendezvous hashing: each container scores the key,
// the highest score wins. Adding or removing one of n containers moves only
// the keys it wins or won, about 1/n of them. A request without a key is
// balanced round robin.
type rendezvous struct {
	rr roundRobin
	// equal is set when every available container has the same weight and
	// there is no slow start: the order of the scores is then the order of
	// the hashes, so a pick compares those and skips the logarithm.
	equal bool
}

func newRendezvous(s *Service) strategy {
	h := &rendezvous{rr: roundRobin{rot: serviceRotation(s)}, equal: s.Options.SlowStart == 0}
	for _, c := range s.available {
		h.equal = h.equal && c.Weight == s.available[0].Weight
	}
	return h
}

func (h *rendezvous) pick(f filter) int {
	if f.req.Key == "" {
		return h.rr.pick(f)
	}
	key := hashString(f.req.Key)
	if h.equal {
		best, bestHash := -1, uint64(0)
		for i, c := range f.svc.available {
			if !f.eligibleAt(i) {
				continue
			}
			if x := mix64(key^c.key) >> 11; best < 0 || x > bestHash {
				best, bestHash = i, x
			}
		}
		return best
	}
	best, bestScore := -1, 0.0
	for i, c := range f.svc.available {
		if !f.eligibleAt(i) {
			continue
		}
		// a uniform number in (0, 1) from the pair, then -w/ln(u)
		u := (float64(mix64(key^c.key)>>11) + 0.5) / (1 << 53)
		score := -float64(f.weight(c)) / math.Log(u)
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
