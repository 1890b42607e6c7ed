package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Commit, then publish.
//
// A durable change is computed under the writers' lock on the head (the
// published snapshot plus every change still waiting for the store), queued,
// and published only once the store has committed it. One writer at a time
// commits: it takes every change queued so far, up to a second change of
// one image (group commit: concurrent writers share one sync, one etcd
// transaction; batchLen) and, when the store says
// yes, publishes them; when the store fails, their writers get the error and
// nothing of theirs is visible anywhere, and changes queued behind them
// (computed on a head that included them) are computed again.
//
// Every durable change touches one image, so a commit writes one record per
// image changed: its cost is the change's, not the registry's.

// maxBatch is the most changes one Commit carries: etcd allows 128
// operations per transaction and a change takes up to three.
const maxBatch = 32

// maxConflicts is how often a change is made again after another node won
// a race for its record before the writer gets a 409.
const maxConflicts = 32

// commitTimeout bounds one Commit.
const commitTimeout = 15 * time.Second

// pending is one durable change waiting for the store.
//
// Its commit compares the image's record with the revision of the version
// the change was made from, never with the newest revision the node has
// seen since: a change made on an older version must not overwrite what
// another node committed meanwhile. A change made on the version another
// queued change left (after) is compared with the revision that change's
// commit gave the record.
type pending struct {
	change    func(snap *snapshot) (*snapshot, error)
	id        int64
	svc       *Service // the new version; nil: removed
	after     *pending // the change whose version this one was made on; nil: made on the published version
	base      int64    // with after nil: the revision of the record it was made from (0: none)
	rev       int64    // once committed: the revision of the image's record after it
	conflicts int      // how often another node won the race for the record
	done      bool
	err       error
}

// durable computes change on the head, queues it and returns when it is
// committed and published, or with why not.
func (r *Registry) durable(change func(snap *snapshot) (*snapshot, error)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := &pending{change: change}
	for tries := 0; !r.make(p); tries++ {
		if tries == maxSettles || !r.settle(p.err) {
			return p.err
		}
		p = &pending{change: change} // made again on what settle waited for
	}
	r.queue = append(r.queue, p)
	r.settled(p)
	return p.err
}

// settled returns, with r.mu held, once p is committed or refused: it
// waits while another writer commits, and commits the queue itself when
// none does.
func (r *Registry) settled(p *pending) {
	for !p.done {
		if r.committing {
			r.cond.Wait()
			continue
		}
		r.committing = true
		r.commitQueued()
		r.committing = false
		r.cond.Broadcast()
	}
}

// make computes p's change on the head and makes the result the head. It
// reports false, with p settled, when there is nothing to commit: the
// change was refused (p.err) or changes nothing.
func (r *Registry) make(p *pending) bool {
	cur := r.head
	next, err := p.change(cur)
	if err != nil || next == nil || next == cur {
		p.done, p.err = true, err
		return false
	}
	next.version = cur.version + 1
	p.id = next.touched // every durable change replaces one image's version
	p.svc = next.lookup(p.id)
	p.after, p.base = r.made[p.id], 0
	if p.after == nil {
		p.base = r.baseOf(p.id)
	}
	r.made[p.id] = p
	r.head = next
	return true
}

// maxSettles bounds how often a change that found its image or container
// missing is made again after settle.
const maxSettles = 3

// settle is called, with r.mu held, when a change found its image or one
// of its containers missing (err). With a shared store a 404 must be
// etcd's answer, not this node's guess, so it reports whether the change
// should be made again: after the changes of the image this node has not
// committed yet are settled (the 404 was made on them), or after the
// image's record, read from the store, was newer than this node's view and
// applied (the watch had not brought it yet). When the store cannot be
// read, the 404 stands.
func (r *Registry) settle(err error) bool {
	var e *Error
	rr, shared := r.store.(RecordReader)
	if !shared || !errors.As(err, &e) || e.missing == 0 {
		return false
	}
	id := e.missing
	if last := r.made[id]; last != nil {
		r.settled(last)
		return true
	}
	known := r.revs[id]
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	cur, rerr := rr.Current(ctx, id)
	cancel()
	r.mu.Lock()
	if rerr != nil || cur.Record == nil || cur.Revision <= known || cur.Revision <= r.revs[id] {
		return false
	}
	if _, stale := r.applyRemote(RemoteEvent{Records: []Remote{cur}}); stale {
		r.remake(r.queue)
	}
	return true
}

// baseOf is the revision of the image's record in the published version
// (0: it has none).
func (r *Registry) baseOf(id int64) int64 {
	if svc := r.snap.Load().lookup(id); svc != nil && !svc.Static {
		return r.revs[id]
	}
	return 0
}

// expect is the revision p's commit compares the image's record with: the
// one of the version p was made from.
func (p *pending) expect() int64 {
	if p.after == nil {
		return p.base
	}
	return p.after.rev
}

