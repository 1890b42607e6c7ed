package imagelb

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestHandlerHealth(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	b := newBackend(t, "a")
	register(t, site+"/api/v1", 1, "", container("a", b), map[string]any{"container_id": "d", "port": 1, "status": "draining"})

	var h map[string]any
	mustDo(t, "GET", site+"/health", nil, 200, &h)
	if h["status"] != "healthy" || h["services"] != 1.0 || h["containers"] != 2.0 || h["healthy_containers"] != 1.0 {
		t.Fatalf("health = %v", h)
	}
	if _, ok := h["uptime_seconds"].(float64); !ok {
		t.Fatalf("uptime_seconds missing: %v", h)
	}
	if status, _ := do(t, "POST", site+"/health", nil); status != 405 {
		t.Fatalf("POST /health: %d, want 405", status)
	}
}

// TestRoundRobinInterleavedImages sends requests to three images in an
// irregular interleaving through one handler: each image's containers must
// still be visited in strict rotation, and the counts must be exact.
func TestRoundRobinInterleavedImages(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)

	sizes := map[int64]int{1: 2, 2: 3, 3: 1}
	for id, n := range sizes {
		var cs []map[string]any
		for i := 0; i < n; i++ {
			name := fmt.Sprintf("img%d-c%d", id, i)
			cs = append(cs, container(name, newBackend(t, name)))
		}
		register(t, site+"/api/v1", id, "", cs...)
	}
	pattern := []int64{1, 1, 2, 1, 3, 2, 2, 1, 3, 3, 2, 1, 1, 1, 2}
	seen := map[int64][]string{}
	for round := 0; round < 12; round++ {
		for _, id := range pattern {
			seen[id] = append(seen[id], proxyGet(t, site, id, "/").Backend)
		}
	}
	for id, got := range seen {
		n := sizes[id]
		for start := 0; start+n <= len(got); start += n {
			window := map[string]bool{}
			for _, name := range got[start : start+n] {
				window[name] = true
			}
			if len(window) != n {
				t.Fatalf("image %d: requests %d..%d reached %v, want each of %d containers once (sequence %v)",
					id, start, start+n-1, got[start:start+n], n, got)
			}
		}
		st := getStats(t, id)
		svc := st.Services[0]
		if svc.TotalRequests != int64(len(got)) || svc.FailedRequests != 0 || svc.ActiveConnections != 0 {
			t.Fatalf("image %d: stats %+v, want %d requests", id, svc, len(got))
		}
		var sum int64
		for _, c := range svc.Containers {
			sum += c.TotalRequests
			if c.TotalRequests != int64(len(got)/n) {
				t.Fatalf("image %d container %s: %d requests, want %d", id, c.ContainerID, c.TotalRequests, len(got)/n)
			}
		}
		if sum != svc.TotalRequests {
			t.Fatalf("image %d: containers add up to %d, service has %d", id, sum, svc.TotalRequests)
		}
	}
}

// TestLeastConnections holds one request open on a container: while it is in
// flight every new request goes to the other container.
func TestLeastConnections(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	a, b := newBackend(t, "a"), newBackend(t, "b")
	hold, arrived := make(chan struct{}), make(chan struct{}, 1)
	for _, be := range []*backend{a, b} {
		be.hold, be.arrived = hold, arrived
	}
	register(t, site+"/api/v1", 7, "&algorithm=least_conn", container("a", a), container("b", b))

	slowDone := make(chan echo)
	go func() {
		var e echo
		status, raw := do(t, "GET", site+"/api/v1/proxy/7/slow", nil)
		if status == 200 {
			_ = json.Unmarshal(raw, &e)
		}
		slowDone <- e
	}()
	<-arrived // the slow request is at a container now

	st := getStats(t, 7)
	busy := ""
	for _, c := range st.Services[0].Containers {
		if c.ActiveConnections == 1 {
			busy = c.ContainerID
		}
	}
	if busy == "" || st.Services[0].ActiveConnections != 1 {
		t.Fatalf("no container shows the request in flight: %+v", st)
	}
	for i := 0; i < 6; i++ {
		if got := proxyGet(t, site, 7, "/").Backend; got == busy {
			t.Fatalf("request %d went to %s, which has a request in flight", i, got)
		}
	}
	close(hold)
	if e := <-slowDone; e.Backend != busy {
		t.Fatalf("slow request answered by %q, want %q", e.Backend, busy)
	}
	st = getStats(t, 7)
	if st.ActiveConnections != 0 || st.Services[0].TotalRequests != 7 {
		t.Fatalf("after the slow request: %+v", st)
	}
	// with nothing in flight, ties rotate
	got := map[string]int{}
	for i := 0; i < 4; i++ {
		got[proxyGet(t, site, 7, "/").Backend]++
	}
	if got["a"] != 2 || got["b"] != 2 {
		t.Fatalf("idle least_connections should rotate ties: %v", got)
	}
}

