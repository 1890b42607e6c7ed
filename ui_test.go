package imagelb

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
// traffic; traffic control, a failing health check (its error and time),
// the port mappings and the last hour of the usage ledger (requests and
// body bytes both ways, exactly what was sent and received, and its charts)
// show. A screenshot is kept in the test's temporary directory. A registry
// of at most 10 images, as here, shows every image's card.
func TestDashboardInBrowser(t *testing.T) {
	port := freePort(t)
	extPort := freePort(t) // image 130's external port, on a site of mapped ports
	startCaddy(t, fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		health_interval 1h
	}
}
http://127.0.0.1:%[1]d {
	imagelb {
		dashboard
	}
}
http://127.0.0.1:%[2]d {
	imagelb {
		mapped_ports
	}
}
`, port, extPort))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
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
	mapping := fmt.Sprintf(`<tr data-port="%d"><td class="port">%d</td><td><a href="#images=130" data-pick="130">130</a></td><td>img-130</td><td>2</td>`, extPort, extPort)
	for _, want := range []string{mapping, `60 s ago</text>`, `class="tick y-max"`} {
		if !strings.Contains(html, want) {
			t.Fatalf("the dashboard does not show %q:\n%s", want, html)
		}
	}
	// the last hour from the usage ledger: requests with bodies of known
	// sizes, answers of known sizes; the card of image 133 shows their
	// count and bytes, in the text and in its two charts
	const usageImage = 133
	sizer := funcBackend(t, "sizer", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		io.WriteString(w, strings.Repeat("y", 2*len(body)+100))
	})
	mustDo(t, "POST", fmt.Sprintf("%s/api/v1/services/%d/register", site, usageImage), map[string]any{
		"image_name": "uploads", "containers": []map[string]any{{"container_id": "sizer-1", "port": sizer.port}}}, 200, nil)
	var base usageDoc // none: no other test uses the image; counted in case the ledger kept some
	mustDo(t, "GET", fmt.Sprintf("%s/api/v1/usage?image_id=%d", site, usageImage), nil, 200, &base)
	var requests, sent, got int64
	for _, n := range []int{1500, 2500, 3500, 4500, 345, 0} {
		method := http.MethodPost
		if n == 0 {
			method = http.MethodGet
		}
		req, _ := http.NewRequest(method, fmt.Sprintf("%s/api/v1/proxy/%d/upload", site, usageImage), strings.NewReader(strings.Repeat("x", n)))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(data) != 2*n+100 {
			t.Fatalf("%s of %d bytes: %d, %d bytes back", method, n, resp.StatusCode, len(data))
		}
		requests, sent, got = requests+1, sent+int64(n), got+int64(len(data))
	}
	if len(base.Images) == 1 {
		requests, sent, got = requests+base.Images[0].Requests, sent+base.Images[0].BytesIn, got+base.Images[0].BytesOut
	}
	var u usageDoc
	eventually(t, "the ledger counts the requests to image 133", func() bool {
		mustDo(t, "GET", fmt.Sprintf("%s/api/v1/usage?image_id=%d", site, usageImage), nil, 200, &u)
		return len(u.Images) == 1 && u.Images[0].Requests == requests
	})
	if iu := u.Images[0]; iu.BytesIn != sent || iu.BytesOut != got {
		t.Fatalf("the ledger counts %d bytes in, %d out; the test sent %d, got %d", iu.BytesIn, iu.BytesOut, sent, got)
	}
	cardRE := regexp.MustCompile(fmt.Sprintf(`<section class="card service" data-image="%d">.*?</section>`, usageImage))
	hourText := fmt.Sprintf(`<div class="hour" data-hour="%d"><div class="hour-figures">last hour: <b class="hour-requests">%d</b> requests · `+
		`<b class="hour-in" title="%d bytes">%s</b> <span class="key bytes-in">in</span> · `+
		`<b class="hour-out" title="%d bytes">%s</b> <span class="key bytes-out">out</span></div>`,
		usageImage, requests, sent, humanBytes(sent), got, humanBytes(got))
	// the page shows it at its next poll (every 2 s)
	var card string
	for deadline := time.Now().Add(30 * time.Second); ; {
		html, _ = dom()
		if card = cardRE.FindString(html); strings.Contains(card, hourText) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("image %d's card does not show its last hour %q:\n%s", usageImage, hourText, html)
		}
		time.Sleep(200 * time.Millisecond) // polling the page until its next poll has shown it
	}
	if len(base.Images) == 0 && (!strings.Contains(card, `title="12345 bytes">12.3 kB</b>`) ||
		!strings.Contains(card, `title="25290 bytes">25.3 kB</b>`)) {
		t.Fatalf("the byte totals are not 12.3 kB in and 25.3 kB out:\n%s", card)
	}
	reqChart := regexp.MustCompile(`<svg class="chart usage-requests" [^>]*role="img" aria-label="(requests per minute, last 60 min, axis 0 to \d+: (\d+) requests)"><title>([^<]*)</title>.*?</svg>`).FindStringSubmatch(card)
	if reqChart == nil || reqChart[2] != strconv.FormatInt(requests, 10) || reqChart[3] != reqChart[1] ||
		!strings.Contains(reqChart[0], "60 min ago</text>") || !strings.Contains(reqChart[0], `class="tick y-max"`) {
		t.Fatalf("image %d's card has no requests chart of the last hour with its label:\n%s", usageImage, card)
	}
	var inBars int64
	for _, m := range regexp.MustCompile(`<rect class="bar requests" [^>]*><title>\d\d:\d\d[^<]*: (\d+) requests,`).FindAllStringSubmatch(reqChart[0], -1) {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		inBars += n
	}
	if inBars != requests {
		t.Fatalf("the bars of the requests chart add up to %d requests, want %d:\n%s", inBars, requests, reqChart[0])
	}
	bytesLabel := fmt.Sprintf(`: %s in, %s out`, humanBytes(sent), humanBytes(got))
	bytesChart := regexp.MustCompile(`<svg class="chart usage-bytes" [^>]*aria-label="bytes in and out per minute, last 60 min, axis 0 to [^"]+"><title>[^<]*</title>.*?</svg>`).FindString(card)
	if !strings.Contains(bytesChart, bytesLabel+`"`) || !strings.Contains(bytesChart, `<polyline class="line bytes-in"`) ||
		!strings.Contains(bytesChart, `<polyline class="line bytes-out"`) || !strings.Contains(bytesChart, "60 min ago</text>") {
		t.Fatalf("image %d's card has no bytes chart of the last hour with its label %q:\n%s", usageImage, bytesLabel, card)
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
	t.Logf("screenshot: %s (%d bytes)", shot, info.Size()) // the guide's picture is TestDashboardAtScale's
}

