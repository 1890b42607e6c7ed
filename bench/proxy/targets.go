package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// target is one way to reach the backends: a proxy process (or none, for
// the backend direct) and what the scenarios need of it.
type target struct {
	name   string
	url    string // where the load goes (http:// or https://)
	wsAddr string // host:port for the upgraded connections; empty: none
	wsPath string
	pid    int    // the process whose CPU is counted; 0: none
	admin  string // base URL of its admin endpoint; empty: none
	pprof  string // base URL of its /debug/pprof; empty: none
	binary string // its binary, for go tool pprof
	// change adds (true) or removes (false) the third backend while the
	// load runs (the churn scenario); nil: the target does not churn.
	change func(add bool) error
	// churnNote, when set, says what the table's columns do not (HAProxy's
	// refused deletions).
	churnNote func() string
}

// targets are every process of the run, started once and used by every
// scenario. Each proxy compared has its own process (BENCH.md: one process
// serving two of them shares its GC and scheduler and flatters the slower);
// a process's HTTPS site is measured only when its HTTP site is idle.
type targets struct {
	direct, stock, tuned, imagelb, dynamic, nginx, haproxy, goref target
	stockTLS, imagelbTLS, nginxTLS                                target
}

// quiet is the order of the quiet table's rows.
func (ts *targets) quiet() []target {
	return []target{ts.direct, ts.stock, ts.tuned, ts.imagelb, ts.dynamic, ts.nginx, ts.haproxy, ts.goref}
}

// churning is the order of the churn table's rows.
func (ts *targets) churning() []target {
	return []target{ts.imagelb, ts.stock, ts.nginx, ts.haproxy, ts.goref}
}

func (ts *targets) https() []target { return []target{ts.stockTLS, ts.imagelbTLS, ts.nginxTLS} }

const (
	nameDirect  = "backend direct"
	nameStock   = "stock Caddy reverse_proxy"
	nameTuned   = "stock Caddy, 1024 idle conns/host"
	nameImagelb = "imagelb /api/v1/proxy"
	nameDynamic = "imagelb dynamic upstreams"
	nameNginx   = "nginx"
	nameHAProxy = "HAProxy"
	nameGoRef   = "Go reference (httputil)"
)

func (e *env) startTargets() (*targets, error) {
	ts := &targets{direct: target{name: nameDirect, url: "http://" + e.backends[0] + "/", wsAddr: e.backends[0], wsPath: "/ws"}}
	var err error
	if ts.stock, ts.stockTLS, err = e.startStockCaddy("stock", false); err != nil {
		return nil, err
	}
	if ts.tuned, _, err = e.startStockCaddy("tuned", true); err != nil {
		return nil, err
	}
	if ts.imagelb, ts.imagelbTLS, err = e.startImagelb("imagelb", false); err != nil {
		return nil, err
	}
	if ts.dynamic, _, err = e.startImagelb("dynamic", true); err != nil {
		return nil, err
	}
	if ts.nginx, ts.nginxTLS, err = e.startNginx(); err != nil {
		return nil, err
	}
	if ts.haproxy, err = e.startHAProxy(); err != nil {
		return nil, err
	}
	if ts.goref, err = e.startGoRef(); err != nil {
		return nil, err
	}
	return ts, nil
}

// caddyProcess starts one Caddy on a config file, in its own data and
// config dirs, and waits for url.
func (e *env) caddyProcess(name, config, adapter, url string) (*exec.Cmd, error) {
	home := filepath.Join(e.dir, name)
	if err := os.MkdirAll(home, 0o755); err != nil {
		return nil, err
	}
	args := []string{"run", "--config", config}
	if adapter != "" {
		args = append(args, "--adapter", adapter)
	}
	cmd, err := e.startEnv([]string{"XDG_DATA_HOME=" + home, "XDG_CONFIG_HOME=" + home}, name, e.caddy, args...)
	if err != nil {
		return nil, err
	}
	return cmd, waitHTTP(url)
}

const caddyGlobals = `	admin localhost:%d
	auto_https disable_redirects
	skip_install_trust
	log default {
		level WARN
	}
`

