package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/registry"
)

// proc is a running Caddy binary.
type proc struct {
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan error
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// running lists the processes started by runCaddy, ended by endAll.
var (
	runningMu sync.Mutex
	running   []*proc
)

// endAll kills whatever runCaddy started and is still running.
func endAll() {
	runningMu.Lock()
	defer runningMu.Unlock()
	for _, p := range running {
		if gone, _ := p.exited(); !gone {
			_ = p.cmd.Process.Kill()
			err := <-p.done
			p.done <- err
		}
	}
	running = nil
}

// runCaddy starts "caddy run" (through launcher, a command and its
// arguments, when given) and waits until url answers, or until the process
// exits (then exited reports it).
func runCaddy(t *testing.T, bin, config, dataDir, url string, launcher ...string) *proc {
	t.Helper()
	p := &proc{logs: new(syncBuffer), done: make(chan error, 1)}
	args := append(launcher, bin, "run", "--config", config)
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dataDir, "XDG_CONFIG_HOME="+dataDir)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	runningMu.Lock()
	running = append(running, p)
	runningMu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-p.done:
			p.done <- err // keep it for exited()
			return p
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			// Caddy serves its admin API, and possibly the sites, before
			// the imagelb app's Start has run
			if appRunning(config) {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy did not answer %s:\n%s", url, p.logs.String())
		}
		time.Sleep(20 * time.Millisecond) // polling until the server listens
	}
}

// appRunning reports whether the imagelb app of the Caddyfile at config
// has started, asking the admin API its "admin" line names (true when it
// names none): Caddy serves its admin API and the sites before the apps'
// Start, and the admin mount answers 503 until the imagelb app's has run.
func appRunning(config string) bool {
	text, err := os.ReadFile(config)
	if err != nil {
		return true
	}
	m := adminLine.FindSubmatch(text)
	if m == nil || string(m[1]) == "off" || strings.HasPrefix(string(m[1]), "unix/") {
		return true
	}
	resp, err := http.Get("http://" + string(m[1]) + "/imagelb/services")
	if err != nil {
		return false
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "app is not running")
}

var adminLine = regexp.MustCompile(`(?m)^\s*admin\s+([^\s{]+)`)

// exited reports whether the process has ended, and its error.
func (p *proc) exited() (bool, error) {
	select {
	case err := <-p.done:
		p.done <- err
		return true, err
	default:
		return false, nil
	}
}

// kill9 ends the process with SIGKILL: no shutdown code runs.
func (p *proc) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	err := <-p.done
	p.done <- err
}

// stop ends the process cleanly (SIGINT).
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := <-p.done
	p.done <- err
	if err != nil {
		t.Fatalf("clean stop: %v\n%s", err, p.logs.String())
	}
}

func call(t *testing.T, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json") // as the original's clients send it
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if len(raw) > 0 && raw[0] == '[' { // a bare array, as the original answered: its length
		var list []any
		_ = json.Unmarshal(raw, &list)
		return resp.StatusCode, map[string]any{"length": float64(len(list))}
	}
	_ = json.Unmarshal(raw, &m)
	return resp.StatusCode, m
}

