package imagelb

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// Tests of the traffic-control options (algorithms, sticky sessions, rate
// limit, max_in_flight, outlier ejection, retry budget, zones) through a
// real Caddy and real backends: they assert what a client sees.

// stickyContainer decodes the container id a sticky cookie names.
func stickyContainer(t testing.TB, c *http.Cookie) string {
	t.Helper()
	idPart, _, ok := strings.Cut(c.Value, ".")
	id, err := base64.RawURLEncoding.DecodeString(idPart)
	if !ok || err != nil {
		t.Fatalf("sticky cookie %q is not id.mac", c.Value)
	}
	return string(id)
}

// TestWeightedRoundRobinThroughProxy: weights 5, 1, 1 give nginx's smooth
// sequence a a b a c a a, twice over 14 requests.
func TestWeightedRoundRobinThroughProxy(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	a, b, c := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")
	ca, cb, cc := container("a", a), container("b", b), container("c", c)
	ca["weight"] = 5
	registerObject(t, site, 201, map[string]any{"algorithm": "weighted_round_robin",
		"containers": []map[string]any{ca, cb, cc}})

	want := strings.Split("a a b a c a a a a b a c a a", " ")
	var got []string
	for range want {
		got = append(got, proxyGet(t, site, 201, "/").Backend)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("sequence %v, want %v", got, want)
	}
	s := serviceStats(t, 201)
	if s.container(t, "a").TotalRequests != 10 || s.container(t, "b").TotalRequests != 2 || s.container(t, "c").TotalRequests != 2 {
		t.Fatalf("container counts %+v, want a 10, b 2, c 2", s.Containers)
	}
}

// TestConsistentHashByHeader: consistent_hash on a header keeps each user on
// one container and spreads users; ip_hash keeps one client IP on one container.
func TestConsistentHashByHeader(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	var cs []map[string]any
	for _, n := range []string{"h1", "h2", "h3"} {
		cs = append(cs, container(n, newBackend(t, n)))
	}
	registerObject(t, site, 202, map[string]any{"algorithm": "consistent_hash", "hash_key": "header:X-User", "containers": cs})
	registerObject(t, site, 203, map[string]any{"algorithm": "ip_hash", "containers": cs})

	perContainer := map[string]int{}
	for u := 0; u < 50; u++ {
		user := fmt.Sprintf("user-%d", u)
		hdr := http.Header{"X-User": {user}}
		first := sendOK(t, site+"/api/v1/proxy/202/", hdr)
		for i := 0; i < 2; i++ {
			if got := sendOK(t, site+"/api/v1/proxy/202/", hdr); got != first {
				t.Fatalf("%s went to %s, then to %s", user, first, got)
			}
		}
		perContainer[first]++
	}
	if len(perContainer) < 2 {
		t.Fatalf("50 users all landed on one container: %v", perContainer)
	}
	t.Logf("users per container: %v", perContainer)

	first := sendOK(t, site+"/api/v1/proxy/203/", nil)
	for i := 0; i < 20; i++ {
		// a header changes nothing for ip_hash: the client IP is the key
		hdr := http.Header{"X-User": {fmt.Sprintf("user-%d", i)}}
		if got := sendOK(t, site+"/api/v1/proxy/203/", hdr); got != first {
			t.Fatalf("ip_hash: request %d from 127.0.0.1 went to %s, the first to %s", i, got, first)
		}
	}
}

