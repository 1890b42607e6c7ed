package imagelb

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/imagelb/caddy-imagelb/registry"
)

// optionCollector is the collector with any options: what client_golang
// would gather for them, to compare the streamed exposition with.
type optionCollector struct{ o metricsOptions }

func (c optionCollector) Describe(ch chan<- *prometheus.Desc) { metrics.Describe(ch) }

func (c optionCollector) Collect(ch chan<- prometheus.Metric) {
	e := newExposition(running.Load(), c.o)
	for _, f := range families {
		e.send(chanSink{ch}, f)
	}
}

// gathered is the text exposition client_golang writes for c, as Caddy's
// admin /metrics serves it (promhttp over a registry).
func gathered(t testing.TB, c prometheus.Collector) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Accept", "text/plain")
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Fatalf("promhttp: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// streamed is the body of the admin /imagelb/metrics for the running app.
func streamed(t testing.TB) string {
	t.Helper()
	rec := httptest.NewRecorder()
	if err := serveMetrics(rec, httptest.NewRequest("GET", metricsPath, nil)); err != nil || rec.Code != 200 {
		t.Fatalf("/imagelb/metrics: %v %d %s", err, rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != textFormat {
		t.Fatalf("Content-Type %q", ct)
	}
	return rec.Body.String()
}

// runWith makes an app of reg with the metrics options cfg the running
// one for the test.
func runWith(t testing.TB, reg *registry.Registry, cfg *MetricsConfig) {
	prev := running.Load()
	running.Store(&App{reg: reg, Metrics: cfg})
	t.Cleanup(func() { running.Store(prev) })
}

// checkExposition parses a text exposition with expfmt's parser and checks
// what the parser lets through: every family's lines are one group after
// its HELP and TYPE, which come once.
func checkExposition(t testing.TB, body string) map[string]int {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v", err)
	}
	seen, cur := map[string]bool{}, ""
	for _, line := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, _, _ = strings.Cut(name, " ")
			if seen[name] {
				t.Fatalf("family %s has a second group", name)
			}
			seen[name], cur = true, name
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		if name != cur && strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count") != cur {
			t.Fatalf("%q is outside its family's group (after # TYPE %s)", line, cur)
		}
	}
	series := map[string]int{}
	for name, f := range fams {
		series[name] = len(f.Metric)
	}
	return series
}

// sortedLines is a body's lines, sorted: client_golang sorts a family's
// series by their labels, the stream writes them in the snapshot's order.
func sortedLines(body string) []string {
	lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
	slices.Sort(lines)
	return lines
}

// variedRegistry has images with every kind of series: status classes, a
// histogram, turned away requests, an on_demand image, a split, mirror
// copies, containers in every status with health checks, an ejection-free
// and a served container, a container id that needs escaping, and idle
// images.
func variedRegistry(t testing.TB) *registry.Registry {
	t.Helper()
	reg := registry.New(registry.Options{})
	statuses := []registry.Status{registry.StatusHealthy, registry.StatusUnhealthy, registry.StatusStarting, registry.StatusDraining}
	for id := int64(1); id <= 12; id++ {
		spec := registry.ServiceSpec{ImageID: id, ImageName: fmt.Sprint("image-", id)}
		if id == 3 {
			spec.Options.OnDemand = &registry.OnDemand{}
		}
		for i, st := range statuses[:1+id%4] {
			cid := fmt.Sprintf("c%d", i)
			if id == 5 && i == 1 {
				cid = "odd \"id\" with \\ and\nnewline"
			}
			spec.Containers = append(spec.Containers, registry.ContainerSpec{ContainerID: cid, Host: "127.0.0.1",
				Port: 8000 + i, Status: st, Weight: 1})
		}
		svc, err := reg.Register(spec)
		if err != nil {
			t.Fatal(err)
		}
		if id > 8 {
			continue // idle
		}
		for i, code := range []int{200, 200, 404, 503, 0, 302}[:1+id%6] {
			svc.State.Begin()
			svc.State.Finish(code, code == 0 || code >= 500, time.Duration(id*int64(i+1))*time.Millisecond)
			c := svc.Containers[i%len(svc.Containers)]
			c.Stats.Begin()
			c.Stats.Finish(code, code == 0 || code >= 500, time.Duration(id)*time.Second)
			c.Stats.RecordCheck(i%2 == 0)
		}
		svc.State.CountExtra().RateLimited.Add(id)
		if id == 4 {
			svc.State.CountExtra().SplitRequests.Add(7)
			svc.State.CountExtra().Mirror.Requests.Add(3)
			svc.State.CountExtra().Mirror.Failures.Add(1)
			svc.State.InFlight.Add(2) // two requests still in flight
		}
	}
	return reg
}

