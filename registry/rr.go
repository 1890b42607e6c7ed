// rr.go owns round_robin: an exact rotation per service, and the turn it shares.

package registry

import "sync/atomic"

// RoundRobin is an exact rotation per image: n requests reach n containers
// once each. It is the default.
const RoundRobin Algorithm = "round_robin"

// rotation is round robin's durable state: the turn of the service's
// rotation. least_connections' ties and the keyless requests of the hash
// algorithms rotate with it too, so a change of algorithm continues it.
type rotation struct{ turn atomic.Uint64 }

// serviceRotation returns the rotation of s's service. It is the default
// algorithm's state, so the ServiceState holds it: made per image, it
// cost an allocation and an entry of the strategies' list at every
// registered image.
func serviceRotation(s *Service) *rotation { return &s.State.rotation }

// roundRobin takes the next eligible container in rotation: with every
// container eligible, n consecutive picks reach each of n exactly once.
type roundRobin struct{ rot *rotation }

func newRoundRobin(s *Service) strategy { return roundRobin{rot: serviceRotation(s)} }

func (r roundRobin) pick(f filter) int {
	turn := r.rot.turn.Add(1) - 1
	if f.plain {
		return int(turn % uint64(len(f.svc.available)))
	}
	return rotateEligible(f, turn)
}

// rotateEligible is round robin over the containers that may be chosen, so
// that the rotation stays exact while some are ruled out. (Apart from pick,
// so that a plain pick does not store f to take its address.)
func rotateEligible(f filter, turn uint64) int {
	n := f.countEligible()
	if n == 0 {
		return -1
	}
	return f.nthEligible(int(turn % uint64(n)))
}
