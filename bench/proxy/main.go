// Command proxy compares, in one run on loopback, what a request costs
// through imagelb against the backend direct, stock Caddy reverse_proxy,
// nginx and HAProxy (see the README, Performance): alternating rounds of
// wrk, medians, ratios. It installs wrk, nginx and haproxy from Debian when
// they are missing (as root), builds Caddy with the plugin, starts tiny
// backends, and writes a markdown table to bench/results/proxy.md.
//
//	go run ./bench/proxy            # the full comparison (about 10 minutes)
//	go run ./bench/proxy -quick     # one round, 32 connections
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

var (
	quick    = flag.Bool("quick", false, "one round at 32 connections, fewer scale points")
	conns    = flag.String("conns", "32,256", "connection counts to compare at")
	noScale  = flag.Bool("no-scale", false, "skip the scale table")
	rounds   = flag.Int("rounds", 3, "alternating rounds per comparison")
	duration = flag.Duration("duration", 5*time.Second, "wrk duration per run")
	out      = flag.String("out", "bench/results/proxy.md", "where the markdown table goes")
	backend  = flag.String("backend", "", "internal: serve as a backend on this address")
	noProf   = flag.Bool("no-profile", false, "skip the CPU and allocation profiles")
)

func main() {
	flag.Parse()
	if *backend != "" {
		serveBackend(*backend)
		return
	}
	log.SetFlags(0)
	if *quick {
		*rounds = 1
	}
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

// serveBackend is a tiny HTTP server answering a few bytes.
func serveBackend(addr string) {
	body := []byte("ok\n")
	srv := &http.Server{Addr: addr, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})}
	log.Fatal(srv.ListenAndServe())
}

type env struct {
	dir      string
	caddy    string
	backends []string // host:port
	procs    []*exec.Cmd
}

func run() error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("bench/proxy runs on Linux")
	}
	if err := ensureTools("wrk", "nginx", "haproxy"); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "imagelb-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	e := &env{dir: dir, caddy: filepath.Join(dir, "caddy")}
	defer e.stopAll()

	log.Printf("building caddy with the plugin ...")
	if out, err := exec.Command("go", "build", "-o", e.caddy, "./cmd/caddy").CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for i := 0; i < 2; i++ {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort())
		if _, err := e.start(self, "-backend", addr); err != nil {
			return err
		}
		e.backends = append(e.backends, addr)
		benchBackends = e.backends
		if err := waitHTTP("http://" + addr + "/"); err != nil {
			return err
		}
	}

	var report strings.Builder
	fmt.Fprintf(&report, "# Proxy benchmark\n\n%s\n", machine())
	var counts []int
	for _, f := range strings.Split(*conns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("-conns %q: %v", *conns, err)
		}
		counts = append(counts, n)
	}
	if *quick {
		counts = counts[:1]
	}
	for _, c := range counts {
		rows, err := e.compare(c)
		if err != nil {
			return err
		}
		fmt.Fprintf(&report, "\n## %d connections (wrk -t1 -c%d -d%s, median of %d alternating rounds)\n\n%s", c, c, *duration, *rounds, table(rows))
	}
	if !*noProf {
		prof, err := e.profiles()
		if err != nil {
			return err
		}
		report.WriteString(prof)
	}
	if !*noScale {
		scale, err := e.scale()
		if err != nil {
			return err
		}
		report.WriteString(scale)
	}
	fmt.Print(report.String())
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(*out, []byte(report.String()), 0o644)
}

// target is one way to reach the backends.
type target struct {
	name  string
	url   string
	pid   func() int
	setup func(e *env) (stop func(), err error)
}

type result struct {
	rps, p50, p99, cpuPer10k float64
	errors                   bool // wrk saw non-2xx answers or socket errors
}

type row struct {
	name string
	res  result
}

