package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// openTestBolt opens a bbolt store in a fresh temporary directory.
func openTestBolt(tb testing.TB) *BoltStore {
	tb.Helper()
	store, err := OpenBolt(filepath.Join(tb.TempDir(), "registry.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { store.Close() })
	return store
}

// countingStore is a store that counts its commits. When before is set it
// runs before commit number n (from 1) and an error it returns fails that
// commit without writing.
type countingStore struct {
	RecordStore
	commits atomic.Int64
	before  func(n int64) error
}

func newCountingStore(tb testing.TB) *countingStore {
	tb.Helper()
	return &countingStore{RecordStore: openTestBolt(tb)}
}

func (s *countingStore) Commit(ctx context.Context, changes []Change) (int64, error) {
	n := s.commits.Add(1)
	if s.before != nil {
		if err := s.before(n); err != nil {
			return 0, err
		}
	}
	return s.RecordStore.Commit(ctx, changes)
}

// loadRecords reads what the store holds.
func loadRecords(t *testing.T, store RecordStore) []ServiceRecord {
	t.Helper()
	loaded, err := store.Load(context.Background())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return loaded.Records
}

// record returns the stored service of the given image, or nil.
func record(recs []ServiceRecord, id int64) *ServiceRecord {
	i := slices.IndexFunc(recs, func(s ServiceRecord) bool { return s.ImageID == id })
	if i < 0 {
		return nil
	}
	return &recs[i]
}

// storedContainer returns a stored container, or nil.
func storedContainer(recs []ServiceRecord, id int64, containerID string) *ContainerRecord {
	rec := record(recs, id)
	if rec == nil {
		return nil
	}
	i := slices.IndexFunc(rec.Containers, func(c ContainerRecord) bool { return c.ContainerID == containerID })
	if i < 0 {
		return nil
	}
	return &rec.Containers[i]
}

func storedIDs(rec *ServiceRecord) []string {
	out := make([]string, len(rec.Containers))
	for i, c := range rec.Containers {
		out[i] = c.ContainerID
	}
	return out
}

// durableView is the API view of a service without what is not stored:
// counters and health check history.
func durableView(s *Service) ServiceView {
	v := s.View()
	v.TotalRequests, v.FailedRequests, v.ActiveConnections, v.RequestsPerSecond = 0, 0, 0, 0
	for i := range v.Containers {
		c := &v.Containers[i]
		c.TotalRequests, c.FailedRequests, c.ActiveConnections, c.RequestsPerSecond = 0, 0, 0, 0
		c.LastHealthCheck, c.LastHealthError = nil, nil
	}
	return v
}

func durableViews(r *Registry) []ServiceView {
	var out []ServiceView
	for _, svc := range r.Services() {
		out = append(out, durableView(svc))
	}
	return out
}

func statusPtr(s Status) *Status { return &s }
func intPtr(n int) *int          { return &n }

// TestStoreRoundTrip restarts a registry from its store: services,
// containers, ports, pushed statuses and weights come back; counters, this
// node's health verdicts and static services (the configuration's) do not.
func TestStoreRoundTrip(t *testing.T) {
	opts := Options{PortLo: 10000, PortHi: 10009}
	r := newTestRegistry(t, opts)
	store := openTestBolt(t)
	r.SetStore(store)

	one := svcSpec(1, ContainerSpec{ContainerID: "a", Host: "::1", Port: 8001, Status: StatusHealthy, Weight: 5},
		ContainerSpec{ContainerID: "b", Name: "b-name", Host: "10.0.0.2", Port: 8002, Status: StatusHealthy, Weight: 1})
	one.ExternalPort, one.Algorithm = 8080, LeastConnections
	mustRegister(t, r, one)
	two := svcSpec(2, ContainerSpec{ContainerID: "c", Port: 8003, Status: StatusStarting, Weight: 1}, ctr("d", 8004))
	if p := mustRegister(t, r, two).ExternalPort; p != 10000 {
		t.Fatalf("allocated port = %d, want 10000", p)
	}
	mustRegister(t, r, svcSpec(3)) // no containers; allocated 10001
	if _, err := r.PatchContainer(2, "c", ContainerPatch{Status: statusPtr(StatusDraining), Weight: intPtr(0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.PatchContainer(2, "d", ContainerPatch{Weight: intPtr(MaxWeight)}); err != nil {
		t.Fatal(err)
	}
	static := svcSpec(4, ctr("s", 7001))
	static.ExternalPort = 7000
	if err := r.ApplyStatic([]ServiceSpec{static}); err != nil {
		t.Fatal(err)
	}
	if !r.CompareAndSwapStatus(1, "a", StatusHealthy, StatusUnhealthy) {
		t.Fatal("CompareAndSwapStatus did not change a")
	}
	b := r.Lookup(1).Container("b").Stats
	b.Begin()
	b.Finish(0, true, time.Millisecond)
	b.SetHealth(time.Now(), "connection refused")
	if _, err := r.PutContainer(5, ctr("x", 1)); KindOf(err) != KindNotFound {
		t.Fatalf("PutContainer on an unknown image: %v", err)
	}
	if _, err := r.PutContainer(3, ContainerSpec{ContainerID: "e", Port: 8005, Status: StatusUnhealthy, Weight: 2}); err != nil {
		t.Fatal(err)
	}

	loaded, err := store.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded.Records) != 3 || record(loaded.Records, 4) != nil {
		t.Fatalf("stored %d records (want 3: the static service is the configuration's)", len(loaded.Records))
	}
	restored := newTestRegistry(t, opts)
	if _, err := restored.Restore(loaded); err != nil {
		t.Fatal(err)
	}
	if c := restored.Lookup(1).Container("a"); c.Status != StatusHealthy {
		t.Fatalf("restored 1/a %s: want the pushed status, healthy, not this node's verdict", c.Status)
	}
	if !r.CompareAndSwapStatus(1, "a", StatusUnhealthy, StatusHealthy) {
		t.Fatal("CompareAndSwapStatus did not change a back")
	}
	if _, err := r.Remove(4); err != nil { // in memory only: it was never stored
		t.Fatal(err)
	}
	want, got := durableViews(r), durableViews(restored)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("restored services =\n%+v\nwant %+v", got, want)
	}
	if got, want := restored.PortMappings(), r.PortMappings(); !reflect.DeepEqual(got, want) || len(got) != 3 {
		t.Fatalf("restored port mappings = %+v, want %+v", got, want)
	}
	for _, port := range []int{8080, 10000, 10001} {
		if svc := restored.ByPort(port); svc == nil || svc.ExternalPort != port {
			t.Fatalf("ByPort(%d) = %v after restore", port, svc)
		}
	}
	if c := restored.Lookup(1).Container("b").Stats; c.Requests.Load() != 0 || c.Failures.Load() != 0 {
		t.Fatal("counters were restored")
	}
	if got := ids(restored.Lookup(2).Available()); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("restored available containers of 2 = %v, want [d]", got)
	}

	// The restored registry continues: allocation skips the restored
	// ports, and nothing restored is lost.
	restored.SetStore(store)
	if p := mustRegister(t, restored, svcSpec(6, ctr("f", 8006))).ExternalPort; p != 10002 {
		t.Fatalf("port allocated after restore = %d, want 10002", p)
	}
	next := loadRecords(t, store)
	if len(next) != 4 || record(next, 6) == nil || !reflect.DeepEqual(next[:3], loaded.Records) {
		t.Fatalf("records after restore and one change:\n%+v\nwas %+v", next, loaded.Records)
	}
}

// TestAcknowledgedChangesAreStored reads the store back after every
// acknowledged change, before doing anything else.
func TestAcknowledgedChangesAreStored(t *testing.T) {
	r := newTestRegistry(t, Options{})
	store := openTestBolt(t)
	r.SetStore(store)
	if recs := loadRecords(t, store); len(recs) != 0 {
		t.Fatalf("SetStore wrote records: %+v", recs)
	}

	steps := []struct {
		name  string
		op    func() error
		check func(recs []ServiceRecord) string // "" when the change is there
	}{
		{"register",
			func() error {
				spec := svcSpec(1, ctr("a", 8001), ctr("b", 8002))
				spec.ExternalPort = 9000
				_, err := r.Register(spec)
				return err
			},
			func(recs []ServiceRecord) string {
				rec := record(recs, 1)
				if rec == nil || rec.ExternalPort != 9000 || !slices.Equal(storedIDs(rec), []string{"a", "b"}) {
					return "service 1 with a, b on port 9000 missing"
				}
				return ""
			}},
		{"register another",
			func() error { _, err := r.Register(svcSpec(2, ctr("z", 8100))); return err },
			func(recs []ServiceRecord) string {
				if record(recs, 2) == nil || record(recs, 1) == nil {
					return "services 1 and 2 not both stored"
				}
				return ""
			}},
		{"register replaces",
			func() error { _, err := r.Register(svcSpec(2, ctr("y", 8101))); return err },
			func(recs []ServiceRecord) string {
				if rec := record(recs, 2); rec == nil || !slices.Equal(storedIDs(rec), []string{"y"}) {
					return "service 2 does not have exactly y"
				}
				return ""
			}},
		{"put container",
			func() error {
				_, err := r.PutContainer(1, ContainerSpec{ContainerID: "d", Host: "10.0.0.4", Port: 8004, Status: StatusStarting, Weight: 3})
				return err
			},
			func(recs []ServiceRecord) string {
				c := storedContainer(recs, 1, "d")
				if c == nil || *c != (ContainerRecord{ContainerID: "d", Host: "10.0.0.4", Port: 8004, Status: StatusStarting, Weight: 3}) {
					return "container d not stored as put"
				}
				return ""
			}},
		{"patch container",
			func() error {
				_, err := r.PatchContainer(1, "d", ContainerPatch{Status: statusPtr(StatusHealthy), Weight: intPtr(7)})
				return err
			},
			func(recs []ServiceRecord) string {
				if c := storedContainer(recs, 1, "d"); c == nil || c.Status != StatusHealthy || c.Weight != 7 {
					return "patched status and weight of d not stored"
				}
				return ""
			}},
		{"remove container",
			func() error { _, err := r.RemoveContainer(1, "a"); return err },
			func(recs []ServiceRecord) string {
				if rec := record(recs, 1); rec == nil || !slices.Equal(storedIDs(rec), []string{"b", "d"}) {
					return "service 1 does not have exactly b, d"
				}
				return ""
			}},
		{"remove",
			func() error { _, err := r.Remove(2); return err },
			func(recs []ServiceRecord) string {
				if record(recs, 2) != nil || len(recs) != 1 {
					return "service 2 still stored"
				}
				return ""
			}},
	}
	for _, step := range steps {
		ok := t.Run(step.name, func(t *testing.T) {
			if err := step.op(); err != nil {
				t.Fatal(err)
			}
			recs := loadRecords(t, store)
			if msg := step.check(recs); msg != "" {
				t.Fatalf("%s; stored: %+v", msg, recs)
			}
			if !reflect.DeepEqual(recs, r.Records()) {
				t.Fatalf("stored %+v, registry has %+v", recs, r.Records())
			}
		})
		if !ok {
			break // later steps build on this one
		}
	}
}

// TestHealthVerdictsAreNotStored: a health check's verdict is this node's:
// it is published at once, never written, and a later change stores the
// status the orchestrator pushed, not the verdict.
func TestHealthVerdictsAreNotStored(t *testing.T) {
	r := newTestRegistry(t, Options{})
	store := newCountingStore(t)
	r.SetStore(store)
	mustRegister(t, r, svcSpec(1, ctr("a", 8001), ctr("b", 8002)))
	commits := store.commits.Load()

	if !r.CompareAndSwapStatus(1, "a", StatusHealthy, StatusUnhealthy) {
		t.Fatal("CompareAndSwapStatus did not change a")
	}
	if r.Lookup(1).Container("a").Status != StatusUnhealthy {
		t.Fatal("CompareAndSwapStatus did not publish")
	}
	if store.commits.Load() != commits {
		t.Fatal("CompareAndSwapStatus committed")
	}
	if _, err := r.PatchContainer(1, "a", ContainerPatch{Weight: intPtr(4)}); err != nil {
		t.Fatal(err)
	}
	recs := loadRecords(t, store)
	if a := storedContainer(recs, 1, "a"); a.Status != StatusHealthy || a.Weight != 4 {
		t.Fatalf("stored a: %s weight %d, want the pushed healthy and weight 4", a.Status, a.Weight)
	}
	if c := r.Lookup(1).Container("a"); c.Status != StatusUnhealthy {
		t.Fatalf("a weight change replaced this node's verdict: a is %s", c.Status)
	}
	// A pushed status is the orchestrator's word: stored, and it wins.
	if _, err := r.PatchContainer(1, "a", ContainerPatch{Status: statusPtr(StatusDraining)}); err != nil {
		t.Fatal(err)
	}
	if a := storedContainer(loadRecords(t, store), 1, "a"); a.Status != StatusDraining {
		t.Fatalf("stored a: %s, want draining", a.Status)
	}
	if c := r.Lookup(1).Container("a"); c.Status != StatusDraining {
		t.Fatalf("a is %s after a pushed drain", c.Status)
	}
}

// TestRejectedOperationsWriteNothing: an operation that changes nothing
// commits nothing.
func TestRejectedOperationsWriteNothing(t *testing.T) {
	tests := []struct {
		name string
		op   func(r *Registry) error
		kind Kind
	}{
		{"register image_id 0", func(r *Registry) error { _, err := r.Register(svcSpec(0)); return err }, KindInvalid},
		{"register without name", func(r *Registry) error {
			s := svcSpec(1, ctr("x", 1))
			s.ImageName = ""
			_, err := r.Register(s)
			return err
		}, KindInvalid},
		{"register too many containers", func(r *Registry) error {
			_, err := r.Register(svcSpec(3, ctr("a", 1), ctr("b", 2), ctr("c", 3)))
			return err
		}, KindInvalid},
		{"register port taken", func(r *Registry) error {
			s := svcSpec(2, ctr("x", 1))
			s.ExternalPort = 9000
			_, err := r.Register(s)
			return err
		}, KindConflict},
		{"remove unknown", func(r *Registry) error { _, err := r.Remove(99); return err }, KindNotFound},
		{"put unknown image", func(r *Registry) error { _, err := r.PutContainer(99, ctr("a", 1)); return err }, KindNotFound},
		{"put over the maximum", func(r *Registry) error { _, err := r.PutContainer(1, ctr("c", 3)); return err }, KindInvalid},
		{"patch unknown image", func(r *Registry) error {
			_, err := r.PatchContainer(99, "a", ContainerPatch{Status: statusPtr(StatusDraining)})
			return err
		}, KindNotFound},
		{"patch unknown container", func(r *Registry) error {
			_, err := r.PatchContainer(1, "zzz", ContainerPatch{Status: statusPtr(StatusDraining)})
			return err
		}, KindNotFound},
		{"remove unknown container", func(r *Registry) error { _, err := r.RemoveContainer(1, "zzz"); return err }, KindNotFound},
		{"remove container of unknown image", func(r *Registry) error { _, err := r.RemoveContainer(99, "a"); return err }, KindNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, Options{MaxContainers: 2})
			store := newCountingStore(t)
			r.SetStore(store)
			one := svcSpec(1, ctr("a", 1), ctr("b", 2))
			one.ExternalPort = 9000
			mustRegister(t, r, one)
			mustRegister(t, r, svcSpec(2, ctr("a", 1)))
			before, commits := loadRecords(t, store), store.commits.Load()

			wantKind(t, tt.op(r), tt.kind)
			if store.commits.Load() != commits {
				t.Errorf("%d commits for a rejected operation", store.commits.Load()-commits)
			}
			if !reflect.DeepEqual(loadRecords(t, store), before) {
				t.Error("the stored records changed")
			}
		})
	}
}

