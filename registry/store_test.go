package registry

import (
	"bytes"
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

// newFileStore returns a file store in a fresh temporary directory; the file
// does not exist yet.
func newFileStore(tb testing.TB) *FileStore {
	tb.Helper()
	return &FileStore{Path: filepath.Join(tb.TempDir(), "registry.json")}
}

// countingStore is a FileStore that counts its commits. When before is set it
// runs before commit number n (from 1) and an error it returns fails that
// commit without writing.
type countingStore struct {
	*FileStore
	commits atomic.Int64
	before  func(n int64) error
}

func newCountingStore(tb testing.TB) *countingStore {
	tb.Helper()
	return &countingStore{FileStore: newFileStore(tb)}
}

func (s *countingStore) Commit(st *State) error {
	n := s.commits.Add(1)
	if s.before != nil {
		if err := s.before(n); err != nil {
			return err
		}
	}
	return s.FileStore.Commit(st)
}

// loadState reads the state file with a fresh store, as a restart would.
func loadState(t *testing.T, path string) *State {
	t.Helper()
	st, err := (&FileStore{Path: path}).Load()
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if st == nil {
		t.Fatalf("Load: no state in %s", path)
	}
	return st
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// record returns the stored service of the given image, or nil.
func record(st *State, id int64) *ServiceRecord {
	i := slices.IndexFunc(st.Services, func(s ServiceRecord) bool { return s.ImageID == id })
	if i < 0 {
		return nil
	}
	return &st.Services[i]
}

// storedContainer returns a stored container, or nil.
func storedContainer(st *State, id int64, containerID string) *ContainerRecord {
	rec := record(st, id)
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

// TestStoreRoundTrip restarts a registry from its state file: services,
// containers, ports, statuses, weights and static flags come back, counters do
// not, and the restored registry goes on from the stored version.
func TestStoreRoundTrip(t *testing.T) {
	opts := Options{PortLo: 10000, PortHi: 10009}
	r := newTestRegistry(t, opts)
	store := newFileStore(t)
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
	// Counters and health history are runtime state: not stored.
	b := r.Lookup(1).Container("b").Stats
	b.Begin()
	b.Finish(0, true, time.Millisecond)
	b.SetHealth(time.Now(), "connection refused")
	// An acknowledged change makes everything above durable.
	if _, err := r.PutContainer(5, ctr("x", 1)); KindOf(err) != KindNotFound {
		t.Fatalf("PutContainer on an unknown image: %v", err)
	}
	if _, err := r.PutContainer(3, ContainerSpec{ContainerID: "e", Port: 8005, Status: StatusUnhealthy, Weight: 2}); err != nil {
		t.Fatal(err)
	}

	st := loadState(t, store.Path)
	if st.Version != r.snap.Load().version {
		t.Fatalf("stored version %d, registry at %d", st.Version, r.snap.Load().version)
	}
	if st.Format != StateFormat || st.SavedAt.IsZero() || len(st.Services) != 4 {
		t.Fatalf("stored format %d saved_at %v with %d services", st.Format, st.SavedAt, len(st.Services))
	}

	restored := newTestRegistry(t, opts)
	if _, err := restored.Restore(st); err != nil {
		t.Fatal(err)
	}
	want, got := durableViews(r), durableViews(restored)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("restored services =\n%+v\nwant %+v", got, want)
	}
	if got, want := restored.PortMappings(), r.PortMappings(); !reflect.DeepEqual(got, want) || len(got) != 4 {
		t.Fatalf("restored port mappings = %+v, want %+v", got, want)
	}
	for _, port := range []int{7000, 8080, 10000, 10001} {
		if svc := restored.ByPort(port); svc == nil || svc.ExternalPort != port {
			t.Fatalf("ByPort(%d) = %v after restore", port, svc)
		}
	}
	if !restored.Lookup(4).Static || restored.Lookup(1).Static {
		t.Fatal("static flags not restored")
	}
	if c := restored.Lookup(1).Container("b").Stats; c.Requests.Load() != 0 || c.Failures.Load() != 0 {
		t.Fatal("counters were restored")
	}
	if got := ids(restored.Lookup(2).Available()); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("restored available containers of 2 = %v, want [d]", got)
	}
	if restored.snap.Load().version != st.Version {
		t.Fatalf("restored version %d, stored %d", restored.snap.Load().version, st.Version)
	}

	// The restored registry continues: the next change is the next version,
	// allocation skips the restored ports, and nothing restored is lost.
	restored.SetStore(&FileStore{Path: store.Path})
	if p := mustRegister(t, restored, svcSpec(6, ctr("f", 8006))).ExternalPort; p != 10002 {
		t.Fatalf("port allocated after restore = %d, want 10002", p)
	}
	next := loadState(t, store.Path)
	if next.Version != st.Version+1 {
		t.Fatalf("version after restore and one change = %d, want %d", next.Version, st.Version+1)
	}
	if len(next.Services) != 5 || record(next, 6) == nil || !reflect.DeepEqual(next.Services[:4], st.Services) {
		t.Fatalf("state after restore and one change:\n%+v\nwas %+v", next.Services, st.Services)
	}
}

// TestAcknowledgedChangesAreOnDisk reads the file back after every
// acknowledged change, before doing anything else.
func TestAcknowledgedChangesAreOnDisk(t *testing.T) {
	r := newTestRegistry(t, Options{})
	store := newFileStore(t)
	r.SetStore(store)
	if st, err := store.Load(); st != nil || err != nil {
		t.Fatalf("SetStore wrote a state: %+v, %v", st, err)
	}

	steps := []struct {
		name  string
		op    func() error
		check func(st *State) string // "" when the change is there
	}{
		{"register",
			func() error {
				spec := svcSpec(1, ctr("a", 8001), ctr("b", 8002))
				spec.ExternalPort = 9000
				_, err := r.Register(spec)
				return err
			},
			func(st *State) string {
				rec := record(st, 1)
				if rec == nil || rec.ExternalPort != 9000 || !slices.Equal(storedIDs(rec), []string{"a", "b"}) {
					return "service 1 with a, b on port 9000 missing"
				}
				return ""
			}},
		{"register another",
			func() error { _, err := r.Register(svcSpec(2, ctr("z", 8100))); return err },
			func(st *State) string {
				if record(st, 2) == nil || record(st, 1) == nil {
					return "services 1 and 2 not both stored"
				}
				return ""
			}},
		{"register replaces",
			func() error { _, err := r.Register(svcSpec(2, ctr("y", 8101))); return err },
			func(st *State) string {
				if rec := record(st, 2); rec == nil || !slices.Equal(storedIDs(rec), []string{"y"}) {
					return "service 2 does not have exactly y"
				}
				return ""
			}},
		{"put container",
			func() error {
				_, err := r.PutContainer(1, ContainerSpec{ContainerID: "d", Host: "10.0.0.4", Port: 8004, Status: StatusStarting, Weight: 3})
				return err
			},
			func(st *State) string {
				c := storedContainer(st, 1, "d")
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
			func(st *State) string {
				if c := storedContainer(st, 1, "d"); c == nil || c.Status != StatusHealthy || c.Weight != 7 {
					return "patched status and weight of d not stored"
				}
				return ""
			}},
		{"remove container",
			func() error { _, err := r.RemoveContainer(1, "a"); return err },
			func(st *State) string {
				if rec := record(st, 1); rec == nil || !slices.Equal(storedIDs(rec), []string{"b", "d"}) {
					return "service 1 does not have exactly b, d"
				}
				return ""
			}},
		{"remove",
			func() error { _, err := r.Remove(2); return err },
			func(st *State) string {
				if record(st, 2) != nil || len(st.Services) != 1 {
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
			st := loadState(t, store.Path)
			if msg := step.check(st); msg != "" {
				t.Fatalf("%s; stored: %+v", msg, st.Services)
			}
			if v := r.snap.Load().version; st.Version != v {
				t.Fatalf("stored version %d, registry at %d", st.Version, v)
			}
		})
		if !ok {
			break // later steps build on this one
		}
	}
}

// TestCompareAndSwapStatusDoesNotWrite: a health check change is not written
// on its own, and the next acknowledged change carries it.
func TestCompareAndSwapStatusDoesNotWrite(t *testing.T) {
	r := newTestRegistry(t, Options{})
	store := newCountingStore(t)
	r.SetStore(store)
	mustRegister(t, r, svcSpec(1, ctr("a", 8001), ctr("b", 8002)))
	before, commits, version := readFile(t, store.Path), store.commits.Load(), r.snap.Load().version

	if !r.CompareAndSwapStatus(1, "a", StatusHealthy, StatusUnhealthy) {
		t.Fatal("CompareAndSwapStatus did not change a")
	}
	if r.snap.Load().version != version+1 {
		t.Fatal("CompareAndSwapStatus did not publish a new version")
	}
	if !bytes.Equal(readFile(t, store.Path), before) || store.commits.Load() != commits {
		t.Fatal("CompareAndSwapStatus wrote the state file")
	}
	if c := storedContainer(loadState(t, store.Path), 1, "a"); c.Status != StatusHealthy {
		t.Fatalf("stored status of a = %s before any acknowledged change", c.Status)
	}

	if _, err := r.PatchContainer(1, "b", ContainerPatch{Weight: intPtr(4)}); err != nil {
		t.Fatal(err)
	}
	st := loadState(t, store.Path)
	if a, b := storedContainer(st, 1, "a"), storedContainer(st, 1, "b"); a.Status != StatusUnhealthy || b.Weight != 4 {
		t.Fatalf("after the next change: a %s (want unhealthy), b weight %d (want 4)", a.Status, b.Weight)
	}
	if st.Version != version+2 || store.commits.Load() != commits+1 {
		t.Fatalf("stored version %d (want %d) after %d commits (want %d)", st.Version, version+2, store.commits.Load(), commits+1)
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
			before, commits := readFile(t, store.Path), store.commits.Load()

			wantKind(t, tt.op(r), tt.kind)
			if store.commits.Load() != commits {
				t.Errorf("%d commits for a rejected operation", store.commits.Load()-commits)
			}
			if !bytes.Equal(readFile(t, store.Path), before) {
				t.Error("the state file changed")
			}
		})
	}
}

// TestRestoreRejectsInvalidState: a state that passes the checksum but holds
// what the API would refuse is rejected, naming the service, and the registry
// is left as it was.
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
			_, err := r.Restore(&State{Format: StateFormat, Version: 9, Services: []ServiceRecord{valid(), rec}})
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
		_, err := r.Restore(&State{Format: StateFormat, Version: 9, Services: []ServiceRecord{valid(), other}})
		if err == nil || !strings.Contains(err.Error(), "service 43") || !strings.Contains(err.Error(), "9042") {
			t.Fatalf("Restore with port 9042 on two services: %v", err)
		}
		if r.Lookup(42) != nil {
			t.Fatal("a failed Restore changed the registry")
		}
	})
}