// TestStickySessions: the signed cookie pins a client; a tampered cookie is
// ignored; a draining pinned container releases the client.
func TestStickySessions(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	var cs []map[string]any
	for _, n := range []string{"s1", "s2", "s3"} {
		cs = append(cs, container(n, newBackend(t, n)))
	}
	registerObject(t, site, 204, map[string]any{"algorithm": "round_robin", "sticky": true, "containers": cs})
	url := site + "/api/v1/proxy/204/"
	const name = "imagelb_204"

	// fresh checks that a answers a request with a new cookie naming the
	// container that answered, and returns the cookie.
	fresh := func(what string, a answer) *http.Cookie {
		t.Helper()
		if a.status != http.StatusOK {
			t.Fatalf("%s: status %d: %.300s", what, a.status, a.body)
		}
		c := a.cookieNamed(name)
		if c == nil {
			t.Fatalf("%s: no %s cookie set (Set-Cookie %q)", what, name, a.header.Values("Set-Cookie"))
		}
		if !c.HttpOnly || c.Path != "/" {
			t.Fatalf("%s: cookie %q: want HttpOnly and Path=/", what, a.header.Values("Set-Cookie"))
		}
		if got := stickyContainer(t, c); got != a.backend {
			t.Fatalf("%s: cookie names %q, the answer came from %q", what, got, a.backend)
		}
		return &http.Cookie{Name: c.Name, Value: c.Value}
	}
	// pinned checks that n requests with c all reach want and set no new cookie.
	pinned := func(what string, c *http.Cookie, want string, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			a := send(t, url, nil, c)
			if a.status != http.StatusOK || a.backend != want {
				t.Fatalf("%s: request %d with the cookie: status %d from %q, want 200 from %q", what, i, a.status, a.backend, want)
			}
			if a.cookieNamed(name) != nil {
				t.Fatalf("%s: request %d: a new cookie although the client's names its container: %q", what, i, a.header.Values("Set-Cookie"))
			}
		}
	}

	first := send(t, url, nil)
	cookie := fresh("first request", first)
	home := first.backend
	pinned("valid cookie", cookie, home, 10)

	idPart, macPart, _ := strings.Cut(cookie.Value, ".")
	other := "s1"
	if home == "s1" {
		other = "s2"
	}
	flipped := []byte(macPart)
	if flipped[0] == 'A' {
		flipped[0] = 'B'
	} else {
		flipped[0] = 'A'
	}
	for _, tc := range []struct{ name, value string }{
		{"container part changed", base64.RawURLEncoding.EncodeToString([]byte(other)) + "." + macPart},
		{"signature changed", idPart + "." + string(flipped)},
		{"no signature", idPart},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := &http.Cookie{Name: name, Value: tc.value}
			seen := map[string]bool{}
			var last *http.Cookie
			var lastBackend string
			for i := 0; i < 3; i++ {
				a := send(t, url, nil, bad)
				last = fresh(fmt.Sprintf("tampered cookie, request %d", i), a)
				lastBackend = a.backend
				seen[a.backend] = true
			}
			if len(seen) != 3 {
				t.Fatalf("3 requests with a tampered cookie reached %v, want the rotation over all 3 containers", seen)
			}
			pinned("the fresh cookie given for a tampered one", last, lastBackend, 3)
		})
	}

	// the pinned container drains: the client moves and gets a new cookie
	mustDo(t, "PATCH", fmt.Sprintf("%s/api/v1/services/204/containers/%s", site, home), map[string]any{"status": "draining"}, 200, nil)
	a := send(t, url, nil, cookie)
	moved := fresh("pinned container draining", a)
	if a.backend == home {
		t.Fatalf("request pinned to draining %s still reached it", home)
	}
	pinned("cookie after the move", moved, a.backend, 5)
}

