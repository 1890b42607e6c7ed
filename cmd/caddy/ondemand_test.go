package main

import (
	"encoding/json"
	"fmt"
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
