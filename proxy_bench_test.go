package imagelb

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/imagelb/caddy-imagelb/registry"
)

// BenchmarkStatsCost puts the cost of the statistics on the request path
// (counting a request for its image and its attempt for a container, with
// latency histograms and the last-minute window) next to the cost of a whole
// proxied request through Caddy, measured in the same run, and reports the
// share. Metrics cost nothing per request: they are read at scrape time.
func BenchmarkStatsCost(b *testing.B) {
	if testing.Short() {
		b.Skip("starts Caddy")
	}
	port := freePort(b)
	tester := caddytest.NewTester(b)
	tester.InitServer(siteConfig(port, "health_interval 1h\n\t\tpersist off"), "caddyfile")
	be := newBackend(b, "a")
	register(b, adminURL+"/imagelb", 140, "", container("a", be), container("b", be))
	url := fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy/140/", port)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}

	reg := registry.New(registry.Options{})
	svc, err := reg.Register(registry.ServiceSpec{ImageID: 1, ImageName: "x",
		Containers: []registry.ContainerSpec{{ContainerID: "a", Host: "127.0.0.1", Port: 1, Status: registry.StatusHealthy, Weight: 1}}})
	if err != nil {
		b.Fatal(err)
	}
	ctr := svc.Containers[0]

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		resp, err := hc.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	proxied := time.Since(start)
	b.StopTimer()

	req := httptest.NewRequest(http.MethodGet, "/", nil)
	app := &App{}
	start = time.Now()
	for i := 0; i < b.N; i++ {
		svc.State.Begin()
		q := newRequest(req, svc, app)
		q.begin(ctr)
		svc.State.Usage.AddIn(100) // one read of the request body, one write of the answer
		svc.State.Usage.AddOut(1000)
		q.finish(200, false, outcomeAnswered)
	}
	accounting := time.Since(start)

	b.ReportMetric(float64(accounting.Nanoseconds())/float64(b.N), "stats-ns/req")
	b.ReportMetric(100*accounting.Seconds()/proxied.Seconds(), "stats-%")
}

// BenchmarkProxyNewConnection proxies requests whose container closes every
// connection, so each request dials it anew: the dialers' Control hook
// (self.go, the self and metadata rules) is on every request's path here,
// where with keep-alive it is paid once per connection.
func BenchmarkProxyNewConnection(b *testing.B) {
	if testing.Short() {
		b.Skip("starts Caddy")
	}
	port := freePort(b)
	tester := caddytest.NewTester(b)
	tester.InitServer(siteConfig(port, "health_interval 1h\n\t\tpersist off"), "caddyfile")
	be := funcBackend(b, "a", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusOK)
	})
	register(b, adminURL+"/imagelb", 141, "", container("a", be))
	url := fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy/141/", port)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	b.ReportAllocs()
	for b.Loop() {
		resp, err := hc.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}
