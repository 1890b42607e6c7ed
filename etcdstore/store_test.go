package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/internal/testkit"
	"github.com/imagelb/caddy-imagelb/registry"
)

// Open must not wait for etcd, and an unreachable etcd must give errors
// that wrap registry.ErrStoreUnavailable within the request timeout.
func TestEtcdDownAtOpen(t *testing.T) {
	t.Parallel()
	endpoint := fmt.Sprintf("http://127.0.0.1:%d", testkit.FreePort(t)) // nothing listens there
	for _, auth := range []bool{false, true} {
		t.Run(fmt.Sprintf("auth=%v", auth), func(t *testing.T) {
			start := time.Now()
			s := open(t, []string{endpoint}, nil, func(c *Config) {
				if auth {
					c.Username, c.Password = "root", "secret"
				}
			})
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Fatalf("Open took %s with etcd down", d)
			}
			start = time.Now()
			_, err := s.Load(context.Background())
			if !errors.Is(err, registry.ErrStoreUnavailable) {
				t.Fatalf("Load: %v, want ErrStoreUnavailable", err)
			}
			if d := time.Since(start); d > requestTimeout+time.Second {
				t.Fatalf("Load took %s", d)
			}
			if !strings.Contains(err.Error(), endpoint) || !strings.Contains(err.Error(), "no local cache") {
				t.Errorf("Load: %v: want the endpoint and that there is no cache", err)
			}
			start = time.Now()
			_, err = s.Commit(context.Background(), []registry.Change{put(record(1, 0), 0, 0)})
			if !errors.Is(err, registry.ErrStoreUnavailable) {
				t.Fatalf("Commit: %v, want ErrStoreUnavailable", err)
			}
			if d := time.Since(start); d > requestTimeout+time.Second {
				t.Fatalf("Commit took %s", d)
			}
			if st := s.Status(); st.OK || st.Kind != "etcd" || st.Detail == "" {
				t.Errorf("Status = %+v, want degraded with a detail", st)
			}
			start = time.Now()
			s.Close()
			if d := time.Since(start); d > time.Second {
				t.Errorf("Close took %s", d)
			}
		})
	}
}

func TestLoadCommitDelete(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	s := open(t, c.Endpoints(), nil)
	if l := load(t, s); len(l.Records) != 0 || l.Revision <= 0 {
		t.Fatalf("empty etcd: %+v", l)
	}
	if d := s.Describe(); d != "etcd at "+c.Endpoint(0)+" (prefix /imagelb/)" {
		t.Errorf("Describe = %q", d)
	}
	rev1 := commit(t, s, put(record(10, 8080, "a"), 0, 0), put(record(2, 0, "b", "c"), 0, 0))
	l := load(t, s)
	if !slices.Equal(loadedIDs(l), []int64{2, 10}) {
		t.Fatalf("records %v, want [2 10] (sorted by image_id, not as keys sort)", loadedIDs(l))
	}
	if l.Revision != rev1 || l.Records[0].Revision != rev1 || l.Records[1].Revision != rev1 {
		t.Fatalf("revisions: loaded %d, records %d %d; want %d", l.Revision, l.Records[0].Revision, l.Records[1].Revision, rev1)
	}
	if got := l.Records[0]; len(got.Containers) != 2 || got.Containers[1].ContainerID != "c" || got.ImageName != "image-2" {
		t.Fatalf("record 2 = %+v", got)
	}
	if st := s.Status(); !st.OK || st.Revision != rev1 {
		t.Errorf("Status = %+v", st)
	}

	upd := record(10, 8080, "a", "d")
	rev2 := commit(t, s, put(upd, rev1, 8080))
	if rev2 <= rev1 {
		t.Fatalf("revision %d after %d", rev2, rev1)
	}
	l = load(t, s)
	if l.Records[1].Revision != rev2 || l.Records[0].Revision != rev1 || len(l.Records[1].Containers) != 2 {
		t.Fatalf("after the update: %+v", l.Records)
	}
	rev3 := commit(t, s, del(10, rev2, 8080))
	l = load(t, s)
	if !slices.Equal(loadedIDs(l), []int64{2}) || l.Revision != rev3 {
		t.Fatalf("after the delete: %v at %d", loadedIDs(l), l.Revision)
	}
	// The deletion released the port.
	resp, err := c.Client().Get(context.Background(), "/imagelb/ports/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("port keys after the delete: %v %v", resp, err)
	}
}