// startStockCaddy runs stock reverse_proxy over the first two backends with
// lb_policy round_robin: Caddy's defaults, or with 1,024 idle connections
// per host (what imagelb's handler sets). The Caddyfile is adapted to JSON
// and the HTTP site's handler gets "@id": "rp", so that the churn scenario
// changes its upstreams with PATCH /id/rp/upstreams, which reloads the
// config, as caddy-docker-proxy's changes do.
func (e *env) startStockCaddy(name string, tuned bool) (httpT, httpsT target, err error) {
	admin, port, tlsPort := freePort(), freePort(), freePort()
	transport := ""
	if tuned {
		transport = "\n\t\ttransport http {\n\t\t\tkeepalive_idle_conns_per_host 1024\n\t\t}"
	}
	ups := e.backends[0] + " " + e.backends[1]
	site := func(addr, tls string) string {
		return fmt.Sprintf("%s {\n\tbind 127.0.0.1\n%s\treverse_proxy %s {\n\t\tlb_policy round_robin%s\n\t}\n}\n", addr, tls, ups, transport)
	}
	cfg := fmt.Sprintf("{\n"+caddyGlobals+"}\n", admin) + site(fmt.Sprintf("http://127.0.0.1:%d", port), "")
	if !tuned {
		cfg += site(fmt.Sprintf("https://127.0.0.1:%d", tlsPort), fmt.Sprintf("\ttls %s %s\n", e.cert, e.key))
	}
	caddyfile := filepath.Join(e.dir, name+".Caddyfile")
	if err := os.WriteFile(caddyfile, []byte(cfg), 0o644); err != nil {
		return httpT, httpsT, err
	}
	adapted, err := exec.Command(e.caddy, "adapt", "--config", caddyfile).Output()
	if err != nil {
		return httpT, httpsT, fmt.Errorf("caddy adapt %s: %v", caddyfile, err)
	}
	tagged, err := tagReverseProxy(adapted, port)
	if err != nil {
		return httpT, httpsT, err
	}
	config := filepath.Join(e.dir, name+".json")
	if err := os.WriteFile(config, tagged, 0o644); err != nil {
		return httpT, httpsT, err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	cmd, err := e.caddyProcess(name, config, "", url)
	if err != nil {
		return httpT, httpsT, err
	}
	adminURL := fmt.Sprintf("http://localhost:%d", admin)
	httpT = target{name: nameStock, url: url, wsAddr: fmt.Sprintf("127.0.0.1:%d", port), wsPath: "/ws",
		pid: cmd.Process.Pid, admin: adminURL, pprof: adminURL + "/debug/pprof", binary: e.caddy}
	if tuned {
		httpT.name = nameTuned
		return httpT, httpsT, nil
	}
	httpT.change = func(add bool) error {
		ups := []map[string]string{{"dial": e.backends[0]}, {"dial": e.backends[1]}}
		if add {
			ups = append(ups, map[string]string{"dial": e.backends[2]})
		}
		body, _ := json.Marshal(ups)
		return call("PATCH", adminURL+"/id/rp/upstreams", body)
	}
	httpsT = target{name: nameStock, url: fmt.Sprintf("https://127.0.0.1:%d/", tlsPort), pid: cmd.Process.Pid}
	return httpT, httpsT, waitHTTP(httpsT.url)
}

// tagReverseProxy puts "@id": "rp" on the reverse_proxy handler of the
// server listening on port.
func tagReverseProxy(config []byte, port int) ([]byte, error) {
	var cfg map[string]any
	if err := json.Unmarshal(config, &cfg); err != nil {
		return nil, err
	}
	servers, _ := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
	var tag func(v any) bool
	tag = func(v any) bool {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "reverse_proxy" {
				v["@id"] = "rp"
				return true
			}
			for _, x := range v {
				if tag(x) {
					return true
				}
			}
		case []any:
			for _, x := range v {
				if tag(x) {
					return true
				}
			}
		}
		return false
	}
	for _, s := range servers {
		srv := s.(map[string]any)
		if fmt.Sprint(srv["listen"]) == fmt.Sprintf("[127.0.0.1:%d]", port) && tag(srv["routes"]) {
			return json.Marshal(cfg)
		}
	}
	return nil, fmt.Errorf("no reverse_proxy handler on port %d in the adapted config", port)
}

