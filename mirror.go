package imagelb

// Request mirroring on the request path: a copy of a share of an image's
// requests goes to another image, fire and forget. The share, the methods,
// the bound and the counters are the registry's (registry/split.go); here
// the copy is made and sent.
//
// The copy is sent once the primary request has its answer, so that it
// competes with nothing the client waits for. Its body is what the primary
// request read (up to the mirror's max_body; a body announced as larger is
// not copied at all, and one that was not read whole is not sent). The copy
// is sent from its own goroutine,
// through the handler's transport (Caddy's HTTPTransport), to a container of
// the target image picked by its algorithm; the client's response and its
// connection never wait for it, and its answer is read and discarded.

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

// MirrorHeader marks a mirrored copy, so the target can tell it from real
// traffic. A client's own is removed from every proxied request.
const MirrorHeader = "X-Imagelb-Mirror"

// maxMirrorAnswer is how much of a copy's answer is read (and discarded)
// so that its connection can be used again; a longer answer closes it.
const maxMirrorAnswer = 1 << 20

// mirrorCopy is the copy of one request for its image's mirror. It holds a
// place among the target's copies in flight from the moment it is made.
type mirrorCopy struct {
	h        *Handler
	targetID int64
	counters *registry.MirrorCounters // the target's
	req      *http.Request            // method, URL, headers (once prepared); no body, no context yet
	tee      *mirrorTee               // the body as the primary request reads it; nil: none
	budget   *registry.MirrorBudget   // the registry's, shared by all copies
	charge   int64                    // what the copy took from budget besides its body
}

// startMirror makes the copy of r (an admitted request of svc, its URL the
// container's) when svc's mirror takes it: a mirrored method, no protocol
// upgrade, its turn of the mirror's share, a body not announced as larger
// than max_body, a place among the target's copies in flight. The caller
// calls done when the primary request has its answer.
func (h *Handler) startMirror(r *http.Request, svc *registry.Service) *mirrorCopy {
	m := svc.Options.Mirror
	if m == nil || !m.Mirrors(r.Method) || r.Header.Get("Upgrade") != "" || !svc.MirrorTurn() {
		return nil
	}
	tgt := h.reg.Lookup(m.ImageID)
	if tgt == nil {
		return nil // removed: the service shows a warning
	}
	mc := &tgt.State.CountExtra().Mirror
	if r.ContentLength > int64(m.MaxBody) {
		mc.TooLarge.Add(1)
		return nil
	}
	if !mc.TryBegin(m.MaxInFlight) {
		return nil
	}
	budget := h.reg.MirrorBudget()
	charge := registry.MirrorCopyOverhead + headerBytes(r.Header)
	if !budget.Take(charge) {
		mc.Dropped.Add(1)
		mc.Finish(false, false)
		return nil
	}
	cp := &mirrorCopy{h: h, targetID: m.ImageID, counters: mc, req: mirrorRequest(r), budget: budget, charge: charge}
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return cp
	}
	cp.tee = &mirrorTee{ReadCloser: r.Body, limit: int(m.MaxBody), want: r.ContentLength, budget: budget}
	r.Body = cp.tee
	return cp
}

// headerBytes is about what a copy of the headers holds.
func headerBytes(h http.Header) int64 {
	n := 0
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 32 // the strings' headers and the slices'
		}
	}
	return int64(n)
}

// release gives back the copy's share of the mirror budget.
func (cp *mirrorCopy) release() {
	n := cp.charge
	if cp.tee != nil {
		n += cp.tee.held()
	}
	cp.budget.Give(n)
}

// drop ends a copy that is not sent, counted by counter (Dropped or
// TooLarge).
func (cp *mirrorCopy) drop(counter *atomic.Int64) {
	counter.Add(1)
	cp.counters.Finish(false, false)
	cp.release()
}

// mirrorRequest is the copy of r without its body and without headers yet:
// the method, the URL the container gets and the Host. The headers are
// the primary's as Caddy's reverse_proxy prepared them (prepared).
func mirrorRequest(r *http.Request) *http.Request {
	u := *r.URL
	u.Scheme, u.Host, u.User = "http", "", nil
	return &http.Request{Method: r.Method, URL: &u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Host: r.Host}
}

// prepared takes the copy's headers from the primary's first attempt, as
// Caddy's reverse_proxy prepared it (prepareRequest): the hop-by-hop
// headers and those the client named in Connection removed, and
// X-Forwarded-For/-Proto/-Host set from the client's own only when it is a
// trusted proxy (the server's trusted_proxies). The copy is thus what the
// primary's container got, plus X-Imagelb-Mirror: 1. It is called on the
// request's goroutine, before the attempt is sent.
func (cp *mirrorCopy) prepared(primary *http.Request) {
	if cp.req.Header != nil {
		return // a retry: the first attempt's are the same
	}
	cp.req.Header = primary.Header.Clone()
	cp.req.Header.Set(MirrorHeader, "1")
}

