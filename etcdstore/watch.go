package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/connectivity"

	"github.com/imagelb/caddy-imagelb/registry"
)

// probeInterval is how often a watch checks its connection, and, while the
// store is degraded, asks etcd for a progress notification to learn that
// it is back.
const probeInterval = time.Second

// Watch delivers to apply every change of a record after revision, in
// order, until ctx is done or the store is closed; the caller runs it in a
// goroutine. The revision it reports never runs ahead of the changes it
// has delivered: when the watch cannot resume (etcd compacted the
// revisions it needs, the stream broke, etcd's revision went backwards),
// it backs off, re-lists, and delivers a Reset event with the whole
// registry, then watches on from the re-list's revision.
func (s *Store) Watch(ctx context.Context, revision int64, apply func(registry.RemoteEvent)) {
	if !s.enter() {
		return
	}
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	w := &watch{s: s, apply: apply, rev: revision}
	w.run(ctx)
}

type watch struct {
	s     *Store
	apply func(registry.RemoteEvent)
	rev   int64 // every change up to rev has been delivered
	// rewound: etcd's revision went back; the next re-list says so, even
	// if writes since have taken the revision past rev again.
	rewound bool
	// cluster is the ID of the etcd cluster the watch last found: a
	// restored cluster has another (a restore makes new member IDs).
	cluster uint64
}

func (w *watch) run(ctx context.Context) {
	bo := newBackoff(100*time.Millisecond, 2*time.Second)
	w.s.mu.Lock()
	relist := w.s.fromCache
	w.s.mu.Unlock()
	for {
		// Taken before the list: a fence after it means the listing may
		// be of the history etcd no longer has.
		fenced := w.s.fences()
		for relist {
			loaded, err := w.s.list(ctx)
			if err == nil {
				w.reset(loaded)
				break
			}
			if ctx.Err() != nil {
				return
			}
			w.s.setDegraded("the watch on etcd at " + w.s.eps + " cannot start, re-listing failed: " + err.Error())
			if !sleep(ctx, bo.next()) {
				return
			}
		}
		healthy, err := w.follow(ctx, fenced)
		if ctx.Err() != nil {
			return
		}
		if healthy {
			bo.reset()
		}
		w.s.setDegraded("the watch on etcd at " + w.s.eps + " stopped: " + err.Error())
		w.s.log.Warn("the etcd watch stopped; re-listing the registry", zap.Int64("revision", w.rev), zap.Error(err))
		if !sleep(ctx, bo.next()) {
			return
		}
		relist = true
	}
}

// follow watches from w.rev+1 until the watch fails or fenced is closed;
// healthy says whether it delivered anything (a working watch resets the
// back-off).
func (w *watch) follow(ctx context.Context, fenced <-chan struct{}) (healthy bool, err error) {
	var cli *clientv3.Client
	for {
		cctx, cancel := context.WithTimeout(ctx, w.s.cfg.RequestTimeout)
		cli, err = w.s.client(cctx)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		w.s.setDegraded(err.Error())
	}
	// WithRequireLeader: a member cut off from its leader ends the watch
	// (ErrNoLeader) instead of keeping it open and silent.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	// asked: the probe has asked this stream for a progress notification.
	// etcd before 3.4.24 and 3.5.8 (Debian's etcd-server is 3.4.23)
	// answers such a request at once with its current revision, ahead of
	// the events a resumed watch has still to receive (etcd-io/etcd#15220);
	// the answer cannot be told from a periodic notification, so from then
	// on no notification on this stream moves the revision: events do, and
	// a re-list does if the stream breaks behind a compaction.
	var asked atomic.Bool
	// The probe runs on its own: Watch itself blocks until etcd has
	// created the watch.
	probed, lost := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(probed)
		tick := time.NewTicker(w.s.probeEvery)
		defer tick.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-tick.C:
				if !w.probe(wctx, cli, &asked) {
					close(lost)
					return
				}
			}
		}
	}()
	defer func() {
		cancel()
		<-probed
	}()
	wch := cli.Watch(wctx, w.s.prefix+servicesDir,
		clientv3.WithPrefix(),
		clientv3.WithRev(w.rev+1),
		// Progress notifications keep the revision of a quiet prefix
		// current while other keys move the store's revision (APISIX
		// #12514), and tell a degraded store that etcd is back.
		clientv3.WithProgressNotify(),
		clientv3.WithCreatedNotify())
	for {
		select {
		case <-ctx.Done():
			return healthy, ctx.Err()
		case <-lost:
			// The client would resume the watch once etcd answers again,
			// and say nothing; but etcd may have been restored meanwhile,
			// and a watch from a revision it has not reached yet gets no
			// progress notification that would tell: re-list instead.
			return healthy, errors.New("the connection to etcd was lost")
		case <-fenced:
			// The node's heartbeat found etcd's history is not the one
			// it wrote to (restored, and the watch resumed on it without
			// a word): nothing the node recorded counts.
			w.rewound = true
			return healthy, errors.New("the node's heartbeat key says etcd's history is another (restored from a backup, or a node with the same node_id)")
		case resp, ok := <-wch:
			if !ok {
				if ctx.Err() != nil {
					return healthy, ctx.Err()
				}
				return healthy, errors.New("the watch channel closed")
			}
			if err := resp.Err(); err != nil {
				if resp.CompactRevision != 0 || errors.Is(err, rpctypes.ErrCompacted) {
					return healthy, fmt.Errorf("it fell behind etcd's compaction (the history before revision %d is gone, it needed %d)", resp.CompactRevision, w.rev+1)
				}
				return healthy, err
			}
			if id := resp.Header.GetClusterId(); id != 0 && id != w.cluster {
				if was := w.cluster; was != 0 {
					w.cluster, w.rewound = id, true
					return healthy, fmt.Errorf("etcd is another cluster than before (ID %x, was %x): was it restored from a backup?", id, was)
				}
				w.cluster = id
			}
			switch {
			case resp.Created, resp.IsProgressNotify():
				rev := resp.Header.GetRevision()
				if rev < w.rev {
					if err := w.backwards(ctx, cli, rev); err != nil {
						return healthy, err
					}
				}
				healthy = true
				// A created response says nothing of the events that
				// follow it (the watch may be catching up); a periodic
				// progress notification comes only once every event up
				// to its revision has been sent, and so does a requested
				// one from etcd 3.4.24 and 3.5.8 on (see asked).
				if resp.Created || rev <= w.rev || asked.Load() {
					w.s.setOK(w.rev)
					continue
				}
				w.deliver(nil, rev)
			default:
				healthy = true
				w.events(resp)
			}
		}
	}
}

