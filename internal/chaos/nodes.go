// The Caddy nodes of a run: each a process of the built binary with its own
// proxies to the etcd members, started, killed with SIGKILL or signalled.

package chaos

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

type nodeRead struct {
	node      int
	epoch     int // the node's process: reads of one process must not go back
	call, ret int64
	images    map[int64]Image
}

// node is one Caddy node: a process of the built binary.
type node struct {
	name, dir, config string
	adm               string
	proxies           []*etcdtest.Proxy // its own way to each member
	epoch             atomic.Int64
	cmd               *exec.Cmd
	done              chan struct{}
}

// newNode writes node i's Caddyfile: the imagelb app on etcd through the
// node's own proxies, no health checks (a verdict would change the status
// a read shows), request_timeout 2s.
func (r *run) newNode(i int, backend int) *node {
	t := r.t
	n := &node{name: fmt.Sprintf("lb-%d", i+1), dir: t.TempDir(), done: make(chan struct{})}
	close(n.done)
	store := "store local"
	var eps []string
	for m := range 3 {
		if r.cfg.Local {
			break
		}
		target, err := url.Parse(r.etcd.Endpoint(m))
		if err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))
		p := etcdtest.NewProxy(addr, target.Host)
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Stop)
		n.proxies = append(n.proxies, p)
		eps = append(eps, "http://"+addr)
	}
	if !r.cfg.Local {
		store = fmt.Sprintf("store etcd {\n\t\t\tendpoints %s\n\t\t\trequest_timeout 2s\n\t\t\tdial_timeout 2s\n\t\t}",
			strings.Join(eps, " "))
	}
	admin, site := testkit.FreePort(t), testkit.FreePort(t)
	n.adm = fmt.Sprintf("http://127.0.0.1:%d/imagelb", admin)
	// the groups' contended external ports are served by a site of mapped
	// ports, on this node's own loopback address: only such ports (or
	// port_range's) may be mapped. Plain HTTP: as an HTTPS site it made
	// every start issue a certificate and install Caddy's root in the
	// system's trust store, which held the app's start for over 2 min on a
	// loaded machine (7 histories of 28 failed to start that way). Bound to
	// that address: on the wildcard, as a site address alone gives, the
	// nodes would share the ports, which a node refuses (a second process
	// on an address splits its connections)
	var mapped []string
	for g := range r.cfg.Groups {
		mapped = append(mapped, fmt.Sprintf("http://127.0.0.%d:%d", i+2, GroupPort(g)))
	}
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	imagelb {
		node_id %s
		health_interval 1h
		%s
	}
}

:%d {
	imagelb
}

%s {
	bind 127.0.0.%d
	imagelb {
		mapped_ports
	}
}
`, admin, n.name, store, site, strings.Join(mapped, ", "), i+2)
	n.config = filepath.Join(n.dir, "Caddyfile")
	if err := os.WriteFile(n.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return n
}

// startNode runs the node's process and waits until its API answers.
func (r *run) startNode(n *node) {
	r.t.Helper()
	logs, err := os.OpenFile(filepath.Join(n.dir, "caddy.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		r.t.Fatal(err)
	}
	cmd := exec.Command(r.bin, "run", "--config", n.config)
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+n.dir, "XDG_CONFIG_HOME="+n.dir)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logs.Close(); close(done) }()
	n.cmd, n.done = cmd, done
	n.epoch.Add(1)
	// generous: on a loaded 2-core machine a start (a build's worth of
	// other work beside it) has taken over 30 s
	deadline := time.Now().Add(startTimeout)
	last := "no answer" // the API's last answer, for the failure's message
	for {
		select {
		case <-done:
			r.t.Fatalf("%s exited at start; the end of its log:\n%s", n.name, logTail(filepath.Join(n.dir, "caddy.log")))
		default:
		}
		if resp, err := client.Get(n.adm + "/services"); err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s's API did not answer 200 within %s (its last answer: %s); the end of its log:\n%s", n.name,
				startTimeout, last, logTail(filepath.Join(n.dir, "caddy.log")))
		}
		time.Sleep(20 * time.Millisecond) // polling until the node serves
	}
}

// startTimeout is how long a node may take to serve its API after it is
// started.
const startTimeout = 120 * time.Second

// logTail is the last few lines of a node's log, for a harness failure's
// message (the history's directory is removed after it).
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	lines = lines[max(0, len(lines)-8):]
	for i, l := range lines {
		if len(l) > 400 {
			lines[i] = l[:400] + "…"
		}
	}
	return "\t" + strings.Join(lines, "\n\t")
}

// kill9 kills the node with SIGKILL (no shutdown code runs) and waits.
func (n *node) kill9() {
	if n.cmd != nil && n.cmd.Process != nil {
		n.cmd.Process.Kill()
		<-n.done
	}
}

func (n *node) signal(sig syscall.Signal) {
	if n.cmd != nil && n.cmd.Process != nil {
		n.cmd.Process.Signal(sig)
	}
}

func (r *run) killAll() {
	for _, n := range r.nodes {
		n.kill9()
	}
}