// TestRateLimit: past the token bucket the client gets 429 with Retry-After
// and a detail; the 429s are counted exactly, per service and per client IP.
func TestRateLimit(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	b := newBackend(t, "a")
	for _, tc := range []struct {
		name string
		id   int64
		per  string // as sent; "" leaves it out
		echo string // as echoed
	}{
		{"per service", 205, "", "service"},
		{"per client_ip", 206, "client_ip", "client_ip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rl := map[string]any{"requests": 5, "interval": "1s", "burst": 5}
			if tc.per != "" {
				rl["per"] = tc.per
			}
			registerObject(t, site, tc.id, map[string]any{"rate_limit": rl, "containers": []map[string]any{container("a", b)}})
			var svc struct {
				RateLimit struct {
					Requests int    `json:"requests"`
					Interval string `json:"interval"`
					Burst    int    `json:"burst"`
					Per      string `json:"per"`
				} `json:"rate_limit"`
			}
			mustDo(t, "GET", fmt.Sprintf("%s/api/v1/services/%d", site, tc.id), nil, 200, &svc)
			if r := svc.RateLimit; r.Requests != 5 || r.Interval != "1s" || r.Burst != 5 || r.Per != tc.echo {
				t.Fatalf("rate_limit echoed as %+v", r)
			}

			url := fmt.Sprintf("%s/api/v1/proxy/%d/", site, tc.id)
			start := time.Now()
			ok, limited := 0, 0
			for i := 0; i < 20; i++ {
				a := send(t, url, nil)
				switch a.status {
				case http.StatusOK:
					ok++
				case http.StatusTooManyRequests:
					limited++
					ra, err := strconv.Atoi(a.header.Get("Retry-After"))
					if err != nil || ra < 1 {
						t.Fatalf("429 with Retry-After %q, want whole seconds >= 1", a.header.Get("Retry-After"))
					}
					if !strings.Contains(a.detail(), "rate limit") {
						t.Fatalf("429 detail %q does not mention the rate limit: %.300s", a.detail(), a.body)
					}
				default:
					t.Fatalf("request %d: status %d: %.300s", i, a.status, a.body)
				}
			}
			elapsed := time.Since(start)
			t.Logf("%d of 20 requests passed in %s, %d limited", ok, elapsed, limited)
			// the bucket holds 5 and refills 5 per second
			if most := 5 + int(elapsed.Seconds()*5) + 1; ok < 5 || ok > most {
				t.Fatalf("%d of 20 requests passed in %s, want 5 to %d", ok, elapsed, most)
			}
			if limited == 0 {
				t.Fatalf("no request was limited (%d passed in %s)", ok, elapsed)
			}
			s := serviceStats(t, tc.id)
			if s.RateLimitedRequests != int64(limited) || s.TotalRequests != 20 || s.container(t, "a").TotalRequests != int64(ok) {
				t.Fatalf("stats %+v: want rate_limited_requests %d, total_requests 20, %d reaching the container", s, limited, ok)
			}
			series := fmt.Sprintf(`imagelb_requests_turned_away_total{image_id="%d",reason="rate_limit"}`, tc.id)
			if v := metricValue(t, series); v != float64(limited) {
				t.Fatalf("%s = %v, want %d", series, v, limited)
			}
			// the bucket refills: the client gets through again
			eventually(t, "the rate limit letting a request through again", func() bool {
				return send(t, url, nil).status == http.StatusOK
			})
		})
	}
}

// TestMaxInFlight: with max_in_flight 2 and two requests held at the
// container, the third gets 503; once they finish, requests pass again.
func TestMaxInFlight(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	b, release := holdBackend(t, "held")
	registerObject(t, site, 207, map[string]any{"max_in_flight": 2, "containers": []map[string]any{container("held", b)}})

	results := make(chan string, 2)
	for i := 0; i < 2; i++ {
		go func() {
			resp, err := client.Get(site + "/api/v1/proxy/207/slow")
			if err != nil {
				results <- err.Error()
				return
			}
			resp.Body.Close()
			results <- strconv.Itoa(resp.StatusCode)
		}()
	}
	eventually(t, "2 requests in flight", func() bool { return serviceStats(t, 207).ActiveConnections == 2 })
	wantError(t, "GET", site+"/api/v1/proxy/207/", "", http.StatusServiceUnavailable, "max_in_flight")

	release()
	for i := 0; i < 2; i++ {
		if r := <-results; r != "200" {
			t.Fatalf("held request: %s, want 200", r)
		}
	}
	if got := sendOK(t, site+"/api/v1/proxy/207/", nil); got != "held" {
		t.Fatalf("request after the release reached %q", got)
	}
	s := serviceStats(t, 207)
	if s.ShedRequests != 1 || s.TotalRequests != 4 || s.ActiveConnections != 0 || s.container(t, "held").TotalRequests != 3 {
		t.Fatalf("stats %+v: want shed_requests 1, total_requests 4, 3 at the container", s)
	}
	series := `imagelb_requests_turned_away_total{image_id="207",reason="max_in_flight"}`
	if v := metricValue(t, series); v != 1 {
		t.Fatalf("%s = %v, want 1", series, v)
	}
}

// flaky modes.
const (
	flakyAlternate int32 = iota // 500, 200, 500, ...
	flakyHealthy                // always 200
	flakyFailing                // always 500
)

// flakyBackend answers proxied requests by its mode and counts them.
type flakyBackend struct {
	*backend
	mode atomic.Int32
	hits atomic.Int64
}

func newFlakyBackend(t *testing.T, name string, mode int32) *flakyBackend {
	t.Helper()
	f := &flakyBackend{}
	f.mode.Store(mode)
	f.backend = funcBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
		n := f.hits.Add(1)
		switch f.mode.Load() {
		case flakyHealthy:
		case flakyFailing:
			w.WriteHeader(http.StatusInternalServerError)
			return
		default:
			if n%2 == 1 {
				w.WriteHeader(http.StatusInternalServerError)
				return
			}
		}
		w.WriteHeader(http.StatusOK)
	})
	return f
}

