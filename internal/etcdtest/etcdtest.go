// Package etcdtest runs real etcd servers, in-process (etcd's embed
// package), for the tests of the etcd store and of the plugin's cluster
// mode: a one- or three-member cluster on loopback ports, whose members a
// test stops and restarts.
package etcdtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

// ProgressNotifyInterval is the servers' watch progress notification
// interval (etcd's default is 10 minutes). etcd keeps it in a process-wide
// variable, so every cluster of a test binary has the same one.
const ProgressNotifyInterval = 250 * time.Millisecond

// readyTimeout bounds a member's start.
const readyTimeout = 30 * time.Second

// Cluster is a running etcd cluster.
type Cluster struct {
	t       testing.TB
	token   string
	initial string // the initial-cluster flag
	tweak   func(*embed.Config)
	logger  *zap.Logger

	mu      sync.Mutex
	members []*member
	client  *clientv3.Client
}

type member struct {
	name      string
	dir       string
	clientURL url.URL // the proxy's: what clients use
	serverURL url.URL // where the member serves clients
	peerURL   url.URL
	etcd      *embed.Etcd // nil: stopped
	proxy     *proxy
}

// Start starts a cluster of members (1 or 3, say) and waits until it
// serves. It is stopped when the test ends.
func Start(t testing.TB, members int) *Cluster {
	t.Helper()
	return StartConfig(t, members, nil)
}

// StartConfig is Start with each member's configuration passed to tweak
// before it starts.
func StartConfig(t testing.TB, members int, tweak func(*embed.Config)) *Cluster {
	t.Helper()
	if members < 1 {
		t.Fatalf("etcdtest: %d members", members)
	}
	dir := t.TempDir()
	c := &Cluster{t: t, token: fmt.Sprintf("etcdtest-%d", time.Now().UnixNano()), tweak: tweak}
	var initial []string
	for i := range members {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			dir:       filepath.Join(dir, fmt.Sprintf("m%d", i)),
			clientURL: url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))},
			serverURL: url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))},
			peerURL:   url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))},
		}
		m.proxy = &proxy{addr: m.clientURL.Host, target: m.serverURL.Host}
		c.members = append(c.members, m)
		initial = append(initial, m.name+"="+m.peerURL.String())
	}
	c.initial = strings.Join(initial, ",")
	c.logger = testLogger(t)
	t.Cleanup(c.close)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.members {
		c.start(i)
	}
	c.wait(allIndexes(members)...)
	return c
}

func allIndexes(n int) []int {
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	return all
}

func (c *Cluster) config(m *member) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cfg.ListenClientUrls = []url.URL{m.serverURL}
	cfg.AdvertiseClientUrls = []url.URL{m.clientURL}
	cfg.ListenPeerUrls = []url.URL{m.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{m.peerURL}
	cfg.InitialCluster = c.initial
	cfg.InitialClusterToken = c.token
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(c.logger.Named(m.name))
	// Faster elections than etcd's defaults (100ms, 1s), still safe on a
	// loaded test machine; leases of 1 s and more are honoured.
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	cfg.UnsafeNoFsync = true
	cfg.WatchProgressNotifyInterval = ProgressNotifyInterval
	if c.tweak != nil {
		c.tweak(cfg)
	}
	return cfg
}

// start starts member i without waiting for it; c.mu is held.
func (c *Cluster) start(i int) {
	c.t.Helper()
	m := c.members[i]
	if m.etcd != nil {
		return
	}
	e, err := embed.StartEtcd(c.config(m))
	if err != nil {
		c.t.Fatalf("etcdtest: starting %s: %v", m.name, err)
	}
	m.etcd = e
	if err := m.proxy.start(); err != nil {
		c.t.Fatalf("etcdtest: %s: %v", m.name, err)
	}
}

// wait waits until the members are ready; c.mu is held.
func (c *Cluster) wait(indexes ...int) {
	c.t.Helper()
	deadline := time.After(readyTimeout)
	for _, i := range indexes {
		m := c.members[i]
		select {
		case <-m.etcd.Server.ReadyNotify():
		case err := <-m.etcd.Err():
			c.t.Fatalf("etcdtest: %s failed: %v", m.name, err)
		case <-deadline:
			c.t.Fatalf("etcdtest: %s not ready after %s", m.name, readyTimeout)
		}
	}
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL.String()
	}
	return eps
}

// Endpoint is member i's client URL.
func (c *Cluster) Endpoint(i int) string { return c.members[i].clientURL.String() }

// Stop stops member i (a no-op if it is stopped).
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stop(i)
}

// stop cuts the member's client connections at once, as a crash would
// (etcd's own Close waits up to 6 s for open watch streams), then stops
// it; c.mu is held.
func (c *Cluster) stop(i int) {
	m := c.members[i]
	m.proxy.stop()
	if m.etcd != nil {
		m.etcd.Close()
		m.etcd = nil
	}
}

