package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

// TestCluster runs examples/cluster/node{1,2,3}.Caddyfile, on the
// xcaddy-built binary, as three nodes sharing a three-member etcd cluster,
// and checks what their clients see: a change made on one node reaches the
// others, each node keeps its own health verdicts, port claims and
// concurrent writers race safely, an etcd member, then all of them, going
// down stops no proxied request, compaction and a node restarted while
// etcd is down lose nothing, and a killed node drops out of the cluster.
func TestCluster(t *testing.T) {
	bin, root := xcaddyBinary(t)
	began := time.Now()
	etcd := etcdtest.Start(t, 3)

	// Real containers: each answers with its name. keep answers its health
	// path 500 to node A only (see "drain on A reaches B").
	web := []*clusterBackend{newClusterBackend(t, "web-1", ""), newClusterBackend(t, "web-2", ""),
		newClusterBackend(t, "web-3", ""), newClusterBackend(t, "web-4", "")}
	drain, keep := newClusterBackend(t, "drain", ""), newClusterBackend(t, "keep", nodeAHealthPath)
	t.Cleanup(clusterTransport.CloseIdleConnections)

	nodes := make([]*clusterNode, 3)
	for i := range nodes {
		nodes[i] = newClusterNode(t, root, i, etcd.Endpoints())
		nodes[i].addMappedPorts(t, i, 30000, 30019) // the ports the nodes race for
	}
	// Registered last, so it runs first: the nodes stop before their data
	// directories, backends and etcd go.
	t.Cleanup(endAll)
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				if n.p != nil {
					t.Logf("logs of %s (last 80 lines):\n%s", n.name, lastLines(n.p.logs.String(), 80))
				}
			}
		}
	})
	for _, n := range nodes {
		n.start(t, bin)
	}
	A, B, C := nodes[0], nodes[1], nodes[2]
	t.Logf("etcd and three nodes up after %s", time.Since(began).Round(time.Millisecond))

	t.Run("registration on A is seen on B and C", func(t *testing.T) {
		// The README's flow first: the demo containers the nodes serve,
		// registered on lb-1, read on lb-2, proxied by lb-3.
		ctrs := make([]clusterCtr, 3)
		for i, n := range nodes {
			ctrs[i] = clusterCtr{ID: "demo-" + strconv.Itoa(i+1), Port: n.demoPort}
		}
		mustStatus(t, 200, "POST", A.adm+"/services/1/register?image_name=demo", ctrsJSON(ctrs...))
		testkit.Eventually(t, "image 1 on lb-2", func() bool { return statusOf(B.adm+"/services/1") == 200 })
		demoSeen := map[string]bool{}
		testkit.Eventually(t, "lb-3 proxying image 1 to the three demo containers", func() bool {
			st, body := get(C.site + "/api/v1/proxy/1/hello")
			var e struct{ Container, Node string }
			if st == 200 && json.Unmarshal(body, &e) == nil {
				demoSeen[e.Node] = true
			}
			return len(demoSeen) == 3
		})

		const n = 200
		var lat []time.Duration
		for i := range n {
			id := 1000 + i
			mustStatus(t, 200, "POST", fmt.Sprintf("%s/services/%d/register?image_name=img-%d", A.adm, id, i),
				ctrsJSON(clusterCtr{ID: "c", Port: web[i%len(web)].port}))
			acked := time.Now()
			got := make([]time.Duration, 2)
			var wg sync.WaitGroup
			for j, n := range []*clusterNode{B, C} {
				wg.Go(func() {
					url := fmt.Sprintf("%s/services/%d", n.adm, id)
					for time.Since(acked) < 10*time.Second {
						if statusOf(url) == 200 {
							got[j] = time.Since(acked)
							return
						}
						time.Sleep(time.Millisecond) // polling interval: the figure's resolution
					}
					got[j] = -1
				})
			}
			wg.Wait()
			for j, d := range got {
				if d < 0 {
					t.Fatalf("image %d, registered on lb-1, not on %s after 10s", id, []string{"lb-2", "lb-3"}[j])
				}
			}
			lat = append(lat, got...)
		}
		slices.Sort(lat)
		pct := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
		t.Logf("propagation p50=%s p99=%s max=%s n=%d (A's 200 to the first 200 on B, and on C)",
			pct(.5).Round(10*time.Microsecond), pct(.99).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond), len(lat))

		for i := range n {
			for _, node := range []*clusterNode{B, C} {
				st, body := get(fmt.Sprintf("%s/api/v1/proxy/%d/x", node.site, 1000+i))
				if want := web[i%len(web)].name; st != 200 || backendOf(body) != want {
					t.Fatalf("%s proxy for image %d: %d %s, want 200 from %s", node.name, 1000+i, st, body, want)
				}
			}
		}
	})

	t.Run("cluster lists the nodes", func(t *testing.T) {
		for _, n := range nodes {
			var v clusterView
			if st := getJSON(n.adm+"/cluster", &v); st != 200 {
				t.Fatalf("%s GET /imagelb/cluster: %d", n.name, st)
			}
			var ids []string
			for _, m := range v.Nodes {
				ids = append(ids, m.NodeID)
				if m.Revision <= 0 {
					t.Fatalf("%s lists %s at revision %d, want the revision it applied (> 0)", n.name, m.NodeID, m.Revision)
				}
			}
			if v.NodeID != n.name || v.Store.Kind != "etcd" || v.Store.Status != "ok" || v.Store.Revision <= 0 ||
				!slices.Equal(ids, []string{"lb-1", "lb-2", "lb-3"}) {
				t.Fatalf("%s /imagelb/cluster: %+v, want node_id %s, store etcd ok at a revision > 0, nodes lb-1 lb-2 lb-3",
					n.name, v, n.name)
			}
			var h map[string]any
			if st := getJSON(n.site+"/health", &h); st != 200 || h["store"] != "ok" {
				t.Fatalf("%s /health: %d %v, want store ok", n.name, st, h)
			}
		}
	})

	t.Run("usage adds up over the three nodes", func(t *testing.T) {
		const image = 777
		mustStatus(t, 200, "POST", fmt.Sprintf("%s/services/%d/register?image_name=billed", A.adm, image),
			ctrsJSON(clusterCtr{"w", web[0].port}))
		for _, n := range nodes {
			waitFor(t, 10*time.Second, n.name+" has image 777", func() bool {
				return statusOf(fmt.Sprintf("%s/services/%d", n.adm, image)) == 200
			})
		}
		// Interleaved: 4 clients send through every node in turn, with
		// bodies of different sizes; what they were answered is the truth.
		var mu sync.Mutex
		var requests, in, out int64
		var wg sync.WaitGroup
		for c := range 4 {
			wg.Go(func() {
				for i := range 60 {
					n := nodes[(c+i)%3]
					body := strings.Repeat("b", 10*i+c)
					resp, err := clusterTransport.RoundTrip(mustRequest(t, "POST", fmt.Sprintf("%s/api/v1/proxy/%d/", n.site, image), body))
					if err != nil {
						t.Errorf("%s: %v", n.name, err)
						return
					}
					data, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						t.Errorf("%s answered %d", n.name, resp.StatusCode)
						return
					}
					mu.Lock()
					requests, in, out = requests+1, in+int64(len(body)), out+int64(len(data))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		type usage struct {
			Images []struct {
				ImageID  int64 `json:"image_id"`
				Requests int64 `json:"requests"`
				BytesIn  int64 `json:"bytes_in"`
				BytesOut int64 `json:"bytes_out"`
			} `json:"images"`
		}
		from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
		for _, n := range nodes { // each node answers the sum over all three
			var u usage
			waitFor(t, 15*time.Second, n.name+"'s usage of image 777 sums every node", func() bool {
				u = usage{}
				return getJSON(fmt.Sprintf("%s/usage?image_id=%d&from=%s", n.adm, image, from), &u) == 200 &&
					len(u.Images) == 1 && u.Images[0].Requests == requests
			})
			if got := u.Images[0]; got.BytesIn != in || got.BytesOut != out {
				t.Fatalf("%s: usage %+v, the clients sent %d bytes and got %d in %d requests", n.name, got, in, out, requests)
			}
		}
		t.Logf("usage of %d requests through three nodes (%d bytes in, %d out) summed exactly on every node", requests, in, out)
	})

	t.Run("drain on A reaches B; a container failing on A keeps serving from B", func(t *testing.T) {
		// A health verdict is the node's own. All nodes run on 127.0.0.1,
		// so a backend cannot fail for one node by its address: node A's
		// config checks another health path (nodeAHealthPath, set when the
		// test rewrites node1.Caddyfile), which the keep container answers
		// 500, while B and C check the default /health, which it passes.
		const id = 500
		mustStatus(t, 200, "POST", fmt.Sprintf("%s/services/%d/register?image_name=drained", A.adm, id),
			ctrsJSON(clusterCtr{ID: "drain", Port: drain.port}, clusterCtr{ID: "keep", Port: keep.port}))
		// within a health_interval (5s) or so: allow three
		waitFor(t, 15*time.Second, "lb-1 marking keep unhealthy (its own check fails)", func() bool {
			return containerOf(A, id, "keep")["status"] == "unhealthy"
		})
		for _, n := range []*clusterNode{B, C} {
			testkit.Eventually(t, n.name+" checking both containers healthy", func() bool {
				d, k := containerOf(n, id, "drain"), containerOf(n, id, "keep")
				return d["status"] == "healthy" && k["status"] == "healthy" &&
					d["last_health_check"] != nil && k["last_health_check"] != nil
			})
		}

		mustStatus(t, 200, "PATCH", fmt.Sprintf("%s/services/%d/containers/drain", A.adm, id), `{"status":"draining"}`)
		patched := time.Now()
		testkit.Eventually(t, "the drain on lb-2", func() bool { return containerOf(B, id, "drain")["status"] == "draining" })
		t.Logf("the drain reached lb-2 %s after lb-1's 200", time.Since(patched).Round(time.Millisecond))
		for _, n := range []*clusterNode{B, C} {
			testkit.Eventually(t, "the drain on "+n.name, func() bool { return containerOf(n, id, "drain")["status"] == "draining" })
			for range 20 {
				st, body := get(fmt.Sprintf("%s/api/v1/proxy/%d/", n.site, id))
				if st != 200 || backendOf(body) != "keep" {
					t.Fatalf("%s proxy after the drain: %d %s, want 200 from keep (drain is draining)", n.name, st, body)
				}
			}
			// the record that came back with the drain kept this node's verdict
			if k := containerOf(n, id, "keep"); k["status"] != "healthy" {
				t.Fatalf("%s keep after the drain: %v, want healthy (this node's checks pass)", n.name, k)
			}
		}
		if k := containerOf(A, id, "keep"); k["status"] != "unhealthy" {
			t.Fatalf("lb-1 keep after the drain: %v, want unhealthy (lb-1's own verdict)", k)
		}
		if st, body := get(fmt.Sprintf("%s/api/v1/proxy/%d/", A.site, id)); st != 503 {
			t.Fatalf("lb-1 proxy with drain draining and keep unhealthy on lb-1: %d %s, want 503", st, body)
		}
	})

	t.Run("two nodes race for one port", func(t *testing.T) {
		wins := map[string]int{}
		for r := range 20 {
			port := 30000 + r
			x, y := int64(2000+r), int64(3000+r)
			type answer struct {
				st   int
				body []byte
			}
			var ax, ay answer
			startLine := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				<-startLine
				ax.st, _, ax.body = apiCall(t, "POST", fmt.Sprintf("%s/services/%d/register?image_name=x&external_port=%d", A.adm, x, port),
					ctrsJSON(clusterCtr{ID: "x", Port: web[0].port}))
			})
			wg.Go(func() {
				<-startLine
				ay.st, _, ay.body = apiCall(t, "POST", fmt.Sprintf("%s/services/%d/register?image_name=y&external_port=%d", B.adm, y, port),
					ctrsJSON(clusterCtr{ID: "y", Port: web[1].port}))
			})
			close(startLine)
			wg.Wait()
			winner, loser, lost := x, y, ay
			switch {
			case ax.st == 200 && ay.st == 409:
				wins["lb-1"]++
			case ax.st == 409 && ay.st == 200:
				winner, loser, lost = y, x, ax
				wins["lb-2"]++
			default:
				t.Fatalf("round %d, port %d: lb-1 answered %d %s, lb-2 %d %s; want one 200 and one 409",
					r, port, ax.st, ax.body, ay.st, ay.body)
			}
			if d := detailOf(lost.body); !strings.Contains(d, strconv.Itoa(port)) {
				t.Fatalf("round %d: the 409 does not name port %d: %s", r, port, lost.body)
			}
			for _, n := range nodes {
				testkit.Eventually(t, fmt.Sprintf("%s mapping port %d to image %d", n.name, port, winner), func() bool {
					return portOwner(n, port) == winner
				})
				if st := statusOf(fmt.Sprintf("%s/services/%d", n.adm, loser)); st != 404 {
					t.Fatalf("round %d: the loser, image %d, on %s: %d, want 404 (its registration was refused)", r, loser, n.name, st)
				}
			}
		}
		t.Logf("20 races for a port: won by lb-1 %d times, by lb-2 %d times", wins["lb-1"], wins["lb-2"])
	})

	t.Run("concurrent writers on one image lose nothing", func(t *testing.T) {
		const id = 600
		mustStatus(t, 200, "POST", fmt.Sprintf("%s/services/%d/register?image_name=shared", A.adm, id), "[]")
		testkit.Eventually(t, "image 600 on lb-2", func() bool { return statusOf(fmt.Sprintf("%s/services/%d", B.adm, id)) == 200 })
		var want []string
		var mu sync.Mutex
		var failed []string
		var wg sync.WaitGroup
		startLine := make(chan struct{})
		began := time.Now()
		for _, n := range []*clusterNode{A, B} {
			for i := range 25 {
				cid := fmt.Sprintf("%s-%02d", n.name, i)
				want = append(want, cid)
				wg.Go(func() {
					<-startLine
					st, _, body := apiCall(t, "PUT", fmt.Sprintf("%s/services/%d/containers/%s", n.adm, id, cid),
						fmt.Sprintf(`{"port":%d}`, web[i%len(web)].port))
					if st != 200 {
						mu.Lock()
						failed = append(failed, fmt.Sprintf("PUT %s on %s: %d %s", cid, n.name, st, body))
						mu.Unlock()
					}
				})
			}
		}
		close(startLine)
		wg.Wait()
		took := time.Since(began)
		if len(failed) > 0 {
			t.Fatalf("%d of 50 concurrent PUTs failed:\n%s", len(failed), strings.Join(failed, "\n"))
		}
		slices.Sort(want)
		for _, n := range nodes {
			testkit.Eventually(t, n.name+" showing the 50 containers", func() bool {
				return slices.Equal(containerIDs(n, id), want)
			})
		}
		t.Logf("50 concurrent PUTs into one image from lb-1 and lb-2 took %s; all three nodes show the 50", took.Round(time.Millisecond))
	})

	t.Run("one etcd member stopped: reads and writes go on", func(t *testing.T) {
		leader := leaderOf(t, etcd)
		etcd.Stop(leader)
		stopped := time.Now()
		for i, n := range nodes {
			id := 700 + i
			mustStatus(t, 200, "POST", fmt.Sprintf("%s/services/%d/register?image_name=one-down-%d", n.adm, id, i),
				ctrsJSON(clusterCtr{ID: "c", Port: web[i].port}))
			for _, o := range nodes {
				testkit.Eventually(t, fmt.Sprintf("image %d (registered on %s) on %s", id, n.name, o.name), func() bool {
					return statusOf(fmt.Sprintf("%s/services/%d", o.adm, id)) == 200
				})
			}
		}
		for _, n := range nodes {
			if st, body := get(n.site + "/api/v1/proxy/1000/"); st != 200 {
				t.Fatalf("%s proxy with member %d down: %d %s", n.name, leader, st, body)
			}
		}
		t.Logf("member %d (the leader) stopped: a registration on each node succeeded and reached the others in %s",
			leader, time.Since(stopped).Round(time.Millisecond))
		etcd.Restart(leader)
		for _, n := range nodes {
			testkit.Eventually(t, n.name+" store ok", func() bool { return healthStore(n) == "ok" })
		}
	})

	t.Run("every etcd member stopped", func(t *testing.T) {
		const id = 800
		mustStatus(t, 200, "POST", fmt.Sprintf("%s/services/%d/register?image_name=outage", A.adm, id),
			ctrsJSON(clusterCtr{ID: "a", Port: web[0].port}, clusterCtr{ID: "b", Port: web[1].port}))
		for _, n := range []*clusterNode{B, C} {
			testkit.Eventually(t, "image 800 served by "+n.name, func() bool {
				st, _ := get(fmt.Sprintf("%s/api/v1/proxy/%d/", n.site, id))
				return st == 200
			})
		}
		load := startLoad(loadOpts{body: `"backend"`}, fmt.Sprintf("%s/api/v1/proxy/%d/load", B.site, id), fmt.Sprintf("%s/api/v1/proxy/%d/load", C.site, id))
		stopLoad := sync.OnceValues(load.stop)
		t.Cleanup(func() { stopLoad() })
		load.waitServed(t, 50)

		etcd.StopAll()
		stopped := time.Now()
		servedBefore := load.served.Load()
		degradedAfter := map[string]time.Duration{}
		waitFor(t, 15*time.Second, "every node's /health saying the store is degraded", func() bool {
			for _, n := range nodes {
				if _, seen := degradedAfter[n.name]; !seen && healthStore(n) == "degraded" {
					degradedAfter[n.name] = time.Since(stopped).Round(time.Millisecond)
				}
			}
			return len(degradedAfter) == len(nodes)
		})
		t.Logf("/health said degraded after StopAll: %v", degradedAfter)
		for _, n := range nodes {
			var v clusterView
			if st := getJSON(n.adm+"/cluster", &v); st != 200 || v.Store.Status != "degraded" || v.Store.Detail == "" {
				t.Fatalf("%s /imagelb/cluster with etcd down: %d %+v, want store degraded with a detail", n.name, st, v)
			}
		}
		began := time.Now()
		st, hdr, body := apiCall(t, "POST", fmt.Sprintf("%s/services/%d/register?image_name=during", A.adm, id+1),
			ctrsJSON(clusterCtr{ID: "a", Port: web[0].port}))
		if st != 503 || hdr.Get("Retry-After") == "" || detailOf(body) == "" {
			t.Fatalf("a registration with etcd down: %d Retry-After %q %s, want 503 with Retry-After and a detail", st, hdr.Get("Retry-After"), body)
		}
		t.Logf("a registration on lb-1 answered 503 in %s: %s", time.Since(began).Round(time.Millisecond), detailOf(body))
		if st := statusOf(fmt.Sprintf("%s/services/%d", B.adm, id+1)); st != 404 {
			t.Fatalf("the refused registration is on lb-2: %d", st)
		}
		if st := statusOf(fmt.Sprintf("%s/services/%d", B.adm, id)); st != 200 {
			t.Fatalf("lb-2 reading its registry with etcd down: %d, want 200", st)
		}
		// The outage lasts ~5 s: the load runs through it.
		time.Sleep(time.Until(stopped.Add(5 * time.Second)))
		duringOutage := load.served.Load() - servedBefore

		etcd.RestartAll()
		restarted := time.Now()
		for _, n := range nodes {
			waitFor(t, 30*time.Second, n.name+" reporting the store ok again", func() bool { return healthStore(n) == "ok" })
		}
		recovered := time.Since(restarted)
		mustStatus(t, 200, "POST", fmt.Sprintf("%s/services/%d/register?image_name=after", A.adm, id+1),
			ctrsJSON(clusterCtr{ID: "a", Port: web[0].port}))
		acked := time.Now()
		for _, n := range []*clusterNode{B, C} {
			testkit.Eventually(t, "the registration after the outage on "+n.name, func() bool {
				return statusOf(fmt.Sprintf("%s/services/%d", n.adm, id+1)) == 200
			})
		}
		caughtUp := time.Since(acked)
		load.waitServed(t, 50)
		served, failures := stopLoad()
		if len(failures) > 0 {
			shown := failures[:min(len(failures), 50)]
			t.Errorf("%d of %d proxied requests failed (the first %d):\n%s", len(failures), served+int64(len(failures)),
				len(shown), strings.Join(shown, "\n"))
		}
		t.Logf("outage: %d requests through lb-2 and lb-3 while etcd was down (%d in all, %d failed); every node ok %s after RestartAll; "+
			"a registration on lb-1 then reached lb-2 and lb-3 in %s",
			duringOutage, served, len(failures), recovered.Round(time.Millisecond), caughtUp.Round(time.Millisecond))
	})

	t.Run("compaction while nodes watch", func(t *testing.T) {
		// Changes spread over the three nodes, concurrently; a failed one
		// is an error (the goroutines cannot end the test).
		change := func(wg *sync.WaitGroup, n *clusterNode, method, url, body string) {
			wg.Go(func() {
				if st, _, raw := apiCall(t, method, url, body); st != 200 {
					t.Errorf("%s %s on %s: %d %s", method, url, n.name, st, raw)
				}
			})
		}
		register := func(wg *sync.WaitGroup, id int) {
			n := nodes[id%3]
			change(wg, n, "POST", fmt.Sprintf("%s/services/%d/register?image_name=compact-%d", n.adm, id, id),
				ctrsJSON(clusterCtr{ID: "c", Port: web[id%len(web)].port}))
		}
		var wg sync.WaitGroup
		for id := 900; id < 950; id++ {
			register(&wg, id)
		}
		wg.Wait()
		rev := etcd.Compact(0)
		for id := 900; id < 910; id++ { // deletions, and registrations, after the compaction
			n := nodes[(id+1)%3]
			change(&wg, n, "DELETE", fmt.Sprintf("%s/services/%d", n.adm, id), "")
		}
		for id := 950; id < 970; id++ {
			register(&wg, id)
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		var want []int64
		for id := int64(910); id < 970; id++ {
			want = append(want, id)
		}
		var views []string
		testkit.Eventually(t, "the three nodes agreeing after the compaction", func() bool {
			views = views[:0]
			for _, n := range nodes {
				v, ids := registrations(n)
				if !containsAll(ids, want) || slices.Contains(ids, 900) {
					return false
				}
				views = append(views, v)
			}
			return views[0] == views[1] && views[1] == views[2]
		})
		for _, n := range nodes {
			if s := healthStore(n); s != "ok" {
				t.Fatalf("%s store after the compaction: %s", n.name, s)
			}
		}
		t.Logf("compacted at revision %d between 50 and 30 changes: the three nodes agree on %d images", rev, strings.Count(views[0], "\n"))

		// The nodes above were current when etcd compacted. lb-3 now falls
		// behind: frozen (SIGSTOP), it reads nothing, so the buffers of its
		// watch stream fill up (128 responses in etcd plus the HTTP/2
		// window) and etcd sets the watcher aside, to catch it up later
		// from its revision; once that revision is compacted, etcd can only
		// tell lb-3 that the history it needs is gone. lb-3 must say so,
		// list everything again, and converge.
		const id = 1600
		big := make([]clusterCtr, 100)
		for i := range big {
			big[i] = clusterCtr{ID: fmt.Sprintf("container-%03d-of-a-large-image", i), Port: web[i%len(web)].port}
		}
		mustStatus(t, 200, "POST", fmt.Sprintf("%s/services/%d/register?image_name=large", A.adm, id), ctrsJSON(big...))
		testkit.Eventually(t, "image 1600 on lb-3", func() bool { return statusOf(fmt.Sprintf("%s/services/%d", C.adm, id)) == 200 })
		logged := len(C.p.logs.String())
		if err := C.p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		frozen := time.Now()
		defer func() { _ = C.p.cmd.Process.Signal(syscall.SIGCONT) }()
		const changes = 250
		for i := range changes { // each one rewrites the image's record, about 20 KB
			mustStatus(t, 200, "PUT", fmt.Sprintf("%s/services/%d/containers/%s", A.adm, id, big[0].ID),
				fmt.Sprintf(`{"port":%d,"weight":%d}`, big[0].Port, i+1))
		}
		mustStatus(t, 200, "DELETE", fmt.Sprintf("%s/services/%d", B.adm, 910), "")
		rev = etcd.Compact(0)
		mustStatus(t, 200, "DELETE", fmt.Sprintf("%s/services/%d", B.adm, 911), "")
		if err := C.p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		thawed := time.Now()
		testkit.Eventually(t, "lb-3 agreeing with lb-1 after the compaction it fell behind", func() bool {
			a, _ := registrations(A)
			c, _ := registrations(C)
			return a == c && containerOf(C, id, big[0].ID)["weight"] == float64(changes) &&
				statusOf(fmt.Sprintf("%s/services/%d", C.adm, 911)) == 404
		})
		// Frozen past its lease (10 s), lb-3 may instead find its heartbeat
		// key gone when it resumes, and re-list for that before its watch
		// reads the compaction: either way it must have re-listed
		if logs := C.p.logs.String()[logged:]; !strings.Contains(logs, "fell behind etcd's compaction") {
			if !strings.Contains(logs, "heartbeat key") && !strings.Contains(logs, "lease is lost") {
				t.Fatalf("lb-3 converged, but its log does not say its watch fell behind the compaction at revision %d "+
					"nor that it re-listed for its lost heartbeat key (so this did not test a re-list):\n%s", rev, lastLines(logs, 40))
			}
			t.Logf("lb-3 was frozen past its lease and re-listed for its heartbeat key before its watch read the compaction")
		}
		testkit.Eventually(t, "lb-3 store ok", func() bool { return healthStore(C) == "ok" })
		t.Logf("lb-3, frozen for %s while %d changes and a compaction at revision %d went by, re-listed and agreed with lb-1 %s after SIGCONT",
			thawed.Sub(frozen).Round(time.Millisecond), changes+2, rev, time.Since(thawed).Round(time.Millisecond))
	})

	t.Run("node restarted while etcd is down", func(t *testing.T) {
		const id = 1500
		mustStatus(t, 200, "POST", fmt.Sprintf("%s/services/%d/register?image_name=kept", A.adm, id),
			ctrsJSON(clusterCtr{ID: "c", Port: web[2].port}))
		testkit.Eventually(t, "image 1500 on lb-3", func() bool { return statusOf(fmt.Sprintf("%s/services/%d", C.adm, id)) == 200 })
		before, _ := registrations(C)

		etcd.StopAll()
		C.p.kill9(t)
		began := time.Now()
		C.start(t, bin)
		t.Logf("lb-3 restarted with etcd down in %s", time.Since(began).Round(time.Millisecond))
		if s := healthStore(C); s != "degraded" {
			t.Fatalf("lb-3 /health with etcd down: store %q, want degraded", s)
		}
		if after, _ := registrations(C); after != before {
			t.Fatalf("lb-3 restarted from its local copy with\n%s\nit had\n%s", after, before)
		}
		if st, body := get(fmt.Sprintf("%s/api/v1/proxy/%d/", C.site, id)); st != 200 || backendOf(body) != web[2].name {
			t.Fatalf("lb-3 proxy after its restart with etcd down: %d %s, want 200 from %s", st, body, web[2].name)
		}

		etcd.RestartAll()
		restarted := time.Now()
		waitFor(t, 30*time.Second, "lb-1 store ok", func() bool { return healthStore(A) == "ok" })
		mustStatus(t, 200, "POST", fmt.Sprintf("%s/services/%d/register?image_name=later", A.adm, id+1),
			ctrsJSON(clusterCtr{ID: "c", Port: web[3].port}))
		acked := time.Now()
		waitFor(t, 30*time.Second, "the registration made after etcd came back on lb-3", func() bool {
			return statusOf(fmt.Sprintf("%s/services/%d", C.adm, id+1)) == 200
		})
		caughtUp := time.Since(acked)
		waitFor(t, 30*time.Second, "lb-3 store ok", func() bool { return healthStore(C) == "ok" })
		if st, body := get(fmt.Sprintf("%s/api/v1/proxy/%d/", C.site, id+1)); st != 200 || backendOf(body) != web[3].name {
			t.Fatalf("lb-3 proxy for the image registered after etcd came back: %d %s", st, body)
		}
		t.Logf("lb-3 had lb-1's registration %s after lb-1's 200 (%s after RestartAll)",
			caughtUp.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
	})

	t.Run("a killed node drops out", func(t *testing.T) {
		// lb-3's entry is its restarted process's: it reports a revision
		// that process applied (the entry of the process killed in the
		// last subtest reports an older one).
		var own clusterView
		if getJSON(C.adm+"/cluster", &own) != 200 || own.Store.Revision <= 0 {
			t.Fatalf("lb-3 /imagelb/cluster: %+v", own)
		}
		testkit.Eventually(t, "lb-3 listed by lb-1 at the revision it applied", func() bool {
			var v clusterView
			if getJSON(A.adm+"/cluster", &v) != 200 {
				return false
			}
			for _, m := range v.Nodes {
				if m.NodeID == "lb-3" && m.Revision >= own.Store.Revision {
					return true
				}
			}
			return false
		})
		C.p.kill9(t)
		killed := time.Now()
		for _, n := range []*clusterNode{A, B} {
			waitFor(t, 30*time.Second, "lb-3 gone from the cluster of "+n.name, func() bool {
				return slices.Equal(clusterIDs(n), []string{"lb-1", "lb-2"})
			})
		}
		t.Logf("lb-3, killed, dropped out of the cluster after %s (lease TTL 10s)", time.Since(killed).Round(time.Millisecond))
	})

	t.Logf("TestCluster took %s", time.Since(began).Round(time.Millisecond))
}

// nodeAHealthPath is the health path node A checks (node1.Caddyfile with
// health_path added); the others check the default, /health.
const nodeAHealthPath = "/health-of-lb-1"

// clusterNode is one Caddy node of the cluster.
type clusterNode struct {
	name     string // node_id: lb-1, lb-2, lb-3
	config   string // the rewritten example
	dir      string // its data directory
	adm      string // http://localhost:PORT/imagelb
	site     string // http://127.0.0.1:PORT
	demoPort int    // the demo container the node serves
	p        *proc
}

// newClusterNode writes examples/cluster/node{i+1}.Caddyfile as it is, but
// for etcd's endpoints, free ports, request_timeout 2s (writes fail fast
// while etcd is down), usage_flush 1s and, on node A, nodeAHealthPath.
func newClusterNode(t *testing.T, root string, i int, endpoints []string, options ...string) *clusterNode {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "examples", "cluster", fmt.Sprintf("node%d.Caddyfile", i+1)))
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(raw)
	replace := func(old, new string) {
		t.Helper()
		if n := strings.Count(cfg, old); n != 1 {
			t.Fatalf("node%d.Caddyfile has %q %d times, want once", i+1, old, n)
		}
		cfg = strings.Replace(cfg, old, new, 1)
	}
	n := &clusterNode{name: fmt.Sprintf("lb-%d", i+1), dir: t.TempDir(), demoPort: freePort(t)}
	adminPort, sitePort := freePort(t), freePort(t)
	replace(fmt.Sprintf("admin localhost:%d", 2019+10*i), fmt.Sprintf("admin localhost:%d", adminPort))
	replace(fmt.Sprintf(":%d {", 8080+i), fmt.Sprintf(":%d {", sitePort))
	replace(fmt.Sprintf(":%d {", 9001+i), fmt.Sprintf(":%d {", n.demoPort))
	replace(fmt.Sprintf("allowed_self_upstreams 127.0.0.1:%d", 9001+i), fmt.Sprintf("allowed_self_upstreams 127.0.0.1:%d", n.demoPort))
	replace("endpoints http://127.0.0.1:2379", "endpoints "+strings.Join(endpoints, " ")+"\n\t\t\trequest_timeout 2s")
	replace("node_id "+n.name, "node_id "+n.name) // the example names the node as the test expects
	extra := "\n\t\tusage_flush 1s"               // the usage sums are checked soon after the load
	if i == 0 {
		extra += "\n\t\thealth_path " + nodeAHealthPath
	}
	for _, o := range options {
		extra += "\n\t\t" + o
	}
	replace("health_interval 5s", "health_interval 5s"+extra)
	n.config = filepath.Join(n.dir, "Caddyfile")
	if err := os.WriteFile(n.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	n.adm = fmt.Sprintf("http://localhost:%d/imagelb", adminPort)
	n.site = fmt.Sprintf("http://127.0.0.1:%d", sitePort)
	return n
}

// newClusterNode's options are lines added to the node's imagelb block.

// addMappedPorts adds to the node's Caddyfile a site of mapped ports lo to
// hi (an external_port may only be a port of such a site, or of
// port_range), bound to the node's own loopback address 127.0.0.(i+1), so
// that every node can map the same ports, as nodes on different hosts do.
func (n *clusterNode) addMappedPorts(t *testing.T, i, lo, hi int) {
	t.Helper()
	addrs := make([]string, 0, hi-lo+1)
	for p := lo; p <= hi; p++ {
		addrs = append(addrs, fmt.Sprintf("http://:%d", p))
	}
	site := fmt.Sprintf("\n%s {\n\tbind 127.0.0.%d\n\timagelb {\n\t\tmapped_ports\n\t}\n}\n", strings.Join(addrs, ", "), i+1)
	f, err := os.OpenFile(n.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(site); err != nil {
		t.Fatal(err)
	}
}

// start runs the node and waits until it serves /health and its admin
// API answers (Caddy starts its apps in no set order: the admin endpoint
// answers 503 until the imagelb app runs).
func (n *clusterNode) start(t *testing.T, bin string) {
	t.Helper()
	n.p = runCaddy(t, bin, n.config, n.dir, n.site+"/health")
	if gone, err := n.p.exited(); gone {
		t.Fatalf("%s exited: %v\n%s", n.name, err, n.p.logs.String())
	}
	testkit.Eventually(t, n.name+"'s admin API", func() bool { return statusOf(n.adm+"/services") == 200 })
}

// clusterBackend is a container: it answers {"backend": name} to any
// request, but 500 to failPath.
type clusterBackend struct {
	name string
	port int
}

func newClusterBackend(t *testing.T, name, failPath string) *clusterBackend {
	b := &clusterBackend{name: name}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failPath != "" && r.URL.Path == failPath {
			http.Error(w, "failing for lb-1", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"backend":%q,"path":%q}`, name, r.URL.RequestURI())
	}))
	t.Cleanup(srv.Close)
	b.port = srv.Listener.Addr().(*net.TCPAddr).Port
	return b
}

// clusterCtr is a container of a registration.
type clusterCtr struct {
	ID   string `json:"container_id"`
	Port int    `json:"port"`
}

func ctrsJSON(cs ...clusterCtr) string {
	if len(cs) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(cs)
	return string(b)
}

// clusterView is GET /imagelb/cluster.
type clusterView struct {
	NodeID string `json:"node_id"`
	Store  struct {
		Kind     string `json:"kind"`
		Status   string `json:"status"`
		Revision int64  `json:"revision"`
		Detail   string `json:"detail"`
	} `json:"store"`
	Nodes []struct {
		NodeID   string `json:"node_id"`
		Revision int64  `json:"revision"`
	} `json:"nodes"`
}

var (
	clusterTransport = &http.Transport{MaxIdleConnsPerHost: 16}
	clusterClient    = &http.Client{Transport: clusterTransport, Timeout: 10 * time.Second}
)

// apiCall sends a request; a transport error fails the test.
func apiCall(t *testing.T, method, url, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Error(err)
		return 0, nil, nil
	}
	resp, err := clusterClient.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
		return 0, nil, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw
}

// mustStatus sends a request and fails the test unless it answers want.
func mustStatus(t *testing.T, want int, method, url, body string) []byte {
	t.Helper()
	st, _, raw := apiCall(t, method, url, body)
	if st != want {
		t.Fatalf("%s %s: %d %s, want %d", method, url, st, raw, want)
	}
	return raw
}

// get is a GET for polling: a transport error is status 0.
func get(url string) (int, []byte) {
	resp, err := clusterClient.Get(url)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

func statusOf(url string) int {
	st, _ := get(url)
	return st
}

// getJSON decodes a GET's answer into v and returns the status (0: a
// transport error or an answer that does not decode).
func getJSON(url string, v any) int {
	st, raw := get(url)
	if st == 0 || json.Unmarshal(raw, v) != nil {
		return 0
	}
	return st
}

// detailOf is the detail of an error answer, as text.
func detailOf(body []byte) string {
	var e struct {
		Detail any `json:"detail"`
	}
	if json.Unmarshal(body, &e) != nil || e.Detail == nil {
		return ""
	}
	if s, ok := e.Detail.(string); ok {
		return s
	}
	b, _ := json.Marshal(e.Detail)
	return string(b)
}

// backendOf names the backend that answered a proxied request.
func backendOf(body []byte) string {
	var e struct {
		Backend string `json:"backend"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Backend
}

// healthStore is the store field of a node's /health ("" when it does not
// answer).
func healthStore(n *clusterNode) string {
	var h struct {
		Store string `json:"store"`
	}
	st, raw := get(n.site + "/health")
	if st != 200 || json.Unmarshal(raw, &h) != nil {
		return ""
	}
	return h.Store
}

// containerOf is a container as a node's API shows it (nil: not there).
func containerOf(n *clusterNode, id int64, cid string) map[string]any {
	var svc struct {
		Containers []map[string]any `json:"containers"`
	}
	st, raw := get(fmt.Sprintf("%s/services/%d", n.adm, id))
	if st != 200 || json.Unmarshal(raw, &svc) != nil {
		return nil
	}
	for _, c := range svc.Containers {
		if c["container_id"] == cid {
			return c
		}
	}
	return nil
}

// containerIDs are an image's containers on a node, sorted.
func containerIDs(n *clusterNode, id int64) []string {
	var svc struct {
		Containers []struct {
			ID string `json:"container_id"`
		} `json:"containers"`
	}
	st, raw := get(fmt.Sprintf("%s/services/%d", n.adm, id))
	if st != 200 || json.Unmarshal(raw, &svc) != nil {
		return nil
	}
	ids := make([]string, len(svc.Containers))
	for i, c := range svc.Containers {
		ids[i] = c.ID
	}
	slices.Sort(ids)
	return ids
}

// registrations is what was registered on a node, one line per image
// (image_id, name, external port, each container's id, address and
// weight; not the statuses, which are each node's verdicts), and the
// image_ids.
func registrations(n *clusterNode) (string, []int64) {
	var svcs []struct {
		ImageID      int64  `json:"image_id"`
		ImageName    string `json:"image_name"`
		ExternalPort *int   `json:"external_port"`
		Containers   []struct {
			ID     string `json:"container_id"`
			Host   string `json:"host"`
			Port   int    `json:"port"`
			Weight int    `json:"weight"`
		} `json:"containers"`
	}
	st, raw := get(n.adm + "/services")
	if st != 200 || json.Unmarshal(raw, &svcs) != nil {
		return "", nil
	}
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].ImageID < svcs[j].ImageID })
	var b strings.Builder
	ids := make([]int64, len(svcs))
	for i, s := range svcs {
		ids[i] = s.ImageID
		port := 0
		if s.ExternalPort != nil {
			port = *s.ExternalPort
		}
		fmt.Fprintf(&b, "%d %s %d:", s.ImageID, s.ImageName, port)
		for _, c := range s.Containers {
			fmt.Fprintf(&b, " %s@%s:%d/%d", c.ID, c.Host, c.Port, c.Weight)
		}
		b.WriteString("\n")
	}
	return b.String(), ids
}

