package imagelb

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

// BenchmarkColdStart measures what start on demand adds to a cold start
// beyond the container's own start time: a request for an image without a
// container is sent, the orchestrator stand-in's start webhook starts a
// backend after startDelay and registers it through the admin API, and the
// request's latency minus the backend's start time (webhook received to
// backend listening) is the cost of imagelb: the webhook call, the
// registration, the health check of a starting container (none for one
// registered healthy) and the release of the waiting request. Run it as
//
//	go test -run '^$' -bench BenchmarkColdStart -benchtime 20x .
//
// for the 20 cold starts of each kind; it reports p50 and p99 of the added
// milliseconds.
func BenchmarkColdStart(b *testing.B) {
	if testing.Short() {
		b.Skip("starts Caddy")
	}
	const startDelay = 100 * time.Millisecond
	port := freePort(b)
	o := testkit.NewOrchestrator(b, adminURL+"/imagelb")
	tester := caddytest.NewTester(b)
	tester.InitServer(fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		health_interval 1h
		persist off
		on_demand {
			start_url %s
		}
	}
}
http://127.0.0.1:%d {
	imagelb
}
`, o.StartURL(), port), "caddyfile")
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	for _, status := range []string{"starting", "healthy"} {
		b.Run("registered_"+status, func(b *testing.B) {
			o.SetStart(status, startDelay)
			var added, toWebhook, afterRegistration []float64
			id := int64(5000)
			if status == "healthy" {
				id = 6000
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id++
				b.StopTimer()
				registerObject(b, site, id, map[string]any{"containers": []any{}, "on_demand": map[string]any{}})
				b.StartTimer()
				sent := time.Now()
				a := send(b, fmt.Sprintf("%s/api/v1/proxy/%d/", site, id), nil)
				done := time.Now()
				if a.status != 200 {
					b.Fatalf("cold start %d: %d %s", i, a.status, a.body)
				}
				tl := o.Timeline(id)
				own := tl.Listening.Sub(tl.Called)
				added = append(added, ms(done.Sub(sent)-own))
				toWebhook = append(toWebhook, ms(tl.Called.Sub(sent)))
				afterRegistration = append(afterRegistration, ms(done.Sub(tl.Registered)))
			}
			b.StopTimer()
			b.ReportMetric(quantile(added, 0.5), "added-ms-p50")
			b.ReportMetric(quantile(added, 0.99), "added-ms-p99")
			b.ReportMetric(quantile(toWebhook, 0.5), "to-webhook-ms-p50")
			b.ReportMetric(quantile(afterRegistration, 0.5), "registered-to-answer-ms-p50")
			b.ReportMetric(quantile(afterRegistration, 0.99), "registered-to-answer-ms-p99")
		})
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// quantile is the q-quantile of xs (nearest rank).
func quantile(xs []float64, q float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[min(int(q*float64(len(s))+0.5), len(s)-1)]
}
