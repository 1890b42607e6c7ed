package imagelb

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// publicNet puts a client with the public address 203.0.113.2 in a network
// namespace of its own, joined by a veth pair to this one, where
// 203.0.113.1 is assigned for Caddy to listen on. It returns an HTTP client
// whose connections are opened inside that namespace. It needs root and
// iproute2; run it inside `unshare --net`, as every test that listens.
func publicNet(t *testing.T) *http.Client {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a public client needs a network namespace and a veth pair: run the test as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("a public client needs iproute2's ip (apt-get install -y iproute2)")
	}
	ipCmd := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ns := fmt.Sprintf("imagelb-public-%d", os.Getpid())
	host, peer := fmt.Sprintf("ilb%dh", os.Getpid()%1000000), fmt.Sprintf("ilb%dp", os.Getpid()%1000000)
	ipCmd("netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	ipCmd("link", "add", host, "type", "veth", "peer", "name", peer)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", host).Run() })
	ipCmd("link", "set", peer, "netns", ns)
	ipCmd("addr", "add", "203.0.113.1/24", "dev", host)
	ipCmd("link", "set", host, "up")
	ipCmd("-n", ns, "addr", "add", "203.0.113.2/24", "dev", peer)
	ipCmd("-n", ns, "link", "set", peer, "up")
	ipCmd("-n", ns, "link", "set", "lo", "up")
	dial := dialInNetns("/run/netns/" + ns)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial}}
}

// dialInNetns returns a dialer whose sockets are created in the network
// namespace at nsPath: a goroutine locked to its OS thread enters the
// namespace, dials (a socket stays in the namespace it was created in)
// and returns to ours. If it cannot return, the thread stays locked and
// ends with the goroutine.
func dialInNetns(nsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	setns := func(f *os.File) error {
		return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		done := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			home, err := os.Open("/proc/thread-self/ns/net")
			if err != nil {
				runtime.UnlockOSThread()
				done <- result{err: err}
				return
			}
			defer home.Close()
			target, err := os.Open(nsPath)
			if err != nil {
				runtime.UnlockOSThread()
				done <- result{err: err}
				return
			}
			defer target.Close()
			if err := setns(target); err != nil {
				runtime.UnlockOSThread()
				done <- result{err: fmt.Errorf("entering %s: %v", nsPath, err)}
				return
			}
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err2 := setns(home); err2 != nil {
				if c != nil {
					c.Close()
				}
				done <- result{err: fmt.Errorf("leaving %s: %v", nsPath, err2)}
				return // the thread stays locked, so it ends with this goroutine
			}
			runtime.UnlockOSThread()
			done <- result{c, err}
		}()
		r := <-done
		return r.c, r.err
	}
}

