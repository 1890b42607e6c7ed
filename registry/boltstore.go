package registry

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// BoltStore keeps the registry in a local bbolt database, one record per
// image: `store local`, the default. A commit writes the changed records
// (and the pages of the B+tree above them), so its cost follows the size of
// the change, not of the registry.
//
// The file holds two buckets. "services" maps each image_id, as an 8-byte
// big-endian integer so that the keys sort numerically, to the JSON of its
// ServiceRecord. "meta" holds "format" (BoltFormat) and "revision", an
// 8-byte big-endian integer that every commit raises by one.
//
// bbolt locks the file: one process at a time can open it. It is also the
// local cache of a shared store (Mirror, Replace), which then sets the
// revision to the shared store's.
type BoltStore struct {
	path string
	db   *bolt.DB
}

// BoltFormat is the version of a BoltStore's layout, stored under "format"
// in the "meta" bucket.
const BoltFormat = "1"

// boltLockTimeout is how long OpenBolt waits for another process's lock on
// the file before it gives up.
const boltLockTimeout = time.Second

var (
	// boltUsage holds the usage ledger's buckets: the key is the
	// interval's start (unix nanoseconds, 8 bytes big-endian, so that keys
	// sort by time) followed by the node's id; the value the JSON of the
	// usage per image. boltUsageTotals maps a node's id to its totals.
	boltUsage       = []byte("usage")
	boltUsageTotals = []byte("usage_totals")
	boltServices    = []byte("services")
	boltMeta        = []byte("meta")
	boltFormatKey   = []byte("format")
	boltRevisionKey = []byte("revision")
	boltBuckets     = [][]byte{boltMeta, boltServices, boltUsage, boltUsageTotals}
)

// the local database is a record store
var _ RecordStore = (*BoltStore)(nil)

// OpenBolt opens the database at path, creating it (and its directory, with
// mode 0700) when there is none; the file gets mode 0600. It fails within
// about a second when another process holds the file, and with a
// *CorruptStateError when the file is not a registry database it can read:
// damaged or inconsistent pages, a truncated file, another layout version.
// Damage inside a record is found by Load, which decodes every one.
func OpenBolt(path string) (*BoltStore, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating the directory of the registry database: %w", err)
	}
	// bbolt panics on some pages it cannot make sense of, and reading a
	// page past the end of a truncated file faults; boltGuard turns both
	// into a *CorruptStateError. A panic inside bolt.Open skips its own
	// clean-up, so the file is caught here to be closed (which releases
	// the lock; the read-only mapping of the damaged file stays).
	var file *os.File
	opts := &bolt.Options{
		Timeout: boltLockTimeout,
		// The freelist stays synced at each commit (bbolt's default): with
		// NoFreelistSync, as etcd runs it, bbolt rebuilds it at open by
		// walking every page in a goroutine of its own, where a damaged
		// file would crash the process instead of being refused.
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			file = f
			return f, err
		},
	}
	var db *bolt.DB
	err := boltGuard(path, func() (err error) {
		db, err = bolt.Open(path, 0o600, opts)
		return err
	})
	if err != nil {
		if file != nil {
			_ = file.Close() // bolt.Open closed it unless it panicked
		}
		var corrupt *CorruptStateError
		switch {
		case errors.As(err, &corrupt):
			return nil, err
		case errors.Is(err, berrors.ErrTimeout):
			return nil, fmt.Errorf("opening the registry database %s: another Caddy is using it (its lock was not released within %s); stop that process, or point this one at another file: %w",
				path, boltLockTimeout, err)
		case boltOpenCorrupt(err):
			return nil, &CorruptStateError{Where: path, Err: err}
		default:
			return nil, fmt.Errorf("opening the registry database %s: %w", path, err)
		}
	}
	s := &BoltStore{path: path, db: db}
	err = s.init()
	if err == nil {
		err = s.verify()
	}
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// boltOpenCorrupt tells whether an error of bolt.Open means that the file
// is damaged or not a bbolt database, rather than that it cannot be opened.
func boltOpenCorrupt(err error) bool {
	return errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrChecksum) ||
		errors.Is(err, berrors.ErrVersionMismatch) || errors.Is(err, berrors.ErrInvalidMapping) ||
		strings.HasPrefix(err.Error(), "file size too small") // bbolt has no sentinel for it
}

