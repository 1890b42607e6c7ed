package etcdproc

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestRequestedProgressAfterEvents: a progress notification that a client
// requested (RequestProgress) comes after every event up to its revision,
// which etcdstore's watch relies on when it takes a notification's revision
// as delivered. A watch from an old revision is behind (its events come in
// batches) when the request is made; every event must come before a
// notification of a revision at or past it.
//
// etcd before 3.4.24 and 3.5.8 answered the request on the stream's
// control channel with the store's revision, ahead of events still to be
// sent (etcd-io/etcd#15220); Debian's etcd-server is 3.4.23.
func TestRequestedProgressAfterEvents(t *testing.T) {
	if testing.Short() {
		t.Skip("builds etcd and starts a process")
	}
	c := Start(t, etcdBinary(t), 1)
	t.Logf("etcd %s", c.Version())
	cli := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	first, err := cli.Put(ctx, "w/0", "v")
	if err != nil {
		t.Fatal(err)
	}
	const keys = 2000
	value := string(make([]byte, 1024))
	for i := 1; i < keys; i++ {
		if _, err := cli.Put(ctx, fmt.Sprintf("w/%d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 5 {
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := cli.Watch(wctx, "w/", clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision), clientv3.WithCreatedNotify())
		if resp := <-wch; !resp.Created {
			t.Fatalf("the watch's first response is not its creation: %+v", resp)
		}
		if err := cli.RequestProgress(wctx); err != nil {
			t.Fatal(err)
		}
		last := first.Header.Revision - 1 // the newest event received
		for last < first.Header.Revision+keys-1 {
			resp, ok := <-wch
			if !ok {
				t.Fatalf("round %d: the watch closed: %v", round, wctx.Err())
			}
			if resp.IsProgressNotify() {
				if rev := resp.Header.Revision; rev > last {
					t.Fatalf("round %d: a progress notification of revision %d came before the events after %d (up to %d)",
						round, rev, last, first.Header.Revision+keys-1)
				}
				continue
			}
			for _, ev := range resp.Events {
				last = ev.Kv.ModRevision
			}
		}
		wcancel()
	}
}
