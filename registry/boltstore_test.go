package registry

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// boltRecord is the record of image id with n containers, as the registry
// would store it.
func boltRecord(id int64, n int) ServiceRecord {
	cpu := 0.25
	rec := ServiceRecord{ImageID: id, ImageName: fmt.Sprintf("image-%d", id), Algorithm: RoundRobin,
		ExternalPort: 20000 + int(id%10000), Updated: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Containers: make([]ContainerRecord, n)}
	for i := range rec.Containers {
		rec.Containers[i] = ContainerRecord{ContainerID: fmt.Sprintf("c-%d-%d", id, i), Name: "web",
			Host: "10.0.0.1", Port: 8000 + i, Status: StatusHealthy, Weight: 1, Zone: "eu-1", CPUUsage: &cpu}
	}
	return rec
}

// boltPut is the change that stores rec.
func boltPut(rec ServiceRecord) Change { return Change{ImageID: rec.ImageID, Record: &rec} }

// openBoltAt opens (or creates) the database at path and closes it at the end
// of the test.
func openBoltAt(t testing.TB, path string) *BoltStore {
	t.Helper()
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// boltCommit commits changes and checks the revision it returns.
func boltCommit(t testing.TB, s *BoltStore, want int64, changes ...Change) {
	t.Helper()
	rev, err := s.Commit(context.Background(), changes)
	if err != nil {
		t.Fatal(err)
	}
	if rev != want {
		t.Fatalf("Commit returned revision %d, want %d", rev, want)
	}
}

// boltCheckLoad checks that s holds exactly want at revision rev.
func boltCheckLoad(t *testing.T, s *BoltStore, rev int64, want ...ServiceRecord) {
	t.Helper()
	loaded, err := s.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Revision != rev {
		t.Errorf("revision %d, want %d", loaded.Revision, rev)
	}
	if want == nil {
		want = []ServiceRecord{}
	}
	if !reflect.DeepEqual(loaded.Records, want) {
		t.Errorf("loaded\n%+v\nwant\n%+v", loaded.Records, want)
	}
}

// boltWantCorrupt checks that err is a *CorruptStateError about path.
func boltWantCorrupt(t *testing.T, err error, path string) {
	t.Helper()
	var corrupt *CorruptStateError
	if !errors.As(err, &corrupt) {
		t.Fatalf("got %v, want a *CorruptStateError", err)
	}
	if corrupt.Where != path || !strings.Contains(err.Error(), path) {
		t.Fatalf("%q: Where is %q, want %q", err, corrupt.Where, path)
	}
}

// rawBolt lets change edit the database at path directly with bbolt, as
// damage (or another program) would.
func rawBolt(t *testing.T, path string, change func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(change); err != nil {
		t.Fatal(err)
	}
}

func TestBoltCommitAndLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "imagelb", "registry.db")
	s := openBoltAt(t, path)
	if s.Describe() != path {
		t.Errorf("Describe() = %q, want %q", s.Describe(), path)
	}
	for name, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700 | os.ModeDir} {
		if info, err := os.Stat(name); err != nil || info.Mode() != want {
			t.Errorf("%s: mode %v (%v), want %v", name, info.Mode(), err, want)
		}
	}
	boltCheckLoad(t, s, 0)

	// 256 sorts before 2 and 10 as bytes of its decimal form, not as a number
	a, b, c := boltRecord(256, 2), boltRecord(2, 1), boltRecord(10, 0)
	boltCommit(t, s, 1, boltPut(a), boltPut(b), boltPut(c))
	boltCheckLoad(t, s, 1, b, c, a)

	b2 := boltRecord(2, 3)
	b2.Static, b2.Sticky = true, true
	boltCommit(t, s, 2, boltPut(b2), Change{ImageID: 10}, Change{ImageID: 77}) // 77 was never stored
	boltCheckLoad(t, s, 2, b2, a)

	// changes to one image apply in order
	boltCommit(t, s, 3, Change{ImageID: 256}, boltPut(boltRecord(256, 5)), boltPut(boltRecord(256, 1)))
	boltCheckLoad(t, s, 3, b2, boltRecord(256, 1))
}

