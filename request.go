package imagelb

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/imagelb/caddy-imagelb/registry"
)

// requestVar is the name of the request variable that carries a *request
// from the imagelb handler (or the first GetUpstreams call) to the upstream
// source and the selection policy, which see only the request.
const requestVar = "imagelb.request"

// request is the accounting of one client request for one image: it counts
// the request once for the service and each attempt for the container that
// got it, whatever the number of retries.
type request struct {
	service   *registry.Service // the version the request started with
	pool      *registry.Service // the version whose Available() GetUpstreams returned, in order
	app       *App
	start     time.Time
	cur       *registry.Container // the container of the attempt in progress
	last      *registry.Container // the container of the latest attempt
	curStart  time.Time
	tried     []*registry.ContainerStats
	triedBuf  [4]*registry.ContainerStats
	pick      registry.PickRequest // the request's hash key, sticky pin and zone
	finished  bool
	noRetry   bool            // the retry budget refused a retry
	cookie    int             // 1 + the index of the sticky cookie this request set, 0: none
	statusSrc *caddy.Replacer // where the final status is read when no handler settles the request
	body      clientBody      // the client's request body, watched for read errors
}

// clientBody wraps the client's request body to tell a failure of the
// client's side (malformed chunked framing, a body cut short, a read
// timeout) from a failure of the container. The transport reads it on its
// own goroutine, so the verdict is an atomic.
type clientBody struct {
	io.ReadCloser
	err atomic.Pointer[error]
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	// EOF is the normal end; a read after Close is the transport giving
	// up on the body after a failure of its own.
	if err != nil && err != io.EOF && !errors.Is(err, http.ErrBodyReadAfterClose) && b.err.Load() == nil {
		b.err.Store(&err)
	}
	return n, err
}

// watchBody makes the request's body go through q.body.
func (q *request) watchBody(r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody {
		return
	}
	q.body.ReadCloser = r.Body
	r.Body = &q.body
}

// clientFault returns the status a failed request gets when the client's
// side failed, and why, or 0: the client is not at fault. A body that could
// not be read is answered (400, 408 or 413) even when the client seems gone:
// a client that half-closed its connection after a short body still reads.
// A client that went away otherwise gets 499 (Caddy's code for it; nobody
// reads the answer).
func (q *request) clientFault(r *http.Request) (int, error) {
	p := q.body.err.Load()
	if p == nil {
		if r.Context().Err() != nil {
			return 499, context.Cause(r.Context())
		}
		return 0, nil
	}
	err := *p
	var maxBytes *http.MaxBytesError
	var netErr net.Error
	switch {
	case errors.As(err, &maxBytes):
		return http.StatusRequestEntityTooLarge, err
	case errors.As(err, &netErr) && netErr.Timeout():
		return http.StatusRequestTimeout, err
	}
	return http.StatusBadRequest, err
}

// newRequest starts the accounting of a request that the caller has counted
// for the service already (Begin or TryBegin).
func newRequest(r *http.Request, svc *registry.Service, app *App) *request {
	q := &request{service: svc, app: app, start: time.Now()}
	q.tried = q.triedBuf[:0]
	svc.DepositRetry()
	if svc.Algorithm.UsesKey() {
		q.pick.Key = hashKey(r, svc)
	}
	if svc.Options.Sticky {
		q.pick.Pinned = verifySticky(app.stickyKey, r, svc.ImageID)
	}
	q.pick.Zone = app.Zone
	if app.ZoneHeader != "" {
		if z := r.Header.Get(app.ZoneHeader); z != "" {
			q.pick.Zone = z
		}
	}
	return q
}

// choose picks the container of the next attempt from svc, or nil: none
// can take it, or this is a retry and the retry budget is spent.
func (q *request) choose(svc *registry.Service) *registry.Container {
	i := q.chooseIndex(svc)
	if i < 0 {
		return nil
	}
	return svc.Available()[i]
}

func (q *request) chooseIndex(svc *registry.Service) int {
	if len(q.tried) > 0 && q.body.err.Load() != nil {
		return -1 // the client's body failed: no container can do better
	}
	if len(q.tried) > 0 && (q.noRetry || !svc.AllowRetry()) {
		q.noRetry = true
		return -1
	}
	q.pick.Tried = q.tried
	return svc.Choose(&q.pick)
}