// remake makes the queued changes again, in order, on what is published
// (after a commit failed, or another node changed an image they touch).
// The batch being committed is layered on top, even where the published
// version is newer: a change made on it expects its commit's revision, so
// if another node's change came between, that change's commit conflicts
// and it is made again on the newer version.
func (r *Registry) remake(queue []*pending) {
	r.head = r.snap.Load()
	r.made = map[int64]*pending{}
	for _, p := range r.inflight { // being committed: the queue was made on them
		r.head = r.head.put(p.id, p.svc)
		r.made[p.id] = p
	}
	r.queue = r.queue[:0:0]
	for _, p := range queue {
		if r.make(p) {
			r.queue = append(r.queue, p)
		}
	}
}

// commitQueued commits a batch of queued changes and publishes it. It is
// called with r.mu held and returns with it held; it releases it while the
// store works.
func (r *Registry) commitQueued() {
	n := batchLen(r.queue)
	batch := r.queue[:n:n]
	r.queue = r.queue[n:]
	pub := r.snap.Load()
	changes, expect := r.changesOf(pub, batch)
	store := r.store
	r.inflight = batch
	r.mu.Unlock()
	var rev int64
	var err error
	if len(changes) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
		rev, err = store.Commit(ctx, changes)
		cancel()
	}
	r.mu.Lock()
	r.inflight = nil
	defer r.pruneTombs() // kept while the store worked (pruneTombs)
	if err != nil {
		r.failed(batch, store, err)
		return
	}
	pub = r.snap.Load()
	newer := map[int64]bool{}
	committed := map[int64]bool{}
	_, shared := store.(Watcher)
	for _, ch := range changes {
		committed[ch.ImageID] = true
		switch {
		case rev > 0 && (r.revs[ch.ImageID] >= rev || shared && rev <= r.revision):
			// The watch already applied this commit (it can come back before
			// Commit returns) or a later change of another node: keep that
			// version, whose containers the health checker may be checking.
			// Once the watch has passed the commit's revision, what the node
			// has of the image is as new as the commit or newer, even where
			// no revision of it is left to say so (a removal whose tombstone
			// was pruned, an image a re-list did not find): publishing the
			// commit then would show an older version than the node showed,
			// and bring back a removed image for good.
			newer[ch.ImageID] = true
		case !shared:
			// no watch: no older event to refuse, and a store of one
			// process compares no revision (Change.Expect), so none is
			// kept: 100,000 images held a map entry each for nothing
			delete(r.revs, ch.ImageID)
		default:
			r.revs[ch.ImageID] = rev // for a removal: a tombstone (applyRemote)
			if ch.Record == nil {
				r.tombs[ch.ImageID] = struct{}{}
			} else {
				delete(r.tombs, ch.ImageID)
			}
		}
	}
	for _, p := range batch {
		p.done = true
		p.rev = expect[p.id] // not stored (a static service): the record did not move
		if committed[p.id] {
			p.rev = rev
		}
		if r.made[p.id] == p { // nothing queued on it: head's version is the published one from now on
			delete(r.made, p.id)
			if newer[p.id] {
				r.head = r.head.put(p.id, pub.lookup(p.id))
			}
		}
		if newer[p.id] {
			continue
		}
		svc := p.svc
		if !r.queuedFor(p.id) {
			svc = r.head.lookup(p.id) // keeps what health checks changed since
		}
		pub = pub.put(p.id, svc)
	}
	pub.version = r.head.version
	r.snap.Store(pub)
	if len(r.queue) == 0 {
		r.head = pub
		r.made = map[int64]*pending{}
	}
	ids := make([]int64, 0, len(batch))
	for _, p := range batch {
		if !newer[p.id] {
			ids = append(ids, p.id)
		}
	}
	r.changed(ids)
}

// batchLen is how many queued changes, from the first, one Commit carries:
// at most maxBatch, and none after a second change of an image already in
// the batch. Each change is committed as it was made: its own compare and
// port claims are checked, and its writer's answer is a version etcd
// stored. Merged into the last version queued for the image, a change
// made on another (a registration claiming a port, then a removal) was
// answered 200 though no transaction ever carried it (seeds 30003, 30017).
// The change cut off goes in the next batch, made on and expecting the
// revision this one's commit gives the image.
func batchLen(queue []*pending) int {
	seen := map[int64]bool{}
	for i, p := range queue {
		if i == maxBatch || seen[p.id] {
			return i
		}
		seen[p.id] = true
	}
	return len(queue)
}