// boltGuard runs fn, turning a panic into a *CorruptStateError for path.
// bbolt reads the file through a memory mapping and trusts what it finds:
// it panics on a page it cannot make sense of, and reading a page that a
// truncated file no longer holds faults, which SetPanicOnFault (for this
// goroutine, for the duration of fn) makes a panic instead of a crash.
func boltGuard(path string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = &CorruptStateError{Where: path, Err: fmt.Errorf("the database cannot be read: %v", r)}
		}
	}()
	return fn()
}

// corrupt returns a *CorruptStateError for the database's file.
func (s *BoltStore) corrupt(format string, args ...any) error {
	return &CorruptStateError{Where: s.path, Err: fmt.Errorf(format, args...)}
}

// init creates the buckets of a new database, and checks those of an
// existing one.
func (s *BoltStore) init() error {
	empty := false
	err := boltGuard(s.path, func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			k, _ := tx.Cursor().First()
			empty = k == nil // no bucket at all
			if empty {
				return nil
			}
			if _, err := s.revision(tx); err != nil {
				return err
			}
			if tx.Bucket(boltServices) == nil {
				return s.corrupt("the database has no %q bucket: it is not a registry database, or it was damaged", boltServices)
			}
			return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
				if !slices.ContainsFunc(boltBuckets, func(b []byte) bool { return bytes.Equal(b, name) }) {
					return s.corrupt("the database has a bucket %q that this build does not know: it is not a registry database, or it was damaged", name)
				}
				return nil
			})
		})
	})
	if err != nil || !empty {
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(boltMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(boltFormatKey, []byte(BoltFormat)); err != nil {
			return err
		}
		if err := meta.Put(boltRevisionKey, boltKey(0)); err != nil {
			return err
		}
		_, err = tx.CreateBucket(boltServices)
		return err
	})
	if err != nil {
		return fmt.Errorf("creating the registry database %s: %w", s.path, err)
	}
	return nil
}

// verify checks the structure of the file before anything is written to
// it: that the file is as long as its pages reach (a file cut short can
// open when the pages it reads first are whole), and bbolt's own
// consistency check (Tx.Check: every page reachable once and not also
// free, keys in order), which finds damage that would make a later commit
// overwrite pages in use. At 100,000 records the check takes about 11ms
// and OpenBolt as a whole about 70ms (BenchmarkBoltLoad), against about 1s
// for Load, so it runs at every start.
//
// The check runs in a goroutine of its own, where reading a page that the
// file does not hold would crash the process instead of panicking under
// boltGuard. So every page it reads is first read here, under boltGuard:
// init refused buckets other than "meta" and "services", and the walk
// below reads each record's key and value and seeks each key from the
// root, which reads the branch pages and their keys. No commit can run
// meanwhile: the store is not handed out yet.
func (s *BoltStore) verify() error {
	info, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("reading the registry database %s: %w", s.path, err)
	}
	var problems []string
	err = boltGuard(s.path, func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			if info.Size() < tx.Size() {
				return s.corrupt("the file is %d bytes but its pages reach byte %d: it was truncated", info.Size(), tx.Size())
			}
			var touched byte
			for _, name := range boltBuckets[1:] {
				bucket := tx.Bucket(name)
				if bucket == nil {
					continue // the usage buckets are made at the first flush
				}
				c := bucket.Cursor()
				for k, v := c.First(); k != nil; k, v = c.Next() {
					// Seeking each key from the root reads the keys of the
					// branch pages on its way (the one that leads to a
					// page is its first key), which the check reads too.
					if sk, _ := c.Seek(k); !bytes.Equal(sk, k) {
						return s.corrupt("the key %x cannot be found again: the keys are out of order", k)
					}
					if v == nil {
						return s.corrupt("the key %x holds a bucket, not a record", k)
					}
					for i := 0; i < len(v); i += 1024 { // at least once in each page
						touched ^= v[i]
					}
					touched ^= k[0]
				}
			}
			runtime.KeepAlive(touched) // the reads are what counts
			for err := range tx.Check() {
				if len(problems) < 5 {
					problems = append(problems, err.Error())
				}
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	if len(problems) > 0 {
		return s.corrupt("bbolt's consistency check fails: %s", strings.Join(problems, "; "))
	}
	return nil
}

// revision checks the database's format and returns its revision.
func (s *BoltStore) revision(tx *bolt.Tx) (int64, error) {
	meta := tx.Bucket(boltMeta)
	if meta == nil {
		return 0, s.corrupt("the database has no %q bucket: it is not a registry database, or it was damaged", boltMeta)
	}
	if f := meta.Get(boltFormatKey); string(f) != BoltFormat {
		return 0, s.corrupt("unknown format %q (this build reads format %s): it was written by another version of caddy-imagelb, or damaged", f, BoltFormat)
	}
	rev := meta.Get(boltRevisionKey)
	if len(rev) != 8 {
		return 0, s.corrupt("the revision is %d bytes, not 8", len(rev))
	}
	return int64(binary.BigEndian.Uint64(rev)), nil
}

// boltKey is the key of an image's record (and the encoding of the
// revision): 8 bytes, big-endian, so that keys sort like the numbers.
func boltKey(n int64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(n))
}