// TestOutlierEjection: a container failing half its requests is ejected,
// gets no traffic during the cooldown, then one probe that brings it back;
// max_ejected_percent keeps the image from losing every container.
func TestOutlierEjection(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tmetrics {\n\t\t\tper_container\n\t\t}"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	const cooldown = time.Second
	outlier := map[string]any{"error_rate": 0.4, "min_requests": 6, "interval": "10s", "cooldown": "1s", "max_ejected_percent": 50}

	t.Run("eject, cooldown, probe", func(t *testing.T) {
		good := newFlakyBackend(t, "good", flakyHealthy)
		bad := newFlakyBackend(t, "bad", flakyAlternate)
		registerObject(t, site, 208, map[string]any{"algorithm": "round_robin", "outlier": outlier,
			"containers": []map[string]any{container("good", good.backend), container("bad", bad.backend)}})
		url := site + "/api/v1/proxy/208/"

		var ejectedBy time.Time // the start of the request after which the ejection was seen
		eventually(t, "the failing container to be ejected", func() bool {
			ejectedBy = time.Now()
			a := send(t, url, nil)
			if a.status != http.StatusOK && a.status != http.StatusInternalServerError {
				t.Fatalf("status %d: %.300s", a.status, a.body)
			}
			return serviceStats(t, 208).container(t, "bad").Ejected
		})
		var view struct {
			Containers []struct {
				ContainerID string `json:"container_id"`
				Ejected     bool   `json:"ejected"`
			} `json:"containers"`
		}
		mustDo(t, "GET", site+"/api/v1/services/208", nil, 200, &view)
		for _, c := range view.Containers {
			if c.Ejected != (c.ContainerID == "bad") {
				t.Fatalf("service view: %+v, want only bad ejected", view.Containers)
			}
		}
		s := serviceStats(t, 208)
		if bc := s.container(t, "bad"); bc.Ejections != 1 || bc.TotalRequests < 6 {
			t.Fatalf("bad after ejection: %+v, want 1 ejection after at least min_requests 6 attempts", bc)
		}

		// during the cooldown every request goes to the good container
		hitsBefore := bad.hits.Load()
		inCooldown := 0
		for i := 0; i < 10; i++ {
			a := send(t, url, nil)
			if time.Since(ejectedBy) >= cooldown {
				break // the cooldown may be over: a probe is allowed from now on
			}
			inCooldown++
			if a.status != http.StatusOK || a.backend != "good" {
				t.Fatalf("request %d during the cooldown: status %d from %q, want 200 from good", i, a.status, a.backend)
			}
		}
		if inCooldown < 10 {
			t.Logf("only %d requests fitted in the cooldown of %s", inCooldown, cooldown)
		}
		if bad.hits.Load() != hitsBefore && inCooldown == 10 {
			t.Fatalf("the ejected container got %d requests during its cooldown", bad.hits.Load()-hitsBefore)
		}

		// the container recovers; after the cooldown a probe reaches it and
		// closes its circuit
		bad.mode.Store(flakyHealthy)
		eventually(t, "a probe reaching the ejected container after its cooldown", func() bool {
			if a := send(t, url, nil); a.status != http.StatusOK {
				t.Fatalf("status %d from %q: %.300s", a.status, a.backend, a.body)
			}
			return bad.hits.Load() > hitsBefore
		})
		eventually(t, "the container back in rotation", func() bool {
			return !serviceStats(t, 208).container(t, "bad").Ejected
		})
		seen := map[string]int{}
		for i := 0; i < 6; i++ {
			seen[sendOK(t, url, nil)]++
		}
		if seen["good"] != 3 || seen["bad"] != 3 {
			t.Fatalf("after the probe passed, 6 requests went %v, want round robin over both", seen)
		}
		if v := streamedValue(t, `imagelb_container_ejected{container_id="bad",image_id="208"}`); v != 0 {
			t.Fatalf("imagelb_container_ejected of bad = %v after it came back", v)
		}
		if v := streamedValue(t, `imagelb_container_ejections_total{container_id="bad",image_id="208"}`); v < 1 {
			t.Fatalf("imagelb_container_ejections_total of bad = %v", v)
		}
	})

	t.Run("max_ejected_percent", func(t *testing.T) {
		f1 := newFlakyBackend(t, "f1", flakyFailing)
		f2 := newFlakyBackend(t, "f2", flakyFailing)
		registerObject(t, site, 209, map[string]any{"algorithm": "round_robin", "outlier": outlier,
			"containers": []map[string]any{container("f1", f1.backend), container("f2", f2.backend)}})
		url := site + "/api/v1/proxy/209/"
		ejections := int64(0)
		for i := 0; i < 30; i++ {
			if a := send(t, url, nil); a.status != http.StatusInternalServerError {
				t.Fatalf("request %d: status %d from %q, want the container's 500 (never 503: one container stays in)", i, a.status, a.backend)
			}
			s := serviceStats(t, 209)
			if n := s.ejectedCount(); n > 1 {
				t.Fatalf("after request %d, %d of 2 containers are ejected (max_ejected_percent 50): %+v", i, n, s.Containers)
			}
			ejections = s.container(t, "f1").Ejections + s.container(t, "f2").Ejections
		}
		if ejections == 0 {
			t.Fatal("no container was ejected though both fail every request")
		}
		t.Logf("%d ejections over 30 requests, never more than one container at once", ejections)
	})
}

