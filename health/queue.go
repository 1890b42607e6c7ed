package health

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// The periodic rounds do not start their checks themselves: they queue
// them, and a dispatcher hands the queued checks to free check slots
// (MaxConcurrent), cheapest first. A check's cost is how long the target's
// last checks held a slot: a tarpit (a port that accepts and never
// answers) holds one for the whole Timeout, a healthy container for a few
// milliseconds. So when tarpits take every slot, the next slot to free
// goes to the healthy containers waiting, and a healthy container is
// checked at most Timeout after it is due, however many tarpits there are;
// the tarpits share what is left. A round never waits for a slot, so
// rounds keep their interval, and a target whose check from an earlier
// round is still queued or running is not queued again.
//
// The cost of a target's check is max(duration, previous cost / 2): one
// quick answer does not make a tarpit cheap again, so a port that
// alternates between answering and hanging stays behind the containers
// that always answer. A target never checked costs Timeout / 2: behind the
// known-quick ones, ahead of the known tarpits. The fast lane (fast.go)
// queues its checks here too, a container never checked at cost 0: a
// container just started for waiting requests gets the next free slot.

// queue holds the checks that are due.
type queue struct {
	mu      sync.Mutex
	due     dueHeap
	pending map[any]bool          // targets queued or being checked
	cost    map[any]time.Duration // by target, from its last checks
	seq     uint64
	ready   chan struct{} // something was queued
}

func newQueue() *queue {
	return &queue{pending: map[any]bool{}, cost: map[any]time.Duration{}, ready: make(chan struct{}, 1)}
}

// key identifies a target across rounds: a container by its stats (one
// per container, new when it is replaced), an extra by its address.
func (t target) key() any {
	if t.extra != nil {
		return "extra\x00" + t.extra.Addr
	}
	return t.c.Stats
}

// push queues a check of t, unless one is queued or running (false);
// unknown is the cost of a target never checked; done, if not nil, is
// called when the check has run (with when it began), or is dropped.
func (q *queue) push(t target, unknown time.Duration, done func(began time.Time)) bool {
	k := t.key()
	q.mu.Lock()
	if q.pending[k] {
		q.mu.Unlock()
		return false
	}
	q.pending[k] = true
	cost, ok := q.cost[k]
	if !ok {
		cost = unknown
	}
	q.seq++
	heap.Push(&q.due, dueCheck{t: t, cost: cost, seq: q.seq, done: done})
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return true
}

// pop returns the cheapest queued check (the oldest of equal cost).
func (q *queue) pop() (dueCheck, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.due) == 0 {
		return dueCheck{}, false
	}
	return heap.Pop(&q.due).(dueCheck), true
}

func (q *queue) empty() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.due) == 0
}

// finish records that t's check held a slot for d.
func (q *queue) finish(t target, d time.Duration) {
	k := t.key()
	q.mu.Lock()
	q.cost[k] = max(d, q.cost[k]/2)
	delete(q.pending, k)
	q.mu.Unlock()
}

// reset drops the queued checks (when the loop has ended and no check
// runs), so that the next Start queues every target again.
func (q *queue) reset() {
	q.mu.Lock()
	dropped := q.due
	q.due, q.pending = nil, map[any]bool{}
	q.mu.Unlock()
	for _, d := range dropped {
		if d.done != nil {
			d.done(time.Now())
		}
	}
}

// keep forgets the costs of targets no longer in ts (at a round's start).
func (q *queue) keep(ts []target) {
	keys := make(map[any]bool, len(ts))
	for _, t := range ts {
		keys[t.key()] = true
	}
	q.mu.Lock()
	for k := range q.cost {
		if !keys[k] {
			delete(q.cost, k)
		}
	}
	q.mu.Unlock()
}

// dispatch starts the queued checks as slots free up, until ctx ends.
func (c *Checker) dispatch(ctx context.Context, wg *sync.WaitGroup) {
	defer c.recoverPanic("health check dispatcher")
	for {
		select {
		case <-c.queue.ready:
		case <-ctx.Done():
			return
		}
		for !c.queue.empty() {
			_, sem, _ := c.settings()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			// chosen only now that a slot is free: a cheap check queued
			// while the dispatcher waited goes first
			d, ok := c.queue.pop()
			if !ok {
				<-sem
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				began := time.Now()
				defer func() {
					c.queue.finish(d.t, time.Since(began))
					if d.done != nil {
						d.done(began)
					}
				}()
				defer c.recoverPanic("health check")
				c.checkOne(ctx, d.t)
			}()
		}
	}
}

type dueCheck struct {
	t    target
	cost time.Duration
	seq  uint64
	done func(began time.Time)
}

// dueHeap orders checks by cost, then by when they were queued.
type dueHeap []dueCheck

func (h dueHeap) Len() int { return len(h) }
func (h dueHeap) Less(i, j int) bool {
	if h[i].cost != h[j].cost {
		return h[i].cost < h[j].cost
	}
	return h[i].seq < h[j].seq
}
func (h dueHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)   { *h = append(*h, x.(dueCheck)) }
func (h *dueHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = dueCheck{}
	*h = old[:len(old)-1]
	return x
}
