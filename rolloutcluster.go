package imagelb

import (
	"context"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/etcdstore"
	"github.com/imagelb/caddy-imagelb/registry"
	"github.com/imagelb/caddy-imagelb/rollout"
)

// Rollouts in a cluster. A rollout is in the stable image's record, so
// every node has it; one node drives it, the node that holds its lead in
// etcd (leads/rollout/{image_id}), and judges its steps on every node's
// counts, which each node publishes (rollout-counts/{image_id}/{node_id})
// while a rollout of the image is judged.

// Timings of the rollouts' cluster part.
const (
	// rolloutLeadTTL is the lease of a rollout's lead: a driver that dies
	// is replaced within it (plus rolloutClusterTick).
	rolloutLeadTTL = etcdstore.DefaultLeaseTTL
	// rolloutClusterTick is how often a node publishes its counts and
	// tries to take the leads no node holds.
	rolloutClusterTick = time.Second
)

// rolloutCluster is this node's part of the rollouts in a cluster. It
// lives in the registry's holder, across reloads.
type rolloutCluster struct {
	reg    *registry.Registry
	store  *etcdstore.Store
	node   string
	logger *zap.Logger
	// Counts is the driver's counts source: this node's counters and
	// what the other nodes published.
	counts *registry.ClusterCounts

	mu       sync.Mutex
	judged   map[int64]int64 // the rollouts whose steps are judged (progressing, paused): stable image → canary
	driven   map[int64]bool  // the rollouts that need a driver (judged, or an outcome not yet announced)
	held     map[int64]*rolloutLead
	changed  map[int64]struct{}
	onLead   func(id int64) // tells the driver to look at a rollout this node now drives
	wake     chan struct{}
	unlisten func()
}

// rolloutLead is a lead this node holds. It drives the rollout once its
// registry has the version of the record etcd had when it took the lead
// (need): a node that takes over must not act on an older version, which
// the node before it has already acted on (announcing an outcome again).
type rolloutLead struct {
	lost    <-chan struct{}
	release func()
	need    int64 // the record's revision in etcd after the lead was taken
	ready   bool  // the registry has it: the driver may drive
}

func newRolloutCluster(reg *registry.Registry, store *etcdstore.Store, node string, logger *zap.Logger) *rolloutCluster {
	rc := &rolloutCluster{reg: reg, store: store, node: node, logger: logger,
		counts: registry.NewClusterCounts(reg, store, node),
		judged: map[int64]int64{}, driven: map[int64]bool{}, held: map[int64]*rolloutLead{},
		changed: map[int64]struct{}{}, wake: make(chan struct{}, 1)}
	rc.unlisten = reg.OnChange(rc.noteChanged)
	for _, svc := range reg.Services() {
		if svc.Rollout != nil {
			rc.changed[svc.ImageID] = struct{}{}
		}
	}
	return rc
}

// configure makes the driver's config a cluster's: the driver drives only
// the rollouts whose lead this node holds, and judges them on every node's
// counts; it is told when this node takes a lead. Without a cluster (rc
// nil) it changes nothing.
func (rc *rolloutCluster) configure(cfg *rollout.Config, d *rollout.Driver) {
	if rc == nil {
		return
	}
	cfg.Counts, cfg.Drives = rc.counts, rc.drives
	rc.mu.Lock()
	rc.onLead = func(id int64) { d.Follow(id) }
	rc.mu.Unlock()
}

// noteChanged is the registry's change listener (under its writer lock):
// it only notes the images.
func (rc *rolloutCluster) noteChanged(ids []int64) {
	rc.mu.Lock()
	for _, id := range ids {
		rc.changed[id] = struct{}{}
	}
	rc.mu.Unlock()
	select {
	case rc.wake <- struct{}{}:
	default:
	}
}

// drives reports whether this node drives the image's rollout: it holds
// the lead and has not lost it. The driver asks at every pass.
func (rc *rolloutCluster) drives(id int64) bool {
	rc.mu.Lock()
	l := rc.held[id]
	ready := l != nil && l.ready
	rc.mu.Unlock()
	if !ready {
		return false
	}
	select {
	case <-l.lost:
		return false
	default:
		return true
	}
}

// images returns the images whose counts this node publishes: both sides
// of every rollout being judged.
func (rc *rolloutCluster) images() []int64 {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := make([]int64, 0, 2*len(rc.judged))
	for stable, canary := range rc.judged {
		out = append(out, stable, canary)
	}
	return out
}