// TestRetryBudget: with every container dead, the retry budget keeps the
// attempts near one per request instead of 1 + max_retries.
func TestRetryBudget(t *testing.T) {
	port := freePort(t)
	// no passive or active check takes the dead containers out: the
	// retries are what is measured
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tmax_fails 0\n\t\tunhealthy_threshold 1000"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	dead := func(id string) map[string]any { return map[string]any{"container_id": id, "port": freePort(t)} }
	registerObject(t, site, 210, map[string]any{"retry_budget": 0.1, "containers": []map[string]any{dead("d1"), dead("d2")}})
	registerObject(t, site, 211, map[string]any{"containers": []map[string]any{dead("d3"), dead("d4")}})

	const n = 50
	mentions := 0
	for i := 0; i < n; i++ {
		a := send(t, site+"/api/v1/proxy/210/", nil)
		if a.status != http.StatusBadGateway {
			t.Fatalf("request %d: status %d, want 502: %.300s", i, a.status, a.body)
		}
		if strings.Contains(a.detail(), "retry budget") {
			mentions++
		}
	}
	s := serviceStats(t, 210)
	attempts := s.container(t, "d1").TotalRequests + s.container(t, "d2").TotalRequests
	t.Logf("%d requests: %d attempts, %d retries denied, %d details mention the budget", n, attempts, s.RetriesDenied, mentions)
	// one attempt per request, the 10 retries the budget starts with, and
	// 0.1 retry earned per request
	if lo, hi := int64(n+10), int64(n+10+n/10+2); attempts < lo || attempts > hi {
		t.Fatalf("%d requests made %d attempts, want %d to %d (without a budget: %d)", n, attempts, lo, hi, n*4)
	}
	if s.TotalRequests != n || s.RetriesDenied == 0 || mentions == 0 {
		t.Fatalf("stats %+v, %d details mention the retry budget: want %d requests, retries denied and mentioned", s, mentions, n)
	}
	if v := metricValue(t, `imagelb_retries_denied_total{image_id="210"}`); v != float64(s.RetriesDenied) {
		t.Fatalf("imagelb_retries_denied_total = %v, stats say %d", v, s.RetriesDenied)
	}

	// without a budget every request is retried max_retries (3) times
	for i := 0; i < 10; i++ {
		a := send(t, site+"/api/v1/proxy/211/", nil)
		if a.status != http.StatusBadGateway || strings.Contains(a.detail(), "retry budget") {
			t.Fatalf("no budget, request %d: status %d: %.300s", i, a.status, a.body)
		}
	}
	s = serviceStats(t, 211)
	if got := s.container(t, "d3").TotalRequests + s.container(t, "d4").TotalRequests; got != 40 || s.RetriesDenied != 0 {
		t.Fatalf("no budget: 10 requests made %d attempts (want 40), %d retries denied (want 0)", got, s.RetriesDenied)
	}
}

