package registry

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// sampleState is a small state as the registry would store it.
func sampleState() *State {
	return &State{Version: 3, SavedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), Services: []ServiceRecord{
		{ImageID: 1, ImageName: "image-1", Algorithm: RoundRobin, ExternalPort: 8080, Containers: []ContainerRecord{
			{ContainerID: "a", Name: "web", Host: "127.0.0.1", Port: 8001, Status: StatusHealthy, Weight: 1},
			{ContainerID: "b", Host: "::1", Port: 8002, Status: StatusDraining, Weight: 0},
		}},
		{ImageID: 2, ImageName: "image-2", Algorithm: LeastConnections, Static: true, Containers: []ContainerRecord{}},
	}}
}

// writeSample commits sampleState to a new file store and returns the store
// and the bytes written.
func writeSample(t *testing.T) (*FileStore, []byte) {
	t.Helper()
	store := newFileStore(t)
	if err := store.Commit(sampleState()); err != nil {
		t.Fatal(err)
	}
	return store, readFile(t, store.Path)
}

// rewrite decodes the stored JSON without verifying it, lets change edit it,
// and encodes it again without recomputing the checksum.
func rewrite(t *testing.T, data []byte, change func(st *State)) []byte {
	t.Helper()
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	change(&st)
	out, err := json.MarshalIndent(&st, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestFileStoreCommitAndLoad(t *testing.T) {
	store, _ := writeSample(t)
	st, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	want := sampleState()
	if st.Format != StateFormat || len(st.Checksum) != 64 {
		t.Fatalf("format %d checksum %q", st.Format, st.Checksum)
	}
	st.Format, st.Checksum = 0, ""
	if !reflect.DeepEqual(st, want) {
		t.Fatalf("loaded\n%+v\nwant %+v", st, want)
	}

	// A second commit replaces the file and leaves no temporary file behind.
	next := sampleState()
	next.Version = 4
	next.Services = next.Services[:1]
	if err := store.Commit(next); err != nil {
		t.Fatal(err)
	}
	if st := loadState(t, store.Path); st.Version != 4 || len(st.Services) != 1 {
		t.Fatalf("after the second commit: version %d with %d services", st.Version, len(st.Services))
	}
	entries, err := os.ReadDir(filepath.Dir(store.Path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("%d entries in the state directory, want only the state file", len(entries))
	}
	if info, err := os.Stat(store.Path); err != nil || info.Mode().Perm()&0o077 != 0 {
		t.Fatalf("state file mode %v, %v: want it readable by its owner only", info.Mode(), err)
	}
}

func TestFileStoreCommitCreatesDirectories(t *testing.T) {
	store := &FileStore{Path: filepath.Join(t.TempDir(), "caddy", "imagelb", "registry.json")}
	if err := store.Commit(sampleState()); err != nil {
		t.Fatal(err)
	}
	if st := loadState(t, store.Path); st.Version != 3 {
		t.Fatalf("version %d", st.Version)
	}
}

// TestFileStoreFailedCommitLeavesNoTempFile: when the rename fails (the path is
// a directory) the commit reports it and leaves no temporary file.
func TestFileStoreFailedCommitLeavesNoTempFile(t *testing.T) {
	dir := t.TempDir()
	store := &FileStore{Path: filepath.Join(dir, "registry.json")}
	if err := os.Mkdir(store.Path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := store.Commit(sampleState()); err == nil {
		t.Fatal("Commit over a directory succeeded")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || !entries[0].IsDir() {
		t.Fatalf("%d entries left in the directory, want only the directory in the way", len(entries))
	}
}

func TestFileStoreLoadMissing(t *testing.T) {
	for _, path := range []string{
		filepath.Join(t.TempDir(), "registry.json"),
		filepath.Join(t.TempDir(), "no", "such", "dir", "registry.json"),
	} {
		st, err := (&FileStore{Path: path}).Load()
		if st != nil || err != nil {
			t.Fatalf("Load(%s) = %+v, %v; want nil, nil", path, st, err)
		}
	}
}

func TestFileStoreLoadCorrupt(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, good []byte) []byte
		want    string
		corrupt bool // a *CorruptStateError
	}{
		{"truncated", func(t *testing.T, good []byte) []byte { return good[:len(good)/2] }, "decoding", true},
		{"empty", func(t *testing.T, good []byte) []byte { return nil }, "decoding", true},
		{"not JSON", func(t *testing.T, good []byte) []byte { return []byte("hello\n") }, "decoding", true},
		{"port changed", func(t *testing.T, good []byte) []byte {
			return rewrite(t, good, func(st *State) { st.Services[0].Containers[0].Port = 9999 })
		}, "checksum", true},
		{"container dropped", func(t *testing.T, good []byte) []byte {
			return rewrite(t, good, func(st *State) { st.Services[0].Containers = st.Services[0].Containers[:1] })
		}, "checksum", true},
		{"checksum missing", func(t *testing.T, good []byte) []byte {
			return rewrite(t, good, func(st *State) { st.Checksum = "" })
		}, "checksum", true},
		{"unknown format", func(t *testing.T, good []byte) []byte {
			return rewrite(t, good, func(st *State) { st.Format = StateFormat + 1 })
		}, "unknown format 2", false},
		{"no format", func(t *testing.T, good []byte) []byte { return []byte(`{"version": 1, "services": []}`) }, "unknown format 0", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store, good := writeSample(t)
			if err := os.WriteFile(store.Path, tt.damage(t, good), 0o600); err != nil {
				t.Fatal(err)
			}
			st, err := store.Load()
			if err == nil || st != nil {
				t.Fatalf("Load = %+v, %v; want an error", st, err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), store.Path) {
				t.Fatalf("error %q does not name %q and the file", err, tt.want)
			}
			var corrupt *CorruptStateError
			isCorrupt := errors.As(err, &corrupt)
			if tt.corrupt && (!isCorrupt || corrupt.Where != store.Path) {
				t.Fatalf("error %T %q is not a *CorruptStateError for %s", err, err, store.Path)
			}
			t.Logf("%T: %v", err, err)
		})
	}
}

func TestFileStoreLoadUnreadable(t *testing.T) {
	store := &FileStore{Path: t.TempDir()} // a directory: exists, cannot be read as a file
	st, err := store.Load()
	var corrupt *CorruptStateError
	if err == nil || st != nil || errors.As(err, &corrupt) {
		t.Fatalf("Load of a directory = %+v, %v; want an error that is not corruption", st, err)
	}
}

func TestFileStoreSetAside(t *testing.T) {
	clock := time.Date(2025, 1, 2, 3, 4, 5, 600, time.UTC)
	now = func() time.Time { return clock }
	t.Cleanup(func() { now = time.Now })

	store, good := writeSample(t)
	bad := good[:len(good)/2]
	if err := os.WriteFile(store.Path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	aside, err := store.SetAside()
	if err != nil {
		t.Fatal(err)
	}
	if want := store.Path + ".corrupt-20250102T030405Z"; aside != want {
		t.Fatalf("set aside as %s, want %s", aside, want)
	}
	if got := readFile(t, aside); string(got) != string(bad) {
		t.Fatal("the file set aside does not hold the corrupt bytes")
	}
	if st, err := store.Load(); st != nil || err != nil {
		t.Fatalf("Load after SetAside = %+v, %v; want nil, nil", st, err)
	}
	// The store works again; the file set aside stays.
	if err := store.Commit(sampleState()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(aside); err != nil {
		t.Fatal(err)
	}

	if _, err := (&FileStore{Path: filepath.Join(t.TempDir(), "missing.json")}).SetAside(); err == nil {
		t.Fatal("SetAside of a missing file succeeded")
	}
}

func TestDecodeStateRoundTrip(t *testing.T) {
	st := sampleState()
	st.Services[0].ImageName = `name with <html> & "quotes" and ünïcödé`
	data, err := EncodeState(st)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeState(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, st) {
		t.Fatalf("decoded\n%+v\nwant %+v", got, st)
	}
}

// newFileStore returns a file store in a fresh temporary directory; the file
// does not exist yet.
func newFileStore(tb testing.TB) *FileStore {
	tb.Helper()
	return &FileStore{Path: filepath.Join(tb.TempDir(), "registry.json")}
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