// startImagelb runs imagelb with image 1 on the first two backends: the
// handler's /api/v1/proxy (HTTP and HTTPS), or reverse_proxy { dynamic
// imagelb 1 }. The churn scenario adds and removes the third backend as
// container c of image 1 through the registry API on the admin endpoint.
func (e *env) startImagelb(name string, dynamic bool) (httpT, httpsT target, err error) {
	admin, port, tlsPort := freePort(), freePort(), freePort()
	cfg := fmt.Sprintf("{\n"+caddyGlobals+`	imagelb {
		persist off
		health_interval 1h
		service 1 bench {
			container a %s
			container b %s
		}
	}
}
`, admin, e.backends[0], e.backends[1])
	path := "/api/v1/proxy/1/"
	if dynamic {
		path = "/"
		cfg += fmt.Sprintf("http://127.0.0.1:%d {\n\tbind 127.0.0.1\n\treverse_proxy {\n\t\tdynamic imagelb 1\n\t\tlb_policy imagelb\n\t}\n}\n", port)
	} else {
		cfg += fmt.Sprintf("http://127.0.0.1:%d {\n\tbind 127.0.0.1\n\timagelb\n}\n", port)
		cfg += fmt.Sprintf("https://127.0.0.1:%d {\n\tbind 127.0.0.1\n\ttls %s %s\n\timagelb\n}\n", tlsPort, e.cert, e.key)
	}
	caddyfile := filepath.Join(e.dir, name+".Caddyfile")
	if err := os.WriteFile(caddyfile, []byte(cfg), 0o644); err != nil {
		return httpT, httpsT, err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d%s", port, path)
	cmd, err := e.caddyProcess(name, caddyfile, "caddyfile", url)
	if err != nil {
		return httpT, httpsT, err
	}
	adminURL := fmt.Sprintf("http://localhost:%d", admin)
	httpT = target{name: nameImagelb, url: url, wsAddr: fmt.Sprintf("127.0.0.1:%d", port), wsPath: path + "ws",
		pid: cmd.Process.Pid, admin: adminURL, pprof: adminURL + "/debug/pprof", binary: e.caddy}
	if dynamic {
		httpT.name = nameDynamic
		return httpT, httpsT, nil
	}
	httpT.change = func(add bool) error {
		container := adminURL + "/imagelb/services/1/containers/c"
		if add {
			_, port, _ := net.SplitHostPort(e.backends[2])
			return call("PUT", container, []byte(`{"port": `+port+`}`))
		}
		return call("DELETE", container, nil)
	}
	httpsT = target{name: nameImagelb, url: fmt.Sprintf("https://127.0.0.1:%d%s", tlsPort, path), pid: cmd.Process.Pid}
	return httpT, httpsT, waitHTTP(httpsT.url)
}

// call makes one admin request and wants a 2xx.
func call(method, url string, body []byte) error {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := adminClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

var adminClient = &http.Client{Timeout: 10 * time.Second}

// startNginx runs nginx (a master and one worker a core) with an upstream
// block and keep-alive to it, HTTP/1.1 and HTTPS with HTTP/2. The churn
// scenario rewrites the upstream block and runs nginx -s reload.
func (e *env) startNginx() (httpT, httpsT target, err error) {
	port, tlsPort := freePort(), freePort()
	conf := filepath.Join(e.dir, "nginx.conf")
	write := func(ups []string) error {
		var servers strings.Builder
		for _, u := range ups {
			fmt.Fprintf(&servers, " server %s;", u)
		}
		cfg := fmt.Sprintf(`worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/nginx.err;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 1000000;
	map $http_upgrade $connection_upgrade { default upgrade; '' ''; }
	upstream backends {%[2]s keepalive 1024; keepalive_requests 1000000; }
	server {
		listen 127.0.0.1:%[3]d;
		listen 127.0.0.1:%[4]d ssl http2;
		ssl_certificate %[5]s;
		ssl_certificate_key %[6]s;
		location / {
			proxy_pass http://backends;
			proxy_http_version 1.1;
			proxy_set_header Upgrade $http_upgrade;
			proxy_set_header Connection $connection_upgrade;
		}
	}
}
`, e.dir, servers.String(), port, tlsPort, e.cert, e.key)
		return os.WriteFile(conf, []byte(cfg), 0o644)
	}
	if err := write(e.backends[:2]); err != nil {
		return httpT, httpsT, err
	}
	cmd, err := e.start("nginx", "nginx", "-c", conf, "-g", "daemon off;")
	if err != nil {
		return httpT, httpsT, err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	httpT = target{name: nameNginx, url: url, wsAddr: fmt.Sprintf("127.0.0.1:%d", port), wsPath: "/ws", pid: cmd.Process.Pid}
	httpT.change = func(add bool) error {
		ups := e.backends[:2]
		if add {
			ups = e.backends[:3]
		}
		if err := write(ups); err != nil {
			return err
		}
		if out, err := exec.Command("nginx", "-c", conf, "-s", "reload").CombinedOutput(); err != nil {
			return fmt.Errorf("nginx -s reload: %v: %s", err, bytes.TrimSpace(out))
		}
		return nil
	}
	httpsT = target{name: nameNginx, url: fmt.Sprintf("https://127.0.0.1:%d/", tlsPort), pid: cmd.Process.Pid}
	if err := waitHTTP(url); err != nil {
		return httpT, httpsT, err
	}
	return httpT, httpsT, waitHTTP(httpsT.url)
}

// startHAProxy runs HAProxy, round robin with connection reuse. The churn
// scenario adds and removes the third backend through the runtime API (add
// server + enable server; disable server + del server), without a reload.
func (e *env) startHAProxy() (target, error) {
	port := freePort()
	sock := filepath.Join(e.dir, "haproxy.sock")
	cfg := fmt.Sprintf(`global
	maxconn 8192
	stats socket %s mode 600 level admin
defaults
	mode http
	timeout connect 5s
	timeout client 30s
	timeout server 30s
	timeout tunnel 1h
	option http-keep-alive
frontend fe
	bind 127.0.0.1:%d
	default_backend be
backend be
	balance roundrobin
	http-reuse always
	server a %s
	server b %s
`, sock, port, e.backends[0], e.backends[1])
	path := filepath.Join(e.dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return target{}, err
	}
	cmd, err := e.start("haproxy", "haproxy", "-f", path, "-db")
	if err != nil {
		return target{}, err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	t := target{name: nameHAProxy, url: url, wsAddr: fmt.Sprintf("127.0.0.1:%d", port), wsPath: "/ws", pid: cmd.Process.Pid}
	// A server that still has connections (idle ones kept for reuse
	// included) cannot be deleted: it stays in maintenance, out of the
	// rotation, which is the change; the next add enables it again.
	var mu sync.Mutex
	exists := false
	refused := 0
	t.churnNote = func() string {
		mu.Lock()
		defer mu.Unlock()
		if refused == 0 {
			return ""
		}
		return fmt.Sprintf("HAProxy refused `del server` %d times in the run (\"Server still has connections attached to it\": idle connections kept for reuse count); each time the server stayed in maintenance, out of the rotation, and the next add enabled it again.", refused)
	}
	t.change = func(add bool) error {
		mu.Lock()
		defer mu.Unlock()
		if add {
			if !exists {
				if out, err := haproxyCommand(sock, "add server be/c "+e.backends[2]); err != nil || !strings.Contains(out, "New server registered") {
					return fmt.Errorf("add server: %v %s", err, out)
				}
				exists = true
			}
			return haproxyExpect(sock, "enable server be/c", "")
		}
		if err := haproxyExpect(sock, "disable server be/c", ""); err != nil {
			return err
		}
		out, err := haproxyCommand(sock, "del server be/c")
		if err != nil {
			return fmt.Errorf("del server: %v", err)
		}
		if strings.Contains(out, "still has connections") {
			refused++
			return nil
		}
		if !strings.Contains(out, "Server deleted") {
			return fmt.Errorf("del server: %s", strings.TrimSpace(out))
		}
		exists = false
		return nil
	}
	return t, waitHTTP(url)
}

// haproxyCommand sends one command to HAProxy's runtime API.
func haproxyCommand(sock, command string) (string, error) {
	conn, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, command+"\n"); err != nil {
		return "", err
	}
	out, err := io.ReadAll(conn)
	return string(out), err
}

func haproxyExpect(sock, command, want string) error {
	out, err := haproxyCommand(sock, command)
	if err != nil {
		return fmt.Errorf("%s: %v", command, err)
	}
	if strings.TrimSpace(out) != want {
		return fmt.Errorf("%s: %s", command, strings.TrimSpace(out))
	}
	return nil
}

// startGoRef runs bench/goproxy on the first two backends; the churn
// scenario adds and removes the third through its admin endpoint.
func (e *env) startGoRef() (target, error) {
	port, admin := freePort(), freePort()
	cmd, err := e.start("goproxy", e.goproxy, "-listen", fmt.Sprintf("127.0.0.1:%d", port),
		"-upstreams", e.backends[0]+","+e.backends[1], "-admin", fmt.Sprintf("127.0.0.1:%d", admin))
	if err != nil {
		return target{}, err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", admin)
	t := target{name: nameGoRef, url: url, wsAddr: fmt.Sprintf("127.0.0.1:%d", port), wsPath: "/ws",
		pid: cmd.Process.Pid, admin: adminURL, pprof: adminURL + "/debug/pprof", binary: e.goproxy}
	t.change = func(add bool) error {
		method := "DELETE"
		if add {
			method = "PUT"
		}
		return call(method, adminURL+"/upstreams/"+e.backends[2], nil)
	}
	return t, waitHTTP(url)
}
