package imagelb

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
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// adminURL is caddytest's admin endpoint.
const adminURL = "http://localhost:2999"

func TestMain(m *testing.M) {
	// caddytest writes autosave.json and data into the real XDG dirs:
	// keep them in a temporary directory.
	dir, err := os.MkdirTemp("", "imagelb-test-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CONFIG_HOME", dir)
	os.Setenv("XDG_DATA_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// client is the HTTP client of the tests; it does not follow redirects.
var client = &http.Client{
	Timeout:       15 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

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

// eventually polls cond until it holds or 10s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a condition, not a wait for time to pass
	}
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