// Describe names the database's file.
func (s *BoltStore) Describe() string { return s.path }

// Close releases the database and its lock.
func (s *BoltStore) Close() error { return s.db.Close() }

// Load reads and decodes every record, sorted by image_id, so that damage
// anywhere in the file is found at start: a record that does not decode,
// or whose image_id differs from its key, is a *CorruptStateError (the
// structure of the file was checked by OpenBolt). The local database keeps
// no revision per record: each Record's Revision is 0, and Loaded.Revision
// is the database's. Load reads a snapshot: commits can run meanwhile.
func (s *BoltStore) Load(ctx context.Context) (*Loaded, error) {
	var loaded *Loaded
	err := boltGuard(s.path, func() error {
		return s.db.View(func(tx *bolt.Tx) (err error) {
			loaded, err = s.load(ctx, tx)
			return err
		})
	})
	if err != nil {
		var corrupt *CorruptStateError
		if errors.As(err, &corrupt) || ctx.Err() != nil {
			return nil, err
		}
		return nil, fmt.Errorf("reading the registry database %s: %w", s.path, err)
	}
	return loaded, nil
}

// load reads every record in tx.
func (s *BoltStore) load(ctx context.Context, tx *bolt.Tx) (*Loaded, error) {
	rev, err := s.revision(tx)
	if err != nil {
		return nil, err
	}
	services := tx.Bucket(boltServices)
	if services == nil {
		return nil, s.corrupt("the database has no %q bucket: it is not a registry database, or it was damaged", boltServices)
	}
	loaded := &Loaded{Revision: rev, Records: []ServiceRecord{}}
	c := services.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(loaded.Records)%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		if len(k) != 8 || int64(binary.BigEndian.Uint64(k)) <= 0 {
			return nil, s.corrupt("the key %x is not an image_id", k)
		}
		id := int64(binary.BigEndian.Uint64(k))
		if v == nil {
			return nil, s.corrupt("the record of image %d is a bucket, not a record", id)
		}
		var rec ServiceRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return nil, s.corrupt("the record of image %d does not decode: %v", id, err)
		}
		if rec.ImageID != id {
			return nil, s.corrupt("the record stored for image %d is of image %d", id, rec.ImageID)
		}
		// Positive keys in big-endian order are in numeric order: the
		// records come sorted by image_id.
		loaded.Records = append(loaded.Records, rec)
	}
	return loaded, nil
}

// Commit applies the changes in order (a nil Record deletes the image's
// record), all in one bbolt transaction, and raises the revision by one,
// which it returns. bbolt syncs the file before the transaction commits:
// when Commit returns nil the changes are durable, and on an error none of
// them is applied. Expect and PrevPort are for a shared store and are not
// checked here: one process owns the file.
//
// The registry does the group commit: one Commit call carries every change
// that writers queued, in order, while the previous commit was syncing. So
// one Update per call is the group commit, and bbolt's own Batch, which
// would add up to MaxBatchDelay (10ms) of wait to each commit and may run
// concurrent calls in any order, is not used.
func (s *BoltStore) Commit(ctx context.Context, changes []Change) (int64, error) {
	return s.write(ctx, "committing to", changes, func(rev int64) int64 { return rev + 1 })
}

// Mirror applies changes that a shared store has committed, as Commit does,
// and sets the revision to the shared store's revision after them: for a
// BoltStore that is the local cache of a shared store.
func (s *BoltStore) Mirror(ctx context.Context, changes []Change, revision int64) error {
	_, err := s.write(ctx, "mirroring to", changes, func(int64) int64 { return revision })
	return err
}