// TestStorageFailure: when the store cannot be written the change is applied
// but the caller hears about it, and the next change with a working store
// saves both.
func TestStorageFailure(t *testing.T) {
	r := newTestRegistry(t, Options{})
	blocker := filepath.Join(t.TempDir(), "not-a-directory")
	if err := os.WriteFile(blocker, []byte("a file where the state directory should be"), 0o600); err != nil {
		t.Fatal(err)
	}
	broken := &FileStore{Path: filepath.Join(blocker, "registry.json")}
	r.SetStore(broken)

	svc, err := r.Register(svcSpec(1, ctr("a", 8001)))
	wantKind(t, err, KindStorage)
	if !strings.Contains(err.Error(), broken.Path) {
		t.Fatalf("storage error %q does not name %s", err, broken.Path)
	}
	if svc == nil || r.Lookup(1) != svc {
		t.Fatal("the change is not visible in memory after a storage error")
	}
	// Still failing: the next change reports it again.
	_, err = r.PutContainer(1, ctr("b", 8002))
	wantKind(t, err, KindStorage)
	if data := readFile(t, blocker); !bytes.HasPrefix(data, []byte("a file where")) {
		t.Fatal("the failed commit touched the blocking file")
	}

	working := newFileStore(t)
	r.SetStore(working)
	mustRegister(t, r, svcSpec(2, ctr("c", 8003)))
	st := loadState(t, working.Path)
	if rec := record(st, 1); rec == nil || !slices.Equal(storedIDs(rec), []string{"a", "b"}) || record(st, 2) == nil {
		t.Fatalf("after a working store was set, stored: %+v", st.Services)
	}
	if st.Version != r.snap.Load().version {
		t.Fatalf("stored version %d, registry at %d", st.Version, r.snap.Load().version)
	}
}