// Disconnect cuts the clients off member i, which goes on running in the
// cluster (a partition between the clients and one member), until
// Reconnect.
func (c *Cluster) Disconnect(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.members[i].proxy.stop()
}

// Reconnect lets clients reach member i again.
func (c *Cluster) Reconnect(i int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.members[i].proxy.start(); err != nil {
		c.t.Fatalf("etcdtest: %s: %v", c.members[i].name, err)
	}
}

// Restart starts member i again, on its data, and waits until it is
// ready, which takes a quorum: with every member stopped, use RestartAll.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.start(i)
	c.wait(i)
}

// StopAll stops every member, all at once.
func (c *Cluster) StopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopAll()
}

// stopAll stops the followers together, then the leader: a leader that
// stops hands its leadership over first, and waits up to 6 s for a
// follower that is stopping too.
func (c *Cluster) stopAll() {
	for _, m := range c.members {
		m.proxy.stop()
	}
	var wg sync.WaitGroup
	var leaders []int
	for i, m := range c.members {
		if m.etcd != nil && m.etcd.Server.Leader() == m.etcd.Server.MemberID() {
			leaders = append(leaders, i)
			continue
		}
		wg.Go(func() { c.stop(i) })
	}
	wg.Wait()
	for _, i := range leaders {
		c.stop(i)
	}
}

// RestartAll starts every stopped member and waits until all are ready.
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
	if c.client == nil {
		cli, err := NewClient(c.Endpoints())
		if err != nil {
			c.t.Fatalf("etcdtest: client: %v", err)
		}
		c.client = cli
	}
	return c.client
}

// NewClient is a quiet client of endpoints, as a test's cluster makes
// (this package's, and internal/etcdproc's).
func NewClient(endpoints []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
}

// Revision is the cluster's current revision.
func (c *Cluster) Revision() int64 {
	c.t.Helper()
	rev, err := Revision(c.Client())
	if err != nil {
		c.t.Fatalf("etcdtest: revision: %v", err)
	}
	return rev
}

// Revision asks cli for its cluster's current revision.
func Revision(cli *clientv3.Client) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "\x00", clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// Compact compacts the history up to rev (0: the current revision), as
// etcd's auto-compaction would, and returns rev.
func (c *Cluster) Compact(rev int64) int64 {
	c.t.Helper()
	if rev == 0 {
		rev = c.Revision()
	}
	if err := Compact(c.Client(), rev); err != nil {
		c.t.Fatalf("etcdtest: compact %d: %v", rev, err)
	}
	return rev
}

// Compact compacts cli's cluster up to rev, physically, as etcd's
// auto-compaction does.
func Compact(cli *clientv3.Client, rev int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical())
	return err
}

// Snapshot saves a snapshot of the leader's (or, with none, the first
// running member's) data to path, as `etcdctl snapshot save` does, and
// returns the revision it holds.
func (c *Cluster) Snapshot(path string) int64 {
	c.t.Helper()
	i := c.Leader()
	c.mu.Lock()
	for j, m := range c.members {
		if i < 0 && m.etcd != nil {
			i = j
		}
	}
	if i < 0 {
		c.mu.Unlock()
		c.t.Fatalf("etcdtest: snapshot: no member runs")
	}
	ep := c.members[i].serverURL.String()
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A write's answer comes once the member that took it has applied it;
	// another member (the leader too) may apply it later. A linearizable
	// read through the member waits until it has applied everything
	// committed before it, so the snapshot holds every acknowledged write.
	cfg := clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	cli, err := clientv3.New(cfg)
	if err != nil {
		c.t.Fatalf("etcdtest: snapshot: %v", err)
	}
	_, err = cli.Get(ctx, "etcdtest-snapshot-barrier")
	cli.Close()
	if err != nil {
		c.t.Fatalf("etcdtest: snapshot: a read through %s: %v", ep, err)
	}
	mgr := snapshot.NewV3(zap.NewNop())
	if _, err := mgr.Save(ctx, cfg, path); err != nil {
		c.t.Fatalf("etcdtest: snapshot save: %v", err)
	}
	st, err := mgr.Status(path)
	if err != nil {
		c.t.Fatalf("etcdtest: snapshot status: %v", err)
	}
	return st.Revision
}

