package imagelb

// The request path of a proxied request, top to bottom in call order, as
// Caddy's reverseproxy.go reads: the imagelb handler admits the request
// (serveProxy, proxy: lookup, availability, rate limit, max_in_flight),
// starts its record (newRequest), calls Caddy's reverse_proxy, whose
// selection policy picks each attempt's container (attemptPolicy: the
// service's algorithm chooses ONE, and the one static upstream's dial
// placeholder resolves to it), and settles the record when the proxy returns
// (finish), mapping errors to the answers the contract names. On an ordinary
// site (reverse_proxy { dynamic imagelb N; lb_policy imagelb }) the source
// offers the whole pool (offerPool) and the policy picks from it
// (selectFromPool); the request is settled when the server is done with it
// (settleWhenDone). upstreams.go and selection.go are the thin module files
// of the source and the policy; sticky.go owns the sticky cookie.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/admin"
	"github.com/imagelb/caddy-imagelb/registry"
)

// serveProxy serves /api/v1/proxy/{image_id}/{path...}: the container gets
// /{path...} with the query string unchanged.
func (h *Handler) serveProxy(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	id, target, status, detail := parseProxyPath(r.URL.EscapedPath())
	if status == http.StatusUnprocessableEntity {
		// the original's list form, at the path's image_id
		_, err := registry.ParseImageID(detail)
		admin.WriteRegistryError(w, err)
		return nil
	}
	if status != 0 {
		admin.WriteError(w, status, detail)
		return nil
	}
	svc := h.reg.Lookup(id)
	if svc == nil {
		admin.WriteError(w, http.StatusNotFound, fmt.Sprintf("image_id %d is not registered", id))
		return nil
	}
	// the container's path replaces the request's, in place, as Caddy's
	// rewrite does: the handler is the last to use the request, and the
	// client's request line stays in r.RequestURI for the logs
	r.URL.RawPath = target
	r.URL.Path, _ = url.PathUnescape(target) // parseProxyPath checked it
	return h.proxy(w, r, next, svc)
}

// parseProxyPath splits the escaped path of a proxy request,
// /api/v1/proxy/{image_id}[/{path...}], into the image id and the escaped
// path the container gets ("/" at least). The image id is the first
// segment exactly as sent: an encoded slash or a dot segment in it is no
// id, so no path can reach another image than the one it names. A non-zero
// status is the error to answer with (for 422, detail is the bad image_id).
func parseProxyPath(escaped string) (id int64, target string, status int, detail string) {
	rest, ok := strings.CutPrefix(escaped, proxyPrefix)
	if !ok || (rest != "" && rest[0] != '/') {
		return 0, "", http.StatusNotFound, "not a proxy path: use /api/v1/proxy/{image_id}/{path}"
	}
	idRaw, tail, _ := strings.Cut(strings.TrimPrefix(rest, "/"), "/")
	if idRaw == "" {
		return 0, "", http.StatusNotFound, "missing image_id: use /api/v1/proxy/{image_id}/{path}"
	}
	id, err := registry.ParseImageID(idRaw)
	if err != nil {
		return 0, "", http.StatusUnprocessableEntity, idRaw // the caller words it
	}
	target = "/" + tail
	if _, err := url.PathUnescape(target); err != nil {
		return 0, "", http.StatusBadRequest, fmt.Sprintf("malformed path: %v", err)
	}
	return id, target, 0, ""
}

