package etcdstore

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"testing"
	"time"

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
