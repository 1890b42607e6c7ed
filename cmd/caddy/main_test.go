package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

// TestXcaddyBinaryRunsExample builds Caddy with the plugin exactly as users
// do (go tool xcaddy build ... --with github.com/imagelb/caddy-imagelb@v0.0.0=.),
// runs examples/Caddyfile on free ports, and walks the README's curl flow:
// health, register, list, proxy, stats, port mapping, dynamic upstreams.
func TestXcaddyBinaryRunsExample(t *testing.T) {
	bin, root := xcaddyBinary(t)
	dir := t.TempDir()
	out, err := exec.Command(bin, "list-modules").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"imagelb", "http.handlers.imagelb", "http.handlers.imagelb_metrics", "admin.api.imagelb",
		"http.reverse_proxy.upstreams.imagelb", "http.reverse_proxy.selection_policies.imagelb"} {
		if !strings.Contains(string(out), id+"\n") {
			t.Fatalf("module %s missing from list-modules:\n%s", id, out)
		}
	}

	// examples/caddy.json is examples/Caddyfile adapted, and valid
	adapted, err := exec.Command(bin, "adapt", "--config", filepath.Join(root, "examples", "Caddyfile"), "--pretty").Output()
	if err != nil {
		t.Fatalf("adapt example: %v", err)
	}
	committed, err := os.ReadFile(filepath.Join(root, "examples", "caddy.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(adapted)) != strings.TrimSpace(string(committed)) {
		t.Fatalf("examples/caddy.json is stale: regenerate with\n  go run ./cmd/caddy adapt --config examples/Caddyfile --pretty > examples/caddy.json")
	}
	validate := exec.Command(bin, "validate", "--config", filepath.Join(root, "examples", "caddy.json"))
	validate.Env = append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	if out, err := validate.CombinedOutput(); err != nil {
		t.Fatalf("validate examples/caddy.json: %v\n%s", err, out)
	}

	ports, site, adm := runExample(t, bin, root)

	call := func(method, url, body string, want int) map[string]any {
		t.Helper()
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d, want %d: %s", method, url, resp.StatusCode, want, raw)
		}
		var m map[string]any
		if raw[0] == '[' { // a bare array, as the original answered: its length
			var list []any
			_ = json.Unmarshal(raw, &list)
			return map[string]any{"length": float64(len(list))}
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, raw)
		}
		return m
	}
	// The first health checks run once every server listens: the demo
	// containers served by this same Caddy pass them.
	for deadline := time.Now().Add(15 * time.Second); ; {
		svc := call("GET", site+"/api/v1/services/1", "", 200)
		checked := 0
		for _, c := range svc["containers"].([]any) {
			c := c.(map[string]any)
			if c["last_health_check"] != nil {
				checked++
				if c["status"] != "healthy" || c["last_health_error"] != nil {
					t.Fatalf("a demo container failed its first check: %v", c)
				}
			}
		}
		if checked == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first round of health checks did not run: %v", svc)
		}
		time.Sleep(20 * time.Millisecond) // polling for the first round
	}
	call("POST", fmt.Sprintf("%s/imagelb/services/2/register?image_name=api", adm),
		fmt.Sprintf(`[{"container_id":"api-1","port":%d},{"container_id":"api-2","port":%d}]`, ports["9003"], ports["9004"]), 200)
	if list := call("GET", site+"/api/v1/services", "", 200); list["length"] != 2.0 {
		t.Fatalf("services: %v", list)
	}
	got := map[string]int{}
	for i := 0; i < 4; i++ {
		e := call("GET", site+"/api/v1/proxy/2/hello?x=1", "", 200)
		if e["path"] != "/hello?x=1" {
			t.Fatalf("proxied to %v", e)
		}
		got[e["container"].(string)]++
	}
	if got[fmt.Sprint(ports["9003"])] != 2 || got[fmt.Sprint(ports["9004"])] != 2 {
		t.Fatalf("round robin over the two containers: %v", got)
	}
	if e := call("GET", fmt.Sprintf("http://127.0.0.1:%d/any", ports["8001"]), "", 200); e["path"] != "/any" {
		t.Fatalf("external port: %v", e)
	}
	if e := call("GET", fmt.Sprintf("http://127.0.0.1:%d/dyn", ports["3001"]), "", 200); e["path"] != "/dyn" {
		t.Fatalf("dynamic imagelb site: %v", e)
	}
	st := call("GET", site+"/api/v1/stats?image_id=2", "", 200)
	if st["total_requests"] != 4.0 || st["failed_requests"] != 0.0 {
		t.Fatalf("stats: %v", st)
	}
	// the platform's own services behind the gateway, the banner and the docs
	if e := call("GET", site+"/api/v1/auth/login?x=1", "", 200); e["service"] != "orchestrator" || e["path"] != "/auth/login?x=1" {
		t.Fatalf("orchestrator: %v", e)
	}
	if e := call("GET", site+"/api/v1/billing/x", "", 200); e["service"] != "billing" {
		t.Fatalf("billing: %v", e)
	}
	if e := call("GET", site+"/", "", 200); e["docs"] != "/docs" {
		t.Fatalf("banner: %v", e)
	}
	if e := call("GET", site+"/openapi.json", "", 200); e["openapi"] != "3.1.0" {
		t.Fatalf("openapi: %v", e)
	}
}

// runExample runs examples/Caddyfile with the binary on free ports, waits
// until its API site answers, and returns the ports (keyed by the example's
// own), the API site's URL and the admin endpoint's.
func runExample(t *testing.T, bin, root string) (ports map[string]int, site, adm string) {
	t.Helper()
	dir := t.TempDir()
	example, err := os.ReadFile(filepath.Join(root, "examples", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	ports = map[string]int{}
	cfg := string(example)
	for _, p := range []string{"2019", "3000", "3001", "3003", "8000", "8001", "9001", "9002", "9003", "9004"} {
		ports[p] = freePort(t)
		cfg = strings.ReplaceAll(cfg, ":"+p, fmt.Sprintf(":%d", ports[p]))
		cfg = strings.ReplaceAll(cfg, "external_port "+p, fmt.Sprintf("external_port %d", ports[p]))
	}
	cfgPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	run := exec.CommandContext(ctx, bin, "run", "--config", cfgPath)
	run.Env = append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	logs, _ := run.StderrPipe()
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, bufio.NewReader(logs)) }()
	t.Cleanup(func() { cancel(); _ = run.Wait() })

	site = fmt.Sprintf("http://127.0.0.1:%d", ports["3000"])
	adm = fmt.Sprintf("http://localhost:%d", ports["2019"])
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(site + "/health")
		if err == nil {
			resp.Body.Close()
			// the sites may serve before the imagelb app's Start has run
			// (Caddy starts its apps in no set order)
			if appRunning(cfgPath) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling until the server listens and the app runs
	}

	return ports, site, adm
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildDir  string
)

// xcaddyBinary builds Caddy with the plugin once per test run, exactly as
// users do, and returns the binary and the module root.
func xcaddyBinary(t *testing.T) (bin, root string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds Caddy with xcaddy")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "imagelb-xcaddy-")
		if buildErr != nil {
			return
		}
		builtBin = filepath.Join(buildDir, "caddy")
		build := exec.Command("go", "tool", "xcaddy", "build", "v2.11.9",
			"--with", "github.com/imagelb/caddy-imagelb@v0.0.0="+root, "--output", builtBin)
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("xcaddy build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin, root
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

var freePort = testkit.FreePort
