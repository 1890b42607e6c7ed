// Package recycle replaces an HTTP transport once enough of the addresses
// it has dialed are gone for good.
//
// Go's http.Transport keeps state per address: idle connections (closed
// after their idle timeout) and the queue of requests waiting for a
// connection (idleConnWait), which it clears only when a connection to that
// address succeeds. For a container that was registered on an address where
// nothing ever listened and then removed, that never happens, so a platform
// whose containers come and go leaks a little memory per dead address,
// forever. No public API drops one address's state, so the transport that
// holds it is replaced instead: after Every addresses were retired, the
// next request builds a fresh transport; the old one finishes the requests
// it has in flight, closes its connections as they go idle, and is then
// garbage.
package recycle

import (
	"net/http"
	"sync"
	"sync/atomic"
)

// DefaultEvery is how many retired addresses a transport outlives: at about
// 0.7 KB held per dead address, at most a few hundred KB.
const DefaultEvery = 1024

// Transport is an http.RoundTripper that sends through the current
// generation of a transport and starts a new generation after Every
// addresses were retired.
type Transport struct {
	build   func() (http.RoundTripper, error)
	retire  func(http.RoundTripper)
	retired func() uint64
	every   uint64

	cur atomic.Pointer[generation]
	mu  sync.Mutex // one rebuild at a time
	n   atomic.Int64
}

type generation struct {
	rt http.RoundTripper
	at uint64 // retired() when it was built
}

// New builds the first transport. build makes a transport, retire lets go
// of a replaced one (closing its idle connections), retired counts the
// addresses no longer in use since some start (it may only grow), and
// every is how many of them a transport outlives (DefaultEvery if 0).
func New(build func() (http.RoundTripper, error), retire func(http.RoundTripper), retired func() uint64, every uint64) (*Transport, error) {
	if every == 0 {
		every = DefaultEvery
	}
	t := &Transport{build: build, retire: retire, retired: retired, every: every}
	at := retired()
	rt, err := build()
	if err != nil {
		return nil, err
	}
	t.cur.Store(&generation{rt: rt, at: at})
	t.n.Store(1)
	return t, nil
}

// RoundTrip sends the request through the current transport, after
// replacing it when it has outlived enough addresses. A failed rebuild
// keeps the current transport.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	g := t.cur.Load()
	if now := t.retired(); now > g.at && now-g.at >= t.every && t.mu.TryLock() {
		g = t.rebuild(now)
		t.mu.Unlock()
	}
	return g.rt.RoundTrip(req)
}

func (t *Transport) rebuild(now uint64) *generation {
	old := t.cur.Load()
	if now <= old.at || now-old.at < t.every {
		return old // another request rebuilt it meanwhile
	}
	rt, err := t.build()
	if err != nil {
		return old
	}
	g := &generation{rt: rt, at: now}
	t.cur.Store(g)
	t.n.Add(1)
	t.retire(old.rt)
	return g
}

// Current returns the transport in use.
func (t *Transport) Current() http.RoundTripper { return t.cur.Load().rt }

// Generations returns how many transports were built so far.
func (t *Transport) Generations() int64 { return t.n.Load() }

// Close lets go of the current transport.
func (t *Transport) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.retire(t.cur.Load().rt)
}

// CloseIdleConnections closes the current transport's idle connections
// (http.Client calls it), when it can.
func (t *Transport) CloseIdleConnections() {
	if c, ok := t.Current().(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