// TestMetricsStreamMatchesGather: for each metrics option, the streamed
// /imagelb/metrics has exactly the lines client_golang writes for the same
// series (HELP, TYPE, names, labels, values), every family in one group,
// and parses with expfmt's text parser; Caddy's /metrics gets the bounded
// set (the stream's with per_image and per_container off) whatever the
// options.
func TestMetricsStreamMatchesGather(t *testing.T) {
	reg := variedRegistry(t)
	one := 1
	for _, c := range []struct {
		name string
		cfg  *MetricsConfig
	}{
		{"default", nil},
		{"per_image", &MetricsConfig{PerImage: true}},
		{"per_container", &MetricsConfig{PerContainer: true}},
		{"all", &MetricsConfig{PerImage: true, PerContainer: true}},
		{"top_images 1 per_container", &MetricsConfig{PerContainer: true, TopImages: &one}},
	} {
		t.Run(c.name, func(t *testing.T) {
			runWith(t, reg, c.cfg)
			body := streamed(t)
			series := checkExposition(t, body)
			want := gathered(t, optionCollector{c.cfg.options()})
			if got, want := sortedLines(body), sortedLines(want); !slices.Equal(got, want) {
				t.Fatalf("the stream differs from client_golang's exposition:\n%s", lineDiff(got, want))
			}
			o := c.cfg.options()
			if o.perContainer && series["imagelb_container_healthy"] != 30 {
				t.Errorf("imagelb_container_healthy has %d series, want the 30 containers'", series["imagelb_container_healthy"])
			}
			if o.perImage && series["imagelb_request_failures_total"] != 12 {
				t.Errorf("imagelb_request_failures_total has %d series, want the 12 images'", series["imagelb_request_failures_total"])
			}

			o.perImage, o.perContainer = false, false
			if got, want := sortedLines(gathered(t, metrics)), sortedLines(gathered(t, optionCollector{o})); !slices.Equal(got, want) {
				t.Fatalf("Caddy's /metrics is not the bounded set:\n%s", lineDiff(got, want))
			}
		})
	}
}

// lineDiff lists the lines only one of two sorted lists has.
func lineDiff(got, want []string) string {
	var b strings.Builder
	i, j := 0, 0
	for i < len(got) || j < len(want) {
		switch {
		case j == len(want) || i < len(got) && got[i] < want[j]:
			fmt.Fprintf(&b, "+ %s\n", got[i])
			i++
		case i == len(got) || want[j] < got[i]:
			fmt.Fprintf(&b, "- %s\n", want[j])
			j++
		default:
			i, j = i+1, j+1
		}
	}
	return b.String()
}

// countingWriter is a ResponseWriter that counts the body and keeps none.
type countingWriter struct {
	h     http.Header
	bytes int64
}

func (w *countingWriter) Header() http.Header         { return w.h }
func (w *countingWriter) WriteHeader(int)             {}
func (w *countingWriter) Write(p []byte) (int, error) { w.bytes += int64(len(p)); return len(p), nil }

