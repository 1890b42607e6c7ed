package imagelb

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"runtime"
	"strings"
	"testing"

	"github.com/imagelb/caddy-imagelb/registry"
)

// Tests of mirroring through a real Caddy and real backends: what the
// target receives, what the client sees (never a wait), and the counters.

// copyOf is what a mirror target received.
type copyOf struct {
	method, path, query, body, mirror, forwardedFor string
}

// recordingBackend sends every request it gets (but health checks) to the
// returned channel and answers status.
func recordingBackend(t *testing.T, name string, status int) (*backend, chan copyOf) {
	t.Helper()
	got := make(chan copyOf, 100)
	b := funcBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- copyOf{r.Method, r.URL.Path, r.URL.RawQuery, string(body), r.Header.Get(MirrorHeader), r.Header.Get("X-Forwarded-For")}
		w.WriteHeader(status)
	})
	return b, got
}

// sendBody sends a request with a body through the proxy and returns the
// container that answered; chunked sends the body without a length.
func sendBody(t *testing.T, method, url, body string, chunked bool) string {
	t.Helper()
	var rd io.Reader = strings.NewReader(body)
	if chunked {
		rd = io.MultiReader(rd) // no length known: sent chunked
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: status %d", method, url, resp.StatusCode)
	}
	return resp.Header.Get("X-Backend")
}

// TestMirrorCopies: the copy has the request's method, path, query, headers
// and body, and X-Imagelb-Mirror: 1; bodies over max_body are not copied
// and counted; only the listed methods are copied (by default the safe
// ones); the share is exact; copies are counted on the target apart from its
// real traffic.
func TestMirrorCopies(t *testing.T) {
	site := splitSite(t)
	m, copies := recordingBackend(t, "m", http.StatusOK)
	registerObject(t, site, 402, map[string]any{"containers": []any{container("m", m)}})
	a := newBackend(t, "a")
	registerObject(t, site, 401, map[string]any{"containers": []any{container("a", a)},
		"mirror": map[string]any{"image_id": 402, "percent": 100, "methods": []string{"GET", "POST"}, "max_body": "16B"}})
	registerObject(t, site, 403, map[string]any{"containers": []any{container("a", a)},
		"mirror": map[string]any{"image_id": 402, "percent": 25}})

	if got := sendOK(t, site+"/api/v1/proxy/401/x?q=1", http.Header{"X-Forwarded-For": {"10.1.2.3"}}); got != "a" {
		t.Fatalf("the client was answered by %s", got)
	}
	c := <-copies
	if c != (copyOf{"GET", "/x", "q=1", "", "1", "127.0.0.1"}) { // the client is no trusted proxy: its XFF is not kept
		t.Fatalf("the copy of a GET: %+v", c)
	}
	sendBody(t, "POST", site+"/api/v1/proxy/401/p", "hello", false)
	if c := <-copies; c.method != "POST" || c.path != "/p" || c.body != "hello" || c.mirror != "1" {
		t.Fatalf("the copy of a POST: %+v", c)
	}
	sendBody(t, "POST", site+"/api/v1/proxy/401/p", strings.Repeat("x", 17), false) // over max_body, announced
	sendBody(t, "POST", site+"/api/v1/proxy/401/p", strings.Repeat("x", 32), true)  // over max_body, found reading
	sendBody(t, "PUT", site+"/api/v1/proxy/401/p", "put", false)                    // not a mirrored method
	for range 8 {
		sendOK(t, site+"/api/v1/proxy/403/", nil) // 25%: 2 copies
	}
	sendBody(t, "POST", site+"/api/v1/proxy/403/", "no", false) // the default methods are GET, HEAD and OPTIONS

	eventually(t, "4 copies counted", func() bool { return splitStats(t, 402).MirroredRequests == 4 })
	for range 2 {
		if c := <-copies; c.path != "/" || c.method != "GET" {
			t.Fatalf("a copy of image 403's requests: %+v", c)
		}
	}
	s := splitStats(t, 402)
	if s.MirrorTooLarge != 2 || s.MirrorFailures != 0 || s.MirrorDropped != 0 || s.TotalRequests != 0 {
		t.Fatalf("image 402: %+v, want 2 too large, no failure, no drop, and no request of its own", s)
	}
	select {
	case c := <-copies:
		t.Fatalf("a copy that should not have been sent: %+v", c)
	default:
	}
	if n := serviceStats(t, 401).TotalRequests; n != 5 {
		t.Fatalf("image 401 counted %d requests, want 5", n)
	}
}

