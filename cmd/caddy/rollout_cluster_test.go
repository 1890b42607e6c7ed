package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
)

// rolloutDoc is GET …/services/{image_id}/rollout.
type rolloutDoc struct {
	State    string `json:"state"`
	Step     int    `json:"step"`
	Analysis []struct {
		Step     int    `json:"step"`
		Decision string `json:"decision"`
		Reason   string `json:"reason"`
		Stable   *struct {
			Requests uint64 `json:"requests"`
		} `json:"stable"`
		Canary *struct {
			Requests uint64  `json:"requests"`
			Errors   uint64  `json:"errors"`
			Rate     float64 `json:"error_rate"`
		} `json:"canary"`
	} `json:"analysis"`
}

// canaryBackend answers the nodes' health checks 200 and every other
// request with status; it counts those.
func canaryBackend(t *testing.T, status int, served *atomic.Int64) int {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" || r.URL.Path == nodeAHealthPath {
			w.WriteHeader(http.StatusOK)
			return
		}
		served.Add(1)
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"status":%d}`, status)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port
}

// TestClusterRollout runs two nodes of examples/cluster on one etcd: a
// rollout started on one node is driven by exactly one of them (the holder
// of leads/rollout/{image_id}), and its steps are judged on both nodes'
// counts. The clients go only through the node that does not drive, so a
// driver that judged on its own counters would see no canary request:
// it would never roll the failing canary back, nor promote the healthy one.
// The p99 ratio is off: both images are the same backend, and on a loaded
// machine their p99s differ by chance.
func TestClusterRollout(t *testing.T) {
	bin, root := xcaddyBinary(t)
	etcd := etcdtest.Start(t, 1)
	t.Cleanup(clusterTransport.CloseIdleConnections)
	nodes := []*clusterNode{newClusterNode(t, root, 0, etcd.Endpoints()), newClusterNode(t, root, 1, etcd.Endpoints())}
	t.Cleanup(endAll)
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				if n.p != nil {
					var kept []string
					for _, line := range strings.Split(n.p.logs.String(), "\n") {
						if !strings.Contains(line, `"logger":"admin.api"`) && !strings.Contains(line, `"logger":"http.log.access`) {
							kept = append(kept, line)
						}
					}
					t.Logf("logs of %s but the admin requests (last 80 lines):\n%s", n.name, lastLines(strings.Join(kept, "\n"), 80))
				}
			}
		}
	})
	for _, n := range nodes {
		n.start(t, bin)
	}
	A := nodes[0]
	// The promote_url of every rollout: it counts the outcomes it is told, by image.
	var hookMu sync.Mutex
	hooks := map[int64]int{}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var out struct {
			ImageID int64 `json:"image_id"`
		}
		json.NewDecoder(r.Body).Decode(&out)
		hookMu.Lock()
		hooks[out.ImageID]++
		hookMu.Unlock()
	}))
	t.Cleanup(hook.Close)
	// toldOnce waits until image id's outcome is announced and no node
	// holds its lead any more, then checks it was told once.
	toldOnce := func(t *testing.T, id int64) {
		t.Helper()
		waitFor(t, 60*time.Second, "the outcome announced and the lead given up", func() bool {
			hookMu.Lock()
			n := hooks[id]
			hookMu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			resp, err := etcd.Client().Get(ctx, fmt.Sprintf("/imagelb/leads/rollout/%d", id))
			return n > 0 && err == nil && len(resp.Kvs) == 0
		})
		hookMu.Lock()
		defer hookMu.Unlock()
		if hooks[id] != 1 {
			t.Fatalf("promote_url told the outcome of image %d's rollout %d times, want once", id, hooks[id])
		}
	}
	var stableServed, failingServed, healthyServed atomic.Int64
	stablePort := canaryBackend(t, 200, &stableServed)
	failingPort := canaryBackend(t, 500, &failingServed)
	healthyPort := canaryBackend(t, 200, &healthyServed)
	for id, port := range map[int64]int{10: stablePort, 11: failingPort, 20: stablePort, 21: healthyPort, 30: stablePort, 31: healthyPort} {
		mustStatus(t, 200, "POST", fmt.Sprintf("%s/services/%d/register?image_name=img-%d", A.adm, id, id),
			ctrsJSON(clusterCtr{ID: fmt.Sprintf("c%d", id), Port: port}))
	}
	for _, n := range nodes {
		waitFor(t, 30*time.Second, "the images on "+n.name, func() bool {
			return statusOf(n.adm+"/services/11") == 200 && statusOf(n.adm+"/services/21") == 200 && statusOf(n.adm+"/services/31") == 200
		})
	}

	// driverOf waits for the lead of image id's rollout and returns the
	// node that holds it and the other one.
	driverOf := func(t *testing.T, id int64) (driver, other *clusterNode) {
		t.Helper()
		key := fmt.Sprintf("/imagelb/leads/rollout/%d", id)
		var holder string
		waitFor(t, 30*time.Second, "a node to drive the rollout of image "+fmt.Sprint(id), func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			resp, err := etcd.Client().Get(ctx, key)
			if err != nil || len(resp.Kvs) == 0 {
				return false
			}
			holder = string(resp.Kvs[0].Value)
			return true
		})
		for i, n := range nodes {
			if n.name == holder {
				return n, nodes[1-i]
			}
		}
		t.Fatalf("%s is held by %q, not a node", key, holder)
		return nil, nil
	}
	// load sends requests for image id through n until done is closed.
	load := func(n *clusterNode, id int64, done chan struct{}) chan struct{} {
		finished := make(chan struct{})
		go func() {
			defer close(finished)
			for {
				select {
				case <-done:
					return
				default:
				}
				get(fmt.Sprintf("%s/api/v1/proxy/%d/work", n.site, id))
			}
		}()
		return finished
	}
	rolloutOf := func(n *clusterNode, id int64) rolloutDoc {
		var doc rolloutDoc
		getJSON(fmt.Sprintf("%s/services/%d/rollout", n.adm, id), &doc)
		return doc
	}
	// leads says whether n logged that it took the lead of image id's
	// rollout; decided, whether its driver logged a decision of it.
	leads := func(n *clusterNode, id int64) bool {
		return strings.Contains(n.p.logs.String(), fmt.Sprintf(`"this node drives the rollout","image_id":%d`, id))
	}
	decided := func(n *clusterNode, id int64) bool {
		for _, line := range strings.Split(n.p.logs.String(), "\n") {
			if strings.Contains(line, fmt.Sprintf(`"image_id":%d,`, id)) &&
				(strings.Contains(line, `"msg":"rollout step"`) || strings.Contains(line, `"msg":"rollout rolled back"`) ||
					strings.Contains(line, `"msg":"rollout advance"`) || strings.Contains(line, `"msg":"rollout promote"`)) {
				return true
			}
		}
		return false
	}

	t.Run("a failing canary served through the other node is rolled back", func(t *testing.T) {
		mustStatus(t, 201, "POST", A.adm+"/services/10/rollout",
			`{"canary_image_id": 11, "steps": [50, 100], "interval": "1h", "min_requests": 20, "max_error_rate": 0.05, "max_p99_ratio": 0, "promote_url": "`+hook.URL+`"}`)
		driver, other := driverOf(t, 10)
		t.Logf("%s drives the rollout; the clients go through %s", driver.name, other.name)
		done := make(chan struct{})
		finished := load(other, 10, done)
		waitFor(t, 60*time.Second, "the rollout rolled back", func() bool { return rolloutOf(other, 10).State == "rolled_back" })
		close(done)
		<-finished
		doc := rolloutOf(driver, 10)
		last := doc.Analysis[len(doc.Analysis)-1]
		if doc.State != "rolled_back" || last.Decision != "rollback" || last.Canary == nil || last.Canary.Errors == 0 ||
			!strings.Contains(last.Reason, "max_error_rate") {
			t.Fatalf("rollout %+v, last decision %+v: want a rollback on the error rate with the canary's failures counted", doc, last)
		}
		t.Logf("rolled back after %d canary requests (%d failed) judged, %d served by the failing canary: %s",
			last.Canary.Requests, last.Canary.Errors, failingServed.Load(), last.Reason)
		toldOnce(t, 10)
		if leads(other, 10) || decided(other, 10) {
			t.Fatalf("%s, which does not hold the lead, drove the rollout too", other.name)
		}
		if !leads(driver, 10) || !decided(driver, 10) {
			t.Fatalf("%s holds the lead but its logs do not show it driving the rollout", driver.name)
		}
	})

	t.Run("a healthy canary served through the other node is promoted", func(t *testing.T) {
		mustStatus(t, 201, "POST", A.adm+"/services/20/rollout",
			`{"canary_image_id": 21, "steps": [50, 100], "interval": "1s", "min_requests": 20, "max_p99_ratio": 0, "promote_url": "`+hook.URL+`"}`)
		driver, other := driverOf(t, 20)
		done := make(chan struct{})
		finished := load(other, 20, done)
		waitFor(t, 60*time.Second, "the rollout promoted", func() bool { return rolloutOf(other, 20).State == "promoted" })
		close(done)
		<-finished
		doc := rolloutOf(other, 20)
		for _, a := range doc.Analysis {
			if a.Decision == "rollback" {
				t.Fatalf("a healthy canary was rolled back: %+v", a)
			}
			if a.Canary != nil && a.Canary.Requests < 20 {
				t.Fatalf("a step judged on %d canary requests, under min_requests: %+v", a.Canary.Requests, a)
			}
		}
		if data, _ := json.Marshal(doc); len(doc.Analysis) < 2 {
			t.Fatalf("promoted without judging both steps: %s", data)
		}
		toldOnce(t, 20)
		if decided(other, 20) || !decided(driver, 20) {
			t.Fatalf("the decisions of the rollout were not all %s's, the lead's holder", driver.name)
		}
	})

	// Last: it kills a node.
	t.Run("the driver dies: the other node takes the rollout over", func(t *testing.T) {
		mustStatus(t, 201, "POST", A.adm+"/services/30/rollout",
			`{"canary_image_id": 31, "steps": [50, 100], "interval": "1s", "min_requests": 20, "max_p99_ratio": 0}`)
		driver, other := driverOf(t, 30)
		driver.p.kill9(t)
		killed := time.Now()
		waitFor(t, 60*time.Second, other.name+" to take the lead", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			resp, err := etcd.Client().Get(ctx, "/imagelb/leads/rollout/30")
			return err == nil && len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == other.name
		})
		t.Logf("%s took the lead %s after %s was killed", other.name, time.Since(killed).Round(100*time.Millisecond), driver.name)
		done := make(chan struct{})
		finished := load(other, 30, done)
		waitFor(t, 60*time.Second, "the rollout promoted by "+other.name, func() bool { return rolloutOf(other, 30).State == "promoted" })
		close(done)
		<-finished
		if !leads(other, 30) || !decided(other, 30) {
			t.Fatalf("%s's logs do not show it driving the rollout", other.name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := etcd.Client().Get(ctx, "/imagelb/rollout-counts/30/"+driver.name)
		if err != nil || len(resp.Kvs) != 0 {
			t.Fatalf("the dead node's counts are still in etcd: %v %v", resp, err)
		}
	})
}
