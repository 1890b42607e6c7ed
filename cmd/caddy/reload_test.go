package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// noHandoffWarning is the start of what the handler logs for a server that
// serves imagelb without the imagelb_handoff listener wrapper.
const noHandoffWarning = "this server serves imagelb without the imagelb_handoff listener wrapper"

// reload runs "caddy reload" of the binary with the config; Caddy has
// stopped and cleaned up the old config when it returns.
func reload(t *testing.T, bin, config string, adminPort int) {
	t.Helper()
	out, err := exec.Command(bin, "reload", "--config", config, "--address", fmt.Sprintf("localhost:%d", adminPort)).CombinedOutput()
	if err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
}

// TestReloadsWithoutHandoffListed: a Caddyfile that does not mention the
// handoff (a user's own) gets it from the imagelb directive, and no client
// request fails through three "caddy reload"s under load, with fresh
// connections racing every reload. Run it many times with -count.
//
// IMAGELB_MEASURE_HANDOFF_OFF=1 runs the same load with handoff off and
// reports the failures instead of failing: the figure the README compares
// with.
func TestReloadsWithoutHandoffListed(t *testing.T) {
	bin, _ := xcaddyBinary(t)
	dir := t.TempDir()
	t.Cleanup(endAll)
	off := os.Getenv("IMAGELB_MEASURE_HANDOFF_OFF") == "1"
	global := ""
	if off {
		global = "handoff off"
	}
	adminPort, sitePort, backendPort := freePort(t), freePort(t), freePort(t)
	config := func(name, extra string) string {
		return writeSiteConfig(t, filepath.Join(dir, name), adminPort, sitePort, backendPort, global+"\n\t\t"+extra)
	}
	site := fmt.Sprintf("http://127.0.0.1:%d", sitePort)
	adm := fmt.Sprintf("http://localhost:%d/imagelb", adminPort)
	p := runCaddy(t, bin, config("Caddyfile", ""), dir, site+"/health")
	if st, _ := call(t, "POST", adm+"/services/1/register?image_name=web", fmt.Sprintf(`[{"container_id":"a","port":%d}]`, backendPort)); st != 200 {
		t.Fatalf("register: %d", st)
	}

	load := startLoad(loadOpts{freshOdd: true}, site+"/api/v1/proxy/1/")
	for i := range 3 {
		load.waitServed(t, 200)
		reload(t, bin, config(fmt.Sprintf("Caddyfile.reload%d", i), fmt.Sprintf("health_timeout %ds", i+2)), adminPort)
	}
	load.waitServed(t, 200)
	served, failures := load.stop()
	migrate, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	var failed int
	for _, f := range failures {
		// Linux resets connections queued on the old SO_REUSEPORT socket
		// unless net.ipv4.tcp_migrate_req=1 (.ci/run sets it; README)
		if strings.TrimSpace(string(migrate)) != "1" && strings.Contains(f, "connection reset by peer") {
			t.Log("excused (tcp_migrate_req is not 1):", f)
			continue
		}
		failed++
		if !off {
			t.Error("a client saw:", f)
		}
	}
	t.Logf("handoff off=%v: %d of %d requests failed across 3 caddy reloads (%d fresh connections)",
		off, failed, served+int64(len(failures)), load.fresh.Load())
	if logs := p.logs.String(); strings.Contains(logs, noHandoffWarning) {
		t.Errorf("warned about a missing handoff (handoff off=%v):\n%s", off, logs)
	}
}

// TestNoHandoffIsLoud: where Caddy keeps the imagelb directive from adding
// the handoff (a servers global option that does not list it replaces the
// directive's listener wrappers), provisioning the config logs a warning
// that says how to fix it; listing it, or handoff off, silences it.
func TestNoHandoffIsLoud(t *testing.T) {
	bin, _ := xcaddyBinary(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name, servers, global string
		warns                 bool
	}{
		{"servers option without it", "servers {\n\t\ttimeouts {\n\t\t\tidle 2m\n\t\t}\n\t}", "", true},
		{"servers option listing it", "servers {\n\t\tlistener_wrappers {\n\t\t\timagelb_handoff\n\t\t}\n\t}", "", false},
		{"handoff off", "servers {\n\t\ttimeouts {\n\t\t\tidle 2m\n\t\t}\n\t}", "handoff off", false},
		{"no servers option", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			cfg := fmt.Sprintf("{\n\tadmin off\n\t%s\n\timagelb {\n\t\tstore memory\n\t\t%s\n\t}\n}\n:%d {\n\timagelb\n}\n",
				tc.servers, tc.global, freePort(t))
			if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			validate := exec.Command(bin, "validate", "--adapter", "caddyfile", "--config", path)
			validate.Env = append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
			out, err := validate.CombinedOutput()
			if err != nil {
				t.Fatalf("validate: %v\n%s", err, out)
			}
			if strings.Contains(string(out), noHandoffWarning) != tc.warns {
				t.Fatalf("warning about the missing handoff: want %v, got:\n%s", tc.warns, out)
			}
			if tc.warns && !strings.Contains(string(out), "servers { listener_wrappers { imagelb_handoff; tls } }") {
				t.Fatalf("the warning does not say how to fix it:\n%s", out)
			}
		})
	}
}