// TestMirrorNeverHoldsTheClient: with the target holding every copy, the
// client's requests are answered and its keep-alive connection is used
// again at once (nginx's mirror holds it); past max_in_flight copies are
// dropped and counted, and places free up as copies finish.
func TestMirrorNeverHoldsTheClient(t *testing.T) {
	site := splitSite(t)
	held, release := holdBackend(t, "held")
	registerObject(t, site, 412, map[string]any{"containers": []any{container("held", held)}})
	registerObject(t, site, 411, map[string]any{"containers": []any{container("a", newBackend(t, "a"))},
		"mirror": map[string]any{"image_id": 412, "percent": 100, "max_in_flight": 2}})

	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	for i := range 5 {
		var reused bool
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
			http.MethodGet, site+"/api/v1/proxy/411/slow", nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "a" {
			t.Fatalf("request %d: %d from %q", i, resp.StatusCode, resp.Header.Get("X-Backend"))
		}
		if i > 0 && !reused {
			t.Fatalf("request %d did not reuse the client's connection while copies were held", i)
		}
	}
	if s := splitStats(t, 412); s.MirrorDropped != 3 || s.MirroredRequests != 0 {
		t.Fatalf("with 2 copies held: %+v, want 3 dropped and none finished", s)
	}
	release()
	eventually(t, "the 2 held copies finish", func() bool { return splitStats(t, 412).MirroredRequests == 2 })
	sendOK(t, site+"/api/v1/proxy/411/slow", nil)
	eventually(t, "a copy after the places freed up", func() bool { return splitStats(t, 412).MirroredRequests == 3 })
	if s := splitStats(t, 412); s.MirrorDropped != 3 || s.TotalRequests != 0 {
		t.Fatalf("image 412: %+v", s)
	}
	if sent, dropped := metricValue(t, `imagelb_mirror_copies_total{image_id="412",result="sent"}`),
		metricValue(t, `imagelb_mirror_copies_total{image_id="412",result="dropped"}`); sent != 3 || dropped != 3 {
		t.Fatalf("imagelb_mirror_copies_total sent %v dropped %v, want 3 and 3", sent, dropped)
	}
}

// TestMirrorFailures: copies that fail are counted on the target as mirror
// failures, never in its or the source's real counters; a target without an
// available container drops the copies.
func TestMirrorFailures(t *testing.T) {
	site := splitSite(t)
	bad, _ := recordingBackend(t, "bad", http.StatusInternalServerError)
	registerObject(t, site, 422, map[string]any{"containers": []any{container("bad", bad)}})
	registerObject(t, site, 423, map[string]any{"containers": []any{}})
	a := newBackend(t, "a")
	registerObject(t, site, 421, map[string]any{"containers": []any{container("a", a)},
		"mirror": map[string]any{"image_id": 422, "percent": 100}})
	registerObject(t, site, 424, map[string]any{"containers": []any{container("a", a)},
		"mirror": map[string]any{"image_id": 423, "percent": 100}})
	for range 3 {
		sendOK(t, site+"/api/v1/proxy/421/", nil)
		sendOK(t, site+"/api/v1/proxy/424/", nil)
	}
	eventually(t, "3 failed copies", func() bool { return splitStats(t, 422).MirrorFailures == 3 })
	eventually(t, "3 dropped copies", func() bool { return splitStats(t, 423).MirrorDropped == 3 })
	if s := serviceStats(t, 422); s.TotalRequests != 0 || s.FailedRequests != 0 || s.container(t, "bad").TotalRequests != 0 {
		t.Fatalf("image 422's real counters moved: %+v", s)
	}
	if s := serviceStats(t, 421); s.TotalRequests != 3 || s.FailedRequests != 0 {
		t.Fatalf("image 421: %+v, want 3 requests, none failed", s)
	}
	if s := splitStats(t, 422); s.MirroredRequests != 3 {
		t.Fatalf("image 422: %+v", s)
	}
	var svc splitService
	mustDo(t, "DELETE", fmt.Sprintf("%s/api/v1/services/423", site), nil, 200, nil)
	mustDo(t, "GET", fmt.Sprintf("%s/api/v1/services/424", site), nil, 200, &svc)
	if !strings.Contains(svc.Warning, "mirror names image_id 423, which is not registered: nothing is mirrored") {
		t.Fatalf("warning %q", svc.Warning)
	}
	sendOK(t, site+"/api/v1/proxy/424/", nil) // a mirror to a deleted image: inert
}