// RestoreAll stops every member, restores each one's data directory from
// the snapshot at path, and starts the cluster again, as an operator
// restores a backup: a new cluster (a new token, so new member and cluster
// IDs) on the same URLs. It is RestoreWith(path, RestoreOptions{Bump: bump}). With bump > 0 the restored revision is raised by
// bump and marked compacted, as `etcdutl snapshot restore --bump-revision
// --mark-compacted` does, so that watches from before fail with
// ErrCompacted; with 0 it is the snapshot's own, as etcd 3.4's `etcdctl
// snapshot restore` leaves it: the revision goes back. It returns the
// restored revision, before any write.
func (c *Cluster) RestoreAll(path string, bump int64) int64 {
	c.t.Helper()
	return c.RestoreWith(path, RestoreOptions{Bump: bump})
}

// RestoreOptions say how RestoreWith restores.
type RestoreOptions struct {
	Bump int64 // RestoreAll's bump
	// SameToken restores with the token the cluster has: the same member
	// IDs and cluster ID as before, as an operator who passes the
	// --initial-cluster-token the cluster was created with gets. Nothing
	// in a response then says that the cluster is another.
	SameToken bool
}

// RestoreWith is RestoreAll with options.
func (c *Cluster) RestoreWith(path string, opts RestoreOptions) int64 {
	c.t.Helper()
	bump := opts.Bump
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopAll()
	mgr := snapshot.NewV3(zap.NewNop())
	st, err := mgr.Status(path)
	if err != nil {
		c.t.Fatalf("etcdtest: snapshot status: %v", err)
	}
	if !opts.SameToken {
		c.token = fmt.Sprintf("etcdtest-restored-%d", time.Now().UnixNano())
	}
	for _, m := range c.members {
		if err := os.RemoveAll(m.dir); err != nil {
			c.t.Fatalf("etcdtest: %s: %v", m.name, err)
		}
		err := mgr.Restore(snapshot.RestoreConfig{
			SnapshotPath:        path,
			Name:                m.name,
			OutputDataDir:       m.dir,
			PeerURLs:            []string{m.peerURL.String()},
			InitialCluster:      c.initial,
			InitialClusterToken: c.token,
			RevisionBump:        uint64(bump),
			MarkCompacted:       bump > 0,
		})
		if err != nil {
			c.t.Fatalf("etcdtest: restoring %s: %v", m.name, err)
		}
	}
	for i := range c.members {
		c.start(i)
	}
	c.wait(allIndexes(len(c.members))...)
	return st.Revision + bump
}

func (c *Cluster) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		c.client.Close()
		c.client = nil
	}
	c.stopAll()
}

// testLogger logs the servers' errors to the test's log (shown when it
// fails, or with -v), but not the ones every stop logs, nor after the test.
func testLogger(t testing.TB) *zap.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop) // registered before the cluster's: runs after it
	enc := zap.NewDevelopmentEncoderConfig()
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(w), zapcore.ErrorLevel)
	return zap.New(core)
}

type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if strings.Contains(line, "use of closed network connection") || strings.Contains(line, "server closed") ||
		strings.Contains(line, "Server closed") {
		return len(p), nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(line)
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// proxy forwards a member's client connections, so that a stop cuts them
// at once.
type proxy struct {
	addr, target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// start listens, if it does not already.
func (p *proxy) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", p.addr, err)
	}
	p.ln = ln
	p.conns = map[net.Conn]struct{}{}
	p.wg.Add(1)
	go p.accept(ln)
	return nil
}

func (p *proxy) accept(ln net.Listener) {
	defer p.wg.Done()
	for {
		client, err := ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		if p.ln != ln { // stopped meanwhile
			p.mu.Unlock()
			client.Close()
			server.Close()
			return
		}
		p.conns[client], p.conns[server] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		go pipe(server, client)
		go pipe(client, server)
	}
}

// stop closes the listener and every connection, and waits for them.
func (p *proxy) stop() {
	p.mu.Lock()
	if p.ln == nil {
		p.mu.Unlock()
		return
	}
	p.ln.Close()
	p.ln = nil
	for conn := range p.conns {
		conn.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// Leader is the index of the member that leads, or -1 when none of the
// running members knows a leader.
func (c *Cluster) Leader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.members {
		if m.etcd != nil && m.etcd.Server.Leader() == m.etcd.Server.MemberID() {
			return i
		}
	}
	return -1
}

// Proxy forwards TCP connections from one address to another, like the
// proxy in front of each member: a test puts one between a client (a Caddy
// node, say) and a member, and Stop cuts that client alone off the member.
type Proxy struct{ p *proxy }

// NewProxy returns a proxy that will listen on addr and forward to target;
// it forwards only after Start.
func NewProxy(addr, target string) *Proxy {
	return &Proxy{p: &proxy{addr: addr, target: target}}
}

// Start listens, if the proxy does not already.
func (x *Proxy) Start() error { return x.p.start() }

// Stop closes the listener and every forwarded connection.
func (x *Proxy) Stop() { x.p.stop() }

// Addr is the address the proxy listens on.
func (x *Proxy) Addr() string { return x.p.addr }
