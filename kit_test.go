package imagelb

// The end-to-end test kit of the root package: Caddy in-process
// (startCaddy, siteConfig), real backends on 127.0.0.1 (newBackend,
// funcBackend, holdBackend, newHealthBackend), API calls that check every
// answer against the OpenAPI document (do, mustDo, wantError, register,
// registerObject), statistics and metrics (getStats, serviceStats, scrape,
// metricValue) and client load (startLoad). Helpers other packages share
// too are in internal/testkit.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

// adminURL is caddytest's admin endpoint.
const adminURL = "http://localhost:2999"

// TestMain keeps what caddytest writes out of the real XDG directories.
func TestMain(m *testing.M) { testkit.Main(m) }

// client is the HTTP client of the tests; it does not follow redirects.
var client = &http.Client{
	Timeout:       15 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// freePort, eventually: the module's shared test helpers (internal/testkit).
var (
	freePort   = testkit.FreePort
	eventually = testkit.Eventually
)

// echo is what a test backend answers: who it is and what it received.
type echo struct {
	Backend string            `json:"backend"`
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	RawPath string            `json:"raw_path"`
	Query   string            `json:"query"`
	Body    string            `json:"body"`
	Headers map[string]string `json:"headers"`
}

// backend is a real HTTP server on 127.0.0.1 that echoes requests.
type backend struct {
	name string
	srv  *httptest.Server
	port int
	// hold, when set, blocks requests to /slow until it is closed.
	mu      sync.Mutex
	hold    chan struct{}
	arrived chan struct{}
	delay   time.Duration
}

func newBackend(t testing.TB, name string) *backend {
	t.Helper()
	b := &backend{name: name}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.srv.Close)
	b.port = b.srv.Listener.Addr().(*net.TCPAddr).Port
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/slow" {
		b.mu.Lock()
		hold, arrived := b.hold, b.arrived
		b.mu.Unlock()
		if arrived != nil {
			arrived <- struct{}{}
		}
		if hold != nil {
			<-hold
		}
	}
	if r.URL.Path == "/sleep" {
		time.Sleep(b.delay) // the backend's own behaviour under test, not a test wait
	}
	body, _ := io.ReadAll(r.Body)
	h := map[string]string{}
	for k := range r.Header {
		h[k] = r.Header.Get(k)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Backend", b.name)
	_ = json.NewEncoder(w).Encode(echo{Backend: b.name, Method: r.Method, Path: r.URL.Path, RawPath: r.URL.RawPath,
		Query: r.URL.RawQuery, Body: string(body), Headers: h})
}

