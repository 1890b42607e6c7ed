package imagelb

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestStatsExactUnderConcurrency: 8 clients x 50 requests over two images
// count exactly, the containers add up, and nothing stays in flight.
func TestStatsExactUnderConcurrency(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	for _, id := range []int64{120, 121} {
		register(t, site+"/api/v1", id, "", container("a", newBackend(t, "a")), container("b", newBackend(t, "b")), container("c", newBackend(t, "c")))
	}
	const clients, perClient = 8, 50
	var wg sync.WaitGroup
	errs := make(chan string, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < perClient; j++ {
				id := 120 + int64((i+j)%2)
				if status, body := do(t, "GET", fmt.Sprintf("%s/api/v1/proxy/%d/x", site, id), nil); status != 200 {
					errs <- fmt.Sprintf("status %d: %s", status, body)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	var all statsDoc
	mustDo(t, "GET", site+"/api/v1/stats", nil, 200, &all)
	if all.TotalRequests != clients*perClient || all.FailedRequests != 0 || all.ActiveConnections != 0 {
		t.Fatalf("totals %d/%d/%d, want %d/0/0", all.TotalRequests, all.FailedRequests, all.ActiveConnections, clients*perClient)
	}
	for _, s := range all.Services {
		var sum int64
		for _, c := range s.Containers {
			sum += c.TotalRequests
		}
		if s.TotalRequests != clients*perClient/2 || sum != s.TotalRequests {
			t.Fatalf("image %d: %d requests, containers add to %d, want %d", s.ImageID, s.TotalRequests, sum, clients*perClient/2)
		}
	}
}

// TestStatsInFlightAndLatency: slow requests show in flight and go back to
// zero; percentiles are ordered and not below a backend's known delay.
func TestStatsInFlightAndLatency(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	b := newBackend(t, "slow")
	hold, arrived := make(chan struct{}), make(chan struct{}, 3)
	b.hold, b.arrived = hold, arrived
	b.delay = 20 * time.Millisecond
	register(t, site+"/api/v1", 122, "", container("s", b))

	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); do(t, "GET", site+"/api/v1/proxy/122/slow", nil) }()
	}
	for i := 0; i < 3; i++ {
		<-arrived
	}
	st := getStats(t, 122)
	if st.ActiveConnections != 3 || st.Services[0].ActiveConnections != 3 || st.Services[0].Containers[0].ActiveConnections != 3 {
		t.Fatalf("in flight during 3 slow requests: %+v", st)
	}
	close(hold)
	wg.Wait()
	if st := getStats(t, 122); st.ActiveConnections != 0 {
		t.Fatalf("in flight after: %+v", st)
	}

	for i := 0; i < 20; i++ {
		proxyGet(t, site, 122, "/sleep")
	}
	var doc struct {
		Services []struct {
			RequestsPerSecond float64 `json:"requests_per_second"`
			LatencyMS         struct {
				P50, P95, P99 float64
			} `json:"latency_ms"`
			Containers []struct {
				LatencyMS struct {
					P50, P95, P99 float64
				} `json:"latency_ms"`
			} `json:"containers"`
		} `json:"services"`
	}
	mustDo(t, "GET", site+"/api/v1/stats?image_id=122", nil, 200, &doc)
	for _, l := range []struct{ P50, P95, P99 float64 }{doc.Services[0].LatencyMS, doc.Services[0].Containers[0].LatencyMS} {
		if !(l.P50 <= l.P95 && l.P95 <= l.P99) || l.P95 < 20 || l.P99 > 60_000 {
			t.Fatalf("latency %+v: want ordered percentiles, p95 at least the backend's 20 ms", l)
		}
	}
	if doc.Services[0].RequestsPerSecond <= 0 {
		t.Fatalf("requests_per_second %v after 23 requests", doc.Services[0].RequestsPerSecond)
	}
}

// TestPrometheusMetrics: the admin /metrics has the imagelb series with the
// right values after traffic, and drops a removed container's series.
func TestPrometheusMetrics(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	register(t, site+"/api/v1", 123, "", container("m1", newBackend(t, "a")), map[string]any{"container_id": "m2", "port": freePort(t)})
	for i := 0; i < 4; i++ {
		proxyGet(t, site, 123, "/") // the dead m2 is tried once, ejected, and the request retried on m1
	}
	mustDo(t, "DELETE", site+"/api/v1/services/123/containers/m2", nil, 200, nil)
	mustDo(t, "GET", site+"/api/v1/proxy/124/", nil, 404, nil)

	metrics := scrape(t)
	for _, want := range []string{
		`imagelb_requests_total{code="2xx",image_id="123"} 4`,
		`imagelb_request_failures_total{image_id="123"} 0`,
		`imagelb_requests_in_flight{image_id="123"} 0`,
		`imagelb_request_duration_seconds_count{image_id="123"} 4`,
		`imagelb_container_requests_total{code="2xx",container_id="m1",image_id="123"} 4`,
		`imagelb_container_healthy{container_id="m1",image_id="123"} 1`,
		`imagelb_health_checks_total{container_id="m1",image_id="123",result="pass"} 0`,
		`imagelb_registry_operations_total{operation="register"}`,
		`imagelb_registry_operations_total{operation="remove_container"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metrics, `container_id="m2"`) {
		t.Error("/metrics still has series of the removed container m2")
	}
	mustDo(t, "DELETE", site+"/api/v1/services/123", nil, 200, nil)
	if strings.Contains(scrape(t), `image_id="123"`) {
		t.Error("/metrics still has series of the removed image 123")
	}
}