// stick sets the sticky cookie pinning the client to the container of the
// latest attempt, unless the client's cookie names it already. A retry on
// another container replaces the cookie the request set before.
func (q *request) stick(w http.ResponseWriter, r *http.Request) {
	if !q.service.Options.Sticky || q.last == nil || q.last.ContainerID == q.pick.Pinned {
		return
	}
	id := q.service.ImageID
	c := &http.Cookie{Name: stickyCookieName(id), Value: signSticky(q.app.stickyKey, id, q.last.ContainerID),
		Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: r.TLS != nil}
	h := w.Header()
	if q.cookie > 0 && q.cookie <= len(h["Set-Cookie"]) {
		h["Set-Cookie"][q.cookie-1] = c.String()
		return
	}
	h.Add("Set-Cookie", c.String())
	q.cookie = len(h["Set-Cookie"])
}

// unstick takes back the sticky cookie this request set.
func (q *request) unstick(w http.ResponseWriter) {
	h := w.Header()
	if cookies := h["Set-Cookie"]; q.cookie > 0 && q.cookie <= len(cookies) {
		h["Set-Cookie"] = slices.Delete(cookies, q.cookie-1, q.cookie)
		q.cookie = 0
	}
}

// requestFrom returns the request accounting stored in the request's vars.
func requestFrom(r *http.Request) *request {
	q, _ := caddyhttp.GetVar(r.Context(), requestVar).(*request)
	return q
}

// begin counts a new attempt on c. An attempt still in progress when another
// begins has failed to reach its container: the proxy only tries again
// after a connection failure or a timeout.
func (q *request) begin(c *registry.Container) {
	now := time.Now()
	if q.cur != nil {
		q.endAttempt(0, outcomeUnreachable, now)
	}
	c.Stats.Begin()
	q.cur, q.last, q.curStart = c, c, now
	q.tried = append(q.tried, c.Stats)
}

// firstAttemptOn reports whether the attempt in progress is the request's
// first on the container with stats s.
func (q *request) firstAttemptOn(s *registry.ContainerStats) bool {
	n := 0
	for _, t := range q.tried {
		if t == s {
			n++
		}
	}
	return n <= 1
}

// How an attempt ended, and so what it tells of its container.
type outcome int

const (
	outcomeAnswered    outcome = iota // the container answered (a 5xx is a failed attempt)
	outcomeUnreachable                // no answer: a refused or failed connection, or a timeout
	outcomeUnknown                    // no answer, and whether the container or the client failed is unknown
	outcomeClient                     // the client's side failed (its body, or it went away): says nothing of the container
)

func (q *request) endAttempt(status int, how outcome, now time.Time) {
	d := now.Sub(q.curStart)
	switch how {
	case outcomeUnreachable, outcomeUnknown:
		q.cur.Stats.Finish(0, true, d)
		q.service.Observe(q.cur, true, d)
		// a request counts against a container once, however often it
		// was retried there (with one container, every retry goes back)
		if how == outcomeUnreachable && q.app.checker != nil && q.firstAttemptOn(q.cur.Stats) {
			q.app.checker.PassiveFailure(q.service.ImageID, q.cur)
		}
	case outcomeClient:
		// neither health, nor outlier ejection, nor latency learn from it
		q.cur.Stats.Finish(status, false, d)
	default:
		q.cur.Stats.Finish(status, status >= 500, d)
		q.service.Observe(q.cur, status >= 500, d)
	}
	q.cur = nil
}

// finish settles the request: the client got status, the request failed
// or not, and how says what the last attempt tells of its container.
func (q *request) finish(status int, failed bool, how outcome) {
	if q.finished {
		return
	}
	q.finished = true
	now := time.Now()
	if q.cur != nil {
		q.endAttempt(status, how, now)
	}
	q.service.State.Finish(status, failed, now.Sub(q.start))
}

// settleWhenDone arranges for a request that no imagelb handler owns (a
// reverse_proxy with "dynamic imagelb" on an ordinary site) to be settled
// when the server is done with it: net/http cancels the request's context
// after the handler chain returns. The final status is the one reverse_proxy
// recorded in its status_code placeholder. Without one, the last attempt got
// no response — but whether the container failed or the client went away
// cannot be told from here, so it counts as failed in the statistics and is
// not held against the container (retried attempts are: reverse_proxy
// retries only after a transport failure).
func (q *request) settleWhenDone(ctx context.Context) {
	q.statusSrc, _ = ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	context.AfterFunc(ctx, func() {
		if q.statusSrc != nil {
			if v, ok := q.statusSrc.Get("http.reverse_proxy.status_code"); ok {
				if code, ok := v.(int); ok {
					q.finish(code, code >= 500, outcomeAnswered)
					return
				}
			}
		}
		if q.body.err.Load() != nil {
			q.finish(0, false, outcomeClient) // the client's body failed
			return
		}
		q.finish(0, true, outcomeUnknown)
	})
}
