package imagelb

import (
	"context"
	"net/http"
	"slices"
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
		q.endAttempt(0, true, true, now)
	}
	c.Stats.Begin()
	q.cur, q.last, q.curStart = c, c, now
	q.tried = append(q.tried, c.Stats)
}

func (q *request) endAttempt(status int, failed, unreachable bool, now time.Time) {
	if unreachable {
		status = 0
	}
	d := now.Sub(q.curStart)
	q.cur.Stats.Finish(status, failed, d)
	q.service.Observe(q.cur, failed || unreachable, d)
	if unreachable && q.app.checker != nil {
		q.app.checker.PassiveFailure(q.service.ImageID, q.cur)
	}
	q.cur = nil
}

// finish settles the request: the client got status; the last attempt and
// the request itself failed when that is an error or a 5xx; unreachable
// says the last container was not reached (no response at all).
func (q *request) finish(status int, failed, unreachable bool) {
	if q.finished {
		return
	}
	q.finished = true
	now := time.Now()
	if q.cur != nil {
		q.endAttempt(status, failed, unreachable, now)
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
		status, failed := 0, true
		if q.statusSrc != nil {
			if v, ok := q.statusSrc.Get("http.reverse_proxy.status_code"); ok {
				if code, ok := v.(int); ok {
					status, failed = code, code >= 500
				}
			}
		}
		q.finish(status, failed, false)
	})
}
