package registry

import (
	"fmt"
	"slices"
)

// ApplyRemote applies what a shared store's watch delivered: records that
// any node committed, through the same snapshot swap as a local change. A
// record this node already has at that revision or a newer one (its own
// commit coming back, an event older than a conflict told it) is skipped.
// It returns the records it could not apply (a record that fails
// validation is left out, and the rest applies).
//
// A Reset (a re-list) makes the node what it listed: images not listed are
// removed, listed ones replace what the node has, except where this node
// knows a change newer than the listing (its own commit, answered after
// the list was read); the watch delivers that change next. When etcd's
// revision went back (Rewound, or a listing older than what the watch
// delivered: etcd was restored from a backup), nothing the node recorded
// counts: it becomes exactly what it listed. A listed record older than
// the version the node recorded, in a listing newer than both, can only
// come from another history too (etcd restored with a revision bump, or
// restored and written past the node's revision before it looked): the
// listed one replaces it.
//
// Health verdicts, counters and rotation are this node's: a container
// keeps its own verdict while the status the orchestrator pushed is
// unchanged; a newly pushed status replaces it (effectiveStatus).
func (r *Registry) ApplyRemote(ev RemoteEvent) []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	errs, stale := r.applyRemote(ev)
	if stale { // queued changes were made on what this node had before: make them again
		r.remake(r.queue)
	}
	return errs
}

// applyRemote is ApplyRemote with r.mu held; stale reports that a change
// not yet published was made on a version of an image it changed, so the
// queue must be made again.
func (r *Registry) applyRemote(ev RemoteEvent) (errs []error, stale bool) {
	records := ev.Records
	if ev.Reset {
		listed := make(map[int64]bool, len(records))
		for _, rec := range records {
			listed[rec.ImageID] = true
		}
		for _, svc := range r.Services() {
			if !svc.Static && !listed[svc.ImageID] {
				records = append(slices.Clip(records), Remote{ImageID: svc.ImageID, Revision: ev.Revision})
			}
		}
		if ev.Rewound || ev.Revision < r.revision {
			// The revisions this node recorded are of a history etcd no
			// longer has: none of them says what is newer.
			r.revs, r.tombs = map[int64]int64{}, map[int64]struct{}{}
			stale = len(r.made) > 0
		}
	}
	for _, rec := range records {
		if known := r.revs[rec.ImageID]; rec.Revision <= known && !(ev.Reset && rec.Revision < known && known <= ev.Revision) {
			continue
		}
		change := func(snap *snapshot) (*snapshot, error) {
			old := snap.lookup(rec.ImageID)
			if rec.Record == nil {
				if old == nil || old.Static {
					return nil, nil
				}
				return snap.replace(old, nil), nil
			}
			svc, dropped, err := r.fromRecord(old, *rec.Record)
			if err != nil {
				return nil, err
			}
			for _, d := range dropped {
				errs = append(errs, fmt.Errorf("record of image_id %d at revision %d: %w", rec.ImageID, rec.Revision, d))
			}
			return snap.replace(old, svc), nil
		}
		if err := r.applyNow(change); err != nil {
			errs = append(errs, fmt.Errorf("record of image_id %d at revision %d: %w", rec.ImageID, rec.Revision, err))
			continue
		}
		r.revs[rec.ImageID] = rec.Revision
		if rec.Record == nil {
			r.tombs[rec.ImageID] = struct{}{}
		} else {
			delete(r.tombs, rec.ImageID)
		}
		if r.made[rec.ImageID] != nil {
			stale = true
		}
	}
	if ev.Revision > r.revision || ev.Reset {
		r.revision = ev.Revision
	}
	r.pruneTombs()
	return errs, stale
}

// pruneTombs forgets the removals the watch has delivered: it delivers
// nothing at or below its revision again. While a commit is in flight they
// are kept: a refused commit's conflict carries the records as etcd read
// them, maybe before a removal the watch has delivered since, and only the
// tombstone says that such a record is older than what the node shows
// (seed 11000: the removed image came back). commitQueued prunes them once
// the commit has returned.
func (r *Registry) pruneTombs() {
	if r.inflight != nil {
		return
	}
	for id := range r.tombs {
		if r.revs[id] <= r.revision {
			delete(r.revs, id)
			delete(r.tombs, id)
		}
	}
}