// TestRestoreRejectsInvalidState: a record that decodes but holds what the
// API would refuse is rejected, naming the service, and the registry is left
// as it was.
func TestRestoreRejectsInvalidState(t *testing.T) {
	valid := func() ServiceRecord {
		return ServiceRecord{ImageID: 42, ImageName: "image-42", Algorithm: RoundRobin, ExternalPort: 9042,
			Containers: []ContainerRecord{{ContainerID: "a", Host: "127.0.0.1", Port: 8000, Status: StatusHealthy, Weight: 1}}}
	}
	tests := []struct {
		name   string
		damage func(rec *ServiceRecord)
		want   string
	}{
		{"port 0", func(rec *ServiceRecord) { rec.Containers[0].Port = 0 }, "port must be from 1 to 65535"},
		{"port over 65535", func(rec *ServiceRecord) { rec.Containers[0].Port = 65536 }, "port must be from 1 to 65535"},
		{"bad status", func(rec *ServiceRecord) { rec.Containers[0].Status = "sleeping" }, "status"},
		{"empty status", func(rec *ServiceRecord) { rec.Containers[0].Status = "" }, "status"},
		{"negative weight", func(rec *ServiceRecord) { rec.Containers[0].Weight = -1 }, "weight"},
		{"weight over the maximum", func(rec *ServiceRecord) { rec.Containers[0].Weight = MaxWeight + 1 }, "weight"},
		{"bad host", func(rec *ServiceRecord) { rec.Containers[0].Host = "http://evil/" }, "host"},
		{"empty host", func(rec *ServiceRecord) { rec.Containers[0].Host = "" }, "host"},
		{"unknown algorithm", func(rec *ServiceRecord) { rec.Algorithm = "fastest" }, "algorithm"},
		{"no image name", func(rec *ServiceRecord) { rec.ImageName = "" }, "image_name"},
		{"image_id 0", func(rec *ServiceRecord) { rec.ImageID = 0 }, "image_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			rec := valid()
			tt.damage(&rec)
			before := r.snap.Load()
			_, err := r.Restore(&Loaded{Revision: 9, Records: []ServiceRecord{valid(), rec}})
			if err == nil {
				t.Fatal("Restore accepted the state")
			}
			if name := fmt.Sprintf("service %d", rec.ImageID); !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not name %q and %q", err, name, tt.want)
			}
			if r.snap.Load() != before || r.Lookup(42) != nil {
				t.Fatal("a failed Restore changed the registry")
			}
		})
	}

	t.Run("port mapped twice", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		other := valid()
		other.ImageID = 43
		_, err := r.Restore(&Loaded{Revision: 9, Records: []ServiceRecord{valid(), other}})
		if err == nil || !strings.Contains(err.Error(), "service 43") || !strings.Contains(err.Error(), "9042") {
			t.Fatalf("Restore with port 9042 on two services: %v", err)
		}
		if r.Lookup(42) != nil {
			t.Fatal("a failed Restore changed the registry")
		}
	})
}