// startCaddy loads a Caddyfile into the in-process test Caddy and empties
// the registry (it outlives config loads by design).
func startCaddy(t *testing.T, caddyfile string) *caddytest.Tester {
	t.Helper()
	tester := caddytest.NewTester(t)
	tester.InitServer(caddyfile, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	resetRegistry(t)
	return tester
}

func resetRegistry(t *testing.T) {
	t.Helper()
	var list []struct {
		ImageID int64 `json:"image_id"`
		Static  bool  `json:"static"`
	}
	mustDo(t, "GET", adminURL+"/imagelb/services", nil, 200, &list)
	for _, s := range list {
		if !s.Static {
			mustDo(t, "DELETE", fmt.Sprintf("%s/imagelb/services/%d", adminURL, s.ImageID), nil, 200, nil)
		}
	}
}

// do sends a request and returns the status and the body.
func do(t testing.TB, method, url string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	var raw []byte
	switch b := body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	case []byte:
		raw = b
	default:
		js, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		raw = js
	}
	if body != nil {
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	checkOpenAPI(t, req, raw, resp, out) // every answer of the API, against docs/openapi.json
	return resp.StatusCode, out
}

// mustDo sends a request, checks the status and decodes the JSON answer into out.
func mustDo(t testing.TB, method, url string, body any, want int, out any) {
	t.Helper()
	status, raw := do(t, method, url, body)
	if status != want {
		t.Fatalf("%s %s: status %d, want %d; body %s", method, url, status, want, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decoding %s: %v", method, url, raw, err)
		}
	}
}

// container is a registration entry for a backend.
func container(id string, b *backend) map[string]any {
	return map[string]any{"container_id": id, "host": "127.0.0.1", "port": b.port}
}

// register registers containers for an image through the given API base
// (adminURL+"/imagelb" or a site's "/api/v1").
func register(t testing.TB, base string, imageID int64, query string, containers ...map[string]any) {
	t.Helper()
	if containers == nil {
		containers = []map[string]any{}
	}
	url := fmt.Sprintf("%s/services/%d/register?image_name=img-%d%s", base, imageID, imageID, query)
	mustDo(t, "POST", url, containers, 200, nil)
}

// proxyGet sends GET through the site's proxy and returns the backend that answered.
func proxyGet(t testing.TB, site string, imageID int64, path string) echo {
	t.Helper()
	var e echo
	mustDo(t, "GET", fmt.Sprintf("%s/api/v1/proxy/%d%s", site, imageID, path), nil, 200, &e)
	return e
}

// stats fetches the statistics document.
type statsDoc struct {
	TotalRequests     int64 `json:"total_requests"`
	FailedRequests    int64 `json:"failed_requests"`
	ActiveConnections int64 `json:"active_connections"`
	Services          []struct {
		ImageID           int64 `json:"image_id"`
		TotalRequests     int64 `json:"total_requests"`
		FailedRequests    int64 `json:"failed_requests"`
		ActiveConnections int64 `json:"active_connections"`
		BytesIn           int64 `json:"bytes_in"`
		BytesOut          int64 `json:"bytes_out"`
		Containers        []struct {
			ContainerID       string `json:"container_id"`
			TotalRequests     int64  `json:"total_requests"`
			FailedRequests    int64  `json:"failed_requests"`
			ActiveConnections int64  `json:"active_connections"`
		} `json:"containers"`
	} `json:"services"`
}

func getStats(t testing.TB, imageID int64) statsDoc {
	t.Helper()
	var s statsDoc
	mustDo(t, "GET", adminURL+"/imagelb/stats?image_id="+strconv.FormatInt(imageID, 10), nil, 200, &s)
	return s
}

// siteConfig is a Caddyfile with the imagelb handler on a site.
func siteConfig(port int, global string) string {
	return fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		%s
	}
}
http://127.0.0.1:%d {
	imagelb
}
`, global, port)
}

// load is a set of clients sending GETs to one URL in a loop until
// finished: the concurrent load of the reload and failure tests.
type load struct {
	served  atomic.Int64 // answered 200
	excused atomic.Int64 // failures that excuse said are not ours
	errs    chan string
	stop    chan struct{}
	wg      sync.WaitGroup
}

// startLoad starts clients; excuse, when not nil, is asked about each
// transport error (with whether the connection was reused) and returns true
// for those the test counts apart instead of failing on.
func startLoad(url string, clients int, excuse func(err error, reused bool) bool) *load {
	l := &load{errs: make(chan string, clients), stop: make(chan struct{})}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	for i := 0; i < clients; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				var reused bool
				trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
				req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, url, nil)
				resp, err := hc.Do(req)
				if err != nil {
					if excuse != nil && excuse(err, reused) {
						l.excused.Add(1)
						continue
					}
					l.errs <- fmt.Sprintf("%v (reused connection: %v)", err, reused)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					l.errs <- fmt.Sprintf("status %d", resp.StatusCode)
					return
				}
				l.served.Add(1)
			}
		}()
	}
	return l
}

// waitServed waits until n more requests were answered.
func (l *load) waitServed(t *testing.T, what string, n int64) {
	t.Helper()
	before := l.served.Load()
	eventually(t, what, func() bool { return l.served.Load() >= before+n })
}

// finish stops the clients and fails the test on any error they saw.
func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	close(l.errs)
	for e := range l.errs {
		t.Error("client saw:", e)
	}
}

// wantError sends a request and checks that the answer has the status and a
// JSON detail mentioning detail.
func wantError(t *testing.T, method, url, body string, status int, detail string) {
	t.Helper()
	var b any
	if body != "" {
		b = body
	}
	got, raw := do(t, method, url, b)
	if got != status {
		t.Fatalf("status %d, want %d: %.300s", got, status, raw)
	}
	var e struct {
		Detail json.RawMessage `json:"detail"`
	}
	if err := json.Unmarshal(raw, &e); err != nil || len(e.Detail) == 0 {
		t.Fatalf("answer has no JSON detail: %.300s", raw)
	}
	if !strings.Contains(string(e.Detail), detail) {
		t.Fatalf("detail %.300s does not mention %q", e.Detail, detail)
	}
}

// startCaddyNoReset loads a config without emptying the registry.
func startCaddyNoReset(t *testing.T, caddyfile string) {
	t.Helper()
	tester := caddytest.NewTester(t)
	tester.InitServer(caddyfile, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
}

// trafficContainer is a container's entry in the statistics, with the
// outlier-ejection fields.
type trafficContainer struct {
	ContainerID       string `json:"container_id"`
	TotalRequests     int64  `json:"total_requests"`
	FailedRequests    int64  `json:"failed_requests"`
	ActiveConnections int64  `json:"active_connections"`
	Ejected           bool   `json:"ejected"`
	Ejections         int64  `json:"ejections"`
}

// trafficService is a service's entry in the statistics, with the counters
// of requests turned away.
type trafficService struct {
	ImageID             int64              `json:"image_id"`
	TotalRequests       int64              `json:"total_requests"`
	FailedRequests      int64              `json:"failed_requests"`
	ActiveConnections   int64              `json:"active_connections"`
	RateLimitedRequests int64              `json:"rate_limited_requests"`
	ShedRequests        int64              `json:"shed_requests"`
	RetriesDenied       int64              `json:"retries_denied"`
	Containers          []trafficContainer `json:"containers"`
}

// container returns the entry of the container with the given id.
func (s trafficService) container(t testing.TB, id string) trafficContainer {
	t.Helper()
	for _, c := range s.Containers {
		if c.ContainerID == id {
			return c
		}
	}
	t.Fatalf("image %d has no container %q in the statistics: %+v", s.ImageID, id, s)
	return trafficContainer{}
}

// ejectedCount is how many of the service's containers are ejected.
func (s trafficService) ejectedCount() int {
	n := 0
	for _, c := range s.Containers {
		if c.Ejected {
			n++
		}
	}
	return n
}

// serviceStats fetches the statistics of one image.
func serviceStats(t testing.TB, imageID int64) trafficService {
	t.Helper()
	var doc struct {
		Services []trafficService `json:"services"`
	}
	mustDo(t, "GET", adminURL+"/imagelb/stats?image_id="+strconv.FormatInt(imageID, 10), nil, 200, &doc)
	if len(doc.Services) != 1 {
		t.Fatalf("stats of image %d: %d services", imageID, len(doc.Services))
	}
	return doc.Services[0]
}

// registerObject registers a service with a registration object (the form
// that carries service options) through the site's API.
func registerObject(t testing.TB, site string, imageID int64, obj map[string]any) {
	t.Helper()
	if _, ok := obj["image_name"]; !ok {
		obj["image_name"] = fmt.Sprintf("img-%d", imageID)
	}
	mustDo(t, "POST", fmt.Sprintf("%s/api/v1/services/%d/register", site, imageID), obj, 200, nil)
}

// answer is what a client got from the proxy.
type answer struct {
	status  int
	header  http.Header
	cookies []*http.Cookie
	body    []byte
	backend string // the X-Backend header: the container that answered
}

// detail is the answer's JSON detail ("" when there is none).
func (a answer) detail() string {
	var e struct {
		Detail string `json:"detail"`
	}
	_ = json.Unmarshal(a.body, &e)
	return e.Detail
}

// send sends a GET with the given headers and cookies (no cookie jar: the
// test decides what the client sends).
func send(t testing.TB, url string, hdr http.Header, cookies ...*http.Cookie) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, cookies: resp.Cookies(), body: body,
		backend: resp.Header.Get("X-Backend")}
}

// sendOK sends a GET through the proxy and returns the container that
// answered it with 200.
func sendOK(t testing.TB, url string, hdr http.Header, cookies ...*http.Cookie) string {
	t.Helper()
	a := send(t, url, hdr, cookies...)
	if a.status != http.StatusOK || a.backend == "" {
		t.Fatalf("GET %s: status %d from %q, want 200 from a container: %.300s", url, a.status, a.backend, a.body)
	}
	return a.backend
}

// funcBackend is a real HTTP server on 127.0.0.1 that names itself in
// X-Backend, passes health checks and answers everything else with fn.
func funcBackend(t testing.TB, name string, fn http.HandlerFunc) *backend {
	t.Helper()
	b := &backend{name: name}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		if r.URL.Path == "/health" {
			w.WriteHeader(http.StatusOK)
			return
		}
		fn(w, r)
	}))
	t.Cleanup(b.srv.Close)
	b.port = b.srv.Listener.Addr().(*net.TCPAddr).Port
	return b
}

// metricValue returns the value of one series in the admin /metrics.
func metricValue(t *testing.T, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(scrape(t), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("/metrics: %q: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics lacks %s", series)
	return 0
}

// cookieNamed returns the answer's cookie with the given name, or nil.
func (a answer) cookieNamed(name string) *http.Cookie {
	for _, c := range a.cookies {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// holdBackend answers /slow only when released (or when the request ends).
func holdBackend(t *testing.T, name string) (b *backend, release func()) {
	t.Helper()
	ch := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	b = funcBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-ch:
			case <-r.Context().Done():
			}
		}
		w.WriteHeader(http.StatusOK)
	})
	t.Cleanup(release) // runs before the server's Close, which waits for the held requests
	return b, release
}

func scrape(t *testing.T) string {
	t.Helper()
	resp, err := client.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	return string(body)
}

// healthBackend is a backend whose /health answer can be switched.
type healthBackend struct {
	*backend
	failing atomic.Bool
	checks  atomic.Int64
}

func newHealthBackend(t *testing.T, name string) *healthBackend {
	t.Helper()
	hb := &healthBackend{backend: &backend{name: name}}
	hb.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			hb.checks.Add(1)
			if hb.failing.Load() {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return
			}
			w.WriteHeader(http.StatusOK)
			return
		}
		hb.serve(w, r)
	}))
	t.Cleanup(hb.srv.Close)
	hb.port = hb.srv.Listener.Addr().(*net.TCPAddr).Port
	return hb
}

// containerStatus reads one container's status and last health error through the admin API.
func containerStatus(t *testing.T, imageID int64, containerID string) (status string, lastErr *string) {
	t.Helper()
	var svc struct {
		Containers []struct {
			ContainerID     string  `json:"container_id"`
			Status          string  `json:"status"`
			LastHealthCheck *string `json:"last_health_check"`
			LastHealthError *string `json:"last_health_error"`
		} `json:"containers"`
	}
	mustDo(t, "GET", fmt.Sprintf("%s/imagelb/services/%d", adminURL, imageID), nil, 200, &svc)
	for _, c := range svc.Containers {
		if c.ContainerID == containerID {
			return c.Status, c.LastHealthError
		}
	}
	t.Fatalf("container %s of image %d not found", containerID, imageID)
	return "", nil
}

// registrySnapshot is the registry as the API lists it, without what moves
// by itself (health check results, rates), for tests that a rejected
// request changes nothing.
func registrySnapshot(t *testing.T) []byte {
	t.Helper()
	var doc any
	mustDo(t, "GET", adminURL+"/imagelb/services", nil, 200, &doc)
	var strip func(v any)
	strip = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			delete(v, "last_health_check")
			delete(v, "last_health_error")
			delete(v, "requests_per_second") // a rate over a sliding window: it moves with the clock
			for _, x := range v {
				strip(x)
			}
		case []any:
			for _, x := range v {
				strip(x)
			}
		}
	}
	strip(doc)
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