func (e *env) compare(conns int) ([]row, error) {
	targets := e.targets()
	var stops []func()
	defer func() {
		for _, s := range stops {
			s()
		}
	}()
	for _, t := range targets {
		if t.setup == nil {
			continue
		}
		stop, err := t.setup(e)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", t.name, err)
		}
		stops = append(stops, stop)
	}
	results := make(map[string][]result)
	for r := 0; r < *rounds; r++ {
		// rotate the order each round so that no target always runs
		// right after the same neighbour
		order := append(slices.Clone(targets[r%len(targets):]), targets[:r%len(targets)]...)
		for _, t := range order {
			pid := 0
			if t.pid != nil {
				pid = t.pid()
			}
			res, err := wrk(t.url, conns, pid, "")
			if err != nil {
				return nil, fmt.Errorf("%s: %v", t.name, err)
			}
			log.Printf("c=%d round %d %-28s %8.0f req/s p50 %6.2f ms p99 %6.2f ms cpu %.3f s/10k", conns, r+1, t.name, res.rps, res.p50, res.p99, res.cpuPer10k)
			results[t.name] = append(results[t.name], res)
		}
	}
	var rows []row
	for _, t := range targets {
		rows = append(rows, row{t.name, median(results[t.name])})
	}
	return rows, nil
}

// ports of the proxies under test
var (
	caddyStockPort, imagelbPort, dynamicPort, tunedPort, nginxPort, haproxyPort = freePort(), freePort(), freePort(), freePort(), freePort(), freePort()
	adminPort                                                                   = freePort()
	caddyPID, nginxPID, haproxyPID                                              int
)