// events delivers the changes of a watch response. Its revision is the
// last event's, not the response header's: while the watch catches up,
// etcd sends the events in batches, each with the store's current revision
// in its header.
func (w *watch) events(resp clientv3.WatchResponse) {
	var records []registry.Remote
	last := w.rev
	for _, ev := range resp.Events {
		rev := ev.Kv.ModRevision
		if rev <= w.rev {
			continue // delivered already
		}
		last = max(last, rev)
		id, rec, err := w.s.decode(ev.Kv)
		if ev.Type == clientv3.EventTypeDelete {
			rec, err = nil, nil
		}
		if id == 0 {
			continue // not a record key; Load ignores it too
		}
		if err != nil {
			// As Load leaves such a record out, the watch removes it.
			w.s.log.Error("an etcd record does not decode; the image is removed",
				zap.String("key", string(ev.Kv.Key)), zap.Error(err))
		}
		records = append(records, registry.Remote{ImageID: id, Record: rec, Revision: rev})
	}
	if last == w.rev {
		w.s.setOK(w.rev)
		return
	}
	w.deliver(records, last)
}

func (w *watch) deliver(records []registry.Remote, rev int64) {
	w.apply(registry.RemoteEvent{Records: records, Revision: rev})
	w.rev = rev
	w.s.mirrorEvent(records, rev)
	w.s.setOK(rev)
}

// reset delivers a re-listed registry.
func (w *watch) reset(loaded *registry.Loaded) {
	records := make([]registry.Remote, len(loaded.Records))
	for i := range loaded.Records {
		rec := loaded.Records[i]
		records[i] = registry.Remote{ImageID: rec.ImageID, Record: &rec, Revision: rec.Revision}
	}
	rewound := w.rewound || loaded.Revision < w.rev
	w.apply(registry.RemoteEvent{Records: records, Revision: loaded.Revision, Reset: true, Rewound: rewound})
	w.rev, w.rewound = loaded.Revision, false
	w.s.replaceCache(loaded)
	w.s.setRevision(loaded.Revision)
	w.s.setOK(loaded.Revision)
}

// backwards checks, with a linearizable read, whether the revision the
// watch's member reports (behind the watch's) means etcd went back (it was
// restored from a backup without --bump-revision), or only that the
// member lags.
func (w *watch) backwards(ctx context.Context, cli *clientv3.Client, rev int64) error {
	rctx, cancel := context.WithTimeout(ctx, w.s.cfg.RequestTimeout)
	defer cancel()
	resp, err := cli.Get(rctx, w.s.prefix+servicesDir, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return nil // cannot tell; the watch goes on
	}
	if resp.Header.Revision < w.rev {
		w.rewound = true
		return fmt.Errorf("etcd's revision went back from %d to %d (was it restored from a backup?)", w.rev, resp.Header.Revision)
	}
	w.s.log.Debug("the watch's etcd member lags", zap.Int64("member_revision", rev), zap.Int64("revision", w.rev))
	return nil
}

// probe notices a lost connection (the client retries a watch forever, and
// says nothing), and, while the store is degraded, asks for a progress
// notification: it comes back once etcd answers again.
// It runs in a goroutine of its own, beside the watch's; false: the
// connection is lost, and the watch must end.
func (w *watch) probe(wctx context.Context, cli *clientv3.Client, asked *atomic.Bool) bool {
	if cli.ActiveConnection().GetState() == connectivity.TransientFailure {
		w.s.setDegraded("no connection to etcd at " + w.s.eps)
		return false
	}
	if w.s.Status().OK {
		return true
	}
	// wctx's metadata (the leader requirement) names the watch's stream.
	pctx, cancel := context.WithTimeout(wctx, probeInterval)
	defer cancel()
	asked.Store(true) // before the request: its answer may come at once
	if err := cli.RequestProgress(pctx); err != nil {
		w.s.log.Debug("etcd progress request failed", zap.Error(err))
	}
	return true
}

// backoff is an exponential back-off with jitter.
type backoff struct{ min, max, cur time.Duration }

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max} }

// next returns a wait in [d/2, d], d doubling from min up to max.
func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d; false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
