package imagelb

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
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

// TestPrometheusMetrics: with per_container on, the admin /imagelb/metrics
// has the imagelb series with the right values after traffic, and drops a
// removed container's series; Caddy's /metrics keeps the bounded set, the
// image's series and no container's.
func TestPrometheusMetrics(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tmetrics {\n\t\t\tper_container\n\t\t}"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	register(t, site+"/api/v1", 123, "", container("m1", newBackend(t, "a")), map[string]any{"container_id": "m2", "port": freePort(t)})
	for i := 0; i < 4; i++ {
		proxyGet(t, site, 123, "/") // the dead m2 is tried once, ejected, and the request retried on m1
	}
	mustDo(t, "DELETE", site+"/api/v1/services/123/containers/m2", nil, 200, nil)
	mustDo(t, "GET", site+"/api/v1/proxy/124/", nil, 404, nil)

	metrics := scrapeStreamed(t)
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
		t.Error("/imagelb/metrics still has series of the removed container m2")
	}
	bounded := scrape(t)
	if !strings.Contains(bounded, `imagelb_requests_total{code="2xx",image_id="123"} 4`) || strings.Contains(bounded, "container_id=") {
		t.Error("Caddy's /metrics lacks the image's series or has a container's")
	}
	mustDo(t, "DELETE", site+"/api/v1/services/123", nil, 200, nil)
	if strings.Contains(scrape(t), `image_id="123"`) || strings.Contains(scrapeStreamed(t), `image_id="123"`) {
		t.Error("/metrics or /imagelb/metrics still has series of the removed image 123")
	}
}