func TestBoltCommitAllOrNothing(t *testing.T) {
	s := openBoltAt(t, filepath.Join(t.TempDir(), "registry.db"))
	a := boltRecord(1, 2)
	boltCommit(t, s, 1, boltPut(a))

	wrong := boltRecord(3, 1)
	for name, changes := range map[string][]Change{
		"record of another image": {boltPut(boltRecord(2, 2)), Change{ImageID: 1}, {ImageID: 4, Record: &wrong}},
		"image_id not positive":   {boltPut(boltRecord(2, 2)), Change{ImageID: 1}, {ImageID: 0}},
	} {
		if _, err := s.Commit(context.Background(), changes); err == nil {
			t.Errorf("%s: Commit succeeded", name)
		}
		boltCheckLoad(t, s, 1, a)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Commit(ctx, []Change{boltPut(boltRecord(2, 2))}); !errors.Is(err, context.Canceled) {
		t.Errorf("Commit with a cancelled context: %v", err)
	}
	boltCheckLoad(t, s, 1, a)
	boltCommit(t, s, 2, boltPut(boltRecord(2, 2)))
}

func TestBoltReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	var want []ServiceRecord
	for i := int64(1); i <= 300; i++ {
		want = append(want, boltRecord(i, 2))
		boltCommit(t, s, i, boltPut(want[i-1]))
	}
	boltCommit(t, s, 301, Change{ImageID: 7})
	want = append(want[:6], want[7:]...)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openBoltAt(t, path)
	boltCheckLoad(t, s, 301, want...)
	boltCommit(t, s, 302, boltPut(boltRecord(7, 1)))
}

func TestBoltCorrupt(t *testing.T) {
	dir := t.TempDir()
	// newDB writes a database of n records and returns its path.
	newDB := func(t *testing.T, name string, n int) string {
		t.Helper()
		path := filepath.Join(dir, name)
		s, err := OpenBolt(path)
		if err != nil {
			t.Fatal(err)
		}
		changes := make([]Change, n)
		for i := range changes {
			changes[i] = boltPut(boltRecord(int64(i+1), 2))
		}
		if _, err := s.Commit(context.Background(), changes); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		return path
	}
	// openLoad opens and loads path and returns the first error.
	openLoad := func(path string) error {
		s, err := OpenBolt(path)
		if err != nil {
			return err
		}
		defer s.Close()
		_, err = s.Load(context.Background())
		return err
	}

	t.Run("garbage", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		for _, size := range []int{100, 64 << 10} {
			path := filepath.Join(dir, fmt.Sprintf("garbage-%d", size))
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := OpenBolt(path)
			boltWantCorrupt(t, err, path)
		}
	})

	t.Run("truncated", func(t *testing.T) {
		whole := newDB(t, "whole", 3000)
		data, err := os.ReadFile(whole)
		if err != nil {
			t.Fatal(err)
		}
		var used int64
		db, err := bolt.Open(whole, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		db.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil })
		db.Close()
		for _, size := range []int64{used / 2, used - 4096, used / 4 * 3, 3 * 4096, 5000} {
			path := filepath.Join(dir, fmt.Sprintf("truncated-%d", size))
			if err := os.WriteFile(path, data[:size], 0o600); err != nil {
				t.Fatal(err)
			}
			boltWantCorrupt(t, openLoad(path), path)
		}
		// the file is still a whole database: what failed is only that copy
		if err := openLoad(whole); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("record does not decode", func(t *testing.T) {
		path := newDB(t, "bad-json", 50)
		rawBolt(t, path, func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("services")).Put(boltKey(17), []byte(`{"image_id": 17, "containers": [`))
		})
		err := openLoad(path)
		boltWantCorrupt(t, err, path)
		if !strings.Contains(err.Error(), "image 17") {
			t.Errorf("%q does not name the record", err)
		}
	})

	t.Run("record under another key", func(t *testing.T) {
		path := newDB(t, "bad-key", 50)
		rawBolt(t, path, func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("services")).Put(boltKey(17), []byte(`{"image_id": 18, "containers": []}`))
		})
		boltWantCorrupt(t, openLoad(path), path)
	})

	t.Run("unknown format", func(t *testing.T) {
		path := newDB(t, "format-2", 1)
		rawBolt(t, path, func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("format"), []byte("2")) })
		_, err := OpenBolt(path)
		boltWantCorrupt(t, err, path)
		if !strings.Contains(err.Error(), `unknown format "2"`) {
			t.Errorf("%q does not name the format", err)
		}
	})

	t.Run("unknown bucket", func(t *testing.T) {
		path := newDB(t, "extra-bucket", 3)
		rawBolt(t, path, func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("widgets")); return err })
		boltWantCorrupt(t, openLoad(path), path)
	})

	t.Run("bucket among the records", func(t *testing.T) {
		path := newDB(t, "nested-bucket", 3)
		rawBolt(t, path, func(tx *bolt.Tx) error {
			_, err := tx.Bucket([]byte("services")).CreateBucket(boltKey(2000))
			return err
		})
		boltWantCorrupt(t, openLoad(path), path)
	})

	// Every page and record reads fine, but the freelist also lists a page
	// in use, which the next commit would overwrite: only bbolt's
	// consistency check finds it.
	t.Run("page in use listed as free", func(t *testing.T) {
		path := newDB(t, "freelist", 200)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// bbolt's layout (native byte order): a page header is id (8
		// bytes), flags (2), count (2), overflow (4); the meta follows
		// the header of pages 0 and 1, its fields magic, version and page
		// size (4 bytes each), flags (4), the root bucket's page (8) and
		// sequence (8), the freelist's page (8), the high-water mark (8)
		// and the transaction id (8). The newer meta is the one in use.
		le := binary.LittleEndian
		pageSize := int(le.Uint32(data[24:]))
		meta := 0
		if le.Uint64(data[pageSize+64:]) > le.Uint64(data[64:]) {
			meta = pageSize
		}
		root, freelist := le.Uint64(data[meta+32:]), int(le.Uint64(data[meta+48:]))
		page := data[freelist*pageSize:]
		count := int(le.Uint16(page[10:]))
		if count >= 0xFFFF || 16+(count+1)*8 > pageSize {
			t.Fatalf("freelist of %d pages: too long to edit here", count)
		}
		le.PutUint64(page[16+count*8:], root)
		le.PutUint16(page[10:], uint16(count+1))
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		err = openLoad(path)
		boltWantCorrupt(t, err, path)
		if !strings.Contains(err.Error(), "consistency check") {
			t.Errorf("%q is not bbolt's consistency check", err)
		}
	})

	t.Run("another program's database", func(t *testing.T) {
		path := filepath.Join(dir, "other")
		rawBolt(t, path, func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("widgets")); return err })
		_, err := OpenBolt(path)
		boltWantCorrupt(t, err, path)
	})
}

func TestBoltLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	first := openBoltAt(t, path)
	boltCommit(t, first, 1, boltPut(boltRecord(1, 1)))

	start := time.Now()
	second, err := OpenBolt(path)
	if err == nil {
		second.Close()
		t.Fatal("a second OpenBolt of an open database succeeded")
	}
	if waited := time.Since(start); waited > 3*time.Second {
		t.Errorf("the second OpenBolt took %v to fail", waited)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "another Caddy is using it") || !errors.Is(err, berrors.ErrTimeout) {
		t.Errorf("unclear error: %v", err)
	}
	var corrupt *CorruptStateError
	if errors.As(err, &corrupt) {
		t.Errorf("a locked database is reported as corrupt: %v", err)
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	boltCheckLoad(t, openBoltAt(t, path), 1, boltRecord(1, 1))
}

func TestBoltSetAside(t *testing.T) {
	clock := time.Date(2025, 6, 7, 8, 9, 10, 0, time.UTC)
	now = func() time.Time { return clock }
	t.Cleanup(func() { now = time.Now })
	dir := t.TempDir()
	path := filepath.Join(dir, "registry.db")

	// a database that OpenBolt refuses
	garbage := []byte(strings.Repeat("not a database ", 1000))
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenBolt(path)
	boltWantCorrupt(t, err, path)
	aside, err := SetAsideFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := path + ".corrupt-20250607T080910Z"; aside != want {
		t.Fatalf("set aside as %s, want %s", aside, want)
	}

	// a database whose records Load refuses, set aside at the same second
	s := openBoltAt(t, path)
	boltCommit(t, s, 1, boltPut(boltRecord(1, 1)))
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(boltServices).Put(boltKey(1), []byte("{")) }); err != nil {
		t.Fatal(err)
	}
	_, err = s.Load(context.Background())
	boltWantCorrupt(t, err, path)
	second, err := s.SetAside()
	if err != nil {
		t.Fatal(err)
	}
	if want := path + ".corrupt-20250607T080910Z-2"; second != want {
		t.Fatalf("set aside as %s, want %s", second, want)
	}
	if data, err := os.ReadFile(aside); err != nil || string(data) != string(garbage) {
		t.Errorf("the first file set aside changed (%v)", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s is still there (%v)", path, err)
	}

	// a new database takes the place
	boltCheckLoad(t, openBoltAt(t, path), 0)
}

