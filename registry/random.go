// random.go owns random: a weighted random pick.

package registry

// Random picks at random, with probability proportional to weight.
const Random Algorithm = "random"

// random picks an eligible container with probability proportional to its
// weight.
type random struct{}

func newRandom(*Service) strategy { return random{} }

func (random) pick(f filter) int {
	avail := f.svc.available
	var total int64
	for i, c := range avail {
		if f.eligibleAt(i) {
			total += f.weight(c)
		}
	}
	if total == 0 {
		return -1
	}
	r := int64(randUint64() % uint64(total))
	last := -1
	for i, c := range avail {
		if !f.eligibleAt(i) {
			continue
		}
		if r -= f.weight(c); r < 0 {
			return i
		}
		last = i
	}
	return last // weights changed between the passes (slow start)
}