// scrapeStreamed returns the admin /imagelb/metrics, checked to parse as a
// text exposition whose families are each one group.
func scrapeStreamed(t *testing.T) string {
	t.Helper()
	resp, err := client.Get(adminURL + metricsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != textFormat {
		t.Fatalf("%s: %d %q: %s", metricsPath, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	checkExposition(t, string(body))
	return string(body)
}

// seriesKeys returns the keys (name and labels, no value) of the imagelb
// series of an exposition.
func seriesKeys(body string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "imagelb_") {
			key, _, _ := strings.Cut(line, " ")
			out[key] = true
		}
	}
	return out
}

// imagelbSeries returns the keys (name and labels, no value) of the
// imagelb series of one scrape of the admin /metrics.
func imagelbSeries(t *testing.T) map[string]bool {
	t.Helper()
	return seriesKeys(scrape(t))
}

// metricsConfig is siteConfig with a metrics block of the given options.
func metricsConfig(port int, options ...string) string {
	return siteConfig(port, "health_interval 1h\n\t\tpersist off\n\t\tmetrics {\n\t\t\t"+
		strings.Join(options, "\n\t\t\t")+"\n\t\t}")
}

// TestMetricsOptions: on one registry (two images of two containers, only
// image 131 served), the default scrape has the registry-wide series and
// both images' series and no container's, on Caddy's /metrics and on
// /imagelb/metrics alike; each option adds to or takes away from
// /imagelb/metrics exactly its own series, and Caddy's /metrics never gets
// a container's series.
func TestMetricsOptions(t *testing.T) {
	port := freePort(t)
	startCaddy(t, metricsConfig(port))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	b := newBackend(t, "a")
	register(t, site+"/api/v1", 130, "", container("c1", b), container("c2", b))
	register(t, site+"/api/v1", 131, "", container("c3", b), container("c4", b))
	before := metricValue(t, "imagelb_registry_requests_total") // since the process started: earlier tests' too
	for i := 0; i < 4; i++ {
		proxyGet(t, site, 131, "/")
	}

	base := imagelbSeries(t)
	if streamedBase := seriesKeys(scrapeStreamed(t)); !maps.Equal(streamedBase, base) {
		t.Errorf("with the defaults, /imagelb/metrics has %d series and Caddy's /metrics %d: want the same", len(streamedBase), len(base))
	}
	for _, want := range []string{
		`imagelb_registry_requests_total`, `imagelb_registry_request_failures_total`, `imagelb_registry_requests_in_flight`,
		`imagelb_services`, `imagelb_containers{status="healthy"}`, `imagelb_registry_operations_total{operation="register"}`,
		`imagelb_requests_total{code="2xx",image_id="131"}`, `imagelb_request_duration_seconds_count{image_id="131"}`,
		`imagelb_request_failures_total{image_id="130"}`, `imagelb_requests_in_flight{image_id="130"}`,
	} {
		if !base[want] {
			t.Errorf("the default scrape lacks %s", want)
		}
	}
	for key := range base {
		if strings.Contains(key, "container_id=") {
			t.Errorf("the default scrape has a per-container series: %s", key)
		}
	}
	if base[`imagelb_request_duration_seconds_count{image_id="130"}`] {
		t.Error("image 130 never finished a request, yet has a duration histogram")
	}
	if v := metricValue(t, "imagelb_registry_requests_total"); v != before+4 {
		t.Errorf("imagelb_registry_requests_total = %v, want %v + 4", v, before)
	}

	for _, c := range []struct {
		name    string
		options []string
		added   func(key string) bool // nil: adds nothing
		removed func(key string) bool // nil: takes nothing away
		has     []string
	}{
		{name: "per_container", options: []string{"per_container"},
			added: func(k string) bool { return strings.Contains(k, "container_id=") },
			has: []string{`imagelb_container_healthy{container_id="c1",image_id="130"}`,
				`imagelb_container_requests_total{code="2xx",container_id="c3",image_id="131"}`,
				`imagelb_health_checks_total{container_id="c4",image_id="131",result="fail"}`,
				`imagelb_container_ejections_total{container_id="c2",image_id="130"}`}},
		{name: "top_images 1", options: []string{"top_images 1"},
			removed: func(k string) bool { return strings.Contains(k, `image_id="130"`) }},
		{name: "top_images 0", options: []string{"top_images 0"},
			removed: func(k string) bool { return strings.Contains(k, `image_id=`) }},
		{name: "per_image with top_images 0", options: []string{"per_image", "top_images 0"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			startCaddyNoReset(t, metricsConfig(port, c.options...))
			for key := range imagelbSeries(t) {
				if strings.Contains(key, "container_id=") || !base[key] {
					t.Errorf("%s: Caddy's /metrics has %s", c.name, key)
				}
			}
			got := seriesKeys(scrapeStreamed(t))
			for key := range got {
				if !base[key] && (c.added == nil || !c.added(key)) {
					t.Errorf("%s added %s", c.name, key)
				}
			}
			for key := range base {
				if !got[key] && (c.removed == nil || !c.removed(key)) {
					t.Errorf("%s took away %s", c.name, key)
				}
			}
			if c.removed != nil {
				for key := range got {
					if c.removed(key) {
						t.Errorf("%s kept %s", c.name, key)
					}
				}
			}
			for _, want := range c.has {
				if !got[want] {
					t.Errorf("%s lacks %s", c.name, want)
				}
			}
		})
	}
}

// TestMetricsBoundedByDefault: with the defaults a scrape exports the series
// of the 100 busiest images, however many are registered: going from 150 to
// 300 images adds no series, and the served images are among those exported.
func TestMetricsBoundedByDefault(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tpersist off"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	b := newBackend(t, "a")
	registerRange := func(from, to int64) {
		for id := from; id <= to; id++ {
			register(t, adminURL+"/imagelb", id, "", container("c", b))
		}
	}
	registerRange(1001, 1150)
	for _, id := range []int64{1150, 1149} {
		proxyGet(t, site, id, "/")
	}
	images := func(series map[string]bool) map[string]bool {
		ids := map[string]bool{}
		for key := range series {
			if _, rest, ok := strings.Cut(key, `image_id="`); ok {
				id, _, _ := strings.Cut(rest, `"`)
				ids[id] = true
			}
		}
		return ids
	}
	before := imagelbSeries(t)
	registerRange(1151, 1300)
	after := imagelbSeries(t)
	if len(after) != len(before) {
		t.Errorf("%d series at 150 images, %d at 300: the default is not bounded", len(before), len(after))
	}
	ids := images(after)
	if len(ids) != DefaultTopImages || !ids["1150"] || !ids["1149"] {
		t.Errorf("per-image series of %d images (1150 and 1149 among them: %v %v), want the %d busiest",
			len(ids), ids["1150"], ids["1149"], DefaultTopImages)
	}
	for key := range after {
		if strings.Contains(key, "container_id=") {
			t.Fatalf("the default scrape has a per-container series: %s", key)
		}
	}
	if v := metricValue(t, "imagelb_services"); v != 300 {
		t.Errorf("imagelb_services = %v, want 300", v)
	}
}

// TestMetricsWarnOnce: a config load whose metrics options would export
// more than a million series at the registry's size (per_container at
// 40,000 containers: about 1.04 million) logs one WARN naming per_container;
// a load without it logs none.
func TestMetricsWarnOnce(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "warn.log")
	port := freePort(t)
	config := func(options ...string) string {
		return strings.Replace(metricsConfig(port, options...), "admin localhost:2999",
			"admin localhost:2999\n\tlog metrics_warning {\n\t\toutput file "+logFile+"\n\t\tformat json\n\t\tlevel WARN\n\t\tinclude imagelb\n\t}", 1)
	}
	startCaddy(t, config())
	const services, perService = 40, 1000
	for id := int64(1); id <= services; id++ {
		ctrs := make([]map[string]any, perService)
		for i := range ctrs {
			// draining keeps its status whatever the checks of a dead port say
			ctrs[i] = map[string]any{"container_id": fmt.Sprintf("c%d", i), "host": "127.0.0.1", "port": 9, "status": "draining"}
		}
		register(t, adminURL+"/imagelb", 2000+id, "", ctrs...)
	}
	t.Cleanup(func() { resetRegistry(t) })
	warnings := func() []map[string]any {
		data, _ := os.ReadFile(logFile)
		var out []map[string]any
		for _, line := range strings.Split(string(data), "\n") {
			var entry map[string]any
			if json.Unmarshal([]byte(line), &entry) == nil && strings.HasPrefix(fmt.Sprint(entry["msg"]), "metrics options export over a million series") {
				out = append(out, entry)
			}
		}
		return out
	}

	startCaddyNoReset(t, config("per_container"))
	eventually(t, "the warning is logged", func() bool { return len(warnings()) > 0 })
	w := warnings()
	if len(w) != 1 || fmt.Sprint(w[0]["turn_off"]) != "[per_container]" || w[0]["level"] != "warn" {
		t.Fatalf("warnings after one load with per_container: %v, want one naming per_container", w)
	}
	if n, _ := w[0]["series"].(float64); n < seriesWarning || w[0]["containers"] != float64(services*perService) {
		t.Errorf("the warning says %v series and %v containers", w[0]["series"], w[0]["containers"])
	}

	startCaddyNoReset(t, config())
	if w := warnings(); len(w) != 1 {
		t.Fatalf("%d warnings after a load without per_container, want still 1", len(w))
	}
	for key := range imagelbSeries(t) {
		if strings.Contains(key, "container_id=") {
			t.Fatalf("per_container off, yet %s", key)
		}
	}
}

