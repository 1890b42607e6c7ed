package imagelb

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/imagelb/caddy-imagelb/health"
)

// TestActiveHealthChecks: a container whose /health starts failing is made
// unhealthy by the periodic checks and gets no traffic, then recovers.
func TestActiveHealthChecks(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 50ms\n\t\thealth_timeout 1s"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	a, b := newHealthBackend(t, "a"), newHealthBackend(t, "b")
	register(t, site+"/api/v1", 100, "", container("a", a.backend), container("b", b.backend))

	a.failing.Store(true)
	eventually(t, "a unhealthy", func() bool { s, _ := containerStatus(t, 100, "a"); return s == "unhealthy" })
	if _, lastErr := containerStatus(t, 100, "a"); lastErr == nil || *lastErr == "" {
		t.Fatal("last_health_error is empty for a failing container")
	}
	for i := 0; i < 6; i++ {
		if got := proxyGet(t, site, 100, "/").Backend; got != "b" {
			t.Fatalf("unhealthy container got request %d", i)
		}
	}
	a.failing.Store(false)
	eventually(t, "a healthy again", func() bool { s, _ := containerStatus(t, 100, "a"); return s == "healthy" })
	got := map[string]int{}
	for i := 0; i < 4; i++ {
		got[proxyGet(t, site, 100, "/").Backend]++
	}
	if got["a"] != 2 || got["b"] != 2 {
		t.Fatalf("after recovery: %v", got)
	}
}

// TestHealthIntervalFromEnvironment: with no health_interval in the config,
// HEALTH_CHECK_INTERVAL (seconds) sets it.
func TestHealthIntervalFromEnvironment(t *testing.T) {
	t.Setenv("HEALTH_CHECK_INTERVAL", "0.05")
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	a := newHealthBackend(t, "a")
	register(t, adminURL+"/imagelb", 101, "", container("a", a.backend))
	eventually(t, "several checks at a 50ms interval", func() bool { return a.checks.Load() >= 5 })
}

// TestOnDemandHealthCheck: starting -> healthy on the first passing check,
// results with previous_status, and 404 for an unknown image.
func TestOnDemandHealthCheck(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	a, b := newHealthBackend(t, "a"), newHealthBackend(t, "b")
	b.failing.Store(true)
	register(t, site+"/api/v1", 102, "",
		map[string]any{"container_id": "a", "port": a.port, "status": "unhealthy"},
		map[string]any{"container_id": "b", "port": b.port})
	register(t, site+"/api/v1", 103, "", container("other", newHealthBackend(t, "o").backend))

	mustDo(t, "GET", site+"/api/v1/proxy/102/", nil, 200, nil) // only b can take it, and it does: checks have not run
	var rep struct {
		Checked   int `json:"checked"`
		Healthy   int `json:"healthy"`
		Unhealthy int `json:"unhealthy"`
		Results   []struct {
			ImageID        int64    `json:"image_id"`
			ContainerID    string   `json:"container_id"`
			Status         string   `json:"status"`
			PreviousStatus string   `json:"previous_status"`
			LatencyMS      *float64 `json:"latency_ms"`
			Error          *string  `json:"error"`
		} `json:"results"`
	}
	mustDo(t, "POST", site+"/api/v1/health-check?image_id=102", nil, 200, &rep)
	if rep.Checked != 2 || rep.Healthy != 1 || rep.Unhealthy != 1 || len(rep.Results) != 2 {
		t.Fatalf("report %+v", rep)
	}
	for _, r := range rep.Results {
		if r.ImageID != 102 || r.LatencyMS == nil {
			t.Fatalf("result %+v", r)
		}
		switch r.ContainerID {
		case "a":
			if r.PreviousStatus != "unhealthy" || r.Status != "healthy" || r.Error != nil {
				t.Fatalf("a: %+v", r)
			}
		case "b":
			if r.PreviousStatus != "healthy" || r.Status != "unhealthy" || r.Error == nil {
				t.Fatalf("b: %+v", r)
			}
		}
	}
	if e := proxyGet(t, site, 102, "/"); e.Backend != "a" {
		t.Fatalf("after the check only a is healthy, got %s", e.Backend)
	}
	mustDo(t, "POST", adminURL+"/imagelb/health-check", nil, 200, &rep)
	if rep.Checked != 3 {
		t.Fatalf("checking everything: %+v", rep)
	}
	mustDo(t, "POST", site+"/api/v1/health-check?image_id=999", nil, 404, nil)
}

// TestStartingCheckedAtOnce: a container registered as starting is checked
// at once and then every second until it passes, whatever the interval.
func TestStartingCheckedAtOnce(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	a := newHealthBackend(t, "a")
	a.failing.Store(true)
	register(t, site+"/api/v1", 104, "", map[string]any{"container_id": "a", "port": a.port, "status": "starting"})
	eventually(t, "the first check", func() bool {
		status, lastErr := containerStatus(t, 104, "a")
		return status == "starting" && lastErr != nil
	})
	a.failing.Store(false)
	eventually(t, "a passing check within a second or so", func() bool {
		status, _ := containerStatus(t, 104, "a")
		return status == "healthy"
	})
	if e := proxyGet(t, site, 104, "/"); e.Backend != "a" {
		t.Fatalf("got %s", e.Backend)
	}
}