// TestOptionsEchoedAndValidated: the options come back normalized; a bad
// option is a 422 naming its field and changes nothing.
func TestOptionsEchoedAndValidated(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	b := newBackend(t, "a")
	zoned := container("z1", b)
	zoned["zone"] = "eu-1a"
	registerObject(t, site, 212, map[string]any{
		"algorithm":     "consistent_hash",
		"hash_key":      "header:X-User",
		"sticky":        true,
		"rate_limit":    map[string]any{"requests": 100},
		"max_in_flight": 10,
		"slow_start":    "30s",
		"outlier":       map[string]any{"error_rate": 0.5},
		"retry_budget":  0.2,
		"containers":    []map[string]any{zoned, container("plain", b)},
	})
	get := func() map[string]any {
		t.Helper()
		var v map[string]any
		mustDo(t, "GET", site+"/api/v1/services/212", nil, 200, &v)
		return v
	}
	// options projects what must not change on a rejected registration.
	options := func(v map[string]any) string {
		keep := map[string]any{}
		for _, k := range []string{"image_name", "algorithm", "hash_key", "sticky", "rate_limit", "max_in_flight",
			"slow_start", "outlier", "retry_budget"} {
			keep[k] = v[k]
		}
		var cs []string
		for _, c := range v["containers"].([]any) {
			m := c.(map[string]any)
			cs = append(cs, fmt.Sprintf("%v:%v:%v:%v", m["container_id"], m["port"], m["zone"], m["status"]))
		}
		keep["containers"] = cs
		js, _ := json.Marshal(keep)
		return string(js)
	}

	v := get()
	want := map[string]any{
		"algorithm":     "consistent_hash",
		"hash_key":      "header:X-User",
		"sticky":        true,
		"rate_limit":    map[string]any{"requests": 100.0, "interval": "1s", "burst": 100.0, "per": "service"},
		"max_in_flight": 10.0,
		"slow_start":    "30s",
		"outlier": map[string]any{"error_rate": 0.5, "min_requests": 10.0, "interval": "10s", "cooldown": "30s",
			"max_ejected_percent": 50.0},
		"retry_budget": 0.2,
	}
	for k, w := range want {
		wj, _ := json.Marshal(w)
		gj, _ := json.Marshal(v[k])
		if string(wj) != string(gj) {
			t.Errorf("%s echoed as %s, want %s", k, gj, wj)
		}
	}
	for _, c := range v["containers"].([]any) {
		m := c.(map[string]any)
		wantZone := map[string]any{"z1": "eu-1a", "plain": nil}[m["container_id"].(string)]
		if m["zone"] != wantZone || (m["ejected"] != nil && m["ejected"] != false) {
			t.Errorf("container %v: zone %v ejected %v, want zone %v, not ejected", m["container_id"], m["zone"], m["ejected"], wantZone)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	before := options(v)

	ctr := []map[string]any{container("other", b)}
	for _, tc := range []struct {
		name  string
		field map[string]any
		loc   string // the field's location, as the detail names it
	}{
		{"rate_limit.requests 0", map[string]any{"rate_limit": map[string]any{"requests": 0}}, `"rate_limit","requests"`},
		{"rate_limit.per", map[string]any{"rate_limit": map[string]any{"requests": 1, "per": "user"}}, `"rate_limit","per"`},
		{"rate_limit.interval", map[string]any{"rate_limit": map[string]any{"requests": 1, "interval": "-1s"}}, `"rate_limit","interval"`},
		{"hash_key md5", map[string]any{"algorithm": "consistent_hash", "hash_key": "md5"}, `"hash_key"`},
		{"hash_key for ip_hash", map[string]any{"algorithm": "ip_hash", "hash_key": "header:X-User"}, `"hash_key"`},
		{"outlier.max_ejected_percent 150", map[string]any{"outlier": map[string]any{"max_ejected_percent": 150}}, `"outlier","max_ejected_percent"`},
		{"outlier.error_rate", map[string]any{"outlier": map[string]any{"error_rate": 1.5}}, `"outlier","error_rate"`},
		{"max_in_flight", map[string]any{"max_in_flight": -1}, `"max_in_flight"`},
		{"slow_start", map[string]any{"slow_start": "-5s"}, `"slow_start"`},
		{"retry_budget", map[string]any{"retry_budget": 1.5}, `"retry_budget"`},
		{"algorithm", map[string]any{"algorithm": "fastest"}, `"algorithm"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := map[string]any{"image_name": "changed", "containers": ctr}
			for k, v := range tc.field {
				body[k] = v
			}
			status, raw := do(t, "POST", site+"/api/v1/services/212/register", body)
			if status != http.StatusUnprocessableEntity {
				t.Fatalf("status %d, want 422: %.300s", status, raw)
			}
			var e struct {
				Detail []struct {
					Loc []any  `json:"loc"`
					Msg string `json:"msg"`
				} `json:"detail"`
			}
			if err := json.Unmarshal(raw, &e); err != nil || len(e.Detail) == 0 {
				t.Fatalf("422 without field errors: %.300s", raw)
			}
			if !strings.Contains(string(raw), tc.loc) {
				t.Fatalf("detail does not locate %s: %.400s", tc.loc, raw)
			}
			if after := options(get()); after != before {
				t.Fatalf("a rejected registration changed the service:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// TestZonePreference: with the app in zone a, requests stay in zone a while
// its containers are up, go to zone b when they are down, and a request
// naming zone b in the zone header goes there.
func TestZonePreference(t *testing.T) {
	port := freePort(t)
	tester := caddytest.NewTester(t)
	tester.InitServer(fmt.Sprintf(`{
	"admin": {"listen": "localhost:2999"},
	"apps": {
		"imagelb": {"health_interval": "1h", "zone": "a", "zone_header": "X-Client-Zone"},
		"http": {"servers": {"s": {"listen": ["127.0.0.1:%d"], "routes": [{"handle": [{"handler": "imagelb"}]}]}}}
	}
}`, port), "json")
	if t.Failed() {
		t.FailNow()
	}
	resetRegistry(t)
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	var cs []map[string]any
	for _, z := range []struct{ id, zone string }{{"a1", "a"}, {"a2", "a"}, {"b1", "b"}} {
		c := container(z.id, newBackend(t, z.id))
		c["zone"] = z.zone
		cs = append(cs, c)
	}
	registerObject(t, site, 213, map[string]any{"algorithm": "round_robin", "containers": cs})
	url := site + "/api/v1/proxy/213/"

	count := func(n int, hdr http.Header) map[string]int {
		t.Helper()
		seen := map[string]int{}
		for i := 0; i < n; i++ {
			seen[sendOK(t, url, hdr)]++
		}
		return seen
	}
	if seen := count(20, nil); seen["b1"] != 0 || seen["a1"] == 0 || seen["a2"] == 0 {
		t.Fatalf("zone a healthy: 20 requests went %v, want only a1 and a2", seen)
	}
	if seen := count(10, http.Header{"X-Client-Zone": {"b"}}); seen["b1"] != 10 {
		t.Fatalf("X-Client-Zone b: 10 requests went %v, want all to b1", seen)
	}
	if seen := count(9, http.Header{"X-Client-Zone": {"nowhere"}}); len(seen) != 3 {
		t.Fatalf("a zone without containers: 9 requests went %v, want all three containers", seen)
	}
	for _, id := range []string{"a1", "a2"} {
		mustDo(t, "PATCH", fmt.Sprintf("%s/api/v1/services/213/containers/%s", site, id), map[string]any{"status": "unhealthy"}, 200, nil)
	}
	if seen := count(10, nil); seen["b1"] != 10 {
		t.Fatalf("zone a down: 10 requests went %v, want all to b1", seen)
	}
}

// TestLeastLatencyPrefersFastContainer: least_latency sends most requests to
// the container that answers faster.
func TestLeastLatencyPrefersFastContainer(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	fast := newBackend(t, "fast")
	slow := funcBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(30 * time.Millisecond) // the backend's own slowness under test, not a test wait
		w.WriteHeader(http.StatusOK)
	})
	registerObject(t, site, 214, map[string]any{"algorithm": "least_latency",
		"containers": []map[string]any{container("fast", fast), container("slow", slow)}})
	url := site + "/api/v1/proxy/214/"
	for i := 0; i < 20; i++ {
		sendOK(t, url, nil)
	}
	seen := map[string]int{}
	for i := 0; i < 100; i++ {
		seen[sendOK(t, url, nil)]++
	}
	if seen["fast"] <= 70 {
		t.Fatalf("least_latency: 100 requests went %v, want more than 70 to the fast container", seen)
	}
}
