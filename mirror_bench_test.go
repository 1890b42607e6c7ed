package imagelb

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// BenchmarkMirrorP99 measures what a mirror costs the client: the same
// clients send the same requests, interleaved (in a rotating order), to two
// images without a mirror and to one that copies every request to a slow
// image (each copy takes mirrorDelay), so all are measured in one run on
// one machine. It reports the p50 and p99 in milliseconds, p99-ratio (the
// p99 with the mirror over the p99 without; 1.0: no cost) and aa-p99-ratio
// (the second image without a mirror over the first: the run's noise), and
// mirror-sent and mirror-dropped, the copies sent and those dropped past
// the mirror's max_in_flight (the slow image cannot keep up at this load, by
// design). The mirror's copies are real requests, so on a machine whose
// cores are busy they take CPU from the clients too. Run it as
//
//	go test -run '^$' -bench BenchmarkMirrorP99 -benchtime 20000x .
func BenchmarkMirrorP99(b *testing.B) {
	if testing.Short() {
		b.Skip("starts Caddy")
	}
	const (
		clients     = 8
		mirrorDelay = 20 * time.Millisecond
	)
	port := freePort(b)
	tester := caddytest.NewTester(b)
	tester.InitServer(siteConfig(port, "health_interval 1h\n\t\tpersist off"), "caddyfile")
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	fast := newBackend(b, "fast")
	slow := newBackend(b, "slow")
	slow.delay = mirrorDelay
	registerObject(b, site, 443, map[string]any{"containers": []any{container("slow", slow)}})
	registerObject(b, site, 441, map[string]any{"containers": []any{container("fast", fast)}})
	registerObject(b, site, 444, map[string]any{"containers": []any{container("fast", fast)}})
	registerObject(b, site, 442, map[string]any{"containers": []any{container("fast", fast)},
		"mirror": map[string]any{"image_id": 443, "percent": 100, "max_in_flight": 16}})
	before := splitStats(b, 443)

	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	get := func(url string) time.Duration {
		start := time.Now()
		resp, err := hc.Get(url)
		if err != nil {
			b.Error(err)
			return 0
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Errorf("status %d", resp.StatusCode)
		}
		return time.Since(start)
	}
	var mu sync.Mutex
	var plain, control, mirrored []float64
	b.ResetTimer()
	var wg sync.WaitGroup
	per := max(b.N/(3*clients), 1)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := [3][]float64{}
			for i := range per {
				for k := range 3 {
					j := (i + k) % 3
					lat[j] = append(lat[j], ms(get(fmt.Sprintf("%s/api/v1/proxy/%d/sleep", site, [3]int{441, 444, 442}[j]))))
				}
			}
			mu.Lock()
			plain, control, mirrored = append(plain, lat[0]...), append(control, lat[1]...), append(mirrored, lat[2]...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	b.StopTimer()
	after := splitStats(b, 443)
	b.ReportMetric(quantile(plain, 0.5), "plain-ms-p50")
	b.ReportMetric(quantile(plain, 0.99), "plain-ms-p99")
	b.ReportMetric(quantile(mirrored, 0.5), "mirror-ms-p50")
	b.ReportMetric(quantile(mirrored, 0.99), "mirror-ms-p99")
	b.ReportMetric(quantile(mirrored, 0.99)/quantile(plain, 0.99), "p99-ratio")
	b.ReportMetric(quantile(control, 0.99)/quantile(plain, 0.99), "aa-p99-ratio")
	b.ReportMetric(float64(after.MirroredRequests-before.MirroredRequests), "mirror-sent")
	b.ReportMetric(float64(after.MirrorDropped-before.MirrorDropped), "mirror-dropped")
}
