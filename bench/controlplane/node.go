// A Caddy node under measurement: the xcaddy-built binary with its
// Caddyfile, started, waited for and stopped; the HTTP client to its admin
// endpoint and the registration request.

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// node is one Caddy process and its data home.
type node struct {
	name    string // the configuration's name in the tables
	bin     string
	home    string // XDG_DATA_HOME and XDG_CONFIG_HOME
	admin   int
	store   string // the store line(s) of the imagelb block; "" the default
	nodeID  string
	cmd     *exec.Cmd     // the last process started
	exited  chan struct{} // closed when it has exited
	started time.Time
	logf    *os.File
	images  int // images the registry holds
	fill    fillInfo
}

type fillInfo struct {
	how     string
	took    time.Duration
	images  int // images written by the last fill
	load    time.Duration
	settle  time.Duration
	settled bool
}

func (b *bench) newNode(name string, size int, bin, store, nodeID string) (*node, error) {
	n := &node{name: name, bin: bin, store: store, nodeID: nodeID, admin: freePort()}
	n.home = filepath.Join(b.root, fmt.Sprintf("home-%s-%d", slug(name), size))
	nodesMu.Lock()
	allNodes = append(allNodes, n)
	nodesMu.Unlock()
	return n, os.MkdirAll(n.home, 0o700)
}

// allNodes are every node made, for the CPU of this run's processes.
var (
	nodesMu  sync.Mutex
	allNodes []*node
)

func (n *node) caddyfile() string {
	var opts strings.Builder
	opts.WriteString("\t\thealth_interval 1h\n")
	if n.nodeID != "" {
		fmt.Fprintf(&opts, "\t\tnode_id %s\n", n.nodeID)
	}
	if n.store != "" {
		fmt.Fprintf(&opts, "\t\t%s\n", n.store)
	}
	return fmt.Sprintf("{\n\tadmin localhost:%d\n\tlog default {\n\t\tlevel WARN\n\t}\n\timagelb {\n%s\t}\n}\n", n.admin, opts.String())
}

// startNode starts the node and waits until its registry is loaded (the
// image n.images answers) and the process is idle (the first round of
// health checks probes every container of a loaded registry).
func (n *node) startNode() error {
	var err error
	for range 3 {
		if err = n.startOnce(); err == nil || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		log.Printf("%s: its admin port was taken meanwhile: starting again on another", n.name)
		n.admin = freePort()
	}
	return err
}

func (n *node) startOnce() error {
	path := filepath.Join(n.home, "Caddyfile")
	if err := os.WriteFile(path, []byte(n.caddyfile()), 0o644); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(n.home, "caddy.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(n.bin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+n.home, "XDG_CONFIG_HOME="+n.home)
	cmd.Stdout, cmd.Stderr = logf, logf
	// killed with this process, however it ends
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	n.cmd, n.logf, n.exited, n.started = cmd, logf, make(chan struct{}), t0
	go func(done chan struct{}) { cmd.Wait(); close(done) }(n.exited)
	atExit(n.stop)
	path = "/imagelb/stats"
	if n.images > 0 {
		path = fmt.Sprintf("/imagelb/services/%d", n.images)
	}
	if err := n.waitOK(path, 5*time.Minute); err != nil {
		return fmt.Errorf("%s: %v\n%s", n.name, err, n.logTail())
	}
	n.fill.load = time.Since(t0)
	return nil
}

// stop stops the process, if it runs; safe to call again.
func (n *node) stop() {
	if n.cmd == nil {
		return
	}
	select {
	case <-n.exited:
		return
	default:
	}
	n.cmd.Process.Signal(os.Interrupt)
	select {
	case <-n.exited:
	case <-time.After(15 * time.Second):
		n.cmd.Process.Kill()
		<-n.exited
	}
	n.logf.Close()
}

func (n *node) pid() int { return n.cmd.Process.Pid }

func (n *node) logTail() string {
	data, _ := os.ReadFile(filepath.Join(n.home, "caddy.log"))
	if len(data) > 3000 {
		data = data[len(data)-3000:]
	}
	return string(data)
}

func (n *node) waitOK(path string, timeout time.Duration) error {
	c := newClient(n.admin)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-n.exited:
			return errors.New("caddy exited")
		default:
		}
		resp, err := c.Get(n.url(path))
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("GET %s did not answer 200 within %s", path, timeout)
}

func (n *node) url(path string) string { return fmt.Sprintf("http://localhost:%d%s", n.admin, path) }

// newClient is one keep-alive HTTP connection to an admin endpoint on
// 127.0.0.1 (the endpoint listens on localhost, which Go binds to IPv4).
func newClient(port int) *http.Client {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	d := &net.Dialer{}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp4", addr)
		},
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
	}}
}

// ports of image id's containers at registration seq (0: the fill): any
// port on 127.0.0.1, nothing listens there (health_interval 1h).
func ports(id int64, seq uint64) (int, int) {
	a := 20000 + int((uint64(id)+seq*7919)%20000)
	return a, a + 20000
}

func registerReq(n *node, id int64, pa, pb int) *http.Request {
	body := fmt.Sprintf(`[{"container_id":"a","port":%d},{"container_id":"b","port":%d}]`, pa, pb)
	req, _ := http.NewRequest(http.MethodPost, n.url(fmt.Sprintf("/imagelb/services/%d/register?image_name=img%d", id, id)), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	return req
}

func do(c *http.Client, req *http.Request) (int, error) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 500))
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", req.Method, req.URL.Path, resp.StatusCode, bytes.TrimSpace(body))
	}
	io.Copy(io.Discard, resp.Body)
	return 200, nil
}

// ---------------------------------------------------------------- fills
