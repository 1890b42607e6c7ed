package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOpenFileLimit runs the binary with a limit of 128 open files and
// holds more connections than that: the log gets one WARN naming the limit,
// and once the connections are gone the server accepts again (with
// imagelb_handoff, an Accept error used to stop its listener for good).
func TestOpenFileLimit(t *testing.T) {
	bin, _ := xcaddyBinary(t)
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) is not installed")
	}
	dir := t.TempDir()
	t.Cleanup(endAll)
	adminPort, sitePort := freePort(t), freePort(t)
	cfg := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`{
	admin localhost:%d
	servers {
		listener_wrappers {
			imagelb_handoff
		}
	}
	imagelb {
		health_interval 1h
		persist off
	}
}
http://127.0.0.1:%d {
	imagelb
}
`, adminPort, sitePort)), 0o600); err != nil {
		t.Fatal(err)
	}
	site := fmt.Sprintf("http://127.0.0.1:%d", sitePort)
	p := runCaddy(t, bin, cfg, dir, site+"/health", prlimit, "--nofile=128:128")
	if gone, err := p.exited(); gone {
		t.Fatalf("caddy exited: %v\n%s", err, p.logs.String())
	}

	var conns []net.Conn
	for i := 0; i < 160; i++ {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", sitePort))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	const warning = "of the process limit of 128"
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.logs.String(), warning) {
		if time.Now().After(deadline) {
			t.Fatalf("no warning naming the limit:\n%s", p.logs.String())
		}
		time.Sleep(20 * time.Millisecond) // polling the log
	}
	for _, c := range conns {
		c.Close()
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(site + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server does not accept again after the burst: %v\n%s", err, p.logs.String())
		}
		time.Sleep(20 * time.Millisecond) // polling until the server accepts
	}
	if n := strings.Count(p.logs.String(), warning); n != 1 {
		t.Fatalf("%d warnings for one burst, want 1", n)
	}
}