// TestGroupCommit makes the sharing of flushes deterministic: while the first
// flush is held, more writers publish their changes and wait; when it is
// released, one more flush saves all of them. When the held flush fails, its
// writer gets the error and a waiter's flush saves every change.
func TestGroupCommit(t *testing.T) {
	const waiters = 8
	tests := []struct {
		name     string
		firstErr error
	}{
		{"first flush succeeds", nil},
		{"first flush fails", errors.New("disk on fire")},
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
			releaseFlush := func() { releaseOnce.Do(func() { close(release) }) }
			t.Cleanup(releaseFlush) // a failed test does not leave the flush held

			errs := make([]error, waiters+1)
			var wg sync.WaitGroup
			firstDone := make(chan struct{})
			wg.Go(func() {
				defer close(firstDone)
				_, errs[0] = r.Register(svcSpec(1, ctr("a", 1)))
			})
			select {
			case <-entered: // the first flush has taken its snapshot: version 1 only
			case <-firstDone:
				t.Fatalf("the first Register returned without committing: %v", errs[0])
			}
			var returned atomic.Int64
			for i := 1; i <= waiters; i++ {
				wg.Go(func() {
					defer returned.Add(1)
					_, errs[i] = r.Register(svcSpec(int64(i+1), ctr("a", 1)))
				})
			}
			// Wait until every waiter has published (or, if broken, returned).
			for r.snap.Load().version < waiters+1 && returned.Load() < waiters {
				runtime.Gosched()
			}
			if n := returned.Load(); n != 0 {
				t.Errorf("%d writers returned while the flush holding their change was not done", n)
			}
			// A health check change published now, by nobody waiting, is
			// saved by the shared flush too: it saves the latest snapshot.
			// (In a goroutine so that a CompareAndSwapStatus that wrongly
			// waited for the held flush could not hang the test.)
			casChanged := make(chan bool, 1)
			go func() { casChanged <- r.CompareAndSwapStatus(1, "a", StatusHealthy, StatusUnhealthy) }()
			for r.snap.Load().version < waiters+2 {
				runtime.Gosched()
			}
			releaseFlush()
			wg.Wait()
			if !<-casChanged {
				t.Fatal("CompareAndSwapStatus did not change 1/a")
			}

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
			st := loadState(t, store.Path)
			if len(st.Services) != waiters+1 || st.Version != waiters+2 {
				t.Fatalf("stored %d services at version %d, want %d at %d", len(st.Services), st.Version, waiters+1, waiters+2)
			}
			if c := storedContainer(st, 1, "a"); c.Status != StatusUnhealthy {
				t.Fatalf("the shared flush did not save the latest snapshot: 1/a stored %s", c.Status)
			}
			// The registry knows the flush saved everything: the next
			// acknowledged change that finds nothing newer would not write.
			if r.commits.durable != waiters+2 {
				t.Fatalf("durable version %d, want %d", r.commits.durable, waiters+2)
			}
		})
	}
}