// headerBackend sends the headers of every request it gets (but health
// checks) to the returned channel and answers 200.
func headerBackend(t *testing.T, name string) (*backend, chan http.Header) {
	t.Helper()
	got := make(chan http.Header, 10)
	b := funcBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		got <- r.Header.Clone()
	})
	return b, got
}

// TestMirrorPreparedLikePrimary (issue 24 row 9): a copy carries the
// headers the primary's container got, as Caddy's reverse_proxy prepared
// them: no header the client named in Connection, no hop-by-hop header, the
// client's X-Forwarded-* replaced (it is no trusted proxy), and kept when
// it is one; plus X-Imagelb-Mirror: 1, which a client cannot send itself to
// the primary or the copy.
func TestMirrorPreparedLikePrimary(t *testing.T) {
	for _, tc := range []struct {
		name, server string
		wantXFF      string
	}{
		{"untrusted client", "", "127.0.0.1"},
		{"trusted proxy", "servers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}", "6.6.6.6, 127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := freePort(t)
			startCaddy(t, fmt.Sprintf(`{
	admin localhost:2999
	%s
	imagelb {
		health_interval 1h
	}
}
http://127.0.0.1:%d {
	imagelb
}
`, tc.server, port))
			site := fmt.Sprintf("http://127.0.0.1:%d", port)
			primary, toPrimary := headerBackend(t, "primary")
			shadow, toShadow := headerBackend(t, "shadow")
			registerObject(t, site, 432, map[string]any{"containers": []any{container("s", shadow)}})
			registerObject(t, site, 431, map[string]any{"containers": []any{container("p", primary)},
				"mirror": map[string]any{"image_id": 432, "percent": 100, "methods": []string{"GET", "POST"}}})

			for _, method := range []string{"GET", "POST"} {
				req, _ := http.NewRequest(method, site+"/api/v1/proxy/431/x", strings.NewReader("body"))
				req.Header.Set("Connection", "keep-alive, X-Secret")
				req.Header.Set("X-Secret", "hop")
				req.Header.Set("Keep-Alive", "timeout=5")
				req.Header.Set("Proxy-Authorization", "Basic eDp5")
				req.Header.Set("X-Forwarded-For", "6.6.6.6")
				req.Header.Set("X-Forwarded-Host", "evil.example")
				req.Header.Set("X-Forwarded-Proto", "https")
				req.Header.Set(MirrorHeader, "1")
				req.Header.Set("X-Kept", "end-to-end")
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("%s: status %d", method, resp.StatusCode)
				}
				p := <-toPrimary
				c := <-toShadow
				if got := p.Get(MirrorHeader); got != "" {
					t.Fatalf("%s: the primary got the client's %s: %q", method, MirrorHeader, got)
				}
				if got := c.Values(MirrorHeader); len(got) != 1 || got[0] != "1" {
					t.Fatalf("%s: the copy's %s is %q, want one 1", method, MirrorHeader, got)
				}
				for name, h := range map[string]http.Header{"primary": p, "copy": c} {
					for _, hop := range []string{"X-Secret", "Keep-Alive", "Proxy-Authorization"} {
						if v := h.Get(hop); v != "" {
							t.Errorf("%s %s got hop-by-hop %s: %q", method, name, hop, v)
						}
					}
					if v := h.Get("X-Forwarded-For"); v != tc.wantXFF {
						t.Errorf("%s %s: X-Forwarded-For %q, want %q", method, name, v, tc.wantXFF)
					}
					if h.Get("X-Kept") != "end-to-end" {
						t.Errorf("%s %s lost an end-to-end header", method, name)
					}
				}
				c.Del(MirrorHeader)
				if fmt.Sprint(p) != fmt.Sprint(c) {
					t.Fatalf("%s: the copy's headers differ from the primary's:\nprimary %v\ncopy    %v", method, p, c)
				}
			}
		})
	}
}

// memInUse is the heap and the stacks in use after a collection.
func memInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse + ms.StackInuse)
}

