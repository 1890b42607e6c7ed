package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Shared counts: what every node served of an image, so that a rollout in a
// cluster judges its step on all of the image's traffic, not only on what
// the driving node proxied.
//
// Each node publishes, for each image asked of it (the images a rollout
// involves), its counts in a series: cumulative figures that start at zero
// at the series' first publication. A node starts a new series when it
// starts publishing an image, when its counters restart (a new process, the
// image removed and registered again) and when its published counts were
// lost (a shared store's lease expired): a series' counts are there without
// a gap from its first publication on. A reader (CountsTracker) takes a
// first reading as its baseline and then adds what each series gained since;
// a series it first sees after the baseline began after it, so all of it is
// added.

// covers reports whether every figure of c is at least base's: c is a
// later reading of the same counters.
func (c StepCounts) covers(base StepCounts) bool {
	if c.Requests < base.Requests || c.Errors < base.Errors {
		return false
	}
	for i, n := range base.Latency {
		if c.Latency[i] < n {
			return false
		}
	}
	return true
}

// NodeCounts is one node's published counts of an image.
type NodeCounts struct {
	Node   string
	Series string // changes whenever the node's counts start again from zero
	StepCounts
}

// SharedCounts is a store that shares every node's counts. Stores shared
// by several nodes implement it beside RecordStore; for a store of one node
// there is nothing to share (NoSharedCounts).
type SharedCounts interface {
	// PublishCounts writes, in one transaction, the node's counts of the
	// given images, each in its series. It returns an error wrapping
	// ErrCountsLost when counts the node published before may have been
	// deleted meanwhile (their lease expired): their series must start
	// again.
	PublishCounts(ctx context.Context, node string, counts map[int64]NodeCounts) error
	// UnpublishCounts deletes the node's counts of the images.
	UnpublishCounts(ctx context.Context, node string, images []int64) error
	// LoadCounts returns every node's published counts of the image, in
	// one read.
	LoadCounts(ctx context.Context, imageID int64) ([]NodeCounts, error)
}

// ErrCountsLost is wrapped by PublishCounts' error when the node's earlier
// counts may be gone from the store.
var ErrCountsLost = errors.New("the node's published counts were lost")

// NoSharedCounts is the SharedCounts of a store that one node keeps: nothing
// is published and no other node adds anything, so a step is judged on the
// node's own counters.
type NoSharedCounts struct{}

// PublishCounts implements SharedCounts.
func (NoSharedCounts) PublishCounts(context.Context, string, map[int64]NodeCounts) error { return nil }

// UnpublishCounts implements SharedCounts.
func (NoSharedCounts) UnpublishCounts(context.Context, string, []int64) error { return nil }

// LoadCounts implements SharedCounts.
func (NoSharedCounts) LoadCounts(context.Context, int64) ([]NodeCounts, error) { return nil, nil }

// SharedCountsOf returns store's SharedCounts, or NoSharedCounts when it
// shares none.
func SharedCountsOf(store any) SharedCounts {
	if sc, ok := store.(SharedCounts); ok && sc != nil {
		return sc
	}
	return NoSharedCounts{}
}

// CountsPublisher publishes this node's counts of the images asked of it.
type CountsPublisher struct {
	reg    *Registry
	store  SharedCounts
	node   string
	images func() []int64 // the images to publish, asked at each round

	mu        sync.Mutex // serialises rounds
	published map[int64]*series
}

// series is a run of an image's published counts: base is what the
// image's counters held at its first publication.
type series struct {
	id   string
	base StepCounts
}

// NewCountsPublisher returns the publisher of the node's counts of the
// images that images returns at each round, in store.
func NewCountsPublisher(reg *Registry, store SharedCounts, node string, images func() []int64) *CountsPublisher {
	return &CountsPublisher{reg: reg, store: store, node: node, images: images, published: map[int64]*series{}}
}

// local returns this node's counts of the image.
func (p *CountsPublisher) local(id int64) StepCounts {
	c, _ := LocalCounts{p.reg}.Counts(context.Background(), id)
	return c
}

// Publish runs one round: it writes the counts of every image asked and
// deletes those of the images no longer asked.
func (p *CountsPublisher) Publish(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := map[int64]bool{}
	for _, id := range p.images() {
		want[id] = true
	}
	var gone []int64
	for id := range p.published {
		if !want[id] {
			gone = append(gone, id)
		}
	}
	if len(gone) > 0 {
		slices.Sort(gone)
		if err := p.store.UnpublishCounts(ctx, p.node, gone); err != nil {
			return fmt.Errorf("deleting the counts of images %v: %w", gone, err)
		}
		for _, id := range gone {
			delete(p.published, id)
		}
	}
	if len(want) == 0 {
		return nil
	}
	err := p.publish(ctx, want)
	if errors.Is(err, ErrCountsLost) {
		// Readers may have missed a part of each series: start them
		// again, from what the counters hold now, and publish those.
		for id := range want {
			delete(p.published, id)
		}
		err = p.publish(ctx, want)
	}
	if err != nil {
		return fmt.Errorf("publishing the counts of node %s: %w", p.node, err)
	}
	return nil
}