// changesOf returns the store changes of a batch: one per image (a batch
// has one change of each image it touches, batchLen), expecting the
// revision the change was made from, and that revision for each image.
// Static services come from the configuration and are not stored.
func (r *Registry) changesOf(pub *snapshot, batch []*pending) ([]Change, map[int64]int64) {
	expect := make(map[int64]int64, len(batch))
	var out []Change
	for _, p := range batch {
		id := p.id
		expect[id] = p.expect()
		svc, old := p.svc, pub.lookup(id)
		if old == nil && p.after != nil {
			// Made on a change whose commit the watch overtook (a newer
			// version, or a removal, is published): the store decides.
			old = p.after.svc
		}
		ch := Change{ImageID: id, Expect: expect[id]}
		if old != nil {
			ch.PrevPort = old.ExternalPort
		}
		switch {
		case svc != nil && svc.Static:
			continue
		case svc != nil:
			rec := svc.record()
			ch.Record = &rec
		case old == nil || old.Static:
			// Nothing stored to remove. (A removal made on a committed
			// change's version is sent even when what is published no
			// longer has the image, above: the store's compare-and-swap
			// refuses it. Answered 200 with no commit, it would be a
			// second removal of a version another node removed.)
			continue
		}
		out = append(out, ch)
	}
	return out, expect
}

// failed settles a batch the store refused: nothing of it is published.
// On a conflict (another node won the race for a record) what that node
// wrote is applied and the changes are made again on it; on any other error
// their writers get it. Changes queued behind the batch were made on a head
// that had it: they are made again too.
func (r *Registry) failed(batch []*pending, store RecordStore, err error) {
	var ce *ConflictError
	if !errors.As(err, &ce) {
		for _, p := range batch {
			p.done, p.err = true, storeError(store, err)
		}
		r.remake(r.queue)
		return
	}
	r.applyRemote(RemoteEvent{Records: ce.Current}) // the queue is made again below
	again := make([]*pending, 0, len(batch)+len(r.queue))
	for _, p := range batch {
		if p.conflicts++; p.conflicts > maxConflicts {
			p.done, p.err = true, conflict("image_id %d was changed on another node %d times while this change "+
				"was made (%s); read it again and retry", p.id, p.conflicts, ce.Detail)
			continue
		}
		again = append(again, p)
	}
	r.remake(append(again, r.queue...))
}

// storeError is what a writer whose change the store did not take gets.
func storeError(store RecordStore, err error) *Error {
	if errors.Is(err, ErrStoreUnavailable) {
		// A request that timed out may have been committed: only "unknown"
		// is true.
		return &Error{Kind: KindUnavailable, Detail: fmt.Sprintf(
			"the outcome of the change is unknown: %v. It may or may not have been applied: once the store "+
				"answers, read the image back before deciding, or send the same request again (a register, "+
				"PUT or PATCH sent twice leaves what one leaves; a DELETE sent again answers 404 if the first "+
				"was applied)", err)}
	}
	return &Error{Kind: KindStorage, Detail: fmt.Sprintf(
		"the change was not applied: saving it to %s failed: %v; nothing changed, retry once the store is fixed",
		store.Describe(), err)}
}

// queuedFor reports whether a queued change touches the image.
func (r *Registry) queuedFor(id int64) bool {
	return slices.ContainsFunc(r.queue, func(p *pending) bool { return p.id == id })
}

// put returns snap with the image's version replaced by svc (nil: removed).
func (snap *snapshot) put(id int64, svc *Service) *snapshot {
	old := snap.lookup(id)
	if old == nil && svc == nil {
		return snap
	}
	return snap.replace(old, svc)
}

// now applies a change that is not stored (a health verdict, the static
// services, a change another node committed) to what readers see and to
// the head, at once.
func (r *Registry) applyNow(change func(snap *snapshot) (*snapshot, error)) error {
	pub := r.snap.Load()
	next, err := change(pub)
	if err != nil || next == nil || next == pub {
		return err
	}
	next.version = max(pub.version, r.head.version) + 1
	if r.head == pub {
		r.head = next
	} else if head, herr := change(r.head); herr == nil && head != nil {
		head.version = next.version
		r.head = head
	}
	r.snap.Store(next)
	r.changed([]int64{next.touched})
	return nil
}

// record returns the stored form of a version: the statuses the
// orchestrator pushed, not this node's health verdicts.
func (s *Service) record() ServiceRecord {
	rec := ServiceRecord{ImageID: s.ImageID, ImageName: s.ImageName, Algorithm: s.Algorithm,
		ExternalPort: s.ExternalPort, Static: s.Static, Updated: s.Updated(),
		Containers: make([]ContainerRecord, len(s.Containers)), ServiceOptions: s.Options, Rollout: s.Rollout}
	for i, c := range s.Containers {
		rec.Containers[i] = ContainerRecord(c.ContainerSpec)
		rec.Containers[i].Status = c.pushed.Status()
	}
	return rec
}

// Pending returns how many durable changes wait for the store: queued, or
// in the batch being committed. Their writers have no answer yet.
func (r *Registry) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue) + len(r.inflight)
}