// TestMirrorBudget (issue 24 row 5): copies of large bodies to a target
// that never answers, with max_in_flight and max_body at their ceilings,
// hold no more memory than mirror_budget: the copies that do not fit are
// dropped and counted, and the process's heap stays bounded. Then it
// measures what a copy held without a body costs (MirrorCopyOverhead).
func TestMirrorBudget(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tmirror_budget 4MiB"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	held, release := holdBackend(t, "held")
	registerObject(t, site, 442, map[string]any{"containers": []any{container("held", held)}})
	registerObject(t, site, 441, map[string]any{"containers": []any{container("a", newBackend(t, "a"))},
		"mirror": map[string]any{"image_id": 442, "percent": 100, "methods": []string{"GET", "POST"},
			"max_body": "16MiB", "max_in_flight": 100000}})

	const copies, size = 64, 512 << 10
	before := memInUse()
	body := strings.Repeat("x", size)
	for i := range copies {
		sendBody(t, "POST", site+"/api/v1/proxy/441/slow", body, i%2 == 1) // half of them chunked
	}
	budget := running.Load().reg.MirrorBudget()
	eventually(t, "every copy held or dropped", func() bool {
		s := splitStats(t, 442)
		return s.MirrorDropped > 0 && s.MirrorDropped+budget.Used()/(size+registry.MirrorCopyOverhead) >= copies-1
	})
	grown := memInUse() - before
	s := splitStats(t, 442)
	t.Logf("%d copies of %d KiB: %d dropped, budget used %d KiB, heap and stacks grew %d KiB",
		copies, size>>10, s.MirrorDropped, budget.Used()>>10, grown>>10)
	if s.MirrorDropped < copies-8 || budget.Used() > 4<<20 {
		t.Fatalf("a 4 MiB budget held %d bytes and dropped %d of %d copies of 512 KiB", budget.Used(), s.MirrorDropped, copies)
	}
	if grown > 16<<20 {
		t.Fatalf("%d copies of 512 KiB held by a target that never answers grew the heap by %d MiB with a 4 MiB budget",
			copies, grown>>20)
	}
	release()
	eventually(t, "the held copies finish and give their budget back", func() bool { return budget.Used() == 0 })

	// What a copy without a body costs while its target holds it.
	held2, release2 := holdBackend(t, "held2")
	registerObject(t, site, 442, map[string]any{"containers": []any{container("held2", held2)}})
	const bare = 64
	before = memInUse()
	for range bare {
		sendOK(t, site+"/api/v1/proxy/441/slow", nil)
	}
	eventually(t, "the bare copies held", func() bool {
		return budget.Used() >= bare*registry.MirrorCopyOverhead
	})
	per := (memInUse() - before) / bare
	t.Logf("a copy held without a body costs about %d KiB (MirrorCopyOverhead %d KiB)", per>>10, registry.MirrorCopyOverhead>>10)
	if per > 2*registry.MirrorCopyOverhead {
		t.Errorf("a held copy costs %d KiB, more than twice MirrorCopyOverhead: raise it", per>>10)
	}
	release2()
}

// TestClientMirrorHeaderRemoved: a client's own X-Imagelb-Mirror reaches
// no container, on the proxy route of an image without a mirror and on an
// ordinary site's reverse_proxy with dynamic imagelb: only imagelb's
// copies carry it.
func TestClientMirrorHeaderRemoved(t *testing.T) {
	apiPort, ordinaryPort := freePort(t), freePort(t)
	startCaddy(t, fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		health_interval 1h
	}
}
http://127.0.0.1:%d {
	imagelb
}
http://127.0.0.1:%d {
	reverse_proxy {
		dynamic imagelb 451
		lb_policy imagelb
	}
}
`, apiPort, ordinaryPort))
	register(t, fmt.Sprintf("http://127.0.0.1:%d/api/v1", apiPort), 451, "", container("a", newBackend(t, "a")))
	for _, url := range []string{
		fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy/451/x", apiPort),
		fmt.Sprintf("http://127.0.0.1:%d/x", ordinaryPort),
	} {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set(MirrorHeader, "1")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e echo
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d, %v", url, resp.StatusCode, err)
		}
		if v, ok := e.Headers[MirrorHeader]; ok {
			t.Fatalf("GET %s: the container got the client's %s: %q", url, MirrorHeader, v)
		}
	}
}
