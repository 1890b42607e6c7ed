package imagelb

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// intentConfig is a site whose page at http://ui.example may call the API.
func intentConfig(port int, cors string) string {
	return fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		health_interval 1h
	}
}
http://127.0.0.1:%d {
	imagelb {
		cors %s
	}
}
`, port, cors)
}

// write sends a request with a body of the given Content-Type ("" sends
// none) and extra headers, as a browser or a script would.
func write(t testing.TB, method, url, ctype, body string, hdr map[string]string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: raw}
}

// TestWritesNeedIntent sends writes to a site's management API as a
// cross-site page, a form and a script would: a write that does not show
// it was meant (a JSON body, no foreign origin) is refused with 403 and
// changes nothing; the original's clients (JSON bodies, DELETE and
// health-check without a body) and a listed cors origin pass. Reads are
// not checked.
func TestWritesNeedIntent(t *testing.T) {
	port := freePort(t)
	startCaddy(t, intentConfig(port, "http://ui.example"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	b := newBackend(t, "a")
	reg := func(id int) string { return fmt.Sprintf("%s/api/v1/services/%d/register?image_name=x", site, id) }
	body := fmt.Sprintf(`[{"container_id": "a", "port": %d}]`, b.port)
	const json = "application/json"

	refused := []struct {
		name, method, ctype, body string
		hdr                       map[string]string
		detail                    string
	}{
		{"text/plain body (a no-cors fetch)", "POST", "text/plain", body, nil, "Content-Type: application/json"},
		{"text/plain with charset", "POST", "text/plain;charset=UTF-8", body, nil, "Content-Type: application/json"},
		{"form body", "POST", "application/x-www-form-urlencoded", "a=" + body, nil, "Content-Type: application/json"},
		{"multipart body", "POST", "multipart/form-data; boundary=x", "--x--", nil, "Content-Type: application/json"},
		{"body without a Content-Type", "POST", "", body, nil, "Content-Type: application/json"},
		{"empty form", "POST", "application/x-www-form-urlencoded", "", nil, "Content-Type: application/json"},
		{"json-looking type", "POST", "application/jsonp", body, nil, "Content-Type: application/json"},
		{"another site's origin", "POST", json, body, map[string]string{"Origin": "http://evil.example"}, "cors http://evil.example"},
		{"the site's origin on another port", "POST", json, body, map[string]string{"Origin": fmt.Sprintf("http://127.0.0.1:%d", port+1)}, "cors"},
		{"opaque origin", "POST", json, body, map[string]string{"Origin": "null"}, "cors"},
		{"cross-site fetch metadata", "POST", json, body, map[string]string{"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site: cross-site"},
		{"same-site fetch metadata", "POST", json, body, map[string]string{"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site: same-site"},
		{"cross-site fetch from an unlisted origin", "POST", "text/plain", body,
			map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, "cors"},
	}
	for _, tt := range refused {
		t.Run("refused/"+tt.name, func(t *testing.T) {
			a := write(t, tt.method, reg(41), tt.ctype, tt.body, tt.hdr)
			if a.status != http.StatusForbidden || !strings.Contains(a.detail(), tt.detail) {
				t.Fatalf("status %d, want 403 with a detail naming %q: %s", a.status, tt.detail, a.body)
			}
			if st, raw := do(t, "GET", site+"/api/v1/services/41", nil); st != http.StatusNotFound {
				t.Fatalf("the refused write registered the service: %d %s", st, raw)
			}
		})
	}

	accepted := []struct {
		name, method, url, ctype, body string
		hdr                            map[string]string
	}{
		{"JSON without an Origin (httpx json=)", "POST", reg(42), json, body, nil},
		{"JSON with a charset", "POST", reg(43), "application/json; charset=utf-8", body, nil},
		{"a +json type", "POST", reg(44), "application/vnd.imagelb+json", body, nil},
		{"the site's own page", "POST", reg(45), json, body,
			map[string]string{"Origin": site, "Sec-Fetch-Site": "same-origin"}},
		{"a listed cors origin", "POST", reg(46), json, body,
			map[string]string{"Origin": "http://ui.example", "Sec-Fetch-Site": "cross-site"}},
		{"typed by hand in the address bar", "POST", reg(47), json, body, map[string]string{"Sec-Fetch-Site": "none"}},
		{"PUT a container", "PUT", site + "/api/v1/services/42/containers/b", json, fmt.Sprintf(`{"port": %d}`, b.port), nil},
		{"PATCH a container", "PATCH", site + "/api/v1/services/42/containers/b", json, `{"weight": 2}`, nil},
		{"DELETE without a body (httpx delete())", "DELETE", site + "/api/v1/services/42/containers/b", "", "", nil},
		{"health-check without a body", "POST", site + "/api/v1/health-check", "", "", nil},
		{"DELETE a service", "DELETE", site + "/api/v1/services/43", "", "", nil},
	}
	for _, tt := range accepted {
		t.Run("accepted/"+tt.name, func(t *testing.T) {
			if a := write(t, tt.method, tt.url, tt.ctype, tt.body, tt.hdr); a.status != http.StatusOK {
				t.Fatalf("status %d, want 200: %s", a.status, a.body)
			}
		})
	}

	t.Run("reads are not checked", func(t *testing.T) {
		a := write(t, "GET", site+"/api/v1/services", "text/plain", "",
			map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
		if a.status != http.StatusOK {
			t.Fatalf("status %d: %s", a.status, a.body)
		}
	})
	t.Run("the proxy is the container's business", func(t *testing.T) {
		a := write(t, "POST", site+"/api/v1/proxy/42/form", "application/x-www-form-urlencoded", "a=1",
			map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
		if a.status != http.StatusOK {
			t.Fatalf("status %d: %s", a.status, a.body)
		}
	})
	t.Run("the admin endpoint is Caddy's", func(t *testing.T) {
		a := write(t, "DELETE", adminURL+"/imagelb/services/44", "", "", nil)
		if a.status != http.StatusOK {
			t.Fatalf("status %d: %s", a.status, a.body)
		}
	})
}

// TestWritesNeedANamedOrigin: cors * lets any page read the API, but a
// write from another origin needs that origin named.
func TestWritesNeedANamedOrigin(t *testing.T) {
	port := freePort(t)
	startCaddy(t, intentConfig(port, "*"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	hdr := map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
	if a := write(t, "GET", site+"/api/v1/services", "", "", hdr); a.status != 200 || a.header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("read: %d %v", a.status, a.header)
	}
	a := write(t, "POST", site+"/api/v1/services/48/register?image_name=x", "application/json", "[]", hdr)
	if a.status != http.StatusForbidden || !strings.Contains(a.detail(), "cors http://evil.example") {
		t.Fatalf("write: %d %s", a.status, a.body)
	}
}

// TestCrossSitePageInBrowser opens, in headless Chromium, a page of another
// site (http://localhost:P, while the API is at http://127.0.0.1:Q) that
// registers a service with a no-cors text/plain fetch: a request the
// browser sends without a preflight, whatever the cors option says. The
// page sees an answer (an opaque one), and the registration does not exist.
func TestCrossSitePageInBrowser(t *testing.T) {
	port := freePort(t)
	startCaddy(t, intentConfig(port, "http://ui.example"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	b := newBackend(t, "a")
	api := site + "/api/v1/services/49/register?image_name=forged"
	body := fmt.Sprintf(`[{"container_id": "a", "port": %d}]`, b.port)
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><title>a page of another site</title><p id="out">pending</p>
<script>
fetch(%q, {method: "POST", mode: "no-cors", body: %q, headers: {"Content-Type": "text/plain"}})
  .then(r => { document.getElementById("out").textContent = "answered:" + r.type; })
  .catch(e => { document.getElementById("out").textContent = "failed:" + e; });
</script>`, api, body)
	}))
	t.Cleanup(page.Close)
	pageURL := strings.Replace(page.URL, "127.0.0.1", "localhost", 1) // another site than 127.0.0.1

	html := string(chromium(t, "--virtual-time-budget=5000", "--dump-dom", pageURL))
	if !strings.Contains(html, "answered:opaque") {
		t.Fatalf("the page's fetch got no answer, so the test proves nothing:\n%s", html)
	}
	if st, raw := do(t, "GET", site+"/api/v1/services/49", nil); st != http.StatusNotFound {
		t.Fatalf("a page of another site registered a service: %d %s", st, raw)
	}
}