// done sends the copy now that the primary request has its answer: with
// the body the primary read, if it read it whole; otherwise the copy is
// dropped (too large, not read whole, or the primary never reached an
// attempt) and counted.
func (cp *mirrorCopy) done() {
	if cp.req.Header == nil {
		if cp.tee != nil {
			cp.tee.seal()
		}
		cp.drop(&cp.counters.Dropped)
		return
	}
	if cp.tee == nil {
		go cp.send(nil)
		return
	}
	body, whole, over := cp.tee.seal()
	switch {
	case over:
		cp.drop(&cp.counters.TooLarge)
	case !whole:
		cp.drop(&cp.counters.Dropped) // not read whole, or the budget had no room for it
	default:
		go cp.send(body)
	}
}

// send sends the copy to a container of the target image picked by its
// algorithm, reads the answer and discards it, and gives back the copy's
// place. It runs on its own goroutine, bounded by the app's timeout and
// cancelled when the app stops.
func (cp *mirrorCopy) send(body []byte) {
	sent, failed := false, false
	defer func() {
		if v := recover(); v != nil {
			cp.h.logger.Error("mirror panicked", zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
		}
		cp.counters.Finish(sent, failed)
		cp.release()
	}()
	tgt := cp.h.reg.Lookup(cp.targetID)
	var c *registry.Container
	if tgt != nil {
		c = tgt.ChooseContainer(&registry.PickRequest{})
	}
	if c == nil {
		cp.counters.Dropped.Add(1)
		return
	}
	ctx, cancel := context.WithTimeout(cp.h.app.ctx, cp.h.app.timeout)
	defer cancel()
	req := cp.req.WithContext(ctx)
	req.URL.Host = c.DialAddr()
	if body != nil {
		req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	sent = true
	resp, err := cp.h.transport.RoundTrip(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxMirrorAnswer))
		_ = resp.Body.Close()
		failed = resp.StatusCode >= 500
	} else {
		failed = true
	}
	if failed {
		if ce := cp.h.logger.Check(zap.DebugLevel, "mirror failed"); ce != nil {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			ce.Write(zap.Int64("image_id", cp.targetID), zap.String("container_id", c.ContainerID),
				zap.String("upstream", c.DialAddr()), zap.Int("status", status), zap.Error(err))
		}
	}
}

// mirrorTee keeps a copy of what the primary request reads of the body, up
// to limit bytes, its memory taken from the mirror budget as it grows. The
// transport reads the body on its own goroutine and may still do so after
// the answer, so the copy is guarded.
type mirrorTee struct {
	io.ReadCloser
	limit  int
	want   int64 // the announced length; -1: unknown
	budget *registry.MirrorBudget

	mu      sync.Mutex
	buf     []byte
	taken   int64 // what buf's capacity took from budget
	eof     bool  // the body was read to its end
	over    bool  // it is longer than limit
	starved bool  // the budget had no room for it
	sealed  bool  // done took the copy: later reads are not kept
}

func (t *mirrorTee) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	t.mu.Lock()
	if !t.sealed && !t.over && !t.starved {
		switch need := len(t.buf) + n; {
		case need > t.limit:
			t.over = true
			t.free()
		case need > cap(t.buf) && !t.grow(need):
			t.starved = true
			t.free()
		default:
			t.buf = append(t.buf, p[:n]...)
			t.eof = err == io.EOF
		}
	}
	t.mu.Unlock()
	return n, err
}

// grow makes buf's capacity at least need (the announced length at once,
// else doubling, never past limit) if the budget has room for it.
func (t *mirrorTee) grow(need int) bool {
	size := max(need, 2*cap(t.buf), 4096)
	if t.want >= 0 {
		size = max(need, int(min(t.want, int64(t.limit))))
	}
	size = min(size, t.limit)
	if !t.budget.Take(int64(size) - t.taken) {
		return false
	}
	nb := make([]byte, len(t.buf), size)
	copy(nb, t.buf)
	t.buf, t.taken = nb, int64(size)
	return true
}

// free lets go of what was kept and gives its memory back to the budget.
func (t *mirrorTee) free() {
	t.budget.Give(t.taken)
	t.buf, t.taken = nil, 0
}

// held is what the copy's body took from the budget.
func (t *mirrorTee) held() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.taken
}

// seal ends the copy and returns it, whether it is the whole body (and
// kept whole: the budget had room for it), and whether the body was
// longer than the limit.
func (t *mirrorTee) seal() (body []byte, whole, over bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sealed = true
	if t.buf == nil {
		t.buf = []byte{}
	}
	return t.buf, !t.starved && (t.eof || (t.want >= 0 && int64(len(t.buf)) == t.want)), t.over
}