func TestStaleExpect(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	a, b := open(t, c.Endpoints(), nil), open(t, c.Endpoints(), nil)
	rev1 := commit(t, a, put(record(1, 0, "a"), 0, 0))
	rev2 := commit(t, b, put(record(1, 0, "a", "b"), rev1, 0))

	// a still thinks image 1 is at rev1.
	_, err := a.Commit(context.Background(), []registry.Change{put(record(1, 0, "x"), rev1, 0), put(record(2, 0), 0, 0)})
	ce := conflictOf(t, err)
	cur, ok := current(ce, 1)
	if !ok || cur.Revision != rev2 || cur.Record == nil || len(cur.Record.Containers) != 2 || cur.Record.Revision != rev2 {
		t.Fatalf("Current[1] = %+v (%v)", cur, ok)
	}
	// An absent record is absent as of the transaction's revision.
	if cur, ok := current(ce, 2); !ok || cur.Record != nil || cur.Revision < rev2 {
		t.Fatalf("Current[2] = %+v (%v), want absent at revision %d or later", cur, ok, rev2)
	}
	if !strings.Contains(ce.Detail, "image 1") || strings.Contains(ce.Detail, "image 2") {
		t.Errorf("Detail = %q", ce.Detail)
	}
	// Nothing of the refused commit was applied.
	if l := load(t, a); !slices.Equal(loadedIDs(l), []int64{1}) || len(l.Records[0].Containers) != 2 {
		t.Fatalf("after the conflict: %+v", l.Records)
	}

	// Creating what exists, and deleting what another node deleted.
	_, err = a.Commit(context.Background(), []registry.Change{put(record(1, 0), 0, 0)})
	if ce := conflictOf(t, err); !strings.Contains(ce.Detail, "created by another node") {
		t.Errorf("Detail = %q", ce.Detail)
	}
	rev3 := commit(t, b, del(1, rev2, 0))
	_, err = a.Commit(context.Background(), []registry.Change{del(1, rev2, 0)})
	ce = conflictOf(t, err)
	if cur, ok := current(ce, 1); !ok || cur.Record != nil || cur.Revision < rev3 || !strings.Contains(ce.Detail, "deleted") {
		t.Errorf("Current = %+v, Detail = %q", ce.Current, ce.Detail)
	}
}

// Two nodes claim one port at once: exactly one wins, and the loser learns
// whose it is.
func TestPortClaimRace(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	a, b := open(t, c.Endpoints(), nil), open(t, c.Endpoints(), nil)
	for round := range 5 {
		port := 9000 + round
		ida, idb := int64(100+2*round), int64(101+2*round)
		var wg sync.WaitGroup
		var erra, errb error
		var reva, revb int64
		wg.Add(2)
		go func() {
			defer wg.Done()
			reva, erra = a.Commit(context.Background(), []registry.Change{put(record(ida, port), 0, 0)})
		}()
		go func() {
			defer wg.Done()
			revb, errb = b.Commit(context.Background(), []registry.Change{put(record(idb, port), 0, 0)})
		}()
		wg.Wait()
		if (erra == nil) == (errb == nil) {
			t.Fatalf("round %d: both or neither won: %v, %v", round, erra, errb)
		}
		winner, winRev, lost := ida, reva, errb
		if erra != nil {
			winner, winRev, lost = idb, revb, erra
		}
		ce := conflictOf(t, lost)
		owner, ok := current(ce, winner)
		if !ok || owner.Record == nil || owner.Record.ExternalPort != port || owner.Revision != winRev {
			t.Fatalf("round %d: the loser's Current %+v lacks the owner %d at %d", round, ce.Current, winner, winRev)
		}
		if want := fmt.Sprintf("port %d is taken by image %d", port, winner); !strings.Contains(ce.Detail, want) {
			t.Fatalf("round %d: Detail %q, want %q", round, ce.Detail, want)
		}
	}
	l := load(t, a)
	if len(l.Records) != 5 {
		t.Fatalf("%d records, want one per port", len(l.Records))
	}
}

func TestPortMoves(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	s := open(t, c.Endpoints(), nil)
	ports := func() map[string]string {
		t.Helper()
		resp, err := c.Client().Get(context.Background(), "/imagelb/ports/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, kv := range resp.Kvs {
			m[strings.TrimPrefix(string(kv.Key), "/imagelb/ports/")] = string(kv.Value)
		}
		return m
	}
	r1 := commit(t, s, put(record(1, 7001), 0, 0), put(record(2, 7002), 0, 0))
	if p := ports(); len(p) != 2 || p["7001"] != "1" || p["7002"] != "2" {
		t.Fatalf("ports %v", p)
	}
	// Moving image 1 to 7003 frees 7001.
	r2 := commit(t, s, put(record(1, 7003), r1, 7001))
	if p := ports(); len(p) != 2 || p["7003"] != "1" || p["7002"] != "2" {
		t.Fatalf("ports after the move %v", p)
	}
	// Swapping the ports of 1 and 2 in one commit.
	r3 := commit(t, s, put(record(1, 7002), r2, 7003), put(record(2, 7003), r1, 7002))
	if p := ports(); len(p) != 2 || p["7002"] != "1" || p["7003"] != "2" {
		t.Fatalf("ports after the swap %v", p)
	}
	// A port freed and claimed by a new image in one commit.
	r4 := commit(t, s, put(record(1, 0), r3, 7002), put(record(3, 7002), 0, 0))
	if p := ports(); len(p) != 2 || p["7002"] != "3" || p["7003"] != "2" {
		t.Fatalf("ports after the hand-over %v", p)
	}
	// A conflict on the record leaves the ports alone.
	if _, err := s.Commit(context.Background(), []registry.Change{put(record(2, 7004), r1, 7003)}); err == nil {
		t.Fatal("a stale commit succeeded")
	}
	if p := ports(); len(p) != 2 || p["7003"] != "2" {
		t.Fatalf("ports after a refused commit %v", p)
	}
	// A port key written by hand for another image is not released by
	// the image whose record (wrongly) says it holds the port.
	if _, err := c.Client().Put(context.Background(), "/imagelb/ports/7005", "99"); err != nil {
		t.Fatal(err)
	}
	commit(t, s, put(record(3, 0), r4, 7005))
	if p := ports(); p["7005"] != "99" {
		t.Fatalf("ports %v: the hand-written key was deleted", p)
	}
	// Claiming it names the owner, which has no record.
	_, err := s.Commit(context.Background(), []registry.Change{put(record(4, 7005), 0, 0)})
	ce := conflictOf(t, err)
	if cur, ok := current(ce, 99); !ok || cur.Record != nil || !strings.Contains(ce.Detail, "/imagelb/ports/7005 is stale") {
		t.Fatalf("Current %+v, Detail %q", ce.Current, ce.Detail)
	}
}