// boltWriteJSON writes records as the file store of earlier versions did.
func boltWriteJSON(t *testing.T, path string, records ...ServiceRecord) {
	t.Helper()
	if err := (&FileStore{Path: path}).Commit(&State{Version: 9, SavedAt: time.Now().UTC(), Services: records}); err != nil {
		t.Fatal(err)
	}
}

func TestBoltImportJSON(t *testing.T) {
	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "registry.json")
	a, b := boltRecord(3, 2), boltRecord(12, 2)
	b.Algorithm, b.Static, b.Containers[1].Status = LeastConnections, true, StatusDraining
	boltWriteJSON(t, jsonPath, a, b)

	s := openBoltAt(t, filepath.Join(dir, "registry.db"))
	n, err := ImportJSON(s, jsonPath)
	if err != nil || n != 2 {
		t.Fatalf("ImportJSON: %d, %v", n, err)
	}
	boltCheckLoad(t, s, 1, a, b)
	if _, err := os.Stat(jsonPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s is still there (%v)", jsonPath, err)
	}
	if _, err := (&FileStore{Path: jsonPath + ".imported"}).Load(); err != nil {
		t.Errorf("the imported file is not kept as it was: %v", err)
	}

	// nothing left to import
	if n, err := ImportJSON(s, jsonPath); err != nil || n != 0 {
		t.Fatalf("second ImportJSON: %d, %v", n, err)
	}
	// a database that holds anything is never imported into
	boltWriteJSON(t, jsonPath, boltRecord(40, 1))
	if n, err := ImportJSON(s, jsonPath); err != nil || n != 0 {
		t.Fatalf("ImportJSON into a database in use: %d, %v", n, err)
	}
	boltCheckLoad(t, s, 1, a, b)
	if _, err := os.Stat(jsonPath); err != nil {
		t.Errorf("a file that was not imported was moved: %v", err)
	}
}

