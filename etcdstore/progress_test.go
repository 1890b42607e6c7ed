package etcdstore

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/etcdproc"
	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/internal/testkit"
	"github.com/imagelb/caddy-imagelb/registry"
)

// TestNoChangeSkippedAfterOutage: a store cut off from etcd while another
// node commits gets every one of those changes once it is back. Its watch
// resumes behind etcd, and while the store is degraded it asks etcd for a
// progress notification; etcd before 3.4.24 and 3.5.8 (Debian's
// etcd-server is 3.4.23) answers that request at once with its current
// revision, ahead of the events still to be sent (etcd-io/etcd#15220), and
// a watch that took the notification's revision as delivered skipped them.
// ETCD_BIN names the etcd binary (default: the module's, built; its
// requested notifications wait for the events), ETCD_ROUNDS the rounds
// (default 10; the race is lost about once in 30 rounds on 3.4.23).
func TestNoChangeSkippedAfterOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("runs etcd as a process")
	}
	bin := os.Getenv("ETCD_BIN")
	if bin == "" {
		var err error
		if bin, err = etcdproc.Build("..", t.TempDir()); err != nil {
			t.Fatal(err)
		}
	}
	c := etcdproc.Start(t, bin, 1)
	t.Logf("etcd %s", c.Version())
	addr := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))
	cut := etcdtest.NewProxy(addr, strings.TrimPrefix(c.Endpoint(0), "http://"))
	if err := cut.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cut.Stop)
	s, other := open(t, []string{"http://" + addr}, nil), open(t, c.Endpoints(), nil)
	l := load(t, s)
	w := startWatch(t, s, l.Revision).seed(l)
	rounds := 10
	if n, err := strconv.Atoi(os.Getenv("ETCD_ROUNDS")); err == nil {
		rounds = n
	}
	var want []int64
	next := int64(1)
	for round := range rounds {
		cut.Stop()
		testkit.Eventually(t, "the store degraded", func() bool { return !s.Status().OK })
		var last int64
		for range 20 {
			var changes []registry.Change
			for range 5 {
				changes = append(changes, put(record(next, 0, "c"), 0, 0))
				want = append(want, next)
				next++
			}
			last = commit(t, other, changes...)
		}
		if err := cut.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(60 * time.Second)
		for w.revision() < last {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the watch is at %d after 60s, etcd at %d", round, w.revision(), last)
			}
			time.Sleep(10 * time.Millisecond) // polling for the watch
		}
		if got := w.ids(); !slices.Equal(got, want) {
			var missing []int64
			for _, id := range want {
				if !slices.Contains(got, id) {
					missing = append(missing, id)
				}
			}
			t.Fatalf("round %d: the watch is at revision %d (etcd's %d) without images %v, committed while it was cut off",
				round, w.revision(), last, missing)
		}
	}
}
