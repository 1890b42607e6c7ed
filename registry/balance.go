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
		if i := leastConnections(avail, turn, tried); i >= 0 {
			return i
		}
		return leastConnections(avail, turn, nil)
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

// leastConnections returns the index of an available container with the
// fewest requests in flight; -1 when every container is in tried. Among the
// containers tied for the fewest, turn chooses, so ties rotate exactly
// whatever the loads of the others.
func leastConnections(avail []*Container, turn uint64, tried []*ContainerStats) int {
	ties, least := 0, int64(0)
	for _, c := range avail {
		if containsStats(tried, c.Stats) {
			continue
		}
		switch load := c.Stats.InFlight.Load(); {
		case ties == 0 || load < least:
			ties, least = 1, load
		case load == least:
			ties++
		}
	}
	if ties == 0 {
		return -1
	}
	// loads may have moved since the first pass: take the chosen tie, or
	// failing that the last container seen at the least load
	want, fallback := int(turn%uint64(ties)), -1
	for i, c := range avail {
		if containsStats(tried, c.Stats) || c.Stats.InFlight.Load() > least {
			continue
		}
		if want == 0 {
			return i
		}
		want--
		fallback = i
	}
	if fallback < 0 {
		return 0
	}
	return fallback
}

func containsStats(set []*ContainerStats, s *ContainerStats) bool {
	for _, x := range set {
		if x == s {
			return true
		}
	}
	return false
}
