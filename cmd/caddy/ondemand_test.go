package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

// TestClusterOnDemand runs two nodes of examples/cluster on one etcd, with
// start on demand: requests for a cold image arriving on both nodes wait,
// and the orchestrator's start webhook is called once for the cluster; the
// container it registers on one node releases the requests on both. An
// image served through one node only is not stopped by the other, and its
// stop webhook is called once when it is idle on both.
func TestClusterOnDemand(t *testing.T) {
	bin, root := xcaddyBinary(t)
	etcd := etcdtest.Start(t, 1)
	t.Cleanup(clusterTransport.CloseIdleConnections)

	o := testkit.NewOrchestrator(t, "") // it registers on node A, whose address is known once the nodes are made
	block := fmt.Sprintf("on_demand {\n\t\t\tstart_url %s\n\t\t\tstop_url %s\n\t\t\tstart_timeout 20s\n\t\t}", o.StartURL(), o.StopURL())
	nodes := []*clusterNode{newClusterNode(t, root, 0, etcd.Endpoints(), block), newClusterNode(t, root, 1, etcd.Endpoints(), block)}
	A, B := nodes[0], nodes[1]
	o.SetAPI(A.adm)
	t.Cleanup(endAll)
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				if n.p != nil {
					t.Logf("logs of %s (last 60 lines):\n%s", n.name, lastLines(n.p.logs.String(), 60))
				}
			}
		}
	})
	for _, n := range nodes {
		n.start(t, bin)
	}
	waiting := func(n *clusterNode, id int) int {
		st, body := get(fmt.Sprintf("%s/services/%d", n.adm, id))
		var svc struct{ Waiting int }
		if st != 200 || json.Unmarshal(body, &svc) != nil {
			return -1
		}
		return svc.Waiting
	}

	t.Run("one start for the cluster", func(t *testing.T) {
		mustStatus(t, 200, "POST", A.adm+"/services/50/register",
			`{"image_name": "cold", "containers": [], "on_demand": {"idle_timeout": "2s"}}`)
		testkit.Eventually(t, "image 50 on lb-2", func() bool { return statusOf(B.adm+"/services/50") == 200 })
		release := o.Hold()
		defer release()
		const perNode = 20
		var wg sync.WaitGroup
		statuses := make(chan int, 2*perNode)
		for _, n := range nodes {
			for range perNode {
				wg.Go(func() {
					st, _ := get(n.site + "/api/v1/proxy/50/hello")
					statuses <- st
				})
			}
		}
		testkit.Eventually(t, "20 requests waiting on each node", func() bool {
			return waiting(A, 50) == perNode && waiting(B, 50) == perNode
		})
		testkit.Eventually(t, "the start webhook", func() bool { return o.Starts(50) >= 1 })
		if got := o.Starts(50); got != 1 {
			t.Fatalf("start_url called %d times by two nodes with waiting requests, want 1", got)
		}
		release() // the orchestrator starts the container and registers it on lb-1
		wg.Wait()
		close(statuses)
		for st := range statuses {
			if st != 200 {
				t.Fatalf("a waiting request got %d", st)
			}
		}
		if got := o.Starts(50); got != 1 {
			t.Fatalf("start_url called %d times, want 1", got)
		}
		t.Logf("start webhook body: %v", o.Bodies()[0])
	})

	t.Run("idle across the cluster", func(t *testing.T) {
		// traffic through lb-2 only, for longer than idle_timeout: lb-1
		// sees none, but must not stop the image
		until := time.Now().Add(3 * time.Second)
		for time.Now().Before(until) {
			if st, body := get(B.site + "/api/v1/proxy/50/busy"); st != 200 {
				t.Fatalf("through lb-2: %d %s", st, body)
			}
			time.Sleep(200 * time.Millisecond) // the load's pace
		}
		if got := o.Stops(50); got != 0 {
			t.Fatalf("stop_url called %d times while lb-2 served the image", got)
		}
		testkit.Eventually(t, "stop_url once the image is idle on both nodes", func() bool { return o.Stops(50) >= 1 })
		testkit.Eventually(t, "the containers removed on both nodes", func() bool {
			for _, n := range nodes {
				st, body := get(n.adm + "/services/50")
				var svc struct{ Containers []any }
				if st != 200 || json.Unmarshal(body, &svc) != nil || len(svc.Containers) != 0 {
					return false
				}
			}
			return true
		})
		if got := o.Stops(50); got != 1 {
			t.Fatalf("stop_url called %d times, want 1", got)
		}
	})
}

