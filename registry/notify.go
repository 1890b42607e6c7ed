package registry

import (
	"slices"
	"sync"
	"sync/atomic"
)

// Change listeners are told which images changed once readers can see the
// change: the health checker checks new starting containers at once, and
// start on demand releases the requests that wait for an image.

// listeners is the registry's list of change listeners, read without a
// lock at every publish.
type listeners struct {
	mu  sync.Mutex // serializes OnChange and its removals
	fns atomic.Pointer[[]*listener]
}

type listener struct{ fn func(ids []int64) }

// OnChange calls fn with the image ids of every published change (a new
// version of a service, or its removal), after Lookup returns the new
// state, in publish order. fn runs while the registry's writer lock is held:
// it must be quick and must not call the registry's writers. Calling the
// returned function removes the listener.
func (r *Registry) OnChange(fn func(ids []int64)) (remove func()) {
	l := &listener{fn}
	r.listeners.mu.Lock()
	defer r.listeners.mu.Unlock()
	var cur []*listener
	if p := r.listeners.fns.Load(); p != nil {
		cur = *p
	}
	next := append(slices.Clip(cur), l)
	r.listeners.fns.Store(&next)
	return func() {
		r.listeners.mu.Lock()
		defer r.listeners.mu.Unlock()
		cur := *r.listeners.fns.Load()
		next := slices.DeleteFunc(slices.Clone(cur), func(x *listener) bool { return x == l })
		r.listeners.fns.Store(&next)
	}
}

// changed tells the listeners about a published change of the images.
func (r *Registry) changed(ids []int64) {
	p := r.listeners.fns.Load()
	if p == nil || len(ids) == 0 {
		return
	}
	for _, l := range *p {
		l.fn(ids)
	}
}