func (e *env) targets() []target {
	pidOf := func(p *int) func() int { return func() int { return *p } }
	return []target{
		{name: "backend direct", url: "http://" + e.backends[0] + "/"},
		{name: "caddy reverse_proxy (defaults)", url: fmt.Sprintf("http://127.0.0.1:%d/", caddyStockPort), pid: pidOf(&caddyPID), setup: (*env).startCaddy},
		{name: "caddy reverse_proxy (tuned)", url: fmt.Sprintf("http://127.0.0.1:%d/", tunedPort), pid: pidOf(&caddyPID)},
		{name: "imagelb /api/v1/proxy", url: fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy/1/", imagelbPort), pid: pidOf(&caddyPID)},
		{name: "imagelb dynamic upstreams", url: fmt.Sprintf("http://127.0.0.1:%d/", dynamicPort), pid: pidOf(&caddyPID)},
		{name: "nginx upstream keepalive", url: fmt.Sprintf("http://127.0.0.1:%d/", nginxPort), pid: pidOf(&nginxPID), setup: (*env).startNginx},
		{name: "haproxy roundrobin", url: fmt.Sprintf("http://127.0.0.1:%d/", haproxyPort), pid: pidOf(&haproxyPID), setup: (*env).startHAProxy},
	}
}

// startCaddy runs one Caddy with every Caddy variant on its own port, so
// they share the binary and the process (CPU is measured per process: the
// variants are measured one at a time).
func (e *env) startCaddy() (func(), error) {
	ups := strings.Join(e.backends, " ")
	cfg := fmt.Sprintf(`{
	admin localhost:%d
	log default {
		level WARN
	}
	imagelb {
		persist off
		health_interval 1h
		service 1 bench {
			container a %s
			container b %s
		}
	}
}
http://127.0.0.1:%d {
	reverse_proxy %s {
		lb_policy round_robin
	}
}
http://127.0.0.1:%d {
	reverse_proxy %s {
		lb_policy round_robin
		transport http {
			keepalive_idle_conns_per_host 1024
		}
	}
}
http://127.0.0.1:%d {
	imagelb
}
http://127.0.0.1:%d {
	reverse_proxy {
		dynamic imagelb 1
		lb_policy imagelb
	}
}
`, adminPort, e.backends[0], e.backends[1], caddyStockPort, ups, tunedPort, ups, imagelbPort, dynamicPort)
	path := filepath.Join(e.dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	cmd, err := e.startEnv([]string{"XDG_DATA_HOME=" + e.dir, "XDG_CONFIG_HOME=" + e.dir}, e.caddy, "run", "--config", path)

	if err != nil {
		return nil, err
	}
	caddyPID = cmd.Process.Pid
	if err := waitHTTP(fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy/1/", imagelbPort)); err != nil {
		return nil, err
	}
	return func() { stop(cmd) }, nil
}

func (e *env) startNginx() (func(), error) {
	cfg := fmt.Sprintf(`worker_processes auto;
pid %s/nginx.pid;
error_log %s/nginx.err;
events { worker_connections 4096; }
http {
	access_log off;
	upstream backends { server %s; server %s; keepalive 1024; }
	server {
		listen 127.0.0.1:%d;
		location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection ""; }
	}
}
`, e.dir, e.dir, e.backends[0], e.backends[1], nginxPort)
	path := filepath.Join(e.dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	cmd, err := e.start("nginx", "-c", path, "-g", "daemon off;")
	if err != nil {
		return nil, err
	}
	nginxPID = cmd.Process.Pid
	if err := waitHTTP(fmt.Sprintf("http://127.0.0.1:%d/", nginxPort)); err != nil {
		return nil, err
	}
	return func() { stop(cmd) }, nil
}

func (e *env) startHAProxy() (func(), error) {
	cfg := fmt.Sprintf(`global
	maxconn 8192
defaults
	mode http
	timeout connect 5s
	timeout client 30s
	timeout server 30s
	option http-keep-alive
frontend fe
	bind 127.0.0.1:%d
	default_backend be
backend be
	balance roundrobin
	http-reuse always
	server a %s
	server b %s
`, haproxyPort, e.backends[0], e.backends[1])
	path := filepath.Join(e.dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	cmd, err := e.start("haproxy", "-f", path, "-db")
	if err != nil {
		return nil, err
	}
	haproxyPID = cmd.Process.Pid
	if err := waitHTTP(fmt.Sprintf("http://127.0.0.1:%d/", haproxyPort)); err != nil {
		return nil, err
	}
	return func() { stop(cmd) }, nil
}

// profiles takes CPU and allocation profiles of Caddy (from its admin
// endpoint's /debug/pprof) while wrk loads the imagelb handler, and returns
// the top entries; the profile files stay in the temp dir for go tool pprof.
func (e *env) profiles() (string, error) {
	stop, err := e.startCaddy()
	if err != nil {
		return "", err
	}
	defer stop()
	dir := os.TempDir() // profiles are not committed; the tops below are
	url := fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy/1/", imagelbPort)
	var b strings.Builder
	b.WriteString("\n## Profiles of the imagelb handler under load (wrk -c256)\n\n")
	for _, p := range []struct{ name, path, top string }{
		{"cpu", "/debug/pprof/profile?seconds=4", "-top"},
		{"allocs", "/debug/pprof/allocs", "-top"},
	} {
		done := make(chan error, 1)
		go func() { _, err := wrk(url, 256, 0, ""); done <- err }()
		time.Sleep(500 * time.Millisecond) // let the load ramp up before sampling
		if p.name == "allocs" {
			time.Sleep(3 * time.Second)
		}
		resp, err := http.Get(fmt.Sprintf("http://localhost:%d%s", adminPort, p.path))
		if err != nil {
			return "", err
		}
		file := filepath.Join(dir, "imagelb-"+p.name+".pprof")
		f, err := os.Create(file)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(f, resp.Body)
		resp.Body.Close()
		f.Close()
		if err != nil {
			return "", err
		}
		if err := <-done; err != nil {
			return "", err
		}
		args := []string{"tool", "pprof", p.top, "-nodecount=25"}
		if p.name == "allocs" {
			args = append(args, "-sample_index=alloc_space")
		}
		top, err := exec.Command("go", append(args, e.caddy, file)...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("pprof: %v\n%s", err, top)
		}
		fmt.Fprintf(&b, "### %s (%s; `go tool pprof %s %s`)\n\n```\n%s```\n\n", p.name, file, strings.Join(args[2:], " "), "caddy", top)
	}
	return b.String(), nil
}

// scale registers 1, 100, 10,000 and 100,000 images (2 containers each)
// and measures requests spread at random over them, the memory per
// container, and registrations per second through the admin endpoint.
func (e *env) scale() (string, error) {
	stop, err := e.startCaddy()
	if err != nil {
		return "", err
	}
	defer stop()
	sizes := []int{1, 100, 10000, 100000}
	if *quick {
		sizes = []int{1, 10000}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Scale (imagelb /api/v1/proxy, wrk -c32, random image per request)\n\n")
	b.WriteString("| images | containers | req/s | p99 ms | req/s vs 1 image | registrations/s | RSS MiB | KiB per container |\n|---|---|---|---|---|---|---|---|\n")
	registered := 1 // the static service
	baseRSS := rss(caddyPID)
	var base float64
	for _, n := range sizes {
		start := time.Now()
		if err := registerImages(registered+1, n+1); err != nil {
			return "", err
		}
		regRate := float64(n+1-registered-1) / time.Since(start).Seconds()
		if n+1-registered-1 <= 0 {
			regRate = 0
		}
		registered = max(registered, n)
		script := filepath.Join(e.dir, fmt.Sprintf("random-%d.lua", n))
		lua := fmt.Sprintf("math.randomseed(42)\nrequest = function()\n  return wrk.format(nil, \"/api/v1/proxy/\" .. math.random(1, %d) .. \"/\")\nend\n", n)
		if err := os.WriteFile(script, []byte(lua), 0o644); err != nil {
			return "", err
		}
		var res []result
		for r := 0; r < *rounds; r++ {
			x, err := wrk(fmt.Sprintf("http://127.0.0.1:%d", imagelbPort), 32, caddyPID, script)
			if err != nil {
				return "", err
			}
			res = append(res, x)
		}
		m := median(res)
		if base == 0 {
			base = m.rps
		}
		mem := rss(caddyPID)
		perContainer := 0.0
		if n > 1 {
			perContainer = float64(mem-baseRSS) / 1024 / float64(2*n)
		}
		regCell := "–"
		if regRate > 0 {
			regCell = fmt.Sprintf("%.0f", regRate)
		}
		fmt.Fprintf(&b, "| %d | %d | %.0f | %.2f | %.2f | %s | %.0f | %.1f |\n", n, 2*n, m.rps, m.p99, m.rps/base, regCell, float64(mem)/1024/1024, perContainer)
		log.Printf("scale %d images: %.0f req/s, p99 %.2f ms", n, m.rps, m.p99)
	}
	b.WriteString("\nRegistrations go through the admin endpoint, 16 at a time, persistence off (see the registry's Go benchmarks for persistence on).\n")
	return b.String(), nil
}

// registerImages registers images [from, to) with the two backends.
func registerImages(from, to int) error {
	if from >= to {
		return nil
	}
	ids := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				body := `[{"container_id":"a","port":` + strings.Split(benchBackends[0], ":")[1] + `},{"container_id":"b","port":` + strings.Split(benchBackends[1], ":")[1] + `}]`
				resp, err := client.Post(fmt.Sprintf("http://localhost:%d/imagelb/services/%d/register?image_name=img%d", adminPort, id, id), "application/json", strings.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("register %d: %d", id, resp.StatusCode)
					return
				}
			}
		}()
	}
	for id := from; id < to; id++ {
		select {
		case err := <-errs:
			close(ids)
			return err
		case ids <- id:
		}
	}
	close(ids)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

var benchBackends []string

var (
	reqPerSec = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	latLine   = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)`)
	totalReqs = regexp.MustCompile(`(\d+) requests in`)
)

// wrk runs one load and reads requests/s, p50, p99 and the proxy's CPU.
func wrk(url string, conns, pid int, script string) (result, error) {
	args := []string{"-t1", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%s", *duration), "--latency"}
	if script != "" {
		args = append(args, "-s", script)
	}
	args = append(args, url)
	cpu0 := cpuSeconds(pid)
	out, err := exec.Command("wrk", args...).CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	cpu := cpuSeconds(pid) - cpu0
	var r result
	if m := reqPerSec.FindSubmatch(out); m != nil {
		r.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	for _, m := range latLine.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(m[2]), 64)
		switch string(m[3]) {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		if string(m[1]) == "50" {
			r.p50 = v
		} else {
			r.p99 = v
		}
	}
	if m := totalReqs.FindSubmatch(out); m != nil && pid != 0 {
		n, _ := strconv.ParseFloat(string(m[1]), 64)
		if n > 0 {
			r.cpuPer10k = cpu / n * 10000
		}
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "Non-2xx") || strings.Contains(line, "Socket errors") {
			log.Printf("warning: %s: %s", url, strings.TrimSpace(line))
			r.errors = true
		}
	}
	return r, nil
}

// cpuSeconds is the user+system CPU time of a process and its children
// (nginx workers), from /proc.
func cpuSeconds(pid int) float64 {
	if pid == 0 {
		return 0
	}
	total := 0.0
	pids := append([]int{pid}, children(pid)...)
	for _, p := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
		utime, _ := strconv.ParseFloat(fields[11], 64)
		stime, _ := strconv.ParseFloat(fields[12], 64)
		total += (utime + stime) / 100 // USER_HZ
	}
	return total
}

func children(pid int) []int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(data)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// rss is the resident memory of a process in bytes.
func rss(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func median(rs []result) result {
	pick := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return result{
		rps:       pick(func(r result) float64 { return r.rps }),
		p50:       pick(func(r result) float64 { return r.p50 }),
		p99:       pick(func(r result) float64 { return r.p99 }),
		cpuPer10k: pick(func(r result) float64 { return r.cpuPer10k }),
	}
}

func table(rows []row) string {
	var stock, nginx result
	for _, r := range rows {
		switch r.name {
		case "caddy reverse_proxy (defaults)":
			stock = r.res
		case "nginx upstream keepalive":
			nginx = r.res
		}
	}
	var b strings.Builder
	b.WriteString("| target | req/s | p50 ms | p99 ms | CPU s / 10k req | req/s vs caddy | req/s vs nginx | p99 vs caddy | CPU vs caddy |\n|---|---|---|---|---|---|---|---|---|\n")
	ratio := func(a, b float64) string {
		if a == 0 || b == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	for _, r := range rows {
		cpu := "–"
		if r.res.cpuPer10k > 0 {
			cpu = fmt.Sprintf("%.3f", r.res.cpuPer10k)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.2f | %.2f | %s | %s | %s | %s | %s |\n", r.name, r.res.rps, r.res.p50, r.res.p99, cpu,
			ratio(r.res.rps, stock.rps), ratio(r.res.rps, nginx.rps), ratio(r.res.p99, stock.p99), ratio(r.res.cpuPer10k, stock.cpuPer10k))
	}
	return b.String()
}

func machine() string {
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	version := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		return strings.TrimSpace(firstLines(out))
	}
	return fmt.Sprintf("Machine: %d cores, %s; %s. Versions: Caddy v2.11.9 (this module's go.mod), %s, %s, %s, %s. Date: %s.\n",
		runtime.NumCPU(), cpu, "loopback only", runtime.Version(), version("nginx", "-v"), version("haproxy", "-v"), version("wrk", "-v"),
		time.Now().UTC().Format("2006-01-02"))
}

func firstLines(b []byte) string {
	s := string(b)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// ensureTools installs the Debian packages of missing commands.
func ensureTools(names ...string) error {
	var missing []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	log.Printf("installing %v from Debian ...", missing)
	for _, args := range [][]string{{"update", "-qq"}, append([]string{"install", "-y", "-qq"}, missing...)} {
		cmd := exec.Command("apt-get", args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("apt-get %v: %v (run as root, or install %v)", args, err, missing)
		}
	}
	return nil
}

func (e *env) start(name string, args ...string) (*exec.Cmd, error) {
	return e.startEnv(nil, name, args...)
}

func (e *env) startEnv(extraEnv []string, name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	// keep what the programs say, to look into errors wrk reports
	if logs, err := os.Create(filepath.Join(os.TempDir(), "imagelb-bench-"+filepath.Base(name)+".log")); err == nil {
		cmd.Stdout, cmd.Stderr = logs, logs
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	e.procs = append(e.procs, cmd)
	return cmd, nil
}

func stop(cmd *exec.Cmd) {
	if cmd.Process != nil {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
		}
	}
}

func (e *env) stopAll() {
	for _, c := range e.procs {
		if c.ProcessState == nil {
			stop(c)
		}
	}
}

func waitHTTP(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer 200", url)
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