func TestCommitRefuses(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	s := open(t, c.Endpoints(), nil)
	many := make([]registry.Change, MaxChanges+1)
	for i := range many {
		many[i] = put(record(int64(i+1), 0), 0, 0)
	}
	if _, err := s.Commit(context.Background(), many); err == nil || errors.Is(err, registry.ErrStoreUnavailable) {
		t.Fatalf("%d changes: %v", len(many), err)
	}
	commit(t, s, many[:MaxChanges]...) // the most a commit takes fits etcd's limits
	for name, changes := range map[string][]registry.Change{
		"twice the same image": {put(record(50, 0), 0, 0), del(50, 0, 0)},
		"one port twice":       {put(record(51, 6000), 0, 0), put(record(52, 6000), 0, 0)},
		"another's record":     {{ImageID: 53, Record: record(54, 0)}},
	} {
		if _, err := s.Commit(context.Background(), changes); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A key that does not decode, written by hand, does not stop Load; the
// watch drops it as Load does.
func TestBadRecord(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	s := open(t, c.Endpoints(), nil)
	commit(t, s, put(record(1, 0), 0, 0), put(record(7, 0), 0, 0))
	kv := c.Client()
	ctx := context.Background()
	for key, value := range map[string]string{
		"/imagelb/services/2":   "{not json",
		"/imagelb/services/3":   `{"image_id": 4}`,
		"/imagelb/services/foo": `{}`,
	} {
		if _, err := kv.Put(ctx, key, value); err != nil {
			t.Fatal(err)
		}
	}
	l := load(t, s)
	if !slices.Equal(loadedIDs(l), []int64{1, 7}) {
		t.Fatalf("records %v, want [1 7]", loadedIDs(l))
	}
	w := startWatch(t, s, l.Revision).seed(l)
	resp, err := kv.Put(ctx, "/imagelb/services/7", "garbage")
	if err != nil {
		t.Fatal(err)
	}
	w.waitRevision(t, resp.Header.Revision)
	if !slices.Equal(w.ids(), []int64{1}) {
		t.Fatalf("the watch's state %v, want [1]", w.ids())
	}
}

var _ Cache = (*registry.BoltStore)(nil)

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]Config{
		"no endpoints":          {},
		"username, no password": {Endpoints: []string{"http://127.0.0.1:2379"}, Username: "root"},
		"a missing CA file":     {Endpoints: []string{"https://127.0.0.1:2379"}, TLS: &TLSConfig{CAFile: "/nonexistent/ca.pem"}},
	} {
		if s, err := Open(cfg, nil, nil); err == nil {
			s.Close()
			t.Errorf("%s: no error", name)
		}
	}
	s, err := Open(Config{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/custom"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if d := s.Describe(); d != "etcd at http://127.0.0.1:2379 (prefix /custom/)" {
		t.Errorf("Describe = %q", d)
	}
}

// With authentication on, the client authenticates (in the background)
// and its token serves every request, the watch's too; wrong credentials
// are an error of their own, not "unavailable".
func TestAuth(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	ctx := context.Background()
	root := c.Client()
	if _, err := root.UserAdd(ctx, "root", "secret"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	// Authenticating costs etcd a bcrypt: close to a second under -race,
	// more on a loaded machine; the client authenticates within DialTimeout.
	slow := func(c *Config) { c.RequestTimeout, c.DialTimeout = 5*time.Second, 5*time.Second }
	s := open(t, c.Endpoints(), nil, slow, func(c *Config) { c.Username, c.Password = "root", "secret" })
	l := load(t, s)
	w := startWatch(t, s, l.Revision)
	rev := commit(t, s, put(record(1, 0), 0, 0))
	w.waitRevision(t, rev)

	bad := open(t, c.Endpoints(), nil, slow, func(c *Config) { c.Username, c.Password = "root", "wrong" })
	testkit.Eventually(t, "the refusal", func() bool { return !bad.Status().OK })
	_, err := bad.Load(ctx)
	if err == nil || errors.Is(err, registry.ErrStoreUnavailable) || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("Load with a wrong password: %v", err)
	}
}