// TestProxyForwarding checks what the container receives for every method.
func TestProxyForwarding(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	b := newBackend(t, "a")
	register(t, site+"/api/v1", 3, "", container("a", b))

	for _, method := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} {
		t.Run(method, func(t *testing.T) {
			req, _ := http.NewRequest(method, site+"/api/v1/proxy/3/a/b%2Fc/d?x=1&y=%20z", strings.NewReader("payload-"+method))
			req.Header.Set("X-Custom", "kept")
			req.Header.Set("Content-Type", "text/plain")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "a" {
				t.Fatalf("status %d, X-Backend %q", resp.StatusCode, resp.Header.Get("X-Backend"))
			}
			if method == "HEAD" {
				if len(raw) != 0 {
					t.Fatalf("HEAD returned a body")
				}
				return
			}
			var e echo
			if err := json.Unmarshal(raw, &e); err != nil {
				t.Fatalf("%v: %s", err, raw)
			}
			if e.Method != method || e.Path != "/a/b/c/d" || e.RawPath != "/a/b%2Fc/d" || e.Query != "x=1&y=%20z" {
				t.Fatalf("container got %s %s (raw %s) ?%s", e.Method, e.Path, e.RawPath, e.Query)
			}
			if e.Body != "payload-"+method {
				t.Fatalf("body %q", e.Body)
			}
			if e.Headers["X-Custom"] != "kept" || e.Headers["X-Forwarded-For"] != "127.0.0.1" ||
				e.Headers["X-Forwarded-Proto"] != "http" || e.Headers["X-Forwarded-Host"] != fmt.Sprintf("127.0.0.1:%d", port) {
				t.Fatalf("headers %v", e.Headers)
			}
		})
	}
	if e := proxyGet(t, site, 3, ""); e.Path != "/" {
		t.Fatalf("/api/v1/proxy/3 reached %q, want /", e.Path)
	}
	if e := proxyGet(t, site, 3, "/"); e.Path != "/" {
		t.Fatalf("/api/v1/proxy/3/ reached %q, want /", e.Path)
	}
}

// TestProxyErrors checks the statuses and JSON details of failed proxying.
func TestProxyErrors(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "timeout 1s\n\t\tmax_retries 2\n\t\tmax_fails 0"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	live := newBackend(t, "live")
	slow := newBackend(t, "slow")
	slow.delay = 1500 * time.Millisecond
	dead := freePort(t) // nothing listens there

	register(t, site+"/api/v1", 1, "", map[string]any{"container_id": "d", "port": live.port, "status": "draining"},
		map[string]any{"container_id": "w0", "port": live.port, "weight": 0})
	register(t, site+"/api/v1", 2, "", map[string]any{"container_id": "dead", "port": dead})
	register(t, site+"/api/v1", 3, "", map[string]any{"container_id": "slow", "port": slow.port})

	cases := []struct {
		name   string
		path   string
		status int
		detail string
	}{
		{"unknown image", "/api/v1/proxy/99/x", 404, "image_id 99 is not registered"},
		{"non-numeric image", "/api/v1/proxy/abc/x", 422, "positive integer"},
		{"encoded slash in id", "/api/v1/proxy/1%2F2/x", 422, "positive integer"},
		{"zero image", "/api/v1/proxy/0", 422, "positive integer"},
		{"no healthy container", "/api/v1/proxy/1/x", 503, "no healthy container for image_id 1"},
		{"every attempt failed", "/api/v1/proxy/2/x", 502, "every attempt to reach a container of image_id 2 failed"},
		{"timeout", "/api/v1/proxy/3/sleep", 504, "did not answer within 1s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantError(t, "GET", site+tc.path, "", tc.status, tc.detail) // a string, or the list form (422)
		})
	}
	st := getStats(t, 2)
	if s := st.Services[0]; s.TotalRequests != 1 || s.FailedRequests != 1 || s.Containers[0].TotalRequests != 3 || s.Containers[0].FailedRequests != 3 {
		t.Fatalf("dead image: one request, three failed attempts (max_retries 2) expected: %+v", s)
	}
}

