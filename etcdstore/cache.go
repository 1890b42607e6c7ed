// The node's local cache of the shared registry: what it is, and how a
// whole state, a commit and a watch event are mirrored into it.

package etcdstore

import (
	"context"

	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

// Cache is the node's local copy of the shared registry (registry.BoltStore):
// the store mirrors into it everything it reads, commits and watches.
// Its revision only ever means "every change up to here is in the cache".
type Cache interface {
	Load(ctx context.Context) (*registry.Loaded, error)
	Mirror(ctx context.Context, changes []registry.Change, revision int64) error
	Replace(ctx context.Context, loaded *registry.Loaded) error
}

// replaceCache mirrors a whole state (Load, a re-list).
func (s *Store) replaceCache(loaded *registry.Loaded) {
	s.mu.Lock()
	s.fromCache = false
	s.mu.Unlock()
	s.mirrorMu.Lock()
	defer s.mirrorMu.Unlock()
	s.mirrored = make(map[int64]int64, len(loaded.Records))
	for _, r := range loaded.Records {
		s.mirrored[r.ImageID] = r.Revision
	}
	s.floor, s.safe = loaded.Revision, loaded.Revision
	if s.cache == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
	defer cancel()
	if err := s.cache.Replace(ctx, loaded); err != nil {
		s.log.Error("cannot write the local cache of the registry", zap.Error(err))
	}
}

// fresh drops the changes older than what the cache has of their image.
// mirrorMu is held.
func (s *Store) fresh(changes []registry.Change, revisions []int64) []registry.Change {
	if s.mirrored == nil {
		s.mirrored = map[int64]int64{}
	}
	out := changes[:0:0]
	for i, ch := range changes {
		known, ok := s.mirrored[ch.ImageID]
		if !ok {
			known = s.floor
		}
		if revisions[i] <= known {
			continue
		}
		s.mirrored[ch.ImageID] = revisions[i]
		out = append(out, ch)
	}
	return out
}

// mirrorCommit mirrors a commit's changes, at the revision the cache is
// complete up to (not the commit's).
func (s *Store) mirrorCommit(changes []registry.Change, rev int64) {
	s.mirrorMu.Lock()
	defer s.mirrorMu.Unlock()
	revisions := make([]int64, len(changes))
	for i := range revisions {
		revisions[i] = rev
	}
	changes = s.fresh(changes, revisions)
	if s.cache == nil || len(changes) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
	defer cancel()
	if err := s.cache.Mirror(ctx, changes, s.safe); err != nil {
		s.log.Error("cannot write the local cache of the registry", zap.Error(err))
	}
}

// mirrorEvent mirrors what the watch delivered.
func (s *Store) mirrorEvent(records []registry.Remote, rev int64) {
	s.mirrorMu.Lock()
	defer s.mirrorMu.Unlock()
	changes := make([]registry.Change, len(records))
	revisions := make([]int64, len(records))
	for i, r := range records {
		changes[i] = registry.Change{ImageID: r.ImageID, Record: r.Record}
		revisions[i] = r.Revision
	}
	changes = s.fresh(changes, revisions)
	s.safe = max(s.safe, rev)
	if s.cache == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
	defer cancel()
	if err := s.cache.Mirror(ctx, changes, s.safe); err != nil {
		s.log.Error("cannot write the local cache of the registry", zap.Error(err))
	}
}
