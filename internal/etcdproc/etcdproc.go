// Package etcdproc runs an etcd cluster's members as separate processes on
// loopback, for the tests and chaos histories that kill a member with
// SIGKILL (kill -9) instead of closing it in-process as internal/etcdtest
// does. The binary is any etcd server given by path: the one Build makes
// from ./etcd (etcd's own main, of the version this module requires), or
// Debian's /usr/bin/etcd (package etcd-server, 3.4). The cluster has the
// methods of etcdtest.Cluster, so a test picks either.
package etcdproc

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

// ReadyTimeout bounds a member's start: on a loaded two-core machine an
// etcd process has taken tens of seconds to serve.
const ReadyTimeout = 120 * time.Second

// Build builds etcd's server (./etcd, the module's etcd version) into dir
// and returns its path; root is the module's root.
func Build(root, dir string) (string, error) {
	bin := filepath.Join(dir, "etcd")
	build := exec.Command("go", "build", "-o", bin, "./internal/etcdproc/etcd")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building etcd: %v\n%s", err, out)
	}
	return bin, nil
}

// Version is what `bin --version` says of the server's version ("3.4.23").
func Version(bin string) (string, error) {
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %v\n%s", bin, err, out)
	}
	m := regexp.MustCompile(`etcd Version: (\d+\.\d+\.\d+)`).FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s --version says no version:\n%s", bin, out)
	}
	return string(m[1]), nil
}

// Cluster is a running etcd cluster of processes.
type Cluster struct {
	t       testing.TB
	bin     string
	version string
	flags   []string // the flags every member has, past its own
	dir     string

	mu      sync.Mutex
	members []*member
	client  *clientv3.Client
}

type member struct {
	name, dir, log string
	clientURL      string // the proxy's: what clients use
	serverURL      string // where the process serves clients
	peerURL        string
	proxy          *etcdtest.Proxy
	cmd            *exec.Cmd     // nil: stopped
	done           chan struct{} // closed when cmd has exited
}

// Start starts a cluster of members (1 or 3, say) of the etcd binary bin
// and waits until each serves. It is killed when the test ends. Each
// member's log is in the test's temporary directory and its end is quoted
// when a member does not start.
func Start(t testing.TB, bin string, members int) *Cluster {
	t.Helper()
	if members < 1 {
		t.Fatalf("etcdproc: %d members", members)
	}
	version, err := Version(bin)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &Cluster{t: t, bin: bin, version: version, dir: dir}
	var initial []string
	for i := range members {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			dir:       filepath.Join(dir, fmt.Sprintf("m%d", i)),
			log:       filepath.Join(dir, fmt.Sprintf("m%d.log", i)),
			clientURL: fmt.Sprintf("http://127.0.0.1:%d", testkit.FreePort(t)),
			serverURL: fmt.Sprintf("http://127.0.0.1:%d", testkit.FreePort(t)),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", testkit.FreePort(t)),
		}
		m.proxy = etcdtest.NewProxy(strings.TrimPrefix(m.clientURL, "http://"), strings.TrimPrefix(m.serverURL, "http://"))
		c.members = append(c.members, m)
		initial = append(initial, m.name+"="+m.peerURL)
	}
	c.flags = append([]string{
		"--initial-cluster", strings.Join(initial, ","),
		"--initial-cluster-token", fmt.Sprintf("etcdproc-%d", time.Now().UnixNano()),
		"--initial-cluster-state", "new",
		// the elections of etcdtest's members: faster than etcd's
		// defaults (100ms, 1s), still safe on a loaded machine
		"--heartbeat-interval", "50",
		"--election-timeout", "500",
		"--logger", "zap",
		"--log-outputs", "stderr",
		"--log-level", "warn",
	}, versionFlags(version)...)
	t.Cleanup(c.close)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.members {
		c.start(i)
	}
	c.wait(allIndexes(members)...)
	return c
}

// versionFlags are the flags whose names changed between etcd versions:
// the watch progress notification interval (etcdtest's; 3.4 and 3.5 have
// only the experimental flag, 3.7 only the plain one) and skipping fsync
// (3.5 on; a 3.4 member syncs its writes).
func versionFlags(version string) []string {
	major, minor := 3, 7
	if f := strings.SplitN(version, ".", 3); len(f) >= 2 {
		major, _ = strconv.Atoi(f[0])
		minor, _ = strconv.Atoi(f[1])
	}
	interval := etcdtest.ProgressNotifyInterval.String()
	var flags []string
	if major == 3 && minor < 6 {
		flags = append(flags, "--experimental-watch-progress-notify-interval", interval)
	} else {
		flags = append(flags, "--watch-progress-notify-interval", interval)
	}
	if major > 3 || minor >= 5 {
		flags = append(flags, "--unsafe-no-fsync")
	}
	return flags
}

func allIndexes(n int) []int {
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	return all
}

// Version is the members' etcd version.
func (c *Cluster) Version() string { return c.version }