// TestPassiveHealthCheck: a container that refuses connections is taken out
// at once by the proxy's failure (no active check runs in this test), the
// client never sees it, and a passing check brings it back.
func TestPassiveHealthCheck(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tmax_fails 1"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	live := newHealthBackend(t, "live")
	deadPort := freePort(t)
	register(t, site+"/api/v1", 104, "", map[string]any{"container_id": "dead", "port": deadPort}, container("live", live.backend))
	for i := 0; i < 6; i++ {
		if got := proxyGet(t, site, 104, "/").Backend; got != "live" {
			t.Fatalf("request %d: %s", i, got)
		}
	}
	if s, _ := containerStatus(t, 104, "dead"); s != "unhealthy" {
		t.Fatalf("dead container is %s after a failed attempt", s)
	}
	for _, c := range getStats(t, 104).Services[0].Containers {
		if c.ContainerID == "dead" && c.TotalRequests != 1 {
			t.Fatalf("dead container got %d attempts, want 1 (ejected after the first)", c.TotalRequests)
		}
	}
	// the container comes up: the next passing check restores it
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", deadPort))
	if err != nil {
		t.Skipf("port %d was taken meanwhile: %v", deadPort, err)
	}
	revived := &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}}
	revived.Start()
	t.Cleanup(revived.Close)
	mustDo(t, "POST", site+"/api/v1/health-check?image_id=104", nil, 200, nil)
	if s, _ := containerStatus(t, 104, "dead"); s != "healthy" {
		t.Fatalf("revived container is %s after a passing check", s)
	}
}

// TestKilledBackendUnderLoad: one of three containers dies while clients
// send requests; with retries on, no client sees an error.
func TestKilledBackendUnderLoad(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tmax_retries 3"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	bs := []*healthBackend{newHealthBackend(t, "a"), newHealthBackend(t, "b"), newHealthBackend(t, "c")}
	register(t, site+"/api/v1", 105, "", container("a", bs[0].backend), container("b", bs[1].backend), container("c", bs[2].backend))

	l := startLoad(site+"/api/v1/proxy/105/x", 8, nil)
	l.waitServed(t, "load running", 100)
	bs[1].srv.Listener.Close()
	bs[1].srv.CloseClientConnections()
	l.waitServed(t, "load after the kill", 500)
	l.finish(t)
	if s, _ := containerStatus(t, 105, "b"); s != "unhealthy" {
		t.Fatalf("killed container is %s", s)
	}
}

// TestOneCheckerAcrossReloads: three reloads leave exactly one checker loop.
func TestOneCheckerAcrossReloads(t *testing.T) {
	for i := 0; i < 3; i++ {
		startCaddyNoReset(t, siteConfig(freePort(t), fmt.Sprintf("health_interval %dms", 50+i)))
		if n := health.Running(); n != 1 {
			t.Fatalf("after load %d: %d checker loops running", i+1, n)
		}
	}
	a := newHealthBackend(t, "a")
	register(t, adminURL+"/imagelb", 106, "", container("a", a.backend))
	eventually(t, "the checker still checks", func() bool { return a.checks.Load() >= 3 })
}

// TestHealthEvents: status changes are emitted as Caddy events, once each.
func TestHealthEvents(t *testing.T) {
	port := freePort(t)
	tester := caddytest.NewTester(t)
	tester.InitServer(fmt.Sprintf(`{
	"admin": {"listen": "localhost:2999"},
	"apps": {
		"imagelb": {"health_interval": "1h"},
		"events": {"subscriptions": [{
			"events": ["imagelb.container_healthy", "imagelb.container_unhealthy"],
			"handlers": [{"handler": "imagelb_test_recorder"}]
		}]},
		"http": {"servers": {"s": {"listen": ["127.0.0.1:%d"], "routes": [{"handle": [{"handler": "imagelb"}]}]}}}
	}
}`, port), "json")
	if t.Failed() {
		t.FailNow()
	}
	resetRegistry(t)
	recorded.reset()
	a := newHealthBackend(t, "a")
	register(t, adminURL+"/imagelb", 107, "", container("a", a.backend))
	a.failing.Store(true)
	for i := 0; i < 3; i++ {
		mustDo(t, "POST", adminURL+"/imagelb/health-check", nil, 200, nil)
	}
	a.failing.Store(false)
	mustDo(t, "POST", adminURL+"/imagelb/health-check", nil, 200, nil)
	got := recorded.list()
	if len(got) != 2 || got[0] != "imagelb.container_unhealthy a healthy->unhealthy" || got[1] != "imagelb.container_healthy a unhealthy->healthy" {
		t.Fatalf("events %q", got)
	}
}

// recorder is an events handler module for the tests: it records events.
type recorder struct{}

func (recorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.imagelb_test_recorder", New: func() caddy.Module { return new(recorder) }}
}

func (recorder) Handle(_ context.Context, e caddy.Event) error {
	recorded.add(fmt.Sprintf("%s %v %v->%v", e.Name(), e.Data["container_id"], e.Data["old_status"], e.Data["new_status"]))
	return nil
}

// eventLog is what an events handler of the tests recorded.
type eventLog[T any] struct {
	mu     sync.Mutex
	events []T
}

var recorded eventLog[string]

func (l *eventLog[T]) add(e T) { l.mu.Lock(); l.events = append(l.events, e); l.mu.Unlock() }
func (l *eventLog[T]) reset()  { l.mu.Lock(); l.events = nil; l.mu.Unlock() }
func (l *eventLog[T]) list() []T {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]T(nil), l.events...)
}

func init() { caddy.RegisterModule(recorder{}) }
