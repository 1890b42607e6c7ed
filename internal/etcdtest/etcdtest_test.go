package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestRestoreAll: a cluster restored from a snapshot holds the snapshot's
// data and nothing written after it; without a bump its revision is the
// snapshot's, with one it is raised and a watch from before is compacted.
func TestRestoreAll(t *testing.T) {
	for _, bump := range []int64{0, 1_000_000} {
		t.Run(fmt.Sprintf("bump %d", bump), func(t *testing.T) {
			c := Start(t, 3)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cli := c.Client()
			if _, err := cli.Put(ctx, "a", "1"); err != nil {
				t.Fatal(err)
			}
			snap := filepath.Join(t.TempDir(), "snap.db")
			rev := c.Snapshot(snap)
			for i := range 5 {
				if _, err := cli.Put(ctx, "b", fmt.Sprint(i)); err != nil {
					t.Fatal(err)
				}
			}
			before := c.Revision()
			if got := c.RestoreAll(snap, bump); got != rev+bump {
				t.Fatalf("restored revision %d, want %d", got, rev+bump)
			}
			resp, err := cli.Get(ctx, "", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			if resp.Header.Revision != rev+bump || len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != "a" {
				t.Fatalf("after the restore: revision %d, keys %v; want revision %d and key a alone", resp.Header.Revision, resp.Kvs, rev+bump)
			}
			_, err = cli.Get(ctx, "a", clientv3.WithRev(before))
			if bump > 0 && !errors.Is(err, rpctypes.ErrCompacted) {
				t.Fatalf("a read at the old revision %d after a bumped restore: %v, want compacted", before, err)
			}
			if _, err := cli.Put(ctx, "c", "1"); err != nil {
				t.Fatalf("a write after the restore: %v", err)
			}
		})
	}
}