// TestFailedCommitChangesNothing: commit, then publish. A change the store
// does not take is nowhere: not in the registry, not in the store, and the
// writer's error says nothing was applied; the next change with a working
// store saves only itself.
func TestFailedCommitChangesNothing(t *testing.T) {
	r := newTestRegistry(t, Options{})
	store := newCountingStore(t)
	r.SetStore(store)
	mustRegister(t, r, svcSpec(1, ctr("a", 8001)))
	store.before = func(int64) error { return errors.New("no space left on device") }

	before := r.Lookup(1)
	_, err := r.Register(svcSpec(2, ctr("b", 8002)))
	wantKind(t, err, KindStorage)
	if !strings.Contains(err.Error(), "not applied") || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("storage error %q does not say the change was not applied and why", err)
	}
	_, err = r.PutContainer(1, ctr("c", 8003))
	wantKind(t, err, KindStorage)
	_, err = r.PatchContainer(1, "a", ContainerPatch{Status: statusPtr(StatusDraining)})
	wantKind(t, err, KindStorage)
	_, err = r.Remove(1)
	wantKind(t, err, KindStorage)
	if r.Lookup(2) != nil || r.Lookup(1) != before || r.Lookup(1).Container("a").Status != StatusHealthy {
		t.Fatal("a change the store refused is visible")
	}
	if ops := r.Operations(); ops[OpRegister] != 1 || ops[OpPutContainer] != 0 || ops[OpRemove] != 0 {
		t.Fatalf("operations counted refused changes: %v", ops)
	}

	store.before = nil
	mustRegister(t, r, svcSpec(3, ctr("d", 8004)))
	recs := loadRecords(t, store)
	if len(recs) != 2 || record(recs, 1) == nil || record(recs, 3) == nil || !reflect.DeepEqual(recs, r.Records()) {
		t.Fatalf("after the store recovered, stored %+v; registry %+v", recs, r.Records())
	}
}