// proxy sends the request to one of the service's containers through the
// embedded reverse proxy, counting it for the image and its attempts for
// the containers.
func (h *Handler) proxy(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, svc *registry.Service) error {
	h.dropSiteCredentials(r) // handler.go
	if len(svc.Options.Split) > 0 {
		svc = h.routeSplit(w, r, svc) // split.go: the image that serves the request
	}
	if len(svc.Available()) == 0 && svc.Options.OnDemand != nil {
		if svc = h.waitToStart(w, r, svc); svc == nil {
			return nil
		}
	}
	if len(svc.Available()) == 0 {
		svc.State.Refuse(http.StatusServiceUnavailable, true)
		admin.WriteError(w, http.StatusServiceUnavailable,
			fmt.Sprintf("no healthy container for image_id %d (%d registered, none healthy with weight > 0)", svc.ImageID, len(svc.Containers)))
		return nil
	}
	if rl := svc.Options.RateLimit; rl != nil && h.rateLimited(w, r, svc, rl) {
		return nil
	}
	if !svc.TryBegin() {
		admin.WriteError(w, http.StatusServiceUnavailable, fmt.Sprintf(
			"image_id %d has max_in_flight %d requests in flight; try again shortly", svc.ImageID, svc.Options.MaxInFlight))
		return nil
	}
	r.Header.Del(MirrorHeader) // only the copies carry it, and only ours
	var m *mirrorCopy
	if svc.Options.Mirror != nil {
		if m = h.startMirror(r, svc); m != nil { // mirror.go
			defer m.done()
		}
	}
	q := newRequest(r, svc, h.app)
	q.mirror = m
	q.watchBody(r)
	status, out, err := serveRecorded(h.rp, w, r, next, svc.State.Usage, q)
	q.bytesOut = out

	if err == nil {
		how := outcomeAnswered
		if status == 499 {
			how = outcomeClient // reverse_proxy's mark of a client that went away
		}
		q.finish(status, status >= 500, how)
		if c := h.logger.Check(zap.DebugLevel, "proxied"); c != nil && q.last != nil {
			c.Write(zap.Int64("image_id", svc.ImageID), zap.String("container_id", q.last.ContainerID),
				zap.String("upstream", q.last.DialAddr()), zap.Int("status", status), zap.Int("attempts", len(q.tried)))
		}
		return nil
	}
	if code, cause := q.clientFault(r); code != 0 {
		// the client's request failed, not the container: no passive
		// failure, no outlier count, no retry
		q.finish(code, false, outcomeClient)
		if c := h.logger.Check(zap.DebugLevel, "client request failed"); c != nil {
			c.Write(zap.Int64("image_id", svc.ImageID), zap.Int("status", code), zap.Error(cause))
		}
		if status == 0 && code != 499 {
			q.unstick(w)
			admin.WriteError(w, code, fmt.Sprintf("reading the request failed: %v; the container was not at fault", cause))
		}
		return nil
	}
	code := errorStatus(err)
	how := outcomeAnswered
	if code == http.StatusBadGateway || code == http.StatusGatewayTimeout {
		how = outcomeUnreachable
	}
	q.finish(code, code >= 500, how)
	if status != 0 || code == 499 {
		return nil // the client has its answer, or is gone
	}
	var detail string
	switch code {
	case http.StatusServiceUnavailable:
		detail = fmt.Sprintf("no healthy container for image_id %d could take the request", svc.ImageID)
	case http.StatusGatewayTimeout:
		detail = fmt.Sprintf("the container%s of image_id %d did not answer within %s", lastContainer(q), svc.ImageID, h.app.timeout)
	default:
		detail = fmt.Sprintf("every attempt to reach a container of image_id %d failed (%d attempts); the last, "+
			"container%s: %s", svc.ImageID, len(q.tried), lastContainer(q), attemptFailure(err))
		if q.noRetry {
			detail += fmt.Sprintf("; the retry budget of image_id %d (%g of requests) allowed no more retries", svc.ImageID, svc.Options.RetryBudget)
		}
	}
	q.unstick(w) // the client got no answer from the container it would be pinned to
	if c := h.logger.Check(zap.WarnLevel, "proxy failed"); c != nil {
		fields := []zap.Field{zap.Int64("image_id", svc.ImageID), zap.Int("status", code), zap.Int("attempts", len(q.tried)), zap.Error(err)}
		if q.last != nil {
			fields = append(fields, zap.String("container_id", q.last.ContainerID), zap.String("upstream", q.last.DialAddr()))
		}
		c.Write(fields...)
	}
	admin.WriteError(w, code, detail)
	return nil
}

// rateLimited takes the request from the service's rate limit; past it, it
// answers 429 with Retry-After and reports true.
func (h *Handler) rateLimited(w http.ResponseWriter, r *http.Request, svc *registry.Service, rl *registry.RateLimit) bool {
	client := ""
	if rl.Per == registry.PerClientIP {
		client = clientIP(r)
	}
	ok, wait := svc.AllowRate(client, time.Now())
	if ok {
		return false
	}
	svc.State.Refuse(http.StatusTooManyRequests, false)
	w.Header().Set("Retry-After", strconv.Itoa(max(int(math.Ceil(wait.Seconds())), 1)))
	admin.WriteError(w, http.StatusTooManyRequests, fmt.Sprintf(
		"rate limit of image_id %d exceeded: %d requests per %s (burst %d) per %s; retry in %s",
		svc.ImageID, rl.Requests, time.Duration(rl.Interval), rl.Burst, strings.ReplaceAll(rl.Per, "_", " "), wait.Round(time.Millisecond)))
	return true
}

