package registry

// PickIndex chooses, by the service's algorithm, the index in Available() of
// the container for a new request or for a retry. Containers whose stats are
// in tried (the attempts this request already made) are avoided while
// another one is available. It returns -1 when no container is available,
// and allocates nothing.
func (s *Service) PickIndex(tried []*ContainerStats) int {
	avail := s.available
	k := len(avail)
	if k == 0 {
		return -1
	}
	turn := s.State.rr.Add(1) - 1
	start := int(turn % uint64(k))
	switch s.Algorithm {
	case LeastConnections:
		if i := leastConnections(avail, start, tried); i >= 0 {
			return i
		}
		return leastConnections(avail, start, nil)
	default: // round robin
		if len(tried) == 0 {
			return start
		}
		for j := 0; j < k; j++ {
			i := (start + j) % k
			if !containsStats(tried, avail[i].Stats) {
				return i
			}
		}
		return start
	}
}

// Pick is PickIndex returning the container itself, or nil.
func (s *Service) Pick(tried []*ContainerStats) *Container {
	i := s.PickIndex(tried)
	if i < 0 {
		return nil
	}
	return s.available[i]
}

// leastConnections returns the index of the available container with the
// fewest requests in flight, scanning from start so that ties rotate; -1 when
// every container is in tried.
func leastConnections(avail []*Container, start int, tried []*ContainerStats) int {
	best, bestLoad := -1, int64(0)
	k := len(avail)
	for j := 0; j < k; j++ {
		i := start + j
		if i >= k {
			i -= k
		}
		c := avail[i]
		if containsStats(tried, c.Stats) {
			continue
		}
		if load := c.Stats.InFlight.Load(); best < 0 || load < bestLoad {
			best, bestLoad = i, load
		}
	}
	return best
}

func containsStats(set []*ContainerStats, s *ContainerStats) bool {
	for _, x := range set {
		if x == s {
			return true
		}
	}
	return false
}