// TestDurability runs the xcaddy-built binary through what the registry must
// survive: kill -9 right after acknowledged changes, a clean restart, a
// "caddy reload", and a corrupt state file.
func TestDurability(t *testing.T) {
	bin, _ := xcaddyBinary(t)
	dir := t.TempDir()
	t.Cleanup(endAll)
	adminPort, sitePort, backendPort := freePort(t), freePort(t), freePort(t)
	// the imagelb directive gives its server the handoff (no servers
	// block), so the reload below drops no connection
	extPort := freePort(t) // image 1's external port, of port_range
	config := func(name, extra string) string {
		return writeSiteConfig(t, filepath.Join(dir, name), adminPort, sitePort, backendPort,
			fmt.Sprintf("port_range %d-%d\n\t\t%s", extPort, extPort, extra))
	}
	cfg := config("Caddyfile", "")
	site := fmt.Sprintf("http://127.0.0.1:%d", sitePort)
	adm := fmt.Sprintf("http://localhost:%d/imagelb", adminPort)
	health := site + "/health"
	stateFile := filepath.Join(dir, "caddy", "imagelb", "registry.db")

	// The whole-state JSON file of earlier versions is imported on the
	// first start, once, and kept as registry.json.imported.
	legacy := filepath.Join(dir, "caddy", "imagelb", "registry.json")
	old := &registry.State{Services: []registry.ServiceRecord{{ImageID: 7, ImageName: "legacy", Algorithm: registry.RoundRobin,
		Containers: []registry.ContainerRecord{{ContainerID: "l", Host: "127.0.0.1", Port: backendPort, Status: registry.StatusHealthy, Weight: 1}}}}}
	if err := (&registry.FileStore{Path: legacy}).Commit(old); err != nil {
		t.Fatal(err)
	}
	p := runCaddy(t, bin, cfg, dir, health)
	if st, svc := call(t, "GET", adm+"/services/7", ""); st != 200 || svc["image_name"] != "legacy" {
		t.Fatalf("registry.json not imported: %d %v\n%s", st, svc, p.logs.String())
	}
	if _, err := os.Stat(legacy + ".imported"); err != nil {
		t.Fatalf("registry.json not kept as .imported: %v", err)
	}
	if st, _ := call(t, "DELETE", adm+"/services/7", ""); st != 200 {
		t.Fatalf("delete the imported image: %d", st)
	}

	if st, _ := call(t, "POST", fmt.Sprintf("%s/services/1/register?image_name=web&external_port=%d", adm, extPort),
		fmt.Sprintf(`[{"container_id":"a","port":%d},{"container_id":"b","port":%d}]`, backendPort, backendPort)); st != 200 {
		t.Fatalf("register: %d", st)
	}
	if st, _ := call(t, "PATCH", adm+"/services/1/containers/b", `{"weight":5,"status":"draining"}`); st != 200 {
		t.Fatalf("patch: %d", st)
	}
	p.kill9(t)

	t.Run("kill -9 after register and patch", func(t *testing.T) {
		p = runCaddy(t, bin, cfg, dir, health)
		st, svc := call(t, "GET", adm+"/services/1", "")
		if st != 200 {
			t.Fatalf("image 1 lost: %d", st)
		}
		cs := svc["containers"].([]any)
		b := cs[1].(map[string]any)
		if len(cs) != 2 || b["weight"] != 5.0 || b["status"] != "draining" || svc["external_port"] == nil {
			t.Fatalf("restored %v", svc)
		}
		if st, _ := call(t, "GET", site+"/api/v1/proxy/1/x", ""); st != 200 {
			t.Fatalf("proxy after restart: %d", st)
		}
	})

	t.Run("kill -9 after delete", func(t *testing.T) {
		if st, _ := call(t, "DELETE", adm+"/services/1", ""); st != 200 {
			t.Fatalf("delete: %d", st)
		}
		p.kill9(t)
		p = runCaddy(t, bin, cfg, dir, health)
		if st, _ := call(t, "GET", adm+"/services/1", ""); st != 404 {
			t.Fatalf("deleted image is back: %d", st)
		}
	})

	t.Run("clean restart", func(t *testing.T) {
		call(t, "POST", adm+"/services/2/register?image_name=api", fmt.Sprintf(`[{"container_id":"a","port":%d}]`, backendPort))
		p.stop(t)
		p = runCaddy(t, bin, cfg, dir, health)
		if st, _ := call(t, "GET", adm+"/services/2", ""); st != 200 {
			t.Fatalf("image 2 lost over a clean restart: %d", st)
		}
	})

	t.Run("three caddy reloads under load: registry and counters kept, no request failed", func(t *testing.T) {
		load := startLoad(loadOpts{}, site+"/api/v1/proxy/2/")
		for i := 0; i < 3; i++ {
			load.waitServed(t, 50)
			cfg2 := config(fmt.Sprintf("Caddyfile.reload%d", i), fmt.Sprintf("health_timeout %ds", i+2))
			reload := exec.Command(bin, "reload", "--config", cfg2, "--address", fmt.Sprintf("localhost:%d", adminPort))
			if out, err := reload.CombinedOutput(); err != nil {
				t.Fatalf("caddy reload: %v\n%s", err, out)
			}
		}
		load.waitServed(t, 50)
		served, failures := load.stop()
		// Linux resets connections queued on the old SO_REUSEPORT socket
		// unless net.ipv4.tcp_migrate_req=1 (.ci/run sets it; README)
		migrate, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
		for _, f := range failures {
			if strings.TrimSpace(string(migrate)) != "1" && strings.Contains(f, "connection reset by peer") {
				t.Log("excused (tcp_migrate_req is not 1):", f)
				continue
			}
			t.Error("a client saw:", f)
		}
		t.Logf("%d requests served across 3 caddy reloads, %d failed", served, len(failures))
		_, stats := call(t, "GET", adm+"/stats?image_id=2", "")
		if stats["total_requests"] != float64(served) || stats["failed_requests"] != 0.0 {
			t.Fatalf("counters after reloads: %v, want %d requests, none failed", stats, served)
		}
	})

	t.Run("corrupt state file", func(t *testing.T) {
		p.stop(t)
		data, err := os.ReadFile(stateFile)
		if err != nil {
			t.Fatal(err)
		}
		truncated := data[:len(data)/2]
		if err := os.WriteFile(stateFile, truncated, 0o600); err != nil {
			t.Fatal(err)
		}
		p = runCaddy(t, bin, cfg, dir, health)
		gone, err := p.exited()
		if !gone || err == nil {
			t.Fatalf("caddy started on a corrupt state file:\n%s", p.logs.String())
		}
		logs := p.logs.String()
		for _, want := range []string{stateFile, "corrupt", "on_corrupt_state start_empty"} {
			if !strings.Contains(logs, want) {
				t.Fatalf("the error does not say %q:\n%s", want, logs)
			}
		}
		if now, _ := os.ReadFile(stateFile); !bytes.Equal(now, truncated) {
			t.Fatal("the corrupt file was changed by the failed start")
		}

		p = runCaddy(t, bin, config("Caddyfile3", "on_corrupt_state start_empty"), dir, health)
		if gone, _ := p.exited(); gone {
			t.Fatalf("caddy did not start with on_corrupt_state start_empty:\n%s", p.logs.String())
		}
		if _, list := call(t, "GET", adm+"/services", ""); list["length"] != 0.0 {
			t.Fatalf("registry not empty: %v", list)
		}
		kept, _ := filepath.Glob(stateFile + ".corrupt-*")
		if len(kept) != 1 {
			t.Fatalf("bad file not kept aside: %v", kept)
		}
		if aside, _ := os.ReadFile(kept[0]); !bytes.Equal(aside, truncated) {
			t.Fatal("the kept file differs from the corrupt one")
		}
	})
}

