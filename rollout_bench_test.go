package imagelb

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// The rollout's two figures, measured through real Caddy and real
// backends (docs/traffic-control.md#rollouts quotes them):
//
//	go test -run '^$' -bench BenchmarkRollout -benchtime 10x .
//
// BenchmarkRolloutFailingCanary: how many requests a canary that answers
// 500 served before the rollback, against percent × rate × interval (what
// a controller judging at the step's end lets through).
// BenchmarkRolloutDecisionDelay: how long after a step's end the decision
// to advance is in the record.

// benchSite loads a site with imagelb for a benchmark and empties the
// registry of images 1 and 2.
func benchSite(b *testing.B) (site string) {
	b.Helper()
	port := freePort(b)
	tester := caddytest.NewTester(b)
	tester.InitServer(siteConfig(port, ""), "caddyfile")
	site = fmt.Sprintf("http://127.0.0.1:%d", port)
	for _, id := range []int{1, 2} {
		do(b, "DELETE", fmt.Sprintf("%s/api/v1/services/%d", site, id), nil)
	}
	return site
}

// canaryCounter is clients sending GETs until stopped, counting every
// answer and those the canary gave.
type canaryCounter struct {
	total, canary atomic.Int64
	stop          chan struct{}
	wg            sync.WaitGroup
}

func countCanary(url string, clients int) *canaryCounter {
	c := &canaryCounter{stop: make(chan struct{})}
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	for range clients {
		c.wg.Go(func() {
			for {
				select {
				case <-c.stop:
					return
				default:
				}
				resp, err := hc.Get(url)
				if err != nil {
					continue
				}
				resp.Body.Close()
				c.total.Add(1)
				if resp.Header.Get("X-Backend") == "canary" {
					c.canary.Add(1)
				}
			}
		})
	}
	return c
}

func (c *canaryCounter) finish() {
	close(c.stop)
	c.wg.Wait()
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func BenchmarkRolloutFailingCanary(b *testing.B) {
	site := benchSite(b)
	api := site + "/api/v1"
	register(b, api, 1, "", container("s1", newBackend(b, "stable")))
	register(b, api, 2, "", container("c1", funcBackend(b, "canary", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	})))
	const percent, interval, minRequests = 10.0, time.Second, 20
	var ratios, served, expected []float64
	for i := 0; i < b.N; i++ {
		c := countCanary(site+"/api/v1/proxy/1/", 4)
		for c.total.Load() < 200 { // the clients are going
			time.Sleep(time.Millisecond) // polling interval of a condition, not a wait for time to pass
		}
		t0, n0, k0 := time.Now(), c.total.Load(), c.canary.Load()
		mustDo(b, "POST", api+"/services/1/rollout", map[string]any{"canary_image_id": 2, "steps": []float64{percent, 100},
			"interval": interval.String(), "min_requests": minRequests}, 201, nil)
		for getRollout(b, api, 1).State == "progressing" {
			time.Sleep(5 * time.Millisecond) // polling interval of a condition, not a wait for time to pass
		}
		elapsed := time.Since(t0)
		c.finish()
		rate := float64(c.total.Load()-n0) / elapsed.Seconds()
		exp := percent / 100 * rate * interval.Seconds()
		got := float64(c.canary.Load() - k0)
		served, expected, ratios = append(served, got), append(expected, exp), append(ratios, got/exp)
		mustDo(b, "DELETE", api+"/services/1/rollout", nil, 200, nil) // over: removed
	}
	b.ReportMetric(median(served), "served")
	b.ReportMetric(median(expected), "percent×rate×interval")
	b.ReportMetric(median(ratios), "served/expected")
}

func BenchmarkRolloutDecisionDelay(b *testing.B) {
	site := benchSite(b)
	api := site + "/api/v1"
	register(b, api, 1, "", container("s1", newBackend(b, "stable")))
	register(b, api, 2, "", container("c1", newBackend(b, "canary")))
	const interval = time.Second
	c := countCanary(site+"/api/v1/proxy/1/", 2)
	defer c.finish()
	var delays []float64
	for i := 0; i < b.N; i++ {
		var started struct {
			Started time.Time `json:"started"`
		}
		mustDo(b, "POST", api+"/services/1/rollout", map[string]any{"canary_image_id": 2, "steps": []float64{50, 100},
			"interval": interval.String(), "min_requests": 1, "max_p99_ratio": 0}, 201, &started)
		var d rolloutDoc
		for d = getRollout(b, api, 1); d.State == "progressing"; d = getRollout(b, api, 1) {
			time.Sleep(5 * time.Millisecond) // polling interval of a condition, not a wait for time to pass
		}
		prev := started.Started
		for _, a := range d.Analysis {
			delays = append(delays, float64(a.At.Sub(prev)-interval)/float64(time.Millisecond))
			prev = a.At
		}
		mustDo(b, "DELETE", api+"/services/1/rollout", nil, 200, nil) // aborts the promoted one
		mustDo(b, "DELETE", api+"/services/1/rollout", nil, 200, nil) // removes it
	}
	b.ReportMetric(median(delays), "ms-after-step-end")
	b.ReportMetric(slices.Max(delays), "max-ms")
}