// humanBytes is a byte count as the dashboard shows it: SI units, at most
// one decimal (12.3 kB).
func humanBytes(n int64) string {
	units := []string{"B", "kB", "MB", "GB", "TB", "PB", "EB"}
	v, i := float64(n), 0
	for i < len(units)-1 && math.Round(v*10)/10 >= 1000 {
		v /= 1000
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64) + " " + units[i]
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
	for _, tc := range []struct{ name, services, ports, portRow string }{
		{"wrapped", `{"services": [` + service + `], "total": 1}`,
			`{"port_mappings": [{"external_port": 8007, "image_id": 7, "image_name": "seven"}]}`,
			`<tr data-port="8007"><td class="port">8007</td><td><a href="#images=7" data-pick="7">7</a></td><td>seven</td><td>–</td><td>–</td></tr>`},
		{"bare", `[` + service + `]`,
			`[{"external_port": 8007, "image_id": 7, "image_name": "seven", "container_count": 1, "total_requests": 3}]`,
			`<tr data-port="8007"><td class="port">8007</td><td><a href="#images=7" data-pick="7">7</a></td><td>seven</td><td>1</td><td>3</td></tr>`},
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
				tc.portRow,
				`cpu <b>12.3</b>`,
				// no usage ledger here (an older server): said in the card, not as the page's error
				`<div class="hour" data-hour="7"><span class="muted">last hour: usage not available (HTTP 404)</span></div>`,
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

// TestDashboardUsage loads the dashboard against canned answers with a
// usage report: the dashboard asks for the last hour by minutes (at most
// every 10 s, while the stats are polled every 2 s), draws the 60 minutes
// ending at the report's end (a minute without a bucket is 0, the bucket
// just over an hour old is left out), and shows each image's totals in
// human units, its exact byte counts in the titles. A ledger whose buckets
// are longer than a minute refuses 1m: the dashboard asks for its own
// step; a ledger that does not answer leaves the rest of the page alone.
func TestDashboardUsage(t *testing.T) {
	svc := func(id int, name string) string {
		return fmt.Sprintf(`{"image_id": %d, "image_name": %q, "algorithm": "round_robin", "total_requests": 0,
			"failed_requests": 0, "active_connections": 0, "healthy_containers": 1, "requests_per_second": 0,
			"latency_ms": {"p50": null, "p95": null, "p99": null}, "containers": [{"container_id": "%s-1",
			"status": "healthy", "total_requests": 0, "failed_requests": 0, "active_connections": 0,
			"requests_per_second": 0, "latency_ms": {"p50": null, "p95": null, "p99": null}}]}`, id, name, name)
	}
	stats := `{"uptime_seconds": 5, "total_requests": 0, "failed_requests": 0, "active_connections": 0,
		"services": [` + svc(7, "seven") + `, ` + svc(8, "eight") + `]}`
	const perMinute = `{"from": "2026-03-01T10:59:00Z", "to": "2026-03-01T12:00:00Z", "step": "1m0s", "images": [
		{"image_id": 7, "requests": 1111, "failed_requests": 0, "bytes_in": 1001234567, "bytes_out": 2000, "request_seconds": 1,
		 "buckets": [
			{"start": "2026-03-01T10:59:00Z", "requests": 1000, "failed_requests": 0, "bytes_in": 1000000000, "bytes_out": 0, "request_seconds": 1},
			{"start": "2026-03-01T11:00:00Z", "requests": 40, "failed_requests": 0, "bytes_in": 1234567, "bytes_out": 0, "request_seconds": 0},
			{"start": "2026-03-01T11:30:00Z", "requests": 20, "failed_requests": 0, "bytes_in": 0, "bytes_out": 999, "request_seconds": 0},
			{"start": "2026-03-01T11:59:00Z", "requests": 51, "failed_requests": 0, "bytes_in": 0, "bytes_out": 1001, "request_seconds": 0}]}]}`
	const perFive = `{"from": "2026-03-01T11:00:00Z", "to": "2026-03-01T12:00:00Z", "step": "5m0s", "images": [
		{"image_id": 7, "requests": 3, "failed_requests": 0, "bytes_in": 10, "bytes_out": 20, "request_seconds": 1,
		 "buckets": [{"start": "2026-03-01T11:55:00Z", "requests": 3, "failed_requests": 0, "bytes_in": 10, "bytes_out": 20, "request_seconds": 1}]}]}`
	const refused = `{"detail": "step 1m0s must be a multiple of the ledger's interval 5m0s"}`
	for _, tc := range []struct {
		name  string
		usage func(q url.Values) (int, string)
		want  []string
	}{
		{"minutes", func(url.Values) (int, string) { return 200, perMinute }, []string{
			// 40 + 20 + 51: the bucket of 10:59 is more than an hour before the end
			`<div class="hour" data-hour="7"><div class="hour-figures">last hour: <b class="hour-requests">111</b> requests · ` +
				`<b class="hour-in" title="1234567 bytes">1.2 MB</b> <span class="key bytes-in">in</span> · ` +
				`<b class="hour-out" title="2000 bytes">2 kB</b> <span class="key bytes-out">out</span></div>`,
			`aria-label="requests per minute, last 60 min, axis 0 to 100: 111 requests"`,
			`aria-label="bytes in and out per minute, last 60 min, axis 0 to 2 MB: 1.2 MB in, 2 kB out"`,
			`<rect class="bar requests" x="40.0" y="`, `<rect class="bar requests" x="130.0" y="`, `<rect class="bar requests" x="217.0" y="`,
			`<text class="tick y-max" x="36" y="10" text-anchor="end">100</text>`, `<text class="tick span" x="40" y="47">60 min ago</text>`,
			`<text class="tick y-max" x="36" y="10" text-anchor="end">2 MB</text>`,
			// an image without usage in the hour: zeros, and empty charts
			`<div class="hour" data-hour="8"><div class="hour-figures">last hour: <b class="hour-requests">0</b> requests · ` +
				`<b class="hour-in" title="0 bytes">0 B</b>`,
			`aria-label="requests per minute, last 60 min, axis 0 to 1: 0 requests"`,
		}},
		{"ledger of 5 min", func(q url.Values) (int, string) {
			if q.Get("step") != "" {
				return 400, refused
			}
			return 200, perFive
		}, []string{
			`last hour: <b class="hour-requests">3</b> requests · <b class="hour-in" title="10 bytes">10 B</b>`,
			`aria-label="requests per 5 min, last 60 min, axis 0 to 5: 3 requests"`,
			`<rect class="bar requests" x="205.0" y="`, // the 12th of 12 bars of 15 px
		}},
		{"no ledger", func(url.Values) (int, string) { return 503, `{"detail": "the usage ledger is not loaded yet"}` }, []string{
			`<div class="hour" data-hour="7"><span class="muted">last hour: usage not available (HTTP 503)</span></div>`,
			`<div class="cid">seven-1</div>`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var statsHits, usageHits atomic.Int64
			var badQuery atomic.Value
			mux := http.NewServeMux()
			mux.Handle("/api/v1/ui/", ui.Dashboard("/api/v1/ui/"))
			for path, body := range map[string]string{"/api/v1/stats": stats, "/api/v1/services": "[]", "/api/v1/port-mappings": "[]"} {
				mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
					if path == "/api/v1/stats" {
						statsHits.Add(1)
					}
					w.Header().Set("Content-Type", "application/json")
					io.WriteString(w, body)
				})
			}
			mux.HandleFunc("/api/v1/usage", func(w http.ResponseWriter, r *http.Request) {
				usageHits.Add(1)
				q := r.URL.Query()
				from, err := time.Parse(time.RFC3339Nano, q.Get("from"))
				// a small registry's cards ask for each image's hour
				if err != nil || from.Sub(time.Now().Add(-time.Hour)).Abs() > time.Minute || !q.Has("image_id") ||
					(q.Has("step") && q.Get("step") != "1m") {
					badQuery.Store(r.URL.RawQuery)
				}
				status, body := tc.usage(q)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				io.WriteString(w, body)
			})
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			html := string(chromium(t, "--virtual-time-budget=21000", "--dump-dom", srv.URL+"/api/v1/ui/"))
			for _, want := range tc.want {
				if !strings.Contains(html, want) {
					t.Fatalf("the dashboard does not show %q:\n%s", want, html)
				}
			}
			if strings.Contains(html, `id="error" class="error">`) {
				t.Fatalf("the dashboard shows an error:\n%s", html)
			}
			if q := badQuery.Load(); q != nil {
				t.Fatalf("usage asked with %q: want from the last hour (RFC 3339), step 1m, every image", q)
			}
			// 21 s of polls: stats about 10 times, usage at 0, 10 and 20 s, once
			// per image (7 and 8), twice each when 1m is refused
			s, u := statsHits.Load(), usageHits.Load()
			perFetch := int64(2)
			if tc.name == "ledger of 5 min" {
				perFetch = 4
			}
			if s < 5 || u < 1 || u > 3*perFetch {
				t.Fatalf("stats asked %d times, usage %d times in 21 s: want usage at most every 10 s", s, u)
			}
			t.Logf("stats asked %d times, usage %d", s, u)
		})
	}
}
