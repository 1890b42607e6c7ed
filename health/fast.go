package health

import (
	"context"
	"sync"
	"time"

	"github.com/imagelb/caddy-imagelb/registry"
)

// Containers that were registered starting or unknown are checked at once,
// then every FastInterval until they pass, instead of waiting for the next
// round: a container started for a waiting request (start on demand) is
// routed about one check after it listens, not up to an interval later.
// A container that has not passed within FastFor falls back to the rounds,
// so a registry full of containers that never come up does not turn into
// a check per container per second.
const (
	FastInterval = time.Second
	FastFor      = 2 * time.Minute
)

// fastLane is the set of containers waiting for their first passing check.
type fastLane struct {
	mu      sync.Mutex
	images  map[int64]struct{}                      // images to look at again
	entries map[*registry.ContainerStats]*fastEntry // by the container's stats: one per container
	wake    chan struct{}
}

type fastEntry struct {
	imageID int64
	id      string
	since   time.Time // when the container was first seen waiting
	next    time.Time // when it is checked next
	busy    bool      // a check of it is under way
}

func newFastLane() *fastLane {
	return &fastLane{images: map[int64]struct{}{}, entries: map[*registry.ContainerStats]*fastEntry{},
		wake: make(chan struct{}, 1)}
}

// noteChanged is the registry's change listener: the images are looked at
// by the fast loop. It runs under the registry's writer lock, so it only
// records them.
func (f *fastLane) noteChanged(ids []int64) {
	f.mu.Lock()
	for _, id := range ids {
		f.images[id] = struct{}{}
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// waiting reports whether a container's status waits for a first pass.
func waiting(s registry.Status) bool {
	return s == registry.StatusStarting || s == registry.StatusUnknown
}

// due returns the containers to check now, and when the next one is due
// (zero: none is).
func (f *fastLane) due(reg *registry.Registry, now time.Time) (ts []target, next time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := range f.images {
		if svc := reg.Lookup(id); svc != nil {
			for _, c := range svc.Containers {
				if _, ok := f.entries[c.Stats]; !ok && waiting(c.Status) {
					f.entries[c.Stats] = &fastEntry{imageID: id, id: c.ContainerID, since: now, next: now}
				}
			}
		}
		delete(f.images, id)
	}
	for stats, e := range f.entries {
		var cur *registry.Container
		if svc := reg.Lookup(e.imageID); svc != nil {
			cur = svc.Container(e.id)
		}
		if cur == nil || cur.Stats != stats || !waiting(cur.Status) || now.Sub(e.since) > FastFor {
			if !e.busy {
				delete(f.entries, stats) // passed, removed, replaced or given up: the rounds take over
			}
			continue
		}
		if e.busy {
			continue
		}
		if !e.next.After(now) {
			e.busy = true
			ts = append(ts, target{imageID: e.imageID, c: cur})
			continue
		}
		if next.IsZero() || e.next.Before(next) {
			next = e.next
		}
	}
	return ts, next
}

// done marks a check of the container finished: the next is FastInterval
// after it began.
func (f *fastLane) done(t target, began time.Time) {
	f.mu.Lock()
	if e := f.entries[t.c.Stats]; e != nil {
		e.busy = false
		e.next = began.Add(FastInterval)
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// later puts off a check that could not be queued until at.
func (f *fastLane) later(t target, at time.Time) {
	f.mu.Lock()
	if e := f.entries[t.c.Stats]; e != nil {
		e.busy = false
		e.next = at
	}
	f.mu.Unlock()
}

// fastLoop queues the fast lane's checks until ctx ends; they run within
// the same MaxConcurrent as the rounds, through the same queue (queue.go).
func (c *Checker) fastLoop(ctx context.Context) {
	defer c.recoverPanic("fast health check loop")
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		ts, next := c.fast.due(c.reg, now)
		for _, t := range ts {
			if !c.queue.push(t, 0, func(began time.Time) { c.fast.done(t, began) }) {
				// a round's check of it is queued or running: the next
				// fast one comes after it
				c.fast.later(t, now.Add(FastInterval))
			}
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-c.fast.wake:
		case <-timer.C:
		case <-ctx.Done():
			return
		}
		timer.Stop()
	}
}