// lastContainer names the container of the latest attempt, for a detail:
// its id, never its address (the client has no business knowing it).
func lastContainer(q *request) string {
	if q.last == nil {
		return ""
	}
	return fmt.Sprintf(" %q", q.last.ContainerID)
}

// attemptFailure says in fixed words why an attempt failed, without the
// container's address (dial errors got theirs in dialFailure, self.go).
func attemptFailure(err error) string {
	err = unwrapHandlerError(err)
	var dialErr reverseproxy.DialError
	var netErr net.Error
	switch {
	case errors.As(err, &dialErr):
		return dialErr.Error()
	case errors.As(err, &netErr) && netErr.Timeout():
		return "it timed out"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "it closed the connection before a complete response"
	case errors.Is(err, syscall.ECONNRESET):
		return "it reset the connection"
	}
	return "the exchange with it failed"
}

// errorStatus is the status of a reverse_proxy error: its own, else 502.
func errorStatus(err error) int {
	var herr caddyhttp.HandlerError
	if errors.As(err, &herr) && herr.StatusCode != 0 {
		return herr.StatusCode
	}
	return http.StatusBadGateway
}

func unwrapHandlerError(err error) error {
	var herr caddyhttp.HandlerError
	if errors.As(err, &herr) && herr.Err != nil {
		return herr.Err
	}
	return err
}

// requestVar is the name of the request variable that carries a *request,
// on an ordinary site, from the first GetUpstreams call to the selection
// policy, which see only the request.
const requestVar = "imagelb.request"

// request is the accounting of one client request for one image: it counts
// the request once for the service and each attempt for the container that
// got it, whatever the number of retries.
type request struct {
	service   *registry.Service // the version the request started with
	pool      *registry.Service // on an ordinary site: the version whose Available() offerPool offered, in order
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
	bytesOut  int64           // response body bytes written to the client
	mirror    *mirrorCopy     // the copy for the image's mirror; nil: none
}

// clientBody wraps the client's request body to tell a failure of the
// client's side (malformed chunked framing, a body cut short, a read
// timeout) from a failure of the container. The transport reads it on its
// own goroutine, so the verdict is an atomic.
type clientBody struct {
	io.ReadCloser
	err   atomic.Pointer[error]
	usage *registry.UsageCounter // the image's: bytes_in
	n     atomic.Int64           // bytes read, for the container
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.usage.AddIn(n)
		b.n.Add(int64(n))
	}
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
	q.body.usage = q.service.State.Usage
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

// requestFrom returns the request accounting stored in the request's vars.
func requestFrom(r *http.Request) *request {
	q, _ := caddyhttp.GetVar(r.Context(), requestVar).(*request)
	return q
}

// dialKey is the replacer variable that carries the container picked for
// an attempt to the one static upstream of the handler's reverse_proxy,
// whose dial address is dialPlaceholder. Caddy resolves the placeholder per
// attempt (fillDialInfo), so the transport's connection pools stay per
// container, while the attempt skips the dynamic-upstream path: no Upstream
// made per attempt, no copy of the Handler, no process-wide host mutex
// (provisionUpstream, fillDynamicHost). The placeholder is as long as a
// typical host:port, so its replacement allocates once.
const (
	dialKey         = "imagelb.container_dial_address"
	dialPlaceholder = "{" + dialKey + "}"
)

// attemptPolicy is the selection policy of the handler's own reverse_proxy:
// for each attempt of a request the imagelb handler admitted, it picks ONE
// container by the service's algorithm, points the static upstream at it
// and returns that upstream; nil when none can take the attempt.
type attemptPolicy struct{ reg *registry.Registry }

func (p attemptPolicy) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	sw, _ := w.(*statusWriter)
	if sw == nil || sw.q == nil || len(pool) != 1 {
		return nil
	}
	q := sw.q
	if q.mirror != nil {
		q.mirror.prepared(r) // r is the request as Caddy prepared it for the container
	}
	svc := p.reg.Lookup(q.service.ImageID)
	if svc == nil {
		return nil
	}
	c := q.choose(svc)
	if c == nil {
		return nil
	}
	q.begin(c)
	q.stick(w, r)
	r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).Set(dialKey, c.DialValue())
	return pool[0]
}

