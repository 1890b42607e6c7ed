package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestExampleAttacks runs examples/Caddyfile with the xcaddy-built binary and
// tries the attacks of a client that can reach the API site's port (issue 24's
// table, one subtest a row, by its number): each is refused or bounded, and
// the registry and Caddy's config are what they were. The browser (row 3 from
// a page), public-address (writes_from), quota (4), mirror budget (5),
// basic_auth (7) and tarpit (8) rows need more than the example: the root
// package's tests cover them (TestCrossSitePageInBrowser,
// TestPublicClientsOnlyRead, TestQuotas, TestMirrorBudget,
// TestSiteCredentialsStayHome, and health's TestTarpitsDoNotStarveHealthyChecks).
func TestExampleAttacks(t *testing.T) {
	bin, root := xcaddyBinary(t)
	ports, site, adm := runExample(t, bin, root)
	api := site + "/api/v1"

	// do sends a request with a JSON body (as the original's clients do)
	// unless header says otherwise, and returns the status and the body.
	do := func(t *testing.T, method, url, body string, header map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range header {
			if k == "Host" {
				req.Host = v
				continue
			}
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(raw)
	}
	want := func(t *testing.T, what string, gotStatus int, gotBody string, status int, substr string) {
		t.Helper()
		if gotStatus != status || !strings.Contains(gotBody, substr) {
			t.Fatalf("%s: %d %s\nwant %d containing %q", what, gotStatus, gotBody, status, substr)
		}
	}
	notRegistered := func(t *testing.T, id int) {
		t.Helper()
		if st, body := do(t, "GET", fmt.Sprintf("%s/services/%d", api, id), "", nil); st != 404 {
			t.Fatalf("image %d exists after a refused write: %d %s", id, st, body)
		}
	}
	// forget removes what an attack registered where it was not refused,
	// through the admin endpoint, so that each row is tried on its own
	// (on the unfixed code, row 2's mapping answers for the whole site)
	forget := func(t *testing.T, id int) {
		t.Cleanup(func() { do(t, "DELETE", fmt.Sprintf("%s/imagelb/services/%d", adm, id), "", nil) })
	}
	config := func(t *testing.T) string {
		t.Helper()
		_, body := do(t, "GET", adm+"/config/", "", nil)
		return body
	}

	t.Run("1 a container at Caddy's admin endpoint", func(t *testing.T) {
		forget(t, 66)
		before := config(t)
		st, body := do(t, "POST", api+"/services/66/register?image_name=owned",
			fmt.Sprintf(`[{"container_id":"admin","host":"127.0.0.1","port":%d}]`, ports["2019"]), nil)
		want(t, "register at the admin address", st, body, 422, "self rule")
		notRegistered(t, 66)
		load := `{"apps":{"http":{"servers":{"x":{"listen":[":` + fmt.Sprint(ports["3000"]) +
			`"],"routes":[{"handle":[{"handler":"static_response","body":"owned"}]}]}}}}}`
		st, _ = do(t, "POST", api+"/proxy/66/load", load, map[string]string{"Host": fmt.Sprintf("localhost:%d", ports["2019"])})
		if st == 200 {
			t.Fatalf("POST /api/v1/proxy/66/load answered 200")
		}
		if after := config(t); after != before {
			t.Fatalf("Caddy's config changed:\nbefore %s\nafter  %s", before, after)
		}
		if _, body := do(t, "GET", site+"/health", "", nil); strings.Contains(body, "owned") {
			t.Fatalf("/health: %s", body)
		}
	})

	t.Run("2 external_port at the API site's own port", func(t *testing.T) {
		forget(t, 67)
		st, body := do(t, "POST", fmt.Sprintf("%s/services/67/register?image_name=evil&external_port=%d", api, ports["3000"]),
			fmt.Sprintf(`[{"container_id":"x","port":%d}]`, ports["9003"]), nil)
		want(t, "register the API's port", st, body, 422, "mapped_ports")
		notRegistered(t, 67)
		if _, body := do(t, "GET", site+"/health", "", nil); !strings.Contains(body, `"service":"load-balancer"`) {
			t.Fatalf("/health is not the API's: %s", body)
		}
	})

	t.Run("3 a cross-site form post", func(t *testing.T) {
		forget(t, 68)
		body := fmt.Sprintf(`[{"container_id":"x","port":%d}]`, ports["9003"])
		for _, h := range []map[string]string{
			{"Content-Type": "text/plain"},
			{"Content-Type": "application/x-www-form-urlencoded"},
			{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
		} {
			st, raw := do(t, "POST", api+"/services/68/register?image_name=csrf", body, h)
			want(t, fmt.Sprintf("register with %v", h), st, raw, 403, "detail")
		}
		notRegistered(t, 68)
	})

	t.Run("6 a health check reads no banner", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = io.WriteString(c, "internal-db-host ready\r\n\r\n")
				c.Close()
			}
		}()
		port := ln.Addr().(*net.TCPAddr).Port
		st, body := do(t, "POST", api+"/services/70/register?image_name=scan",
			fmt.Sprintf(`[{"container_id":"db","port":%d}]`, port), nil)
		want(t, "register the banner's port", st, body, 200, "")
		do(t, "POST", api+"/health-check?image_id=70", "", nil)
		_, body = do(t, "GET", api+"/services/70", "", nil)
		if strings.Contains(body, "internal-db-host") || !strings.Contains(body, `"last_health_error":"not HTTP"`) {
			t.Fatalf("last_health_error after a check of a banner: %s", body)
		}
	})

	t.Run("9 and 12 a client's mirror mark, a failed dial", func(t *testing.T) {
		var mu sync.Mutex
		var seen http.Header
		backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen = r.Header.Clone()
			mu.Unlock()
			_, _ = io.WriteString(w, "ok")
		}), ReadHeaderTimeout: 5 * time.Second}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = backend.Serve(ln) }()
		defer backend.Close()
		st, body := do(t, "POST", api+"/services/71/register?image_name=rec",
			fmt.Sprintf(`[{"container_id":"rec-1","port":%d}]`, ln.Addr().(*net.TCPAddr).Port), nil)
		want(t, "register the recorder", st, body, 200, "")
		st, body = do(t, "GET", api+"/proxy/71/x", "", map[string]string{"X-Imagelb-Mirror": "1"})
		want(t, "proxy with X-Imagelb-Mirror", st, body, 200, "ok")
		mu.Lock()
		mark := seen.Get("X-Imagelb-Mirror")
		mu.Unlock()
		if mark != "" {
			t.Fatalf("the container saw the client's X-Imagelb-Mirror: %q", mark)
		}

		closed := freePort(t) // nothing listens there
		st, body = do(t, "POST", api+"/services/72/register?image_name=gone",
			fmt.Sprintf(`[{"container_id":"gone-1","port":%d}]`, closed), nil)
		want(t, "register a closed port", st, body, 200, "")
		st, body = do(t, "GET", api+"/proxy/72/x", "", nil)
		want(t, "proxy to a closed port", st, body, 502, `container \"gone-1\"`)
		if strings.Contains(body, fmt.Sprint(closed)) {
			t.Fatalf("the 502 shows the container's address: %s", body)
		}
	})

	t.Run("10 dot segments toward a system service", func(t *testing.T) {
		for _, p := range []string{"/api/v1/users/../internal/admin", "/api/v1/users/%2e%2e/internal/admin",
			"/api/v1/users/..%2Finternal/admin"} {
			st, body := do(t, "GET", site+p, "", nil)
			var echo struct {
				Path string `json:"path"`
			}
			_ = json.Unmarshal([]byte(body), &echo)
			// forwarded only as the clean path it was matched by
			if st == 200 && (strings.Contains(echo.Path, "..") || strings.Contains(strings.ToLower(echo.Path), "%2e") ||
				strings.Contains(strings.ToLower(echo.Path), "%2f") || strings.HasPrefix(echo.Path, "/users/")) {
				t.Fatalf("GET %s was forwarded as %q (%d %s)", p, echo.Path, st, body)
			}
		}
	})

	t.Run("11 a usage range it cannot answer", func(t *testing.T) {
		st, body := do(t, "GET", api+"/usage?from=9999-01-01T00:00:00Z&to=9999-12-31T23:59:59Z&step=8760h", "", nil)
		want(t, "usage in the year 9999", st, body, 422, "detail")
	})

	// nothing of the refused writes reached the registry
	if st, body := do(t, "GET", api+"/services", "", nil); st != 200 || bytes.Contains([]byte(body), []byte(`"owned"`)) {
		t.Fatalf("services: %d %s", st, body)
	}
}
