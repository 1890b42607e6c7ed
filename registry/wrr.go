// wrr.go owns weighted_round_robin: nginx's smooth weighted round robin and its current weights.

package registry

import "sync"

// WeightedRoundRobin is nginx's smooth weighted round robin: weights 5, 1, 1
// give a a b a c a a, never a burst on one container.
const WeightedRoundRobin Algorithm = "weighted_round_robin"

// wrrLock is weighted round robin's durable state: it guards the current
// weights of the service's containers, which every version's picks change.
type wrrLock struct{ mu sync.Mutex }

// wrrWeight is a container's current weight (in its ContainerStats, so
// that it lasts as long as the container stays in the service), guarded by
// its service's wrrLock.
type wrrWeight struct{ current int64 }

// smoothWeighted picks by nginx's smooth weighted round robin: every pick
// adds each container's weight to its current value, takes the highest and
// subtracts the total from it. Weights 5, 1, 1 give a a b a c a a.
type smoothWeighted struct{ lock *wrrLock }

func newWeightedRoundRobin(s *Service) strategy {
	return smoothWeighted{lock: durableState[wrrLock](s.State, WeightedRoundRobin)}
}

func (w smoothWeighted) pick(f filter) int {
	w.lock.mu.Lock()
	defer w.lock.mu.Unlock()
	avail := f.svc.available
	var total int64
	best := -1
	for i, c := range avail {
		if !f.eligibleAt(i) {
			continue
		}
		wt := f.weight(c)
		c.Stats.wrr.current += wt
		total += wt
		if best < 0 || c.Stats.wrr.current > avail[best].Stats.wrr.current {
			best = i
		}
	}
	if best >= 0 {
		avail[best].Stats.wrr.current -= total
	}
	return best
}