func containsAll(have, want []int64) bool {
	for _, id := range want {
		if _, ok := slices.BinarySearch(have, id); !ok {
			return false
		}
	}
	return true
}

// portOwner is the image a node maps the external port to (0: none).
func portOwner(n *clusterNode, port int) int64 {
	var ms []struct {
		ExternalPort int   `json:"external_port"`
		ImageID      int64 `json:"image_id"`
	}
	if getJSON(n.adm+"/port-mappings", &ms) != 200 {
		return 0
	}
	for _, m := range ms {
		if m.ExternalPort == port {
			return m.ImageID
		}
	}
	return 0
}

// clusterIDs are the node_ids a node's /imagelb/cluster lists.
func clusterIDs(n *clusterNode) []string {
	var v clusterView
	if getJSON(n.adm+"/cluster", &v) != 200 {
		return nil
	}
	ids := []string{}
	for _, m := range v.Nodes {
		ids = append(ids, m.NodeID)
	}
	return ids
}

// leaderOf is the index of the etcd cluster's leader.
func leaderOf(t *testing.T, etcd *etcdtest.Cluster) int {
	t.Helper()
	cli := etcd.Client()
	for i := range etcd.Endpoints() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := cli.Status(ctx, etcd.Endpoint(i))
		cancel()
		if err != nil {
			t.Fatalf("etcd member %d status: %v", i, err)
		}
		if st.Leader == st.Header.MemberId {
			return i
		}
	}
	t.Fatal("etcd has no leader")
	return -1
}

// waitFor polls cond until it holds, failing the test after timeout (for
// waits longer than testkit.Eventually's 10 s).
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval of a condition
	}
}

// lastLines is the end of a log.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// mustRequest builds a request with a body.
func mustRequest(t *testing.T, method, url, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return req
}