// TestWebSocketAcrossReloads: a WebSocket proxied by imagelb still echoes
// after each of three "caddy reload"s (the unloaded handlers keep their
// streams for stream_close_delay, default 24h); a handler unloaded with
// stream_close_delay 0 closes its WebSocket at the reload, as Caddy's
// reverse_proxy does by default; and the final stop (SIGTERM) closes the
// WebSocket of the running config with a close frame (1001, going away) and
// exits at once, without waiting for any stream.
func TestWebSocketAcrossReloads(t *testing.T) {
	bin, _ := xcaddyBinary(t)
	dir := t.TempDir()
	t.Cleanup(endAll)
	backend := startEchoWebSocket(t)
	adminPort, sitePort, unused := freePort(t), freePort(t), freePort(t)
	config := func(name, extra string) string {
		return writeSiteConfig(t, filepath.Join(dir, name), adminPort, sitePort, unused, extra)
	}
	site := fmt.Sprintf("http://127.0.0.1:%d", sitePort)
	adm := fmt.Sprintf("http://localhost:%d/imagelb", adminPort)
	p := runCaddy(t, bin, config("Caddyfile", ""), dir, site+"/health")
	if st, _ := call(t, "POST", adm+"/services/1/register?image_name=ws", fmt.Sprintf(`[{"container_id":"ws","port":%d}]`, backend)); st != 200 {
		t.Fatalf("register: %d", st)
	}
	wsURL := fmt.Sprintf("ws://127.0.0.1:%d/api/v1/proxy/1/echo", sitePort)
	first := dialWebSocket(t, wsURL)
	echo(t, first, "before any reload")

	for i := range 3 {
		reload(t, bin, config(fmt.Sprintf("Caddyfile.reload%d", i), fmt.Sprintf("health_timeout %ds", i+2)), adminPort)
		echo(t, first, fmt.Sprintf("after reload %d", i+1))
	}

	t.Run("stream_close_delay 0 closes it at the reload", func(t *testing.T) {
		reload(t, bin, config("Caddyfile.nodelay", "stream_close_delay 0"), adminPort)
		echo(t, first, "after the reload to stream_close_delay 0")
		short := dialWebSocket(t, wsURL)
		echo(t, short, "on the config with stream_close_delay 0")
		reload(t, bin, config("Caddyfile.delay", ""), adminPort)
		if code := closeCode(t, short); code != websocket.CloseGoingAway {
			t.Fatalf("the WebSocket of the unloaded stream_close_delay 0 handler: close code %d, want %d (going away)",
				code, websocket.CloseGoingAway)
		}
		echo(t, first, "after its handler, unloaded five reloads ago, kept it")
	})

	t.Run("the final stop closes the running config's WebSocket and exits", func(t *testing.T) {
		current := dialWebSocket(t, wsURL)
		echo(t, current, "on the running config")
		start := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := closeCode(t, current); code != websocket.CloseGoingAway {
			t.Errorf("the running config's WebSocket at the final stop: close code %d, want %d (going away)",
				code, websocket.CloseGoingAway)
		}
		select {
		case err := <-p.done:
			p.done <- err
			if err != nil {
				t.Fatalf("caddy exited with %v after SIGTERM\n%s", err, p.logs.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("caddy did not exit within 30s of SIGTERM\n%s", p.logs.String())
		}
		// the WebSocket kept by an unloaded handler ends with the process
		code := closeCode(t, first)
		t.Logf("caddy exited %v after SIGTERM; the WebSocket of an unloaded config ended with close code %d",
			time.Since(start).Round(time.Millisecond), code)
	})
}

// startEchoWebSocket serves a WebSocket echo on 127.0.0.1 and returns its port.
func startEchoWebSocket(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var upgrader websocket.Upgrader
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			kind, msg, err := conn.ReadMessage()
			if err != nil {
				return
			}
			if err := conn.WriteMessage(kind, msg); err != nil {
				return
			}
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func dialWebSocket(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	conn, resp, err := dialer.Dial(url, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// echo sends msg over the WebSocket and wants it back within 10 s.
func echo(t *testing.T, conn *websocket.Conn, msg string) {
	t.Helper()
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := conn.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatalf("%s: write: %v", msg, err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, got, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("%s: no echo: %v", msg, err)
	}
	if string(got) != msg {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

// closeCode waits up to 10 s for the WebSocket to end and returns the code
// of the close frame it got, or websocket.CloseAbnormalClosure (1006, as
// browsers report it) when the connection ended without one.
func closeCode(t *testing.T, conn *websocket.Conn) int {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := conn.ReadMessage()
	var ce *websocket.CloseError
	var ne net.Error
	switch {
	case errors.As(err, &ce):
		return ce.Code
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatal("the WebSocket is still open after 10s")
	case err == nil:
		t.Fatal("the WebSocket got a message, want its end")
	}
	return websocket.CloseAbnormalClosure
}