// TestExampleScaleToZero runs docs/scale-to-zero-walkthrough.md against the
// xcaddy-built binary running examples/Caddyfile: an image registered with
// on_demand and no container is started by the example's demo orchestrator
// when the first request arrives (the request waits and gets the demo
// container's answer), and stopped (its container removed) after its
// idle_timeout; the next request starts it again. The walk-through's
// idle_timeout of 30s is 2s here. A start webhook sent by a client through
// the gateway (which routes any other /api/v1 path to the orchestrator) is
// refused and registers nothing.
func TestExampleScaleToZero(t *testing.T) {
	bin, root := xcaddyBinary(t)
	doc, err := os.ReadFile(filepath.Join(root, "docs", "scale-to-zero-walkthrough.md"))
	if err != nil {
		t.Fatal(err)
	}
	const register = `{"image_name": "web", "containers": [], "on_demand": {"idle_timeout": "30s"}}`
	if !strings.Contains(string(doc), register) {
		t.Fatalf("the walk-through no longer registers %s: update this test with it", register)
	}
	ports, site, _ := runExample(t, bin, root)
	api := site + "/api/v1"
	send := func(t *testing.T, method, url, body string) (int, []byte) {
		t.Helper()
		req := mustRequest(t, method, url, body)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, raw
	}
	type container struct {
		ContainerID string `json:"container_id"`
		Port        int    `json:"port"`
		Status      string `json:"status"`
	}
	containers := func(t *testing.T) []container {
		t.Helper()
		var svc struct{ Containers []container }
		if st := getJSON(api+"/services/3", &svc); st != 200 {
			t.Fatalf("GET /services/3: %d", st)
		}
		return svc.Containers
	}
	if st, raw := send(t, "POST", api+"/services/3/register", strings.Replace(register, "30s", "2s", 1)); st != 200 {
		t.Fatalf("registering image 3: %d %s", st, raw)
	}

	t.Run("a webhook through the gateway", func(t *testing.T) {
		st, raw := send(t, "POST", api+"/api/images/3/start", `{"image_id": 3, "action": "start"}`)
		if st != http.StatusForbidden || !strings.Contains(detailOf(raw), "not through a proxy") {
			t.Fatalf("POST /api/v1/api/images/3/start through the gateway: %d %s, want 403", st, raw)
		}
		if cs := containers(t); len(cs) != 0 {
			t.Fatalf("a client of the gateway registered %v", cs)
		}
	})

	t.Run("images it must not start", func(t *testing.T) {
		orch := fmt.Sprintf("http://127.0.0.1:%d/api/images/", ports["3003"])
		for _, c := range []struct {
			url    string
			status int
			detail string
		}{
			{orch + "9/start", http.StatusNotFound, "image_id 9 is not registered"},
			{orch + "1/start", http.StatusConflict, "image_id 1 is not on_demand"},
			{orch + "1/stop", http.StatusConflict, "image_id 1 is not on_demand"},
		} {
			st, raw := send(t, "POST", c.url, `{}`)
			if st != c.status || !strings.Contains(detailOf(raw), c.detail) {
				t.Fatalf("POST %s: %d %s, want %d with %q", c.url, st, raw, c.status, c.detail)
			}
		}
		var svc struct{ Containers []container }
		if getJSON(api+"/services/1", &svc) != 200 || len(svc.Containers) != 2 {
			t.Fatalf("image 1 changed: %+v", svc)
		}
	})

	for _, round := range []string{"the first request", "a request after the stop"} {
		t.Run(round, func(t *testing.T) {
			start := time.Now()
			st, raw := send(t, "GET", api+"/proxy/3/hello", "")
			var e map[string]string
			if st != 200 || json.Unmarshal(raw, &e) != nil || e["container"] != fmt.Sprint(ports["9004"]) || e["path"] != "/hello" {
				t.Fatalf("GET /api/v1/proxy/3/hello: %d %s, want 200 from the demo container 9004", st, raw)
			}
			t.Logf("answered after %v", time.Since(start))
			cs := containers(t)
			if len(cs) != 1 || cs[0].ContainerID != "demo-3" || cs[0].Port != ports["9004"] || cs[0].Status != "healthy" {
				t.Fatalf("containers of image 3: %+v, want demo-3 on 9004, healthy", cs)
			}
			testkit.Eventually(t, "the demo container removed after idle_timeout", func() bool { return len(containers(t)) == 0 })
		})
	}
}
