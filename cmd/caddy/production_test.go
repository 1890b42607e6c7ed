package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProductionExample runs examples/production/Caddyfile as it is, on
// localhost with "tls internal": HTTPS with HTTP/2 end to end to a container
// chosen by the registry, the upstream guard, the read-only API behind
// basic_auth, metrics on the admin endpoint, and JSON logs.
func TestProductionExample(t *testing.T) {
	bin, root := xcaddyBinary(t)
	dir := t.TempDir()
	t.Cleanup(endAll)
	adminPort, httpPort, httpsPort := freePort(t), freePort(t), freePort(t)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "container got %s %s over %s", r.Method, r.URL.Path, r.Proto)
	}))
	t.Cleanup(backend.Close)
	backendPort := backend.Listener.Addr().(*net.TCPAddr).Port

	t.Setenv("IMAGELB_DOMAIN", "localhost")
	t.Setenv("IMAGELB_TLS", "internal")
	t.Setenv("IMAGELB_ADMIN", fmt.Sprintf("localhost:%d", adminPort))
	t.Setenv("IMAGELB_HTTP_PORT", fmt.Sprint(httpPort))
	t.Setenv("IMAGELB_HTTPS_PORT", fmt.Sprint(httpsPort))
	adm := fmt.Sprintf("http://localhost:%d", adminPort)
	p := runCaddy(t, bin, filepath.Join(root, "examples", "production", "Caddyfile"), dir, adm+"/imagelb/services")
	if gone, _ := p.exited(); gone {
		t.Fatalf("the production example did not start:\n%s", p.logs.String())
	}
	// the admin endpoint answers 503 until the imagelb app has started
	// (with tls internal, Caddy may first make its CA and certificates)
	began := time.Now()
	waitFor(t, 60*time.Second, "the imagelb app on the admin endpoint", func() bool { return statusOf(adm+"/imagelb/services") == 200 })
	t.Logf("the imagelb app answered %s after the admin endpoint", time.Since(began).Round(time.Millisecond))

	// management on the admin endpoint; the guard refuses metadata addresses
	if st, body := call(t, "POST", adm+"/imagelb/services/1/register?image_name=web",
		fmt.Sprintf(`[{"container_id":"c1","host":"127.0.0.1","port":%d}]`, backendPort)); st != 200 {
		t.Fatalf("register: %d %v", st, body)
	}
	st, body := call(t, "POST", adm+"/imagelb/services/2/register?image_name=evil", `[{"container_id":"m","host":"169.254.169.254","port":80}]`)
	if st != 422 || !strings.Contains(fmt.Sprint(body["detail"]), "metadata") {
		t.Fatalf("metadata address: %d %v", st, body)
	}

	// HTTPS with HTTP/2, verified against Caddy's internal CA
	rootPEM := waitFile(t, filepath.Join(dir, "caddy", "pki", "authorities", "local", "root.crt"))
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootPEM) {
		t.Fatal("bad root certificate")
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", httpsPort))
		},
	}}
	// the certificates are issued in the background after start: poll
	var resp *http.Response
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; {
		if resp, err = hc.Get(fmt.Sprintf("https://app1.localhost:%d/hello", httpsPort)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("https: %v\n%s", err, p.logs.String())
		}
		time.Sleep(50 * time.Millisecond) // polling for the certificate
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || string(got) != "container got GET /hello over HTTP/1.1" {
		t.Fatalf("https to image 1: %d %s %q", resp.StatusCode, resp.Proto, got)
	}
	// the site API is read-only and behind basic_auth
	lb := fmt.Sprintf("https://lb.localhost:%d", httpsPort)
	req, _ := http.NewRequest("GET", lb+"/api/v1/services", nil)
	for deadline := time.Now().Add(30 * time.Second); ; { // this site's certificate may still be coming
		if resp, err = hc.Do(req); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil || resp.StatusCode != 401 {
		t.Fatalf("no credentials: %v %v", resp, err)
	}
	req.SetBasicAuth("ops", "change-me")
	if resp, err := hc.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("with credentials: %v %v", resp, err)
	}
	req, _ = http.NewRequest("DELETE", lb+"/api/v1/services/1", nil)
	req.SetBasicAuth("ops", "change-me")
	if resp, err := hc.Do(req); err != nil || resp.StatusCode != 403 {
		t.Fatalf("a write through the site: %v %v", resp, err)
	}
	// tenants are not served on the API's origin: the proxy route is
	// closed there, and image 1 answers on its own host
	req, _ = http.NewRequest("GET", lb+"/api/v1/proxy/1/hello", nil)
	req.SetBasicAuth("ops", "change-me")
	if resp, err := hc.Do(req); err != nil || resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("the proxy on the API's host: %v %v, want a JSON 404", resp, err)
	} else {
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(msg), "container got") || !strings.Contains(string(msg), "app<image_id>.localhost") {
			t.Fatalf("the proxy on the API's host answered %s", msg)
		}
	}

	// metrics, JSON logs
	mresp, err := http.Get(adm + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if !strings.Contains(string(metrics), `imagelb_requests_total{code="2xx",image_id="1"} 1`) {
		t.Fatalf("metrics lack the request:\n%s", metrics)
	}
	for _, line := range strings.Split(strings.TrimSpace(p.logs.String()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Fatalf("log line is not JSON: %s", line)
		}
	}
}

// waitFile polls until a file exists and returns its content.
func waitFile(t *testing.T, path string) []byte {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if data, err := os.ReadFile(path); err == nil && len(data) > 0 {
			return data
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", path)
		}
		time.Sleep(20 * time.Millisecond) // polling for Caddy to write it
	}
}