// offerPool is the source on an ordinary site: it starts the request's
// record on its first attempt and offers the image's available containers,
// in order, as fresh upstreams (reverse_proxy writes to them), for
// selectFromPool to pick from.
func (u *UpstreamSource) offerPool(r *http.Request, q *request) ([]*reverseproxy.Upstream, error) {
	id := u.fixedID
	if id == 0 {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		raw := repl.ReplaceAll(u.ImageID, "")
		var err error
		if id, err = registry.ParseImageID(raw); err != nil {
			return nil, fmt.Errorf("dynamic imagelb: image_id %q (from %q) is not a positive integer", raw, u.ImageID)
		}
	}
	svc := u.reg.Lookup(id)
	if svc == nil {
		return nil, nil
	}
	avail := svc.Available()
	r.Header.Del(MirrorHeader) // r is reverse_proxy's copy: only imagelb's mirror copies carry it
	if q == nil {
		svc.State.Begin()
		q = newRequest(r, svc, u.app)
		q.watchBody(r) // r is reverse_proxy's own copy, which the transport sends
		caddyhttp.SetVar(r.Context(), requestVar, q)
		q.settleWhenDone(r.Context())
	}
	q.pool = svc
	ups := make([]*reverseproxy.Upstream, len(avail))
	for i, c := range avail {
		ups[i] = &reverseproxy.Upstream{Dial: c.DialAddr()}
	}
	return ups, nil
}

// selectFromPool is the imagelb policy: from the pool offerPool offered it
// picks by the service's algorithm, with the state kept per image in the
// registry. With another source it takes the first available upstream.
func selectFromPool(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	q := requestFrom(r) // only offerPool puts one there
	if q == nil {
		for _, u := range pool {
			if u.Available() {
				return u
			}
		}
		return nil
	}
	avail := q.pool.Available()
	for range pool {
		i := q.chooseIndex(q.pool)
		if i < 0 {
			return nil
		}
		if pool[i].Available() {
			q.begin(avail[i])
			q.stick(w, r)
			return pool[i]
		}
		// reverse_proxy's own passive health state rules it out
		q.tried = append(q.tried, avail[i].Stats)
	}
	return nil
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
	if q.last != nil {
		q.last.Stats.AddBytes(q.body.n.Load(), q.bytesOut)
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

// statusWriter records the final status code written to the client and
// counts the body bytes (usage's bytes_out), those of an upgraded
// connection (a WebSocket) included. Unwrap lets reverse_proxy flush
// through it; it hijacks itself, to count what goes over the connection.
type statusWriter struct {
	caddyhttp.ResponseWriterWrapper
	status int
	usage  *registry.UsageCounter // nil: nothing to count (a system service)
	out    atomic.Int64           // body bytes written
	// q is the request the imagelb handler proxies (nil: a system
	// service): reverse_proxy hands this writer to the selection policy,
	// so attemptPolicy finds the request here, without the vars map
	q *request
}

var statusWriters = sync.Pool{New: func() any { return new(statusWriter) }}

// serveRecorded runs rp and returns the status it wrote to the client (0:
// none), the body bytes it wrote, and its error. Bytes are counted in usage
// when it is not nil.
func serveRecorded(rp *reverseproxy.Handler, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler,
	usage *registry.UsageCounter, q *request) (int, int64, error) {
	sw := statusWriters.Get().(*statusWriter)
	sw.ResponseWriter, sw.status, sw.usage, sw.q = w, 0, usage, q
	sw.out.Store(0)
	err := rp.ServeHTTP(sw, r, next)
	status, out := sw.status, sw.out.Load()
	sw.ResponseWriter, sw.usage, sw.q = nil, nil, nil
	statusWriters.Put(sw)
	return status, out, err
}

func (s *statusWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.count(n)
	return n, err
}

func (s *statusWriter) count(n int) {
	if n > 0 && s.usage != nil {
		s.usage.AddOut(n)
		s.out.Add(int64(n))
	}
}

// Hijack hands reverse_proxy the client's connection for an upgraded
// protocol, wrapped to count the bytes both ways. What the server had read
// ahead is counted at once: reverse_proxy forwards it first.
func (s *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(s.ResponseWriter).Hijack()
	if err != nil || s.usage == nil {
		return conn, brw, err
	}
	if n := brw.Reader.Buffered(); n > 0 {
		s.usage.AddIn(n)
	}
	return &countingConn{Conn: conn, usage: s.usage}, brw, nil
}

// countingConn counts the bytes of an upgraded connection in the image's
// usage. It may outlive the request (reverse_proxy's copies end on their
// own goroutines), so it holds the counter, not the pooled writer.
type countingConn struct {
	net.Conn
	usage *registry.UsageCounter
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.usage.AddIn(n)
	}
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.usage.AddOut(n)
	}
	return n, err
}