// TestGroupCommit makes the sharing of commits deterministic: while the
// first commit is held, more writers queue their changes, and nothing of
// theirs is visible; when it is released, one more commit carries all of
// them. When the held commit fails, its writer gets the error, and the
// waiters, whose changes were made on top of it, are made again and share
// one commit.
func TestGroupCommit(t *testing.T) {
	const waiters = 8
	tests := []struct {
		name     string
		firstErr error
	}{
		{"first commit succeeds", nil},
		{"first commit fails", errors.New("disk on fire")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			store := newCountingStore(t)
			entered, release := make(chan struct{}), make(chan struct{})
			store.before = func(n int64) error {
				if n != 1 {
					return nil
				}
				close(entered)
				<-release
				return tt.firstErr
			}
			r.SetStore(store)

			var releaseOnce sync.Once
			releaseCommit := func() { releaseOnce.Do(func() { close(release) }) }
			t.Cleanup(releaseCommit) // a failed test does not leave the commit held

			errs := make([]error, waiters+1)
			var wg sync.WaitGroup
			firstDone := make(chan struct{})
			wg.Go(func() {
				defer close(firstDone)
				_, errs[0] = r.Register(svcSpec(1, ctr("a", 1)))
			})
			select {
			case <-entered:
			case <-firstDone:
				t.Fatalf("the first Register returned without committing: %v", errs[0])
			}
			if r.Lookup(1) != nil {
				t.Fatal("a change is visible before its commit returned")
			}
			var returned atomic.Int64
			for i := 1; i <= waiters; i++ {
				wg.Go(func() {
					defer returned.Add(1)
					_, errs[i] = r.Register(svcSpec(int64(i+1), ctr("a", 1)))
				})
			}
			for queued := 0; queued < waiters && returned.Load() == 0; {
				runtime.Gosched()
				r.mu.Lock()
				queued = len(r.queue)
				r.mu.Unlock()
			}
			if n := returned.Load(); n != 0 {
				t.Errorf("%d writers returned while the commit before them was held", n)
			}
			if n := r.Summary().Services; n != 0 {
				t.Fatalf("%d services visible while their commits wait", n)
			}
			releaseCommit()
			wg.Wait()

			if tt.firstErr != nil {
				wantKind(t, errs[0], KindStorage)
				if !strings.Contains(errs[0].Error(), tt.firstErr.Error()) {
					t.Fatalf("storage error %q does not say why", errs[0])
				}
			} else if errs[0] != nil {
				t.Fatal(errs[0])
			}
			for i, err := range errs[1:] {
				if err != nil {
					t.Errorf("waiter %d: %v", i+1, err)
				}
			}
			if n := store.commits.Load(); n != 2 {
				t.Fatalf("%d commits for %d changes, want 2 (the held one and one shared by the waiters)", n, waiters+1)
			}
			recs := loadRecords(t, store)
			want := waiters + 1
			if tt.firstErr != nil {
				want = waiters
			}
			if len(recs) != want || !reflect.DeepEqual(recs, r.Records()) {
				t.Fatalf("stored %d records, want %d, equal to the registry's %d", len(recs), want, len(r.Records()))
			}
			if (r.Lookup(1) == nil) != (tt.firstErr != nil) {
				t.Fatalf("image 1 visible: %v, after a commit that failed: %v", r.Lookup(1) != nil, tt.firstErr != nil)
			}
		})
	}
}