// streamedValue returns the value of one series of the admin
// /imagelb/metrics (where per_image and per_container series are).
func streamedValue(t *testing.T, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(scrapeStreamed(t), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %q: %v", metricsPath, line, err)
			}
			return f
		}
	}
	t.Fatalf("%s lacks %s", metricsPath, series)
	return 0
}

// TestMetricsHandlerOnSite: the imagelb_metrics directive serves on a site
// what the admin /imagelb/metrics serves (here with per_container, for a
// config whose admin endpoint a scraper cannot reach), under its matcher
// only: the imagelb handler still answers the rest of the site, and a
// matcher under its /api/v1/ goes to imagelb_metrics (ordered before it).
func TestMetricsHandlerOnSite(t *testing.T) {
	port := freePort(t)
	startCaddy(t, fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		health_interval 1h
		persist off
		metrics {
			per_container
		}
	}
}
http://127.0.0.1:%d {
	@scrape path /metrics /api/v1/metrics
	imagelb_metrics @scrape
	imagelb
}
`, port))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	register(t, site+"/api/v1", 140, "", container("s1", newBackend(t, "a")))
	proxyGet(t, site, 140, "/")
	resp, err := client.Get(site + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != textFormat {
		t.Fatalf("the site's /metrics: %d %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	checkExposition(t, string(body))
	onSite, onAdmin := seriesKeys(string(body)), seriesKeys(scrapeStreamed(t))
	for _, want := range []string{`imagelb_container_requests_total{code="2xx",container_id="s1",image_id="140"}`,
		`imagelb_requests_total{code="2xx",image_id="140"}`} {
		if !onSite[want] {
			t.Errorf("the site's /metrics lacks %s", want)
		}
	}
	if !maps.Equal(onSite, onAdmin) {
		t.Errorf("the site's /metrics has %d series, the admin /imagelb/metrics %d: want the same", len(onSite), len(onAdmin))
	}
	mustDo(t, "GET", site+"/api/v1/services/140", nil, 200, nil)
	resp, err = client.Get(site + "/api/v1/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != textFormat {
		t.Errorf("the site's /api/v1/metrics: %d %q, want the exposition", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}
