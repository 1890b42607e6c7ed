package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/imagelb/caddy-imagelb/internal/testkit"
	"github.com/imagelb/caddy-imagelb/registry"
)

// requestTimeout is the stores' RequestTimeout in tests: short, so that
// the tests of an unreachable etcd are quick.
const requestTimeout = time.Second

// open opens a store on endpoints, closed when the test ends.
func open(t testing.TB, endpoints []string, cache Cache, tweak ...func(*Config)) *Store {
	t.Helper()
	cfg := Config{Endpoints: endpoints, RequestTimeout: requestTimeout, DialTimeout: requestTimeout}
	for _, f := range tweak {
		f(&cfg)
	}
	s, err := Open(cfg, cache, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// bolt opens a BoltStore in the test's directory, to cache a store.
func bolt(t testing.TB) *registry.BoltStore {
	t.Helper()
	b, err := registry.OpenBolt(filepath.Join(t.TempDir(), "cache.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func record(id int64, port int, containers ...string) *registry.ServiceRecord {
	rec := &registry.ServiceRecord{ImageID: id, ImageName: fmt.Sprintf("image-%d", id), Algorithm: registry.RoundRobin, ExternalPort: port,
		Containers: []registry.ContainerRecord{}}
	for i, c := range containers {
		rec.Containers = append(rec.Containers, registry.ContainerRecord{ContainerID: c, Host: "10.0.0.1", Port: 8000 + i, Status: registry.StatusHealthy, Weight: 1})
	}
	return rec
}

func put(rec *registry.ServiceRecord, expect int64, prevPort int) registry.Change {
	return registry.Change{ImageID: rec.ImageID, Record: rec, Expect: expect, PrevPort: prevPort}
}

func del(id, expect int64, prevPort int) registry.Change {
	return registry.Change{ImageID: id, Expect: expect, PrevPort: prevPort}
}

func commit(t testing.TB, s *Store, changes ...registry.Change) int64 {
	t.Helper()
	rev, err := s.Commit(context.Background(), changes)
	if err != nil {
		t.Fatalf("commit: %v", err)
	}
	return rev
}

func load(t testing.TB, s *Store) *registry.Loaded {
	t.Helper()
	loaded, err := s.Load(context.Background())
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return loaded
}

func conflictOf(t testing.TB, err error) *registry.ConflictError {
	t.Helper()
	var ce *registry.ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v, want a *registry.ConflictError", err)
	}
	return ce
}

func current(ce *registry.ConflictError, id int64) (registry.Remote, bool) {
	for _, r := range ce.Current {
		if r.ImageID == id {
			return r, true
		}
	}
	return registry.Remote{}, false
}

// watcher runs a store's Watch and keeps what it delivers, and the state
// it builds from it.
type watcher struct {
	mu     sync.Mutex
	events []registry.RemoteEvent
	state  map[int64]registry.ServiceRecord
	rev    int64
	done   chan struct{}
}

func startWatch(t testing.TB, s *Store, from int64) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{state: map[int64]registry.ServiceRecord{}, rev: from, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		s.Watch(ctx, from, w.apply)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-w.done:
		case <-time.After(10 * time.Second):
			t.Error("Watch did not return after its context was cancelled")
		}
	})
	return w
}

// seed sets the watcher's state to a Load's.
func (w *watcher) seed(l *registry.Loaded) *watcher {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range l.Records {
		w.state[r.ImageID] = r
	}
	return w
}

func (w *watcher) apply(ev registry.RemoteEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events = append(w.events, ev)
	if ev.Reset {
		clear(w.state)
	}
	for _, r := range ev.Records {
		if r.Record == nil {
			delete(w.state, r.ImageID)
		} else {
			w.state[r.ImageID] = *r.Record
		}
	}
	w.rev = ev.Revision
}

func (w *watcher) revision() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rev
}

// records returns the (image, revision, deleted) of every record event
// delivered, in order, outside Reset events.
func (w *watcher) changes() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, ev := range w.events {
		if ev.Reset {
			continue
		}
		for _, r := range ev.Records {
			out = append(out, change(r.ImageID, r.Revision, r.Record == nil))
		}
	}
	return out
}

func (w *watcher) resets() []registry.RemoteEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []registry.RemoteEvent
	for _, ev := range w.events {
		if ev.Reset {
			out = append(out, ev)
		}
	}
	return out
}

// ids returns the images of the watcher's state, sorted.
func (w *watcher) ids() []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	ids := make([]int64, 0, len(w.state))
	for id := range w.state {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (w *watcher) record(id int64) (registry.ServiceRecord, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r, ok := w.state[id]
	return r, ok
}

// waitRevision waits until the watcher has delivered rev.
func (w *watcher) waitRevision(t testing.TB, rev int64) {
	t.Helper()
	testkit.Eventually(t, fmt.Sprintf("the watch to reach revision %d", rev), func() bool { return w.revision() >= rev })
}

func change(id, rev int64, deleted bool) string {
	if deleted {
		return fmt.Sprintf("-%d@%d", id, rev)
	}
	return fmt.Sprintf("+%d@%d", id, rev)
}

// ids of a Loaded.
func loadedIDs(l *registry.Loaded) []int64 {
	ids := make([]int64, len(l.Records))
	for i, r := range l.Records {
		ids[i] = r.ImageID
	}
	return ids
}