// run publishes the counts and keeps the leads until ctx is done, then
// gives up the leads and withdraws the counts.
func (rc *rolloutCluster) run(ctx context.Context) {
	defer rc.unlisten()
	pub := registry.NewCountsPublisher(rc.reg, rc.store, rc.node, rc.images)
	tick := time.NewTicker(rolloutClusterTick)
	defer tick.Stop()
	warned := false
	due := true // etcd is asked at each tick, and at once when a rollout starts, changes state or ends
	for {
		if rc.update() {
			due = true
		}
		if due {
			rc.takeLeads(ctx)
			switch err := pub.Publish(ctx); {
			case err != nil && !warned && ctx.Err() == nil:
				rc.logger.Warn("cannot publish this node's counts of the rollouts' images: the rollouts' drivers judge without them until it can", zap.Error(err))
				warned = true
			case err == nil && warned:
				rc.logger.Info("this node's counts of the rollouts' images are published again")
				warned = false
			}
		}
		rc.catchUp()
		due = false
		select {
		case <-ctx.Done():
			rc.releaseAll()
			pub.Withdraw()
			return
		case <-tick.C:
			due = true
		case <-rc.wake: // a registry change: only a rollout's asks etcd (update)
		}
	}
}

// update applies the noted changes: which rollouts are judged and which
// need a driver; the leads of rollouts that need none are given up. It
// reports whether a rollout started, changed its state or ended.
func (rc *rolloutCluster) update() (moved bool) {
	rc.mu.Lock()
	changed := rc.changed
	rc.changed = map[int64]struct{}{}
	rc.mu.Unlock()
	for id := range changed {
		var ro *registry.Rollout
		if svc := rc.reg.Lookup(id); svc != nil {
			ro = svc.Rollout
		}
		rc.mu.Lock()
		canary, wasJudged := rc.judged[id]
		wasDriven := rc.driven[id]
		judged := ro != nil && (ro.State == registry.RolloutProgressing || ro.State == registry.RolloutPaused)
		if judged {
			rc.judged[id] = ro.CanaryImageID
		} else {
			delete(rc.judged, id)
		}
		if ro != nil && (judged || !ro.Notified) {
			rc.driven[id] = true
		} else {
			delete(rc.driven, id)
		}
		if judged != wasJudged || rc.driven[id] != wasDriven || judged && canary != ro.CanaryImageID {
			moved = true
		}
		l := rc.held[id]
		if l != nil && !rc.driven[id] {
			delete(rc.held, id)
		} else {
			l = nil
		}
		rc.mu.Unlock()
		if wasJudged && !judged {
			rc.counts.Forget(id, canary)
		}
		if l != nil {
			l.release()
			rc.logger.Info("rollout over: this node gives up driving it", zap.Int64("image_id", id))
		}
	}
	return moved
}

// takeLeads forgets the leads this node lost and tries to take those of
// the rollouts no node drives.
func (rc *rolloutCluster) takeLeads(ctx context.Context) {
	rc.mu.Lock()
	var free []int64
	for id := range rc.driven {
		if l := rc.held[id]; l != nil {
			select {
			case <-l.lost:
				delete(rc.held, id)
				rc.logger.Warn("this node lost the lead of a rollout (it could not renew it in etcd): it stops driving it; the node that takes it over starts the current step again",
					zap.Int64("image_id", id), zap.String("node_id", rc.node))
			default:
				continue
			}
		}
		free = append(free, id)
	}
	rc.mu.Unlock()
	for _, id := range free {
		name := "rollout/" + strconv.FormatInt(id, 10)
		if holder, err := rc.store.Leader(ctx, name); err != nil || holder != "" {
			continue // a node drives it (one read, not a lease per round), or etcd cannot be reached
		}
		lost, release, won, err := rc.store.Lead(ctx, name, rc.node, rolloutLeadTTL)
		if err != nil || !won {
			continue // another node took it first, or etcd cannot be reached
		}
		need, err := rc.store.RecordRevision(ctx, id)
		if err != nil {
			release() // the next round tries again
			continue
		}
		rc.mu.Lock()
		keep := rc.driven[id] // not over meanwhile
		if keep {
			rc.held[id] = &rolloutLead{lost: lost, release: release, need: need}
		}
		rc.mu.Unlock()
		if !keep {
			release()
		}
	}
}

// catchUp hands the driver the leads whose record this node now has in the
// version etcd had when it took them.
func (rc *rolloutCluster) catchUp() {
	// The registry's lock is not taken under rc.mu: the registry calls
	// noteChanged, which takes rc.mu, under its own.
	rc.mu.Lock()
	waiting := map[int64]int64{}
	for id, l := range rc.held {
		if !l.ready {
			waiting[id] = l.need
		}
	}
	rc.mu.Unlock()
	for id, need := range waiting {
		if rc.reg.RecordRevision(id) < need {
			delete(waiting, id)
		}
	}
	var ready []int64
	rc.mu.Lock()
	for id, need := range waiting {
		if l := rc.held[id]; l != nil && !l.ready && l.need == need {
			l.ready = true
			ready = append(ready, id)
		}
	}
	onLead := rc.onLead
	rc.mu.Unlock()
	for _, id := range ready {
		rc.logger.Info("this node drives the rollout", zap.Int64("image_id", id), zap.String("node_id", rc.node))
		if onLead != nil {
			onLead(id)
		}
	}
}

// releaseAll gives up every lead, so that another node takes them over at
// once.
func (rc *rolloutCluster) releaseAll() {
	rc.mu.Lock()
	held := rc.held
	rc.held = map[int64]*rolloutLead{}
	rc.mu.Unlock()
	for _, l := range held {
		l.release()
	}
}