// TestRetriesHideDeadContainer: with one dead and one live container, every
// client request succeeds; the dead container's failed attempts are counted.
func TestRetriesHideDeadContainer(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	live := newBackend(t, "live")
	register(t, site+"/api/v1", 4, "", map[string]any{"container_id": "dead", "port": freePort(t)}, container("live", live))
	for i := 0; i < 10; i++ {
		if got := proxyGet(t, site, 4, "/").Backend; got != "live" {
			t.Fatalf("got %q", got)
		}
	}
	s := getStats(t, 4).Services[0]
	if s.TotalRequests != 10 || s.FailedRequests != 0 {
		t.Fatalf("service: %+v", s)
	}
	for _, c := range s.Containers {
		switch c.ContainerID {
		case "dead":
			if c.TotalRequests == 0 || c.FailedRequests != c.TotalRequests {
				t.Fatalf("dead: %+v", c)
			}
		case "live":
			if c.TotalRequests != 10 || c.FailedRequests != 0 {
				t.Fatalf("live: %+v", c)
			}
		}
	}
}

// TestPortMappedRouting: a request arriving on a mapped external port of a
// mapped_ports site is proxied, path unchanged, to that port's image.
func TestPortMappedRouting(t *testing.T) {
	apiPort, extPort, rangePort := freePort(t), freePort(t), freePort(t)
	startCaddy(t, fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		port_range %d-%d
	}
}
http://127.0.0.1:%d {
	imagelb
}
http://127.0.0.1:%d, http://127.0.0.1:%d {
	imagelb {
		mapped_ports
	}
}
`, rangePort, rangePort, apiPort, extPort, rangePort))
	site := fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	a, b := newBackend(t, "a"), newBackend(t, "b")
	register(t, site+"/api/v1", 10, fmt.Sprintf("&external_port=%d", extPort), container("a", a))
	register(t, site+"/api/v1", 11, "", container("b", b)) // gets the lowest free port of the range

	var pm []struct { // a bare array, as the original answered
		ExternalPort int   `json:"external_port"`
		ImageID      int64 `json:"image_id"`
	}
	mustDo(t, "GET", site+"/api/v1/port-mappings", nil, 200, &pm)
	if len(pm) != 2 {
		t.Fatalf("port mappings %+v", pm)
	}
	var e echo
	mustDo(t, "GET", fmt.Sprintf("http://127.0.0.1:%d/some/path?q=1", extPort), nil, 200, &e)
	if e.Backend != "a" || e.Path != "/some/path" || e.Query != "q=1" {
		t.Fatalf("external port %d: %+v", extPort, e)
	}
	mustDo(t, "GET", fmt.Sprintf("http://127.0.0.1:%d/api/v1/services", rangePort), nil, 200, &e)
	if e.Backend != "b" || e.Path != "/api/v1/services" {
		t.Fatalf("range port %d should proxy everything to image 11: %+v", rangePort, e)
	}
	// a clash is a 409 and changes nothing
	status, body := do(t, "POST", fmt.Sprintf("%s/api/v1/services/12/register?image_name=x&external_port=%d", site, extPort), "[]")
	if status != 409 || !strings.Contains(string(body), "already mapped to image 10") {
		t.Fatalf("clash: %d %s", status, body)
	}
	if status, _ := do(t, "GET", site+"/api/v1/services/12", nil); status != 404 {
		t.Fatalf("rejected registration created image 12")
	}
}

// TestConcurrentRegistrationWhileProxying re-registers an image with changing
// container sets while clients proxy to it: no request fails (-race finds
// unsynchronised state).
func TestConcurrentRegistrationWhileProxying(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	bs := []*backend{newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")}
	register(t, adminURL+"/imagelb", 20, "", container("a", bs[0]))

	const clients, perClient = 6, 40
	var wg sync.WaitGroup
	errs := make(chan string, clients*perClient)
	stop := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// always at least one live container; sets vary
			cs := []map[string]any{container("a", bs[0])}
			if i%2 == 0 {
				cs = append(cs, container("b", bs[1]))
			}
			if i%3 == 0 {
				cs = append(cs, container("c", bs[2]))
			}
			register(t, adminURL+"/imagelb", 20, "", cs...)
			if i%5 == 0 {
				mustDo(t, "PATCH", adminURL+"/imagelb/services/20/containers/a", map[string]any{"weight": 1 + i%3}, 200, nil)
			}
		}
	}()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perClient; i++ {
				status, body := do(t, "GET", site+"/api/v1/proxy/20/x", nil)
				if status != 200 {
					errs <- fmt.Sprintf("status %d: %s", status, body)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-writerDone
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	s := getStats(t, 20).Services[0]
	if s.TotalRequests != clients*perClient || s.FailedRequests != 0 || s.ActiveConnections != 0 {
		t.Fatalf("stats after the run: %+v", s)
	}
}

// TestProxyUpgradeAndStreaming: a connection upgrade (as WebSockets do) and
// a streamed response pass through the handler's status recording intact.
func TestProxyUpgradeAndStreaming(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "echo" {
			serveEchoUpgrade(t, w)
			return
		}
		// streaming: the second chunk is only sent after the client saw the first
		for i := 0; i < 2; i++ {
			fmt.Fprintf(w, "chunk %d\n", i)
			_ = http.NewResponseController(w).Flush()
			if i == 0 {
				<-streamAck
			}
		}
	}))
	t.Cleanup(up.Close)
	upPort := up.Listener.Addr().(*net.TCPAddr).Port
	register(t, adminURL+"/imagelb", 90, "", map[string]any{"container_id": "u", "port": upPort})

	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/v1/proxy/90/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	fmt.Fprintf(conn, "hello\n")
	if line, err := br.ReadString('\n'); err != nil || line != "echo: hello\n" {
		t.Fatalf("upgraded stream: %q %v", line, err)
	}

	sresp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy/90/stream", port))
	if err != nil {
		t.Fatal(err)
	}
	defer sresp.Body.Close()
	sr := bufio.NewReader(sresp.Body)
	if line, err := sr.ReadString('\n'); err != nil || line != "chunk 0\n" {
		t.Fatalf("first chunk: %q %v", line, err)
	}
	streamAck <- struct{}{}
	if line, err := sr.ReadString('\n'); err != nil || line != "chunk 1\n" {
		t.Fatalf("second chunk: %q %v", line, err)
	}
}

var streamAck = make(chan struct{})

// serveEchoUpgrade switches the connection to the "echo" protocol (as a
// WebSocket upgrade does) and answers the first line it reads with
// "echo: " and the line.
func serveEchoUpgrade(t *testing.T, w http.ResponseWriter) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Error(err)
		return
	}
	defer conn.Close()
	_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	_ = brw.Flush()
	line, _ := brw.ReadString('\n')
	_, _ = brw.WriteString("echo: " + line)
	_ = brw.Flush()
}

// TestChurnHoldsNoMemory registers 10,000 short-lived containers on
// distinct addresses where nothing listens, proxies to each, and removes
// them: once their ejections are over, the heap is back to within a few MB
// of where it started (nothing is kept per removed container: not by the
// passive-ejection timers, nor by the transport's per-address state).
func TestChurnHoldsNoMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Caddy")
	}
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tpersist off\n\t\tmax_fails 1\n\t\tfail_duration 1s\n\t\tmax_retries 0"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	const batch, total = 100, 10000
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	round := func(n int) {
		cs := make([]map[string]any, batch)
		for i := range cs {
			k := n*batch + i
			// 127.1.0.0/16, port 1: distinct loopback addresses that refuse connections
			cs[i] = map[string]any{"container_id": fmt.Sprintf("c%d", k), "host": fmt.Sprintf("127.1.%d.%d", k/250, k%250+1), "port": 1}
		}
		register(t, site+"/api/v1", 125, "", cs...)
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < batch/8+1; i++ {
					resp, err := hc.Get(site + "/api/v1/proxy/125/x")
					if err != nil {
						t.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}()
		}
		wg.Wait()
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	round(0) // warm up what is allocated once
	mustDo(t, "DELETE", site+"/api/v1/services/125", nil, 200, nil)
	before := heap()
	for n := 1; n <= total/batch; n++ {
		round(n)
	}
	mustDo(t, "DELETE", site+"/api/v1/services/125", nil, 200, nil)
	const slack = 4 << 20
	var after uint64
	deadline := time.Now().Add(20 * time.Second)
	for after = heap(); after > before+slack && time.Now().Before(deadline); after = heap() {
		time.Sleep(50 * time.Millisecond) // polling the heap while the 1s ejections end
	}
	t.Logf("heap before %d KiB, after %d containers %d KiB", before>>10, total, after>>10)
	if after > before+slack {
		t.Fatalf("heap grew by %d KiB over %d removed containers, want at most %d KiB", (after-before)>>10, total, slack>>10)
	}
}

// TestSiteCredentialsStayHome: the Authorization header that Caddy's
// basic_auth checked on a site is the operator's, and no container sees
// it, through the proxy route or a mapped port, unless the site says
// forward_authorization (mirror copies included); a header Caddy did not
// check is the tenant's and is forwarded, and so are cookies (issue 24,
// row 7).
func TestSiteCredentialsStayHome(t *testing.T) {
	authed, forwarding, open, mapped := freePort(t), freePort(t), freePort(t), freePort(t)
	const hash = "$2a$04$DhX5lWSpp8n4agMwh3D.W.sl/wDSrbObsbZVFnBtP4w7P6AQdb3q2" // "s3cret"
	startCaddy(t, fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		health_interval 1h
	}
}
http://127.0.0.1:%[1]d {
	basic_auth {
		ops %[5]s
	}
	imagelb
}
http://127.0.0.1:%[2]d {
	basic_auth {
		ops %[5]s
	}
	imagelb {
		forward_authorization
	}
}
http://127.0.0.1:%[3]d {
	imagelb
}
http://127.0.0.1:%[4]d {
	basic_auth {
		ops %[5]s
	}
	imagelb {
		mapped_ports
	}
}
`, authed, forwarding, open, mapped, hash))
	mirrored := make(chan string, 10) // the Authorization of each mirror copy
	m := funcBackend(t, "m", func(w http.ResponseWriter, r *http.Request) { mirrored <- r.Header.Get("Authorization") })
	register(t, adminURL+"/imagelb", 2, "", container("m", m))
	mustDo(t, "POST", adminURL+"/imagelb/services/1/register", map[string]any{"image_name": "web", "external_port": mapped,
		"containers": []any{container("a", newBackend(t, "a"))}, "mirror": map[string]any{"image_id": 2, "percent": 100}}, 200, nil)

	operator := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("ops:s3cret"))}}
	tenant := http.Header{"Authorization": {"Bearer tenant-token"}}
	appCookie := &http.Cookie{Name: "session", Value: "tenant-app"}
	for _, tc := range []struct {
		name string
		url  string
		hdr  http.Header
		want string // the Authorization the container sees
	}{
		{"basic_auth site, proxy route", fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy/1/x", authed), operator, ""},
		{"basic_auth site, mapped port", fmt.Sprintf("http://127.0.0.1:%d/x", mapped), operator, ""},
		{"forward_authorization", fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy/1/x", forwarding), operator, operator.Get("Authorization")},
		{"no basic_auth: the tenant's own header", fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy/1/x", open), tenant, "Bearer tenant-token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := send(t, tc.url, tc.hdr, appCookie)
			var e echo
			if err := json.Unmarshal(a.body, &e); a.status != 200 || err != nil {
				t.Fatalf("status %d: %.300s", a.status, a.body)
			}
			if got := e.Headers["Authorization"]; got != tc.want {
				t.Fatalf("the container saw Authorization %q, want %q", got, tc.want)
			}
			if e.Headers["Cookie"] != "session=tenant-app" {
				t.Fatalf("the tenant's cookie did not reach its container: %q", e.Headers["Cookie"])
			}
			select {
			case got := <-mirrored:
				if got != tc.want {
					t.Fatalf("the mirror copy carried Authorization %q, want %q", got, tc.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no mirror copy arrived")
			}
		})
	}
	if a := send(t, fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy/1/x", authed), nil); a.status != 401 {
		t.Fatalf("basic_auth let an anonymous client through: %d", a.status)
	}
}
