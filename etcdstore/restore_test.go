package etcdstore

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

// TestReListAfterRealRestore: etcd is restored from a snapshot taken
// before image 1 got container y and image 2 was registered, while the
// node is cut off from it. With a revision bump (etcdutl --bump-revision
// --mark-compacted) the node's watch finds its revision compacted; without
// (etcdctl 3.4) the revision went back, and, "overtaken", other writes take
// it past the node's before the node reconnects, so that nothing in the
// revision says it went back. In every case the node must become what
// etcd holds: image 1 as in the snapshot, no image 2; and go on working.
func TestReListAfterRealRestore(t *testing.T) {
	for _, tt := range []struct {
		name      string
		bump      int64
		overtaken bool
	}{
		{"bump", 1_000_000, false},
		{"no bump", 0, false},
		{"no bump, overtaken", 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := etcdtest.Start(t, 1)
			cut := etcdtest.NewProxy(fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t)), hostOf(t, c.Endpoint(0)))
			if err := cut.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(cut.Stop)
			n := startNode(t, []string{"http://" + cut.Addr()})
			register(t, n.reg, 1, "x")
			snap := filepath.Join(t.TempDir(), "snap.db")
			c.Snapshot(snap)
			register(t, n.reg, 1, "x", "y")
			register(t, n.reg, 2, "z")
			seen := c.Revision()
			testkit.Eventually(t, "the node's watch to reach etcd's revision", func() bool { return n.reg.Revision() >= seen })

			cut.Stop()
			rev := c.RestoreAll(snap, tt.bump)
			if tt.overtaken {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				for c.Revision() <= seen+5 {
					if _, err := c.Client().Put(ctx, "/elsewhere", "x"); err != nil {
						t.Fatal(err)
					}
				}
			}
			t.Logf("the node had seen revision %d; etcd restored to %d, now at %d", seen, rev, c.Revision())
			if err := cut.Start(); err != nil {
				t.Fatal(err)
			}
			testkit.Eventually(t, "the node to be what etcd holds: image 1 with x alone, no image 2", func() bool {
				return has(n.reg, 1, "x") && !has(n.reg, 1, "y") && n.reg.Lookup(2) == nil
			})
			if _, err := n.reg.PutContainer(1, ctr("w")); err != nil {
				t.Fatalf("a put after the restore: %v", err)
			}
			converged(t, c, 1, []string{"w", "x"}, n.reg)
			converged(t, c, 2, nil, n.reg)
		})
	}
}

// hostOf is the host:port of a URL.
func hostOf(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// TestReListAfterUnseenRestore: etcd is restored from a snapshot (etcdctl
// 3.4: no revision bump; the same cluster token: the same cluster ID)
// while the watch's probe looks away, as when the outage is shorter than
// the probe's interval, and nothing is written to the registry after. The
// client resumes the watch on the restored etcd, which sends it nothing:
// no event, no revision that went back, no other cluster ID. The node's
// heartbeat must notice: its key is not the one it last wrote (the lease
// kept: an older version of the key; the lease lost: the snapshot is from
// before the node joined). The node must re-list within a few heartbeats
// and become what etcd holds: image 1 as in the snapshot, no image 2.
func TestReListAfterUnseenRestore(t *testing.T) {
	for _, tt := range []struct {
		name            string
		leaseInSnapshot bool
	}{
		{"lease kept", true},
		{"lease lost", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := etcdtest.Start(t, 1)
			st := open(t, c.Endpoints(), bolt(t), func(cfg *Config) {
				cfg.LeaseTTL = 30 * time.Second // outlives the restore: the lease is kept or lost as the snapshot says
				cfg.HeartbeatInterval = 200 * time.Millisecond
			})
			st.probeEvery = time.Hour // the probe never sees the outage
			n := startNodeOn(t, st)
			register(t, n.reg, 1, "x")
			key := st.prefix + nodesDir + "lb-1"
			snap := filepath.Join(t.TempDir(), "snap.db")
			if !tt.leaseInSnapshot {
				c.Snapshot(snap)
			}
			join(t, st, Node{ID: "lb-1", Address: "10.0.0.1:2019"}, nil)
			testkit.Eventually(t, "the node's key", func() bool { return modRevision(t, c, key) > 0 })
			if tt.leaseInSnapshot {
				taken := c.Snapshot(snap)
				// A heartbeat after the snapshot: the restored key is older
				// than the node's last write.
				testkit.Eventually(t, "a heartbeat after the snapshot", func() bool { return modRevision(t, c, key) > taken })
			}
			register(t, n.reg, 1, "x", "y")
			register(t, n.reg, 2, "z")
			seen := c.Revision()
			testkit.Eventually(t, "the node's watch to reach etcd's revision", func() bool { return n.reg.Revision() >= seen })

			rev := c.RestoreWith(snap, etcdtest.RestoreOptions{SameToken: true})
			t.Logf("the node had seen revision %d; etcd restored to %d", seen, rev)
			testkit.Eventually(t, "the node to be what etcd holds: image 1 with x alone, no image 2", func() bool {
				return has(n.reg, 1, "x") && !has(n.reg, 1, "y") && n.reg.Lookup(2) == nil
			})
			if _, err := n.reg.PutContainer(1, ctr("w")); err != nil {
				t.Fatalf("a put after the restore: %v", err)
			}
			converged(t, c, 1, []string{"w", "x"}, n.reg)
			converged(t, c, 2, nil, n.reg)
		})
	}
}

// TestSameNodeIDTwice: two nodes with the same node_id write the same
// heartbeat key, each finding it is not the one it last wrote. Each must
// warn, naming the key, and both must go on working: every acknowledged
// write is in etcd and on both nodes.
func TestSameNodeIDTwice(t *testing.T) {
	c := etcdtest.Start(t, 1)
	var logs []*observer.ObservedLogs
	var nodes []*node
	for i := range 2 {
		st := open(t, c.Endpoints(), bolt(t), func(cfg *Config) {
			cfg.LeaseTTL = 3 * time.Second
			cfg.HeartbeatInterval = 100 * time.Millisecond
		})
		core, observed := observer.New(zapcore.WarnLevel)
		st.log = zap.New(zapcore.NewTee(st.log.Core(), core))
		logs = append(logs, observed)
		nodes = append(nodes, startNodeOn(t, st))
		join(t, st, Node{ID: "lb-1", Address: fmt.Sprintf("10.0.0.%d:2019", i+1)}, nil)
	}
	key := nodes[0].store.prefix + nodesDir + "lb-1"
	for i, observed := range logs {
		testkit.Eventually(t, fmt.Sprintf("node %d to warn about its heartbeat key", i), func() bool {
			for _, e := range observed.All() {
				if e.ContextMap()["key"] == key && strings.Contains(e.Message, "same node_id") {
					return true
				}
			}
			return false
		})
	}
	register(t, nodes[0].reg, 1, "x")
	waitHas(t, "1", nodes[1].reg, 1, "x")
	var wg sync.WaitGroup
	var mu sync.Mutex
	var want []string
	for i, n := range nodes {
		wg.Go(func() {
			for j := range 20 {
				id := fmt.Sprintf("n%d-%d", i, j)
				if _, err := n.reg.PutContainer(1, ctr(id)); err != nil {
					t.Errorf("node %d: put %s: %v", i, id, err)
					continue
				}
				mu.Lock()
				want = append(want, id)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	converged(t, c, 1, append(want, "x"), nodes[0].reg, nodes[1].reg)
}

// modRevision is the mod revision of key in etcd (0: none).
func modRevision(t *testing.T, c *etcdtest.Cluster, key string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Client().Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].ModRevision
}
