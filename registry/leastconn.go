// leastconn.go owns least_connections: fewest requests in flight per unit of weight, ties rotating.

package registry

// LeastConnections picks the container with the fewest requests in flight
// per unit of weight; ties rotate. Its alias is least_conn.
const LeastConnections Algorithm = "least_connections"

// leastConnections returns an eligible container with the fewest requests
// in flight per unit of weight. Among the containers tied for the fewest,
// round robin's rotation chooses, so ties rotate exactly whatever the loads
// of others.
type leastConnections struct{ rot *rotation }

func newLeastConnections(s *Service) strategy { return leastConnections{rot: serviceRotation(s)} }

func (l leastConnections) pick(f filter) int {
	avail := f.svc.available
	turn := l.rot.turn.Add(1) - 1
	ties, best := 0, -1
	var bestLoad, bestW int64
	for i, c := range avail {
		if !f.eligibleAt(i) {
			continue
		}
		load, w := c.Stats.InFlight.Load(), f.weight(c)
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
		if !f.eligibleAt(i) || c.Stats.InFlight.Load()*bestW != bestLoad*f.weight(c) {
			continue
		}
		if want == 0 {
			return i
		}
		want--
	}
	return best
}