// publish writes the counts of the images in want, starting a series where
// there is none (p.mu held). A series whose first write fails is dropped:
// its counts would start before a reader could see it.
func (p *CountsPublisher) publish(ctx context.Context, want map[int64]bool) error {
	out := make(map[int64]NodeCounts, len(want))
	var fresh []int64
	for id := range want {
		now := p.local(id)
		s := p.published[id]
		if s == nil {
			s = &series{id: newSeriesID(), base: now}
			p.published[id] = s
			fresh = append(fresh, id)
		}
		if !now.covers(s.base) { // the counters started again (the image was registered anew)
			s.id, s.base = newSeriesID(), StepCounts{}
		}
		out[id] = NodeCounts{Node: p.node, Series: s.id, StepCounts: now.Sub(s.base)}
	}
	err := p.store.PublishCounts(ctx, p.node, out)
	if err != nil {
		for _, id := range fresh {
			delete(p.published, id)
		}
	}
	return err
}

// Run publishes every interval until ctx is done; failed rounds are
// reported to failed (which may be nil) and the next round tries again.
// Before it returns it deletes what it published, when the store answers.
func (p *CountsPublisher) Run(ctx context.Context, interval time.Duration, failed func(error)) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if err := p.Publish(ctx); err != nil && failed != nil && ctx.Err() == nil {
			failed(err)
		}
		select {
		case <-ctx.Done():
			p.Withdraw()
			return
		case <-tick.C:
		}
	}
}

// Withdraw deletes every count the publisher published, within a second;
// counts it cannot delete expire with their lease.
func (p *CountsPublisher) Withdraw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.published) == 0 {
		return
	}
	ids := make([]int64, 0, len(p.published))
	for id := range p.published {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if p.store.UnpublishCounts(ctx, p.node, ids) == nil {
		clear(p.published)
	}
}

func newSeriesID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// CountsTracker sums what the other nodes served of one image since its
// first reading: a step's shared part. The node's own counts are left out
// (it judges on its own counters, which are current).
//
// A node's counts that disappear (the node stopped, or died and its lease
// expired) keep what they added: what it served is part of the step.
// What it served after its last publication is not added. A node that
// comes back starts a new series, which is added from its first
// publication.
type CountsTracker struct {
	self    string
	started bool
	last    map[string]NodeCounts // by node: its last reading
	known   map[string]bool       // every series seen, by node+"/"+series
	total   StepCounts
}

// NewCountsTracker returns a tracker for the node self.
func NewCountsTracker(self string) *CountsTracker {
	return &CountsTracker{self: self, last: map[string]NodeCounts{}, known: map[string]bool{}}
}

// Observe takes a reading of every node's counts (LoadCounts) and returns
// what the other nodes served since the first reading.
func (t *CountsTracker) Observe(readings []NodeCounts) StepCounts {
	for _, r := range readings {
		if r.Node == t.self {
			continue
		}
		key := r.Node + "/" + r.Series
		prev, seen := t.last[r.Node]
		switch {
		case !t.started:
			// The baseline: what each series held before the step.
		case seen && prev.Series == r.Series:
			if !r.covers(prev.StepCounts) {
				// A series never goes back: a reading that does is
				// older than the one before it, and adds nothing.
				continue
			}
			t.total.Add(r.Sub(prev.StepCounts))
		case t.known[key]:
			// A series seen before and then replaced does not come back.
			continue
		default:
			// A series that began after the baseline: all of it.
			t.total.Add(r.StepCounts)
		}
		t.known[key] = true
		t.last[r.Node] = r
	}
	t.started = true
	return t.Total()
}

// Total returns what Observe returned last.
func (t *CountsTracker) Total() StepCounts { return t.total }

// Nodes returns how many other nodes' counts the tracker has seen.
func (t *CountsTracker) Nodes() int { return len(t.last) }

// ClusterCounts is the CountsSource of a node in a cluster: the node's own
// counters plus what the other nodes served of the image since the source
// first read it (a CountsTracker per image). Its readings never go back,
// so a step's counts are the difference of two readings, as on one node.
type ClusterCounts struct {
	reg   *Registry
	store SharedCounts
	node  string

	mu       sync.Mutex
	trackers map[int64]*CountsTracker
}

var _ CountsSource = (*ClusterCounts)(nil)

// NewClusterCounts returns the counts source of node, whose registry is
// reg, reading the other nodes' counts from store.
func NewClusterCounts(reg *Registry, store SharedCounts, node string) *ClusterCounts {
	return &ClusterCounts{reg: reg, store: store, node: node, trackers: map[int64]*CountsTracker{}}
}

// ClusterCountsTimeout bounds a ClusterCounts read: the driver judges
// several times a second, and a read that takes longer is of no use to it.
const ClusterCountsTimeout = time.Second

// Counts implements CountsSource: one read of the store, bounded by
// ClusterCountsTimeout. When the store cannot be read it returns the
// error: a step is not judged on a part of its counts.
func (c *ClusterCounts) Counts(ctx context.Context, imageID int64) (StepCounts, error) {
	rctx, cancel := context.WithTimeout(ctx, ClusterCountsTimeout)
	readings, err := c.store.LoadCounts(rctx, imageID)
	cancel()
	if err != nil {
		return StepCounts{}, fmt.Errorf("reading the other nodes' counts of image %d: %w", imageID, err)
	}
	local, _ := LocalCounts{c.reg}.Counts(ctx, imageID)
	c.mu.Lock()
	t := c.trackers[imageID]
	if t == nil {
		t = NewCountsTracker(c.node)
		c.trackers[imageID] = t
	}
	others := t.Observe(readings)
	c.mu.Unlock()
	local.Add(others)
	return local, nil
}

// Forget drops what the source tracks of the images (their rollout is
// over); a later reading starts afresh.
func (c *ClusterCounts) Forget(ids ...int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		delete(c.trackers, id)
	}
}