// write applies changes in one transaction and sets the revision to
// next(the current revision).
func (s *BoltStore) write(ctx context.Context, doing string, changes []Change, next func(int64) int64) (int64, error) {
	puts, err := encodeChanges(changes)
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var rev int64
	err = boltGuard(s.path, func() error {
		return s.db.Update(func(tx *bolt.Tx) error {
			cur, err := s.revision(tx)
			if err != nil {
				return err
			}
			services := tx.Bucket(boltServices)
			if services == nil {
				return s.corrupt("the database has no %q bucket: it is not a registry database, or it was damaged", boltServices)
			}
			for i, c := range changes {
				if puts[i] == nil {
					err = services.Delete(boltKey(c.ImageID))
				} else {
					err = services.Put(boltKey(c.ImageID), puts[i])
				}
				if err != nil {
					return fmt.Errorf("image %d: %w", c.ImageID, err)
				}
			}
			rev = next(cur)
			if err := tx.Bucket(boltMeta).Put(boltRevisionKey, boltKey(rev)); err != nil {
				return err
			}
			// Last chance to give up: past here the commit is written.
			return ctx.Err()
		})
	})
	if err != nil {
		var corrupt *CorruptStateError
		if errors.As(err, &corrupt) || ctx.Err() != nil {
			return 0, err
		}
		return 0, fmt.Errorf("%s the registry database %s: %w; nothing was changed (if the disk is full, free space and retry)", doing, s.path, err)
	}
	return rev, nil
}

// encodeChanges returns the JSON of each change's record (nil for a
// deletion), before the write transaction, which holds bbolt's writer
// lock, begins.
func encodeChanges(changes []Change) ([][]byte, error) {
	puts := make([][]byte, len(changes))
	for i, c := range changes {
		if c.ImageID <= 0 {
			return nil, fmt.Errorf("change %d: image_id %d is not positive", i, c.ImageID)
		}
		if c.Record == nil {
			continue
		}
		if c.Record.ImageID != c.ImageID {
			return nil, fmt.Errorf("change %d: the record of image %d is for image %d", i, c.ImageID, c.Record.ImageID)
		}
		data, err := json.Marshal(c.Record)
		if err != nil {
			return nil, fmt.Errorf("encoding the record of image %d: %w", c.ImageID, err)
		}
		puts[i] = data
	}
	return puts, nil
}

// Replace makes the database hold exactly loaded's records at loaded's
// revision, in one transaction: for the local cache of a shared store,
// after the shared store was read whole. Either every record is replaced
// or, on an error, none.
func (s *BoltStore) Replace(ctx context.Context, loaded *Loaded) error {
	changes := make([]Change, len(loaded.Records))
	for i := range loaded.Records {
		changes[i] = Change{ImageID: loaded.Records[i].ImageID, Record: &loaded.Records[i]}
	}
	puts, err := encodeChanges(changes)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err = boltGuard(s.path, func() error {
		return s.db.Update(func(tx *bolt.Tx) error {
			if _, err := s.revision(tx); err != nil {
				return err
			}
			if err := tx.DeleteBucket(boltServices); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
				return err
			}
			services, err := tx.CreateBucket(boltServices)
			if err != nil {
				return err
			}
			if err := putAll(services, changes, puts); err != nil {
				return err
			}
			if err := tx.Bucket(boltMeta).Put(boltRevisionKey, boltKey(loaded.Revision)); err != nil {
				return err
			}
			return ctx.Err()
		})
	})
	if err != nil {
		var corrupt *CorruptStateError
		if errors.As(err, &corrupt) || ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("replacing the records of the registry database %s: %w; nothing was changed (if the disk is full, free space and retry)", s.path, err)
	}
	return nil
}

// putAll writes the records of a bucket being filled from scratch. In
// image_id order, which is how they come, the pages can be filled whole.
func putAll(services *bolt.Bucket, changes []Change, puts [][]byte) error {
	services.FillPercent = 0.9
	for i, c := range changes {
		if err := services.Put(boltKey(c.ImageID), puts[i]); err != nil {
			return fmt.Errorf("image %d: %w", c.ImageID, err)
		}
	}
	return nil
}

