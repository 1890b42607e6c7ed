package registry

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// RecordStore keeps the registry durably as one record per image: the
// local database (BoltStore), or etcd when several Caddy nodes share the
// registry (package etcdstore). A commit costs in proportion to the
// change, not to the size of the registry.
//
// The registry commits, then publishes: a change reaches readers and the
// request path only once Commit has returned nil, so a failed commit
// changes nothing anywhere.
type RecordStore interface {
	// Load returns every stored record and the revision they are at. A
	// store that cannot be read back returns a *CorruptStateError.
	Load(ctx context.Context) (*Loaded, error)
	// Commit applies the changes atomically, all or nothing. When it
	// returns nil they survive a crash (a shared store: its quorum has
	// them); on an error none of them is applied. A shared store refuses
	// changes whose record (or a port one claims) moved since the writer
	// saw it, with a *ConflictError. The registry calls Commit from one
	// goroutine at a time, each call carrying every change that writers
	// queued meanwhile (group commit).
	Commit(ctx context.Context, changes []Change) (revision int64, err error)
	// Describe names where the records live, for messages to the user.
	Describe() string
	// Close releases the store.
	Close() error
}

// Loaded is the content of a store.
type Loaded struct {
	Records []ServiceRecord // sorted by image_id; each with its Revision
	// Revision is the store's revision when the records were read; a
	// shared store's watch starts right after it.
	Revision int64
}

// Change puts or deletes the record of one image.
type Change struct {
	ImageID int64
	// Record is the new record; nil deletes the image's record.
	Record *ServiceRecord
	// Expect is the revision of the record the change was made from (0:
	// there was none). A shared store refuses the change when the stored
	// record's revision differs.
	Expect int64
	// PrevPort is the external port the record had before (0: none): a
	// shared store releases it when the change moves or deletes it.
	PrevPort int
}

// ConflictError is a shared store's refusal of a commit: another node
// changed a record, or claimed a port, since this node read it. Current
// holds those records as they are now (a nil Record: deleted), for the
// registry to apply before it makes the change again.
type ConflictError struct {
	Current []Remote
	Detail  string
}

func (e *ConflictError) Error() string { return "conflict: " + e.Detail }

// Remote is one record as a shared store holds it, or its deletion.
type Remote struct {
	ImageID int64
	Record  *ServiceRecord // nil: the image was deleted
	// Revision is the revision of the change; for a record a read found
	// absent, the revision of that read. A node that has the image at this
	// revision or a newer one skips it.
	Revision int64
}

// RemoteEvent is what a shared store's watch delivers: records changed by
// any node. With Reset, Records is the whole registry (after a re-list:
// the watch fell behind compaction, or broke), and every image not in it
// is gone. With Rewound too, the store's revision went back (etcd restored
// from a backup without a revision bump): the revisions of what the node
// had before are of another history, and it must become what was listed.
type RemoteEvent struct {
	Records  []Remote
	Revision int64 // the store's revision after the event
	Reset    bool
	Rewound  bool
}

// RecordReader is implemented by shared stores: Current reads the image's
// record as the store holds it now (a linearizable read; Record nil and
// the read's revision when there is none). A node's view may lag behind
// the store, so a write that finds the image, or its container, missing
// asks the store before it answers 404: an orchestrator takes a 404 to a
// DELETE as "already gone".
type RecordReader interface {
	Current(ctx context.Context, imageID int64) (Remote, error)
}

// Watcher is implemented by stores that several nodes share: Watch
// delivers every change after revision to apply, in order, until ctx is
// done. It re-lists and delivers a Reset event when it cannot resume.
type Watcher interface {
	Watch(ctx context.Context, revision int64, apply func(RemoteEvent))
}

// RecordKey is the key of an image's record below a store's prefix:
// "services/{image_id}".
func RecordKey(imageID int64) string {
	return "services/" + strconv.FormatInt(imageID, 10)
}

// ParseRecordKey returns the image_id of a record key below the prefix.
func ParseRecordKey(key string) (int64, error) {
	s, ok := strings.CutPrefix(key, "services/")
	id, err := strconv.ParseInt(s, 10, 64)
	if !ok || err != nil || id <= 0 || strconv.FormatInt(id, 10) != s {
		return 0, fmt.Errorf("%q is not a record key (services/{image_id})", key)
	}
	return id, nil
}