// TestConcurrentDurableWriters hammers the store from many writers; run it
// with -race. Every change is acknowledged only once committed, the store
// ends equal to the registry, and concurrent writers share commits.
func TestConcurrentDurableWriters(t *testing.T) {
	const (
		goroutines = 16
		each       = 25
	)
	r := newTestRegistry(t, Options{})
	store := newCountingStore(t)
	r.SetStore(store)

	var changes atomic.Int64
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			<-start
			for i := range each {
				id := int64(g*each + i + 1)
				if _, err := r.Register(svcSpec(id, ctr("a", 8000+i), ctr("b", 9000+i))); err != nil {
					t.Errorf("Register(%d): %v", id, err)
					return
				}
				changes.Add(1)
				if i%5 == 0 {
					if _, err := r.PatchContainer(id, "b", ContainerPatch{Status: statusPtr(StatusDraining), Weight: intPtr(3)}); err != nil {
						t.Errorf("PatchContainer(%d): %v", id, err)
						return
					}
					changes.Add(1)
				}
				if !r.CompareAndSwapStatus(id, "a", StatusHealthy, StatusUnhealthy) {
					t.Errorf("CompareAndSwapStatus(%d)", id)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}

	commits, acked := store.commits.Load(), changes.Load()
	t.Logf("%d acknowledged changes, %d commits", acked, commits)
	if commits >= acked {
		t.Errorf("no commit was shared: %d commits for %d changes", commits, acked)
	}
	recs := loadRecords(t, store)
	if len(recs) != goroutines*each || !reflect.DeepEqual(recs, r.Records()) {
		t.Fatalf("stored %d records, registry has %d, or they differ", len(recs), r.Summary().Services)
	}
	for id := int64(1); id <= goroutines*each; id++ {
		b := storedContainer(recs, id, "b")
		patched := (id-1)%each%5 == 0
		if b == nil || patched != (b.Status == StatusDraining && b.Weight == 3) {
			t.Errorf("image %d container b stored as %+v (patched: %v)", id, b, patched)
		}
		if a := r.Lookup(id).Container("a"); a.Status != StatusUnhealthy {
			t.Errorf("image %d container a lost its verdict: %s", id, a.Status)
		}
	}
}

// TestRestoreValidatesLikeARegistration covers what a stored state may not
// smuggle past the rules a registration follows.
func TestRestoreValidatesLikeARegistration(t *testing.T) {
	rec := func(cs ...ContainerRecord) ServiceRecord {
		return ServiceRecord{ImageID: 1, ImageName: "web", Algorithm: "least_conn", Containers: cs}
	}
	ok := ContainerRecord{ContainerID: "a", Host: "127.0.0.1", Port: 80, Status: StatusHealthy, Weight: 1}

	t.Run("alias is normalised", func(t *testing.T) {
		r := New(Options{})
		if _, err := r.Restore(&Loaded{Revision: 3, Records: []ServiceRecord{rec(ok)}}); err != nil {
			t.Fatal(err)
		}
		if alg := r.Lookup(1).Algorithm; alg != LeastConnections {
			t.Fatalf("algorithm %q, want least_connections", alg)
		}
	})
	t.Run("duplicate container_id", func(t *testing.T) {
		if _, err := New(Options{}).Restore(&Loaded{Records: []ServiceRecord{rec(ok, ok)}}); err == nil || !strings.Contains(err.Error(), "duplicate") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("external port out of range", func(t *testing.T) {
		bad := rec(ok)
		bad.ExternalPort = -5
		if _, err := New(Options{}).Restore(&Loaded{Records: []ServiceRecord{bad}}); err == nil {
			t.Fatal("a negative external port was restored")
		}
	})
	t.Run("replaces, does not merge", func(t *testing.T) {
		r := New(Options{})
		mustRegister(t, r, svcSpec(9, ctr("x", 1)))
		if _, err := r.Restore(&Loaded{Records: []ServiceRecord{rec(ok)}}); err != nil {
			t.Fatal(err)
		}
		if r.Lookup(9) != nil || r.Lookup(1) == nil {
			t.Fatal("Restore merged into the existing content")
		}
	})
	t.Run("guard leaves refused containers out", func(t *testing.T) {
		g, err := NewGuard([]string{"127.0.0.0/8"})
		if err != nil {
			t.Fatal(err)
		}
		r := New(Options{Guard: g})
		meta := ContainerRecord{ContainerID: "m", Host: "169.254.169.254", Port: 80, Status: StatusHealthy, Weight: 1}
		outside := ContainerRecord{ContainerID: "o", Host: "10.1.1.1", Port: 80, Status: StatusHealthy, Weight: 1}
		dropped, err := r.Restore(&Loaded{Records: []ServiceRecord{rec(ok, meta, outside)}})
		if err != nil {
			t.Fatal(err)
		}
		if len(dropped) != 2 || len(r.Lookup(1).Containers) != 1 || r.Lookup(1).Container("a") == nil {
			t.Fatalf("dropped %v, kept %d containers", dropped, len(r.Lookup(1).Containers))
		}
	})
}

// TestSetAsideNeverOverwrites: two corrupt files set aside within one
// second are both kept.
func TestSetAsideNeverOverwrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	f := &FileStore{Path: path}
	var kept []string
	for i := 0; i < 2; i++ {
		if err := os.WriteFile(path, []byte(fmt.Sprintf("bad %d", i)), 0o600); err != nil {
			t.Fatal(err)
		}
		aside, err := f.SetAside()
		if err != nil {
			t.Fatal(err)
		}
		kept = append(kept, aside)
	}
	if kept[0] == kept[1] {
		t.Fatalf("both set aside as %s", kept[0])
	}
	for i, p := range kept {
		if data, _ := os.ReadFile(p); string(data) != fmt.Sprintf("bad %d", i) {
			t.Fatalf("%s holds %q", p, data)
		}
	}
}