// SetAside closes the database and renames its file out of the way, as
// SetAsideFile does, so that a new one can be made while the damaged one is
// kept for inspection. The store cannot be used afterwards.
func (s *BoltStore) SetAside() (string, error) {
	_ = s.db.Close() // a damaged file may not close cleanly; it is set aside anyway
	return SetAsideFile(s.path)
}

// SetAsideFile renames a corrupt file (a registry database that OpenBolt or
// Load refused) to PATH.corrupt-TIMESTAMP, or PATH.corrupt-TIMESTAMP-2, -3…
// when that name is taken, so that it is kept for inspection and never
// overwrites one set aside earlier. It returns the new name.
func SetAsideFile(path string) (string, error) {
	stamp := now().UTC().Format("20060102T150405Z")
	aside := fmt.Sprintf("%s.corrupt-%s", path, stamp)
	for i := 2; ; i++ {
		_, err := os.Lstat(aside)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("setting the corrupt registry database aside: %w; move %s away by hand", err, path)
		}
		aside = fmt.Sprintf("%s.corrupt-%s-%d", path, stamp, i)
	}
	if err := os.Rename(path, aside); err != nil {
		return "", fmt.Errorf("setting the corrupt registry database aside: %w; move %s away by hand", err, path)
	}
	return aside, nil
}

// ImportJSON moves the registry of the file store that earlier versions
// kept (registry.json) into db, when db is new: no records and revision 0.
// It reads the file with FileStore.Load, which verifies its checksum (a
// *CorruptStateError from it is returned as it is), writes every record in
// one transaction, and once that has committed renames the file to
// jsonPath+".imported". It returns how many records it imported.
//
// A missing file imports nothing. So does a database that holds anything,
// whatever the file: an import that committed but could not rename the file
// (the error says so) is not repeated at the next start.
func ImportJSON(db *BoltStore, jsonPath string) (imported int, err error) {
	if _, err := os.Lstat(jsonPath); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, fmt.Errorf("importing the registry state: %w", err)
	}
	empty, err := db.empty()
	if err != nil || !empty {
		return 0, err
	}
	st, err := (&FileStore{Path: jsonPath}).Load()
	if err != nil || st == nil {
		return 0, err
	}
	changes := make([]Change, len(st.Services))
	seen := make(map[int64]bool, len(st.Services))
	for i := range st.Services {
		id := st.Services[i].ImageID
		if seen[id] {
			return 0, &CorruptStateError{Where: jsonPath, Err: fmt.Errorf("image %d is stored twice", id)}
		}
		seen[id] = true
		changes[i] = Change{ImageID: id, Record: &st.Services[i]}
	}
	sortChanges(changes)
	puts, err := encodeChanges(changes)
	if err != nil {
		return 0, &CorruptStateError{Where: jsonPath, Err: err}
	}
	err = boltGuard(db.path, func() error {
		return db.db.Update(func(tx *bolt.Tx) error {
			rev, err := db.revision(tx)
			if err != nil {
				return err
			}
			services := tx.Bucket(boltServices)
			if services == nil {
				return db.corrupt("the database has no %q bucket: it is not a registry database, or it was damaged", boltServices)
			}
			if k, _ := services.Cursor().First(); rev != 0 || k != nil {
				return errNotEmpty // another import got there first
			}
			if err := putAll(services, changes, puts); err != nil {
				return err
			}
			return tx.Bucket(boltMeta).Put(boltRevisionKey, boltKey(1))
		})
	})
	if errors.Is(err, errNotEmpty) {
		return 0, nil
	}
	if err != nil {
		var corrupt *CorruptStateError
		if errors.As(err, &corrupt) {
			return 0, err
		}
		return 0, fmt.Errorf("importing %s into the registry database %s: %w; nothing was imported (if the disk is full, free space and restart)", jsonPath, db.path, err)
	}
	if err := os.Rename(jsonPath, jsonPath+".imported"); err != nil {
		return len(changes), fmt.Errorf("imported %d services from %s into %s, but could not rename the file: %w; rename or remove it by hand (it will not be imported again)",
			len(changes), jsonPath, db.path, err)
	}
	return len(changes), nil
}

// errNotEmpty aborts an import into a database that is not new.
var errNotEmpty = errors.New("the registry database is not empty")

