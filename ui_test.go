package imagelb

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/ui"
)

// chromium runs headless Chromium (Debian's package, which .ci/run
// installs) with the flags this sandboxed machine needs.
func chromium(t *testing.T, args ...string) []byte {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("Debian chromium is not installed (apt-get install -y chromium; .ci/run does it)")
	}
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

var totalRequests = regexp.MustCompile(`id="total-requests">(\d+)<`)

// htmlText is s as Chromium writes it in a text node of --dump-dom.
func htmlText(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "\u00a0", "&nbsp;").Replace(s)
}

// TestDashboardInBrowser loads the dashboard of a site in headless
// Chromium: it shows a registered service, and its numbers change after
// traffic; traffic control, a failing health check (its error and time)
// and the port mappings show. A screenshot is kept in the test's temporary
// directory.
func TestDashboardInBrowser(t *testing.T) {
	port := freePort(t)
	startCaddy(t, fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		health_interval 1h
	}
}
http://127.0.0.1:%d {
	imagelb {
		dashboard
	}
}
`, port))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	extPort := freePort(t) // only a mapping: nothing listens there in this test
	register(t, site+"/api/v1", 130, fmt.Sprintf("&external_port=%d", extPort),
		container("web-1", newBackend(t, "a")), container("web-2", newBackend(t, "b")))
	page := site + "/api/v1/ui/"

	dom := func() (string, int) {
		t.Helper()
		html := string(chromium(t, "--virtual-time-budget=3000", "--dump-dom", page))
		m := totalRequests.FindStringSubmatch(html)
		if m == nil {
			t.Fatalf("the dashboard shows no request total:\n%s", html)
		}
		var n int
		fmt.Sscan(m[1], &n)
		return html, n
	}
	html, before := dom()
	for _, want := range []string{"img-130", "web-1", "web-2", `class="status healthy"`} {
		if !strings.Contains(html, want) {
			t.Fatalf("the dashboard does not show %q:\n%s", want, html)
		}
	}
	for i := 0; i < 5; i++ {
		proxyGet(t, site, 130, "/")
	}
	_, after := dom()
	if after != before+5 {
		t.Fatalf("request total went from %d to %d after 5 requests", before, after)
	}

	// traffic control shows: an ejected container, a zone, rate-limited requests
	bad := funcBackend(t, "bad", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) })
	mustDo(t, "POST", site+"/api/v1/services/131/register", map[string]any{
		"image_name": "shop", "outlier": map[string]any{"consecutive_failures": 1, "cooldown": "1h"},
		"rate_limit": map[string]any{"requests": 1, "interval": "1h", "burst": 3},
		"containers": []map[string]any{
			{"container_id": "bad-1", "port": bad.port, "zone": "zone-b"},
			{"container_id": "ok-1", "port": newBackend(t, "ok").port, "zone": "zone-a"},
		}}, 200, nil)
	for i := 0; i < 4; i++ { // 3 within the burst, the 4th rate limited
		do(t, "GET", fmt.Sprintf("%s/api/v1/proxy/131/", site), nil)
	}
	html, _ = dom()
	for _, want := range []string{`class="status ejected"`, "zone-b", "rate limited <b>1</b>"} {
		if !strings.Contains(html, want) {
			t.Fatalf("the dashboard does not show %q:\n%s", want, html)
		}
	}

	// health checks show: a container whose /health answers 503 gets its
	// error and the time of the check, from the services API
	sick := newHealthBackend(t, "sick")
	sick.failing.Store(true)
	mustDo(t, "POST", site+"/api/v1/services/132/register", map[string]any{
		"image_name": "billing", "containers": []map[string]any{
			{"container_id": "sick-1", "port": sick.port, "cpu_usage": 42.5, "memory_usage": 512, "disk_usage": 0},
		}}, 200, nil)
	mustDo(t, "POST", site+"/api/v1/health-check?image_id=132", nil, 200, nil)
	status, lastErr := containerStatus(t, 132, "sick-1")
	if status != "unhealthy" || lastErr == nil || *lastErr == "" {
		t.Fatalf("sick-1 after a failing check: %s, last_health_error %v", status, lastErr)
	}
	html, _ = dom()
	healthError := regexp.MustCompile(`<tr class="health-error-row" data-container-error="sick-1">.*?` +
		`<span class="health-error-text">([^<]*)</span>`)
	if m := healthError.FindStringSubmatch(html); m == nil || m[1] != htmlText(*lastErr) {
		t.Fatalf("the dashboard does not show sick-1's health error %q:\n%s", *lastErr, html)
	}
	checked := regexp.MustCompile(`<tr data-container="sick-1">.*?<time class="checked" datetime="[^"]+" title="last health check [^"]+">\d+ s ago</time>`)
	if !checked.MatchString(html) {
		t.Fatalf("the dashboard does not show when sick-1 was checked:\n%s", html)
	}
	if !strings.Contains(html, `<tr data-container="sick-1"><td><div class="cid">sick-1</div>`) ||
		!strings.Contains(html, `class="status unhealthy"`) {
		t.Fatalf("the dashboard does not show sick-1 as unhealthy:\n%s", html)
	}
	// the port table, and the axis labels of the charts
	mapping := fmt.Sprintf(`<tr data-port="%d"><td class="port">%d</td><td>130</td><td>img-130</td><td>2</td>`, extPort, extPort)
	for _, want := range []string{mapping, `60 s ago</text>`, `class="tick y-max"`} {
		if !strings.Contains(html, want) {
			t.Fatalf("the dashboard does not show %q:\n%s", want, html)
		}
	}
	// resource usage shows once the services API echoes what the
	// orchestrator pushed (older builds ignore the fields)
	var pushed struct {
		Containers []struct {
			CPUUsage *float64 `json:"cpu_usage"`
		} `json:"containers"`
	}
	mustDo(t, "GET", site+"/api/v1/services/132", nil, 200, &pushed)
	if len(pushed.Containers) == 1 && pushed.Containers[0].CPUUsage != nil {
		for _, want := range []string{"cpu <b>42.5</b>", "mem <b>512</b>", "disk <b>0</b>"} {
			if !strings.Contains(html, want) {
				t.Fatalf("the dashboard does not show %q:\n%s", want, html)
			}
		}
	} else {
		t.Log("the services API does not echo cpu_usage yet: resource usage not checked")
	}

	// the screenshot: with some traffic while the page polls, so the charts have lines
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				if resp, err := client.Get(site + "/api/v1/proxy/130/"); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}
	}()
	stopLoad := sync.OnceFunc(func() { close(stop); <-done })
	t.Cleanup(stopLoad)
	shot := filepath.Join(t.TempDir(), "dashboard.png")
	chromium(t, "--window-size=1280,1000", "--virtual-time-budget=12000", "--screenshot="+shot, page)
	stopLoad()
	info, err := os.Stat(shot)
	if err != nil || info.Size() < 1000 {
		t.Fatalf("no screenshot: %v", err)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, info.Size())
	if dst := os.Getenv("IMAGELB_SCREENSHOT"); dst != "" { // refreshes the README's picture
		data, _ := os.ReadFile(shot)
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDashboardOnAdmin: the admin endpoint serves the page and its files,
// with a policy that keeps it from loading anything from elsewhere.
func TestDashboardOnAdmin(t *testing.T) {
	startCaddy(t, siteConfig(freePort(t), ""))
	for path, want := range map[string]string{"/imagelb/ui/": "<title>imagelb</title>", "/imagelb/ui/app.js": "statsURL",
		"/imagelb/ui/style.css": "--healthy"} {
		resp, err := client.Get(adminURL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) ||
			!strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, resp.Header)
		}
	}
	resp, err := client.Get(adminURL + "/imagelb/ui")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 308 || resp.Header.Get("Location") != "/imagelb/ui/" {
		t.Fatalf("/imagelb/ui: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// TestDashboardShapes loads the dashboard against canned answers in both
// shapes of the services and port-mappings lists (the older wrapped objects
// and the bare arrays), with a container in status unknown, a health error
// and a name that looks like markup: all of it shows, as text.
func TestDashboardShapes(t *testing.T) {
	const stats = `{"uptime_seconds": 5, "total_requests": 3, "failed_requests": 0, "active_connections": 0,
		"requests_per_second": 0, "services": [{"image_id": 7, "image_name": "seven", "algorithm": "round_robin",
		"total_requests": 3, "failed_requests": 0, "active_connections": 0, "healthy_containers": 0,
		"requests_per_second": 0, "latency_ms": {"p50": null, "p95": null, "p99": null},
		"rate_limited_requests": 0, "shed_requests": 0, "retries_denied": 0,
		"containers": [{"container_id": "c-1", "status": "unknown", "total_requests": 3, "failed_requests": 0,
		"active_connections": 0, "requests_per_second": 0, "latency_ms": {"p50": null, "p95": null, "p99": null},
		"ejected": false, "ejections": 0}]}]}`
	const service = `{"image_id": 7, "image_name": "seven", "algorithm": "round_robin", "external_port": 8007,
		"healthy_containers": 0, "total_requests": 3, "failed_requests": 0, "active_connections": 0, "static": false,
		"containers": [{"container_id": "c-1", "name": "<img src=x onerror=alert(1)>", "host": "10.0.0.5", "port": 80,
		"image_id": 7, "status": "unknown", "weight": 3, "active_connections": 0, "total_requests": 3,
		"failed_requests": 0, "last_health_check": "2020-01-02T03:04:05Z",
		"last_health_error": "dial tcp 10.0.0.5:80: connect: connection refused <x>",
		"cpu_usage": 12.345, "memory_usage": null, "disk_usage": null, "requests_per_second": 0}]}`
	for _, tc := range []struct{ name, services, ports string }{
		{"wrapped", `{"services": [` + service + `], "total": 1}`,
			`{"port_mappings": [{"external_port": 8007, "image_id": 7, "image_name": "seven"}]}`},
		{"bare", `[` + service + `]`,
			`[{"external_port": 8007, "image_id": 7, "image_name": "seven", "container_count": 1, "total_requests": 3}]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mux := http.NewServeMux()
			mux.Handle("/api/v1/ui/", ui.Dashboard("/api/v1/ui/"))
			for path, body := range map[string]string{"/api/v1/stats": stats, "/api/v1/services": tc.services,
				"/api/v1/port-mappings": tc.ports} {
				mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "application/json")
					io.WriteString(w, body)
				})
			}
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			html := string(chromium(t, "--virtual-time-budget=3000", "--dump-dom", srv.URL+"/api/v1/ui/"))
			for _, want := range []string{
				`<span class="status unknown">unknown</span>`,
				`<small>&lt;img src=x onerror=alert(1)&gt;</small>`,
				`<span class="health-error-text">dial tcp 10.0.0.5:80: connect: connection refused &lt;x&gt;</span>`,
				`<tr data-port="8007"><td class="port">8007</td><td>7</td><td>seven</td><td>1</td><td>3</td></tr>`,
				`cpu <b>12.3</b>`,
			} {
				if !strings.Contains(html, want) {
					t.Fatalf("the dashboard does not show %q:\n%s", want, html)
				}
			}
			if strings.Contains(html, "<img") || strings.Contains(html, "mem <b>") || strings.Contains(html, `id="error" class="error">`) {
				t.Fatalf("markup from the data, a usage that is null, or an error shows:\n%s", html)
			}
			if !regexp.MustCompile(`<time class="checked" datetime="2020-01-02T03:04:05Z" title="last health check [^"]*2020[^"]*">\d+ d ago</time>`).MatchString(html) {
				t.Fatalf("the time of the last health check does not show:\n%s", html)
			}
		})
	}
}
