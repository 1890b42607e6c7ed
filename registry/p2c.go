// p2c.go owns power_of_two: two random choices, the lighter one by load per weight.

package registry

// PowerOfTwo draws two containers at random and takes the one with fewer
// requests in flight per unit of weight (Envoy's least request).
const PowerOfTwo Algorithm = "power_of_two"

// powerOfTwo picks two different eligible containers at random and takes
// the one that costs less: the load per weight (Envoy's least request), or
// for least_latency that times the response time (Finagle's P2C).
type powerOfTwo struct {
	cost func(f filter, c *Container) float64
}

func newPowerOfTwo(*Service) strategy { return powerOfTwo{cost: loadPerWeight} }

func (p powerOfTwo) pick(f filter) int {
	n := len(f.svc.available)
	if !f.plain {
		n = f.countEligible()
	}
	switch n {
	case 0:
		return -1
	case 1:
		return f.nthEligible(0)
	}
	x := int(randUint64() % uint64(n))
	y := int(randUint64() % uint64(n-1))
	if y >= x {
		y++
	}
	a, b := f.nthEligible(x), f.nthEligible(y)
	switch {
	case b < 0:
		return a
	case a < 0 || a == b:
		return b
	}
	if p.cost(f, f.svc.available[b]) < p.cost(f, f.svc.available[a]) {
		return b
	}
	return a
}

// loadPerWeight is power_of_two's cost of c: its requests in flight, plus
// this one, per unit of (slow-start) weight.
func loadPerWeight(f filter, c *Container) float64 {
	return float64(c.Stats.InFlight.Load()+1) / float64(f.weight(c))
}