func TestBoltImportJSONRefused(t *testing.T) {
	dir := t.TempDir()
	s := openBoltAt(t, filepath.Join(dir, "registry.db"))
	if n, err := ImportJSON(s, filepath.Join(dir, "missing.json")); err != nil || n != 0 {
		t.Fatalf("ImportJSON of a missing file: %d, %v", n, err)
	}

	// a file changed after it was written fails its checksum
	jsonPath := filepath.Join(dir, "registry.json")
	boltWriteJSON(t, jsonPath, boltRecord(1, 2))
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(jsonPath, []byte(strings.Replace(string(data), "10.0.0.1", "10.6.6.6", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = ImportJSON(s, jsonPath)
	boltWantCorrupt(t, err, jsonPath)
	boltCheckLoad(t, s, 0)
	if _, err := os.Stat(jsonPath); err != nil {
		t.Errorf("a file that was not imported was moved: %v", err)
	}
}

func TestBoltMirrorReplace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cache.db")
	s := openBoltAt(t, path)
	ctx := context.Background()
	a, b, c := boltRecord(1, 2), boltRecord(2, 2), boltRecord(3, 2)
	if err := s.Mirror(ctx, []Change{boltPut(a), boltPut(b)}, 1000); err != nil {
		t.Fatal(err)
	}
	boltCheckLoad(t, s, 1000, a, b)
	if err := s.Mirror(ctx, []Change{{ImageID: 1}, boltPut(c)}, 1042); err != nil {
		t.Fatal(err)
	}
	boltCheckLoad(t, s, 1042, b, c)

	d, e := boltRecord(4, 1), boltRecord(9, 3)
	if err := s.Replace(ctx, &Loaded{Records: []ServiceRecord{b, d, e}, Revision: 2000}); err != nil {
		t.Fatal(err)
	}
	boltCheckLoad(t, s, 2000, b, d, e)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openBoltAt(t, path)
	boltCheckLoad(t, s, 2000, b, d, e)

	// a refused replacement changes nothing
	wrong := boltRecord(5, 1)
	wrong.ImageID = -5
	if err := s.Replace(ctx, &Loaded{Records: []ServiceRecord{a, wrong}, Revision: 3000}); err == nil {
		t.Fatal("Replace with a negative image_id succeeded")
	}
	boltCheckLoad(t, s, 2000, b, d, e)

	if err := s.Replace(ctx, &Loaded{Revision: 2500}); err != nil {
		t.Fatal(err)
	}
	boltCheckLoad(t, s, 2500)
}

// TestBoltDiskFull commits to a database on a file system that is really
// full: the commit fails and leaves the database as it was.
func TestBoltDiskFull(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (this test needs root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	path := filepath.Join(dir, "registry.db")
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, b := boltRecord(1, 2), boltRecord(2, 2)
	boltCommit(t, s, 1, boltPut(a), boltPut(b))

	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Write(make([]byte, 2<<20)) // more than the file system holds
	f.Close()
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the tmpfs: %v, want ENOSPC", err)
	}

	big := boltRecord(3, 500)
	_, err = s.Commit(context.Background(), []Change{boltPut(boltRecord(4, 1)), {ImageID: 1}, boltPut(big)})
	if err == nil {
		t.Fatal("a commit to a full disk succeeded")
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "nothing was changed") {
		t.Errorf("unclear error: %v", err)
	}
	t.Logf("the commit failed with: %v", err)
	boltCheckLoad(t, s, 1, a, b)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openBoltAt(t, path)
	boltCheckLoad(t, s, 1, a, b)
	if err := s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			t.Errorf("bbolt finds the database inconsistent: %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// with room again, the same commit goes through
	boltCommit(t, s, 2, boltPut(boltRecord(4, 1)), Change{ImageID: 1}, boltPut(big))
	boltCheckLoad(t, s, 2, b, big, boltRecord(4, 1))
}

// fillBolt returns a database at path holding n records of two containers.
func fillBolt(b *testing.B, path string, n int) *BoltStore {
	b.Helper()
	s := openBoltAt(b, path)
	records := make([]ServiceRecord, n)
	for i := range records {
		records[i] = boltRecord(int64(i+1), 2)
	}
	if err := s.Replace(context.Background(), &Loaded{Records: records, Revision: 1}); err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkBoltCommit commits one record of two containers to a database
// that holds 1,000 to 100,000 images: the cost should not grow with them.
func BenchmarkBoltCommit(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("images=%d", n), func(b *testing.B) {
			s := fillBolt(b, filepath.Join(b.TempDir(), "registry.db"), n)
			ctx := context.Background()
			rec := boltRecord(1, 2)
			for i := 0; b.Loop(); i++ {
				rec.ImageID = int64(i%n + 1)
				rec.Containers[0].Weight = i
				if _, err := s.Commit(ctx, []Change{boltPut(rec)}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBoltLoad starts from a database of 100,000 records of two
// containers: "open" is OpenBolt, which runs bbolt's consistency check
// ("check" alone), and "load" is Load, which decodes every record.
func BenchmarkBoltLoad(b *testing.B) {
	path := filepath.Join(b.TempDir(), "registry.db")
	if err := fillBolt(b, path, 100000).Close(); err != nil {
		b.Fatal(err)
	}
	b.Run("open", func(b *testing.B) {
		for b.Loop() {
			s, err := OpenBolt(path)
			if err != nil {
				b.Fatal(err)
			}
			s.Close()
		}
	})
	s := openBoltAt(b, path)
	b.Run("check", func(b *testing.B) {
		for b.Loop() {
			if err := s.db.View(func(tx *bolt.Tx) error {
				for err := range tx.Check() {
					return err
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("load", func(b *testing.B) {
		for b.Loop() {
			loaded, err := s.Load(context.Background())
			if err != nil || len(loaded.Records) != 100000 {
				b.Fatal(err)
			}
		}
	})
}