// fromRecord returns the version of a service a stored record describes,
// keeping from old (this node's version, may be nil) the counters and the
// health verdicts of containers whose pushed status is unchanged. The port
// mapping is the record's: the shared store decided it, unless it maps a
// port this node may not map (CheckExternalPort): then the record is left
// out. A container at an address the upstream guard refuses (this node's
// own listeners, say) is left out and named in dropped; only IP addresses
// are checked here, under the lock, and the dialers check the rest.
func (r *Registry) fromRecord(old *Service, rec ServiceRecord) (svc *Service, dropped []error, err error) {
	spec, err := rec.spec()
	if err != nil {
		return nil, nil, err
	}
	if err := spec.Options.Normalize(spec.Algorithm); err != nil {
		return nil, nil, err
	}
	if spec.ExternalPort != 0 && !spec.Static {
		if msg := r.opts.CheckExternalPort(spec.ExternalPort); msg != "" {
			return nil, nil, invalid("%s", msg) // another node's sites are not this one's
		}
	}
	kept := spec.Containers[:0]
	for _, cs := range spec.Containers {
		host := cs.Host
		if host == "" {
			host = r.opts.DefaultHost
		}
		if err := r.opts.Guard.CheckAddress(host, cs.Port); err != nil {
			dropped = append(dropped, fmt.Errorf("container %q left out: %w", cs.ContainerID, err))
			continue
		}
		kept = append(kept, cs)
	}
	spec.Containers = kept
	state := r.newState(rec.ImageID)
	if old != nil {
		state = old.State
	}
	containers := make([]*Container, len(spec.Containers))
	for i, cs := range spec.Containers {
		var prev *Container
		if old != nil {
			prev = old.Container(cs.ContainerID)
		}
		containers[i] = containerFrom(cs, prev)
	}
	return newService(spec, containers, state), dropped, nil
}

// containerFrom builds a container's version from what the orchestrator
// pushed (cs.Status) and this node's previous version of it (nil: none).
//
// The effective status is this node's verdict while the pushed status is
// the one it judged; a new pushed status (a drain, a restart) wins and the
// health-check streaks start afresh from it.
func containerFrom(cs ContainerSpec, prev *Container) *Container {
	pushed := codeOf(cs.Status)
	if prev == nil {
		c := newContainer(cs, nil)
		markHealthy(c, "", false)
		return c
	}
	if prev.pushed == pushed {
		cs.Status = prev.Status // keep this node's verdict
	} else {
		prev.Stats.ResetChecks()
	}
	c := newContainer(cs, prev.Stats)
	c.pushed = pushed
	markHealthy(c, prev.Status, true)
	return c
}

// Restore replaces the registry's content with what a store loaded (at
// start, before any traffic). Statuses come back as last pushed; the health
// checker re-checks every container at once. Each record is validated like
// a registration; a container whose host the upstream guard now refuses
// (the operator tightened allowed_upstreams) is left out and named in
// dropped, so that it gets no traffic while the rest of the registry comes
// back.
func (r *Registry) Restore(loaded *Loaded) (dropped []string, err error) {
	specs := make([]ServiceSpec, 0, len(loaded.Records))
	for _, rec := range loaded.Records {
		spec, err := rec.spec()
		if err != nil {
			return nil, fmt.Errorf("service %d: %v", rec.ImageID, err)
		}
		kept := spec.Containers[:0]
		for _, c := range spec.Containers {
			if err := r.checkHosts(c); err != nil {
				dropped = append(dropped, fmt.Sprintf("service %d container %q: %v", rec.ImageID, c.ContainerID, err))
				continue
			}
			kept = append(kept, c)
		}
		spec.Containers = kept
		specs = append(specs, spec)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	next := emptySnapshot()
	next.retired = r.snap.Load().retired // it only grows
	n := 0                               // records with a revision: a shared store's; the local one has none
	for _, rec := range loaded.Records {
		if rec.Revision != 0 {
			n++
		}
	}
	revs := make(map[int64]int64, n)
	for i, spec := range specs {
		var err error
		if next, _, err = r.register(next, spec); err != nil {
			return nil, fmt.Errorf("service %d: %v", spec.ImageID, err)
		}
		if rev := loaded.Records[i].Revision; rev != 0 {
			revs[spec.ImageID] = rev // a missing one reads 0 all the same
		}
	}
	next.version = r.head.version + 1
	r.revs, r.tombs, r.revision = revs, map[int64]struct{}{}, loaded.Revision
	r.made = map[int64]*pending{}
	r.snap.Store(next)
	r.head = next
	ids := make([]int64, len(specs))
	for i, spec := range specs {
		ids[i] = spec.ImageID
	}
	r.changed(ids)
	return dropped, nil
}

// Revision returns the shared store's revision this node has applied (0
// for a store that is not shared).
func (r *Registry) Revision() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.revision
}

// RecordRevision returns the shared store's revision of the image's record
// as this node has it (0: none known, or a store that is not shared).
func (r *Registry) RecordRevision(imageID int64) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.revs[imageID]
}

// Records returns the stored form of every service, sorted by image_id.
func (r *Registry) Records() []ServiceRecord {
	svcs := r.Services()
	out := make([]ServiceRecord, 0, len(svcs))
	for _, svc := range svcs {
		out = append(out, svc.record())
	}
	slices.SortFunc(out, func(a, b ServiceRecord) int { return cmpInt64(a.ImageID, b.ImageID) })
	return out
}
