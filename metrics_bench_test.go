package imagelb

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	meter "github.com/imagelb/caddy-imagelb/internal/scrape"
	"github.com/imagelb/caddy-imagelb/registry"
)

// BenchmarkScrape measures one scrape of the imagelb series at 1,000, 10,000
// and 100,000 images of 2 containers, idle (registered, no request) and
// served (each image and container finished one request), with each metrics
// option, from each handler: bytes, series, seconds and the RSS growth of
// the process during the scrape. The handlers: caddy, the one Caddy's admin
// /metrics serves (promhttp over a registry: the bounded set whatever the
// options); stream, the admin /imagelb/metrics (everything the options
// choose, streamed), and stream-gzip, the same compressed, as Prometheus
// asks for it (its series are not counted: the body is gzip); gather, client_golang gathering what the stream
// writes (what Caddy's /metrics cost with every option before the stream).
// Run one size at a time, alone on the machine:
//
//	go test -run '^$' -bench 'Scrape/images=100000/served/all/stream' -benchtime 3x .
func BenchmarkScrape(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		for _, traffic := range []string{"idle", "served"} {
			for _, o := range scrapeOptions {
				for _, handler := range []string{"caddy", "stream", "stream-gzip", "gather"} {
					b.Run(fmt.Sprintf("images=%d/%s/%s/%s", n, traffic, o.name, handler), func(b *testing.B) {
						benchScrape(b, n, traffic == "served", o.cfg, handler)
					})
				}
			}
		}
	}
}

// benchScrape measures the scrapes of one handler (see BenchmarkScrape).
func benchScrape(b *testing.B, n int, served bool, cfg *MetricsConfig, handler string) {
	reg := scrapeRegistry(b, n, served)
	prev := running.Load()
	running.Store(&App{reg: reg, Metrics: cfg})
	b.Cleanup(func() { running.Store(prev) })
	var h http.Handler
	switch handler {
	case "stream":
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = serveMetrics(w, r) })
	case "stream-gzip": // as Prometheus asks: the bytes are the compressed body's
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Header.Set("Accept-Encoding", "gzip")
			_ = serveMetrics(w, r)
		})
	default:
		var c prometheus.Collector = metrics
		if handler == "gather" {
			c = optionCollector{cfg.options()}
		}
		preg := prometheus.NewRegistry()
		if err := preg.Register(c); err != nil {
			b.Fatal(err)
		}
		h = promhttp.InstrumentMetricHandler(preg, promhttp.HandlerFor(preg, promhttp.HandlerOpts{}))
	}
	var worst meter.Result
	var elapsed time.Duration
	for b.Loop() {
		res, err := meter.Handler(h)
		if err != nil {
			b.Fatal(err)
		}
		elapsed += res.Elapsed
		if res.RSSGrowth > worst.RSSGrowth {
			worst.RSSGrowth = res.RSSGrowth
		}
		worst.Bytes, worst.Series = res.Bytes, res.Series
	}
	b.ReportMetric(float64(worst.Bytes)/1e6, "MB/scrape")
	b.ReportMetric(float64(worst.Series), "series")
	b.ReportMetric(float64(worst.RSSGrowth)/1e6, "MB-RSS-growth")
	b.ReportMetric(elapsed.Seconds()/float64(b.N), "s/scrape")
}

// scrapeOptions are the metrics options the scrape benchmark compares.
var scrapeOptions = []struct {
	name string
	cfg  *MetricsConfig
}{
	{"default", nil},
	{"all", &MetricsConfig{PerImage: true, PerContainer: true}},
}

// scrapeRegistries keeps the filled registries between sub-benchmarks
// (filling 100,000 images takes a while).
var scrapeRegistries = map[string]*registry.Registry{}

func scrapeRegistry(b *testing.B, n int, served bool) *registry.Registry {
	b.Helper()
	key := fmt.Sprint(n, served)
	if r := scrapeRegistries[key]; r != nil {
		return r
	}
	clear(scrapeRegistries) // one registry at a time: the RSS figures are of one size
	reg := registry.New(registry.Options{MaxServices: n, MaxTotalContainers: 2 * n})
	for id := int64(1); id <= int64(n); id++ {
		svc, err := reg.Register(registry.ServiceSpec{ImageID: id, ImageName: fmt.Sprintf("image-%d", id),
			Containers: []registry.ContainerSpec{
				{ContainerID: "a", Host: "127.0.0.1", Port: 8000, Status: registry.StatusHealthy, Weight: 1},
				{ContainerID: "b", Host: "127.0.0.1", Port: 8001, Status: registry.StatusHealthy, Weight: 1}}})
		if err != nil {
			b.Fatal(err)
		}
		if served {
			svc.State.Begin()
			svc.State.Finish(http.StatusOK, false, time.Duration(id)*time.Microsecond)
			for _, c := range svc.Containers {
				c.Stats.Begin()
				c.Stats.Finish(http.StatusOK, false, time.Duration(id)*time.Microsecond)
			}
		}
	}
	scrapeRegistries[key] = reg
	return reg
}