// TestConcurrentDurableWriters hammers a file store from many writers; run
// it with -race. Every change is acknowledged only once saved, the file ends
// equal to the registry, and concurrent writers share flushes.
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
	if commits > acked {
		t.Errorf("%d commits for %d changes", commits, acked)
	}
	// Writers blocked on a flush (an fsync) publish meanwhile and share the
	// next one, so some changes always share.
	if commits >= acked {
		t.Errorf("no flush was shared: %d commits for %d changes", commits, acked)
	}

	st := loadState(t, store.Path)
	snap := r.snap.Load()
	if len(st.Services) != goroutines*each || st.Version != snap.version {
		t.Fatalf("stored %d services at version %d, registry has %d at %d", len(st.Services), st.Version, snap.count, snap.version)
	}
	if !reflect.DeepEqual(st.Services, snap.state().Services) {
		t.Fatal("stored services differ from the registry")
	}
	for id := int64(1); id <= goroutines*each; id++ {
		b := storedContainer(st, id, "b")
		patched := (id-1)%each%5 == 0
		if b == nil || patched != (b.Status == StatusDraining && b.Weight == 3) {
			t.Errorf("image %d container b stored as %+v (patched: %v)", id, b, patched)
		}
	}
	entries, err := os.ReadDir(filepath.Dir(store.Path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != filepath.Base(store.Path) {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("directory holds %v, want only the state file", names)
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
		if _, err := r.Restore(&State{Version: 3, Services: []ServiceRecord{rec(ok)}}); err != nil {
			t.Fatal(err)
		}
		if alg := r.Lookup(1).Algorithm; alg != LeastConnections {
			t.Fatalf("algorithm %q, want least_connections", alg)
		}
	})
	t.Run("duplicate container_id", func(t *testing.T) {
		if _, err := New(Options{}).Restore(&State{Services: []ServiceRecord{rec(ok, ok)}}); err == nil || !strings.Contains(err.Error(), "duplicate") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("external port out of range", func(t *testing.T) {
		bad := rec(ok)
		bad.ExternalPort = -5
		if _, err := New(Options{}).Restore(&State{Services: []ServiceRecord{bad}}); err == nil {
			t.Fatal("a negative external port was restored")
		}
	})
	t.Run("replaces, does not merge", func(t *testing.T) {
		r := New(Options{})
		mustRegister(t, r, svcSpec(9, ctr("x", 1)))
		if _, err := r.Restore(&State{Services: []ServiceRecord{rec(ok)}}); err != nil {
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
		dropped, err := r.Restore(&State{Services: []ServiceRecord{rec(ok, meta, outside)}})
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