// TestFullDisk: commit, then publish. With the database on a disk that is
// full, a registration answers 500 and changes nothing: the API does not
// show it, the proxy does not route it, and after a kill -9 and restart it
// is not there either; the change made once space is back is.
func TestFullDisk(t *testing.T) {
	bin, _ := xcaddyBinary(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk")
	if err := os.Mkdir(disk, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", disk).CombinedOutput(); err != nil {
		t.Skipf("a tiny tmpfs is needed to fill a disk for real (mount needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", disk).Run() })
	t.Cleanup(endAll)
	adminPort, sitePort, backendPort := freePort(t), freePort(t), freePort(t)
	cfg := writeSiteConfig(t, filepath.Join(dir, "Caddyfile"), adminPort, sitePort, backendPort,
		"state_file "+filepath.Join(disk, "registry.db"))
	site := fmt.Sprintf("http://127.0.0.1:%d", sitePort)
	adm := fmt.Sprintf("http://localhost:%d/imagelb", adminPort)
	p := runCaddy(t, bin, cfg, dir, site+"/health")
	containers := func(n int) string {
		var b strings.Builder
		b.WriteString("[")
		for i := range n {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, `{"container_id":"container-%04d-%s","port":%d}`, i, strings.Repeat("x", 40), backendPort)
		}
		return b.String() + "]"
	}
	if st, _ := call(t, "POST", adm+"/services/1/register?image_name=web", containers(1)); st != 200 {
		t.Fatalf("register: %d", st)
	}

	// Fill the disk.
	filler, err := os.Create(filepath.Join(disk, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := filler.Write(make([]byte, 4096)); err != nil {
			break
		}
	}
	filler.Close()

	st, body := call(t, "POST", adm+"/services/2/register?image_name=big", containers(400))
	if st != 500 || !strings.Contains(fmt.Sprint(body["detail"]), "not applied") {
		t.Fatalf("register on a full disk: %d %v, want 500 saying nothing was applied", st, body)
	}
	if st, _ := call(t, "PATCH", adm+"/services/1/containers/container-0000-"+strings.Repeat("x", 40), `{"status":"draining"}`); st != 500 {
		t.Logf("a small patch on a full disk: %d (bbolt may still find a free page)", st)
	}
	if st, _ := call(t, "GET", adm+"/services/2", ""); st != 404 {
		t.Fatalf("the refused registration is visible in the API: %d", st)
	}
	if st, _ := call(t, "GET", site+"/api/v1/proxy/2/", ""); st != 404 {
		t.Fatalf("the refused registration is routed: %d", st)
	}
	_, svc1 := call(t, "GET", adm+"/services/1", "")

	p.kill9(t)
	if err := os.Remove(filepath.Join(disk, "filler")); err != nil {
		t.Fatal(err)
	}
	p = runCaddy(t, bin, cfg, dir, site+"/health")
	if st, _ := call(t, "GET", adm+"/services/2", ""); st != 404 {
		t.Fatalf("the refused registration came back after a restart: %d", st)
	}
	if _, now := call(t, "GET", adm+"/services/1", ""); registered(now) != registered(svc1) {
		t.Fatalf("image 1 after the restart: %s, before: %s", registered(now), registered(svc1))
	}
	if st, _ := call(t, "POST", adm+"/services/2/register?image_name=big", containers(400)); st != 200 {
		t.Fatalf("register once space is back: %d", st)
	}
	p.kill9(t)
	p = runCaddy(t, bin, cfg, dir, site+"/health")
	if st, _ := call(t, "GET", adm+"/services/2", ""); st != 200 {
		t.Fatalf("the acknowledged registration is lost: %d", st)
	}
}

// registered is what the orchestrator registered of a service, as the API
// shows it: its containers' ids, statuses and weights.
func registered(svc map[string]any) string {
	var b strings.Builder
	cs, _ := svc["containers"].([]any)
	for _, c := range cs {
		m, _ := c.(map[string]any)
		fmt.Fprintf(&b, "%v %v %v; ", m["container_id"], m["status"], m["weight"])
	}
	return b.String()
}

// writeSiteConfig writes a Caddyfile with the admin endpoint on adminPort,
// the imagelb app with health_interval 1h and the global options given,
// the imagelb handler on sitePort and a backend answering "backend" on
// backendPort (a site of the same Caddy, so allowed_self_upstreams lists
// it), and returns its path.
func writeSiteConfig(t *testing.T, path string, adminPort, sitePort, backendPort int, global string) string {
	t.Helper()
	cfg := fmt.Sprintf(`{
	admin localhost:%d
	imagelb {
		health_interval 1h
		allowed_self_upstreams 127.0.0.1:%d
		%s
	}
}
http://127.0.0.1:%d {
	imagelb
}
http://127.0.0.1:%d {
	respond "backend"
}
`, adminPort, backendPort, global, sitePort, backendPort)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