// TestPublicClientsOnlyRead: a client on a public address (203.0.113.2,
// in its own network namespace) reads the management API and uses the
// proxy, but its writes get 403 with a detail naming writes_from, also
// when it claims a private address in X-Forwarded-For; writes_from opens
// its network, and a trusted proxy's X-Forwarded-For is believed.
func TestPublicClientsOnlyRead(t *testing.T) {
	pub := publicNet(t)
	port := freePort(t)
	site := fmt.Sprintf("http://203.0.113.1:%d", port)
	b := newBackend(t, "a")
	config := func(global, handler string) string {
		return fmt.Sprintf(`{
	admin localhost:2999
	%s
	imagelb {
		health_interval 1h
		system_service billing 127.0.0.1:%d {
			paths /billing/*
		}
	}
}
%s {
	imagelb {
		%s
	}
}
`, global, b.port, site, handler)
	}
	body := fmt.Sprintf(`[{"container_id": "a", "port": %d}]`, b.port)
	send := func(t *testing.T, method, path, body string, hdr map[string]string) (int, string) {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, site+path, rd)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := pub.Do(req)
		if err != nil {
			t.Fatalf("%s %s from 203.0.113.2: %v", method, path, err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(raw)
	}
	// wantRefused checks for a 403 naming writes_from and the client's address
	wantRefused := func(t *testing.T, client, method, path, body string, hdr map[string]string) {
		t.Helper()
		st, raw := send(t, method, path, body, hdr)
		if st != http.StatusForbidden || !strings.Contains(raw, "writes_from") || !strings.Contains(raw, "client address "+client+" ") {
			t.Fatalf("%s %s from a public address: %d %s, want 403 naming writes_from and %s", method, path, st, raw, client)
		}
	}
	wantOK := func(t *testing.T, method, path, body string, hdr map[string]string) {
		t.Helper()
		if st, raw := send(t, method, path, body, hdr); st != http.StatusOK {
			t.Fatalf("%s %s from a public address: %d %s, want 200", method, path, st, raw)
		}
	}

	t.Run("default", func(t *testing.T) {
		startCaddy(t, config("", ""))
		register(t, adminURL+"/imagelb", 50, "", container("a", b))
		wantOK(t, "GET", "/health", "", nil)
		wantOK(t, "GET", "/api/v1/services", "", nil)
		wantOK(t, "GET", "/api/v1/services/50", "", nil)
		wantOK(t, "POST", "/api/v1/proxy/50/anything", "{}", nil) // the proxy is not the management API
		wantOK(t, "POST", "/api/v1/billing/invoices", "{}", nil)  // nor is a system service
		wantRefused(t, "203.0.113.2", "POST", "/api/v1/services/51/register?image_name=x", body, nil)
		wantRefused(t, "203.0.113.2", "DELETE", "/api/v1/services/50", "", nil)
		wantRefused(t, "203.0.113.2", "PATCH", "/api/v1/services/50/containers/a", `{"status": "draining"}`, nil)
		wantRefused(t, "203.0.113.2", "POST", "/api/v1/health-check", "", nil)
		wantRefused(t, "203.0.113.2", "POST", "/api/v1/services/51/register?image_name=x", body, map[string]string{"X-Forwarded-For": "127.0.0.1"})
		if st, _ := do(t, "GET", adminURL+"/imagelb/services/51", nil); st != http.StatusNotFound {
			t.Fatalf("a refused registration exists: %d", st)
		}
		var svc struct {
			Containers []struct {
				Status string `json:"status"`
			} `json:"containers"`
		}
		mustDo(t, "GET", adminURL+"/imagelb/services/50", nil, 200, &svc)
		if len(svc.Containers) != 1 || svc.Containers[0].Status != "healthy" {
			t.Fatalf("refused writes changed the service: %+v", svc)
		}
	})
	t.Run("writes_from opens a network", func(t *testing.T) {
		startCaddy(t, config("", "writes_from 203.0.113.0/24"))
		wantOK(t, "POST", "/api/v1/services/51/register?image_name=x", body, nil)
		wantOK(t, "DELETE", "/api/v1/services/51", "", nil)
	})
	t.Run("writes_from an address replaces the default", func(t *testing.T) {
		startCaddy(t, config("", "writes_from 203.0.113.2"))
		wantOK(t, "POST", "/api/v1/services/51/register?image_name=x", body, nil)
		// this namespace's own address, 203.0.113.1, is not listed
		a := write(t, "POST", site+"/api/v1/services/52/register?image_name=x", "application/json", body, nil)
		if a.status != http.StatusForbidden || !strings.Contains(a.detail(), "accepted from writes_from 203.0.113.2 only, and the client address 203.0.113.1 ") {
			t.Fatalf("a client outside writes_from: %d %s", a.status, a.body)
		}
	})
	t.Run("writes_from any", func(t *testing.T) {
		startCaddy(t, config("", "writes_from any"))
		wantOK(t, "POST", "/api/v1/services/51/register?image_name=x", body, nil)
	})
	t.Run("a trusted proxy's X-Forwarded-For", func(t *testing.T) {
		startCaddy(t, config("servers {\n\t\ttrusted_proxies static 203.0.113.2/32\n\t}", ""))
		wantRefused(t, "203.0.113.2", "POST", "/api/v1/services/51/register?image_name=x", body, nil)
		wantRefused(t, "198.51.100.9", "POST", "/api/v1/services/51/register?image_name=x", body, map[string]string{"X-Forwarded-For": "198.51.100.9"})
		wantOK(t, "POST", "/api/v1/services/51/register?image_name=x", body, map[string]string{"X-Forwarded-For": "10.1.2.3"})
	})
}