// allocatedBy is the bytes the Go heap allocated while h served one scrape
// (with the Accept-Encoding given, "" none), and the body's size.
func allocatedBy(h http.Handler, encoding string) (allocated, body int64) {
	w := &countingWriter{h: http.Header{}}
	req := httptest.NewRequest("GET", metricsPath, nil)
	req.Header.Set("Accept", "text/plain")
	if encoding != "" {
		req.Header.Set("Accept-Encoding", encoding)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	h.ServeHTTP(w, req)
	runtime.ReadMemStats(&after)
	return int64(after.TotalAlloc - before.TotalAlloc), w.bytes
}

// TestMetricsStreamMemory: a scrape of /imagelb/metrics with every option on
// allocates a bounded amount whatever the registry's size: at 2,000 and
// 20,000 served images of 2 containers (about 150,000 and 1.5 million
// series) under 1 MB, while the body is megabytes; gzip adds its
// compressor's fixed state. client_golang's gather
// of the same series allocates about 3 KB per series.
func TestMetricsStreamMemory(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = serveMetrics(w, r) })
	for _, n := range []int{2_000, 20_000} {
		reg := registry.New(registry.Options{MaxServices: n, MaxTotalContainers: 2 * n})
		for id := int64(1); id <= int64(n); id++ {
			svc, err := reg.Register(registry.ServiceSpec{ImageID: id, ImageName: fmt.Sprint("image-", id), Containers: []registry.ContainerSpec{
				{ContainerID: "a", Host: "127.0.0.1", Port: 8000, Status: registry.StatusHealthy, Weight: 1},
				{ContainerID: "b", Host: "127.0.0.1", Port: 8001, Status: registry.StatusHealthy, Weight: 1}}})
			if err != nil {
				t.Fatal(err)
			}
			svc.State.Begin()
			svc.State.Finish(http.StatusOK, false, time.Duration(id)*time.Microsecond)
			for _, c := range svc.Containers {
				c.Stats.Begin()
				c.Stats.Finish(http.StatusOK, false, time.Duration(id)*time.Microsecond)
			}
		}
		runWith(t, reg, &MetricsConfig{PerImage: true, PerContainer: true})
		allocated, body := allocatedBy(h, "")
		t.Logf("%d images: %.1f MB written, %.0f kB allocated", n, float64(body)/1e6, float64(allocated)/1e3)
		if body < int64(n)*5_000 {
			t.Fatalf("%d images: a body of %d bytes: not every series", n, body)
		}
		if allocated > 1<<20 {
			t.Errorf("%d images: a scrape allocated %.1f MB, want under 1 MB whatever the size", n, float64(allocated)/1e6)
		}
		allocated, body = allocatedBy(h, "gzip")
		t.Logf("%d images, gzip: %.1f MB written, %.0f kB allocated", n, float64(body)/1e6, float64(allocated)/1e3)
		if allocated > 4<<20 {
			t.Errorf("%d images: a gzip scrape allocated %.1f MB, want under 4 MB whatever the size", n, float64(allocated)/1e6)
		}
	}
}

// TestMetricsStreamGzip: asked for gzip, as Prometheus asks, the stream is
// the same exposition compressed; HEAD has no body and other methods are
// refused.
func TestMetricsStreamGzip(t *testing.T) {
	runWith(t, variedRegistry(t), &MetricsConfig{PerImage: true, PerContainer: true})
	plain := streamed(t)
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", metricsPath, nil)
	req.Header.Set("Accept-Encoding", "gzip")
	_ = serveMetrics(rec, req)
	if rec.Header().Get("Content-Encoding") != "gzip" {
		t.Fatalf("Content-Encoding %q for Accept-Encoding: gzip", rec.Header().Get("Content-Encoding"))
	}
	zr, err := gzip.NewReader(bytes.NewReader(rec.Body.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	unzipped, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sortedLines(string(unzipped)), sortedLines(plain); !slices.Equal(got, want) {
		t.Fatalf("the gzip body differs:\n%s", lineDiff(got, want))
	}
	rec = httptest.NewRecorder()
	_ = serveMetrics(rec, httptest.NewRequest("HEAD", metricsPath, nil))
	if rec.Code != 200 || rec.Body.Len() != 0 {
		t.Errorf("HEAD: %d with %d bytes", rec.Code, rec.Body.Len())
	}
	rec = httptest.NewRecorder()
	_ = serveMetrics(rec, httptest.NewRequest("POST", metricsPath, nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", rec.Code)
	}
}