// start starts member i's process, on its data directory, without waiting
// for it; c.mu is held.
func (c *Cluster) start(i int) {
	c.t.Helper()
	m := c.members[i]
	if m.cmd != nil {
		return
	}
	logs, err := os.OpenFile(m.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	args := append([]string{
		"--name", m.name,
		"--data-dir", m.dir,
		"--listen-client-urls", m.serverURL,
		"--advertise-client-urls", m.clientURL,
		"--listen-peer-urls", m.peerURL,
		"--initial-advertise-peer-urls", m.peerURL,
	}, c.flags...)
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logs, logs
	// a member must not outlive the test process if it dies unclean
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logs.Close()
		c.t.Fatalf("etcdproc: starting %s: %v", m.name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logs.Close(); close(done) }()
	m.cmd, m.done = cmd, done
	if err := m.proxy.Start(); err != nil {
		c.t.Fatalf("etcdproc: %s: %v", m.name, err)
	}
}

// wait waits until the members serve (their /health says true, which takes
// a leader); c.mu is held.
func (c *Cluster) wait(indexes ...int) {
	c.t.Helper()
	deadline := time.Now().Add(ReadyTimeout)
	hc := &http.Client{Timeout: 5 * time.Second}
	for _, i := range indexes {
		m := c.members[i]
		for {
			select {
			case <-m.done:
				c.t.Fatalf("etcdproc: %s (etcd %s) exited at start; the end of its log:\n%s", m.name, c.version, logTail(m.log))
			default:
			}
			if healthy(hc, m.serverURL) {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("etcdproc: %s (etcd %s) not ready after %s; the end of its log:\n%s", m.name, c.version,
					ReadyTimeout, logTail(m.log))
			}
			time.Sleep(20 * time.Millisecond) // polling until the member serves
		}
	}
}

// healthy reports whether the member at url says it is healthy.
func healthy(hc *http.Client, url string) bool {
	resp, err := hc.Get(url + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var b [256]byte
	n, _ := resp.Body.Read(b[:])
	return resp.StatusCode == 200 && strings.Contains(string(b[:n]), `"health":"true"`)
}

// logTail is the last lines of a member's log.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	lines = lines[max(0, len(lines)-12):]
	for i, l := range lines {
		if len(l) > 400 {
			lines[i] = l[:400] + "…"
		}
	}
	return "\t" + strings.Join(lines, "\n\t")
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL
	}
	return eps
}

// Endpoint is member i's client URL.
func (c *Cluster) Endpoint(i int) string { return c.members[i].clientURL }

// Stop kills member i with SIGKILL (no shutdown code of etcd runs) and
// waits for the process to be gone; a no-op if it is stopped.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.kill(i)
}

// kill kills member i's process and cuts its clients off; c.mu is held.
func (c *Cluster) kill(i int) {
	m := c.members[i]
	if m.cmd != nil {
		m.cmd.Process.Kill() // SIGKILL
		<-m.done
		m.cmd = nil
	}
	m.proxy.Stop()
}

// Disconnect cuts the clients off member i, which goes on running in the
// cluster, until Reconnect.
func (c *Cluster) Disconnect(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.members[i].proxy.Stop()
}

// Reconnect lets clients reach member i again.
func (c *Cluster) Reconnect(i int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.members[i].proxy.Start(); err != nil {
		c.t.Fatalf("etcdproc: %s: %v", c.members[i].name, err)
	}
}

// Restart starts member i's process again on its data directory and waits
// until it serves, which takes a quorum: with every member killed, use
// RestartAll.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.start(i)
	c.wait(i)
}

// StopAll kills every member with SIGKILL, all at once.
func (c *Cluster) StopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.killAll()
}

func (c *Cluster) killAll() {
	for _, m := range c.members {
		if m.cmd != nil {
			m.cmd.Process.Kill()
		}
	}
	for i := range c.members {
		c.kill(i)
	}
}

// RestartAll starts every killed member and waits until all serve.
func (c *Cluster) RestartAll() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.members {
		c.start(i)
	}
	c.wait(allIndexes(len(c.members))...)
}

// Client is a client of the whole cluster, closed when the test ends.
func (c *Cluster) Client() *clientv3.Client {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clientLocked()
}

func (c *Cluster) clientLocked() *clientv3.Client {
	if c.client == nil {
		cli, err := etcdtest.NewClient(c.Endpoints())
		if err != nil {
			c.t.Fatalf("etcdproc: client: %v", err)
		}
		c.client = cli
	}
	return c.client
}

// Revision is the cluster's current revision.
func (c *Cluster) Revision() int64 {
	c.t.Helper()
	rev, err := etcdtest.Revision(c.Client())
	if err != nil {
		c.t.Fatalf("etcdproc: revision: %v", err)
	}
	return rev
}

// Compact compacts the history up to rev (0: the current revision), as
// etcd's auto-compaction would, and returns rev.
func (c *Cluster) Compact(rev int64) int64 {
	c.t.Helper()
	if rev == 0 {
		rev = c.Revision()
	}
	if err := etcdtest.Compact(c.Client(), rev); err != nil {
		c.t.Fatalf("etcdproc: compact %d: %v", rev, err)
	}
	return rev
}

// Leader is the index of the member that leads, or -1 when none of the
// running members says it does.
func (c *Cluster) Leader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	cli := c.clientLocked()
	for i, m := range c.members {
		if m.cmd == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := cli.Status(ctx, m.serverURL)
		cancel()
		if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
			return i
		}
	}
	return -1
}

// Log is the end of member i's log.
func (c *Cluster) Log(i int) string { return logTail(c.members[i].log) }

func (c *Cluster) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		c.client.Close()
		c.client = nil
	}
	c.killAll()
}
