package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	host "github.com/imagelb/caddy-imagelb/bench/internal/machine"
)

// env is what one run starts: the temp dir, the binaries, the backends and
// every process (stopped by stopAll, whatever happens).
type env struct {
	dir      string
	caddy    string   // the xcaddy-built binary
	goproxy  string   // bench/goproxy, built
	self     string   // this program, re-run as a backend
	backends []string // host:port; [0] and [1] always serve, [2] is the one churn adds and removes
	cert     string   // the self-signed certificate for 127.0.0.1 (PEM), and its key
	key      string
	procs    []*exec.Cmd
}

// build makes the binaries: Caddy with the plugin through xcaddy (as
// production builds it: README, Build with xcaddy), unless -caddy names one,
// and the Go reference.
func (e *env) build() error {
	e.caddy = *caddyBin
	if e.caddy == "" {
		e.caddy = filepath.Join(e.dir, "caddy")
		log.Printf("building caddy %s with the plugin through xcaddy ...", caddyVersion)
		cmd := exec.Command("go", "tool", "xcaddy", "build", caddyVersion, "--with", module+"@v0.0.0=.", "--output", e.caddy)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("xcaddy build: %v\n%s", err, out)
		}
	}
	e.goproxy = filepath.Join(e.dir, "goproxy")
	if out, err := exec.Command("go", "build", "-o", e.goproxy, "./bench/goproxy").CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./bench/goproxy: %v\n%s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	e.self = self
	return nil
}

// startBackends starts n backends, each its own process.
func (e *env) startBackends(n int) error {
	for i := 0; i < n; i++ {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort())
		if _, err := e.start("backend", e.self, "-backend", addr); err != nil {
			return err
		}
		if err := waitHTTP("http://" + addr + "/"); err != nil {
			return err
		}
		e.backends = append(e.backends, addr)
	}
	return nil
}

// start runs a program in the background, its output in DIR/logs/NAME.log
// (kept until the end of the run to look into errors wrk reports).
func (e *env) start(name, prog string, args ...string) (*exec.Cmd, error) {
	return e.startEnv(nil, name, prog, args...)
}

func (e *env) startEnv(extraEnv []string, name, prog string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(prog, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	if err := os.MkdirAll(filepath.Join(e.dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	logs, err := os.OpenFile(filepath.Join(e.dir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		logs.Close()
		return nil, fmt.Errorf("starting %s: %v", name, err)
	}
	go func() { cmd.Wait(); logs.Close() }()
	e.procs = append(e.procs, cmd)
	return cmd, nil
}

func (e *env) stopAll() {
	for _, c := range e.procs {
		stop(c)
	}
}

// stop interrupts a process and kills it if it has not ended in 5 s.
func stop(cmd *exec.Cmd) {
	if cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	cmd.Process.Signal(os.Interrupt)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if cmd.Process.Signal(syscall.Signal(0)) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Kill()
}

func waitHTTP(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second, Transport: insecureTransport()}
	for ctx.Err() == nil {
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer 200 in 30 s", url)
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// cpuSeconds is the user+system CPU time of a process and its children
// (nginx's workers), from /proc.
func cpuSeconds(pid int) float64 {
	if pid == 0 {
		return 0
	}
	total := 0.0
	for _, p := range append([]int{pid}, children(pid)...) {
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

// machine is the line above every table: cores, CPU, versions, date.
func machine() string {
	cpu := host.CPUModel()
	version := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		s := string(out)
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[:i]
		}
		return strings.TrimSpace(s)
	}
	kernel := version("uname", "-r")
	return fmt.Sprintf("Machine: %d cores, %s, Linux %s; loopback only. Versions: Caddy %s (xcaddy, this module), %s, %s, %s, %s, %s. Date: %s.",
		runtime.NumCPU(), cpu, kernel, caddyVersion, runtime.Version(), version("nginx", "-v"),
		strings.TrimSuffix(version("haproxy", "-v"), " - https://haproxy.org/"), version("wrk", "-v"), version("h2load", "--version"),
		time.Now().UTC().Format("2006-01-02 15:04 MST"))
}

// loadAverage is /proc/loadavg's first three fields.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}

// commit is the checked-out commit, "+dirty" when the tree has changes.
func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); len(bytes.TrimSpace(st)) > 0 {
		c += "+dirty"
	}
	return c
}

// ensureTools installs the Debian packages of missing commands (as root).
func ensureTools(pkgOf map[string]string) error {
	var missing []string
	for cmd, pkg := range pkgOf {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, pkg)
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
