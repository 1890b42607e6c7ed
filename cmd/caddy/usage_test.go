package main

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestUsageSurvivesRestarts: the usage ledger of the xcaddy-built binary
// loses nothing over a clean restart, and at most the last usage_flush
// over a kill -9 under load (what the clients were answered against what
// the ledger says).
func TestUsageSurvivesRestarts(t *testing.T) {
	bin, _ := xcaddyBinary(t)
	dir := t.TempDir()
	t.Cleanup(endAll)
	const flush = time.Second
	adminPort, sitePort, backendPort := freePort(t), freePort(t), freePort(t)
	cfg := writeSiteConfig(t, filepath.Join(dir, "Caddyfile"), adminPort, sitePort, backendPort, "usage_flush "+flush.String())
	site := fmt.Sprintf("http://127.0.0.1:%d", sitePort)
	adm := fmt.Sprintf("http://localhost:%d/imagelb", adminPort)
	p := runCaddy(t, bin, cfg, dir, site+"/health")
	if st, _ := call(t, "POST", adm+"/services/1/register?image_name=web", fmt.Sprintf(`[{"container_id":"a","port":%d}]`, backendPort)); st != 200 {
		t.Fatalf("register: %d", st)
	}
	ledger := func() (requests, bytesOut float64) {
		t.Helper()
		_, u := call(t, "GET", adm+"/usage?image_id=1&from="+time.Now().Add(-2*time.Hour).UTC().Format(time.RFC3339), "")
		images, _ := u["images"].([]any)
		if len(images) != 1 {
			return 0, 0
		}
		im := images[0].(map[string]any)
		return im["requests"].(float64), im["bytes_out"].(float64)
	}
	get := func() bool {
		resp, err := http.Get(site + "/api/v1/proxy/1/")
		if err != nil {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 200 && string(body) == "backend"
	}
	for range 50 {
		if !get() {
			t.Fatal("a request failed")
		}
	}

	t.Run("a clean restart loses nothing", func(t *testing.T) {
		p.stop(t)
		p = runCaddy(t, bin, cfg, dir, site+"/health")
		if n, out := ledger(); n != 50 || out != 50*float64(len("backend")) {
			t.Fatalf("after a clean restart the ledger has %v requests, %v bytes out; want 50, %d", n, out, 50*len("backend"))
		}
		_, st := call(t, "GET", adm+"/stats?image_id=1", "")
		if st["total_requests"] != 50.0 {
			t.Fatalf("stats total_requests %v after the restart, want 50 (it goes on from the ledger)", st["total_requests"])
		}
	})

	t.Run("kill -9 under load loses at most the last flush", func(t *testing.T) {
		var mu sync.Mutex
		var answered []time.Time // when each 200 reached a client
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if get() {
						mu.Lock()
						answered = append(answered, time.Now())
						mu.Unlock()
					}
				}
			})
		}
		for {
			mu.Lock()
			n := len(answered)
			mu.Unlock()
			if n >= 2000 {
				break
			}
			time.Sleep(10 * time.Millisecond) // polling the clients' progress
		}
		killed := time.Now()
		p.kill9(t)
		close(stop)
		wg.Wait()
		p = runCaddy(t, bin, cfg, dir, site+"/health")
		got, _ := ledger()
		served := len(answered)
		// answered in the last flush interval before the kill (and a margin
		// for the timer), or while the kill took effect
		recent := 0
		for _, at := range answered {
			if at.After(killed.Add(-flush - 200*time.Millisecond)) {
				recent++
			}
		}
		lost := 50 + float64(served) - got
		t.Logf("clients got %d answers under load; the ledger counted %.0f of them; lost %.0f, the bound is %d (the last %s)",
			served, got-50, lost, recent, flush)
		if lost > float64(recent) {
			t.Fatalf("the ledger lost %.0f requests over a kill -9, more than the %d of the last usage_flush", lost, recent)
		}
		if got > 50+float64(served)+4 { // at most one in flight per client was counted but not answered
			t.Fatalf("the ledger has %.0f requests, more than the %d answered", got, 50+served)
		}
	})
}
