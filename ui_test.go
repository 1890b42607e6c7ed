package imagelb

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
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

// TestDashboardInBrowser loads the dashboard of a site in headless
// Chromium: it shows a registered service, and its numbers change after
// traffic. A screenshot is kept in the test's temporary directory.
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
	register(t, site+"/api/v1", 130, "", container("web-1", newBackend(t, "a")), container("web-2", newBackend(t, "b")))
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

	shot := filepath.Join(t.TempDir(), "dashboard.png")
	chromium(t, "--window-size=1280,560", "--virtual-time-budget=3000", "--screenshot="+shot, page)
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