// empty tells whether the database has no records and revision 0.
func (s *BoltStore) empty() (bool, error) {
	empty := false
	err := boltGuard(s.path, func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			rev, err := s.revision(tx)
			if err != nil {
				return err
			}
			services := tx.Bucket(boltServices)
			if services == nil {
				return s.corrupt("the database has no %q bucket: it is not a registry database, or it was damaged", boltServices)
			}
			k, _ := services.Cursor().First()
			empty = rev == 0 && k == nil
			return nil
		})
	})
	return empty, err
}

// sortChanges sorts changes by image_id.
func sortChanges(changes []Change) {
	slices.SortFunc(changes, func(a, b Change) int { return cmp.Compare(a.ImageID, b.ImageID) })
}

// the local database keeps the usage ledger too
var _ UsageStore = (*BoltStore)(nil)

// usageKey is the key of a node's bucket of the interval starting at start.
func usageKey(start time.Time, node string) []byte {
	k := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(node)), uint64(start.UnixNano()))
	return append(k, node...)
}

// CommitUsage implements UsageStore: one transaction, synced.
func (s *BoltStore) CommitUsage(ctx context.Context, node string, buckets []UsageBucket, totals map[int64]Usage) error {
	if node == "" {
		return errors.New("usage of a node without an id")
	}
	return boltGuard(s.path, func() error {
		return s.db.Update(func(tx *bolt.Tx) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			usage, err := tx.CreateBucketIfNotExists(boltUsage)
			if err != nil {
				return err
			}
			for _, b := range buckets {
				data, err := json.Marshal(b.Images)
				if err != nil {
					return err
				}
				if err := usage.Put(usageKey(b.Start, node), data); err != nil {
					return err
				}
			}
			tb, err := tx.CreateBucketIfNotExists(boltUsageTotals)
			if err != nil {
				return err
			}
			data, err := json.Marshal(totals)
			if err != nil {
				return err
			}
			return tb.Put([]byte(node), data)
		})
	})
}

// LoadUsage implements UsageStore.
func (s *BoltStore) LoadUsage(ctx context.Context, from, to time.Time) ([]UsageBucket, error) {
	var out []UsageBucket
	err := boltGuard(s.path, func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			usage := tx.Bucket(boltUsage)
			if usage == nil {
				return nil
			}
			end := uint64(to.UnixNano())
			c := usage.Cursor()
			for k, v := c.Seek(usageKey(from, "")); k != nil; k, v = c.Next() {
				if len(k) < 8 {
					return s.corrupt("usage key %x is shorter than its 8-byte time", k)
				}
				start := binary.BigEndian.Uint64(k[:8])
				if start >= end {
					break
				}
				b := UsageBucket{Start: time.Unix(0, int64(start)).UTC(), Node: string(k[8:])}
				if err := json.Unmarshal(v, &b.Images); err != nil {
					return s.corrupt("the usage of node %q at %s does not decode: %v", b.Node, b.Start.Format(time.RFC3339), err)
				}
				out = append(out, b)
			}
			return ctx.Err()
		})
	})
	return out, err
}

// LoadUsageTotals implements UsageStore.
func (s *BoltStore) LoadUsageTotals(ctx context.Context, node string) (map[int64]Usage, error) {
	var out map[int64]Usage
	err := boltGuard(s.path, func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			tb := tx.Bucket(boltUsageTotals)
			if tb == nil {
				return nil
			}
			v := tb.Get([]byte(node))
			if v == nil {
				return nil
			}
			if err := json.Unmarshal(v, &out); err != nil {
				return s.corrupt("the usage totals of node %q do not decode: %v", node, err)
			}
			return nil
		})
	})
	return out, err
}

// CompactUsage implements UsageStore.
func (s *BoltStore) CompactUsage(ctx context.Context, node string, before time.Time) error {
	return boltGuard(s.path, func() error {
		return s.db.Update(func(tx *bolt.Tx) error {
			usage := tx.Bucket(boltUsage)
			if usage == nil {
				return nil
			}
			end := uint64(before.UnixNano())
			var old [][]byte // deleting under a cursor can make it skip a key
			c := usage.Cursor()
			for k, _ := c.First(); k != nil && len(k) >= 8 && binary.BigEndian.Uint64(k[:8]) < end; k, _ = c.Next() {
				if string(k[8:]) == node {
					old = append(old, slices.Clone(k))
				}
			}
			for _, k := range old {
				if err := usage.Delete(k); err != nil {
					return err
				}
			}
			return ctx.Err()
		})
	})
}
