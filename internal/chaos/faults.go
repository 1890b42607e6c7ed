// The faults: the schedule that injects them during a run, each kind's
// injection and healing, and waiting for the nodes to converge afterwards.

package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
)

// faults injects the configured faults one at a time until deadline; each
// is healed before the next.
func (r *run) faults(deadline time.Time, rep *Report) {
	if len(r.cfg.Faults) == 0 {
		time.Sleep(time.Until(deadline))
		return
	}
	rng := r.rng
	between := func(d time.Duration) time.Duration { return d/4 + time.Duration(rng.Int64N(int64(d))) }
	for {
		gap := between(r.cfg.FaultGap)
		if time.Now().Add(gap).After(deadline) {
			time.Sleep(time.Until(deadline))
			return
		}
		time.Sleep(gap) // quiet time between faults: the schedule
		kind := r.cfg.Faults[rng.IntN(len(r.cfg.Faults))]
		d := between(r.cfg.FaultFor)
		at := time.Since(r.start).Round(time.Millisecond)
		what := r.inject(kind, d, rng)
		rep.Faults = append(rep.Faults, fmt.Sprintf("%s %s", at, what))
		r.cfg.Log("seed %d: %s %s", r.cfg.Seed, at, what)
	}
}

// inject makes one fault, waits d, and heals it; it describes what it did.
func (r *run) inject(kind string, d time.Duration, rng *rand.Rand) string {
	switch kind {
	case FaultMemberKill, FaultLeaderKill:
		m := rng.IntN(3)
		if kind == FaultLeaderKill {
			if m = r.etcd.Leader(); m < 0 {
				return kind + ": no leader, skipped"
			}
		}
		r.etcd.Stop(m)
		time.Sleep(d) // the member is down for d
		r.etcd.Restart(m)
		return fmt.Sprintf("%s: member m%d %s for %s", kind, m, r.memberDown(), d.Round(time.Millisecond))
	case FaultAllMembers:
		r.etcd.StopAll()
		time.Sleep(d) // every member is down for d
		r.etcd.RestartAll()
		return fmt.Sprintf("%s: every member %s for %s", kind, r.memberDown(), d.Round(time.Millisecond))
	case FaultNodeKill:
		n := r.nodes[rng.IntN(len(r.nodes))]
		n.kill9()
		time.Sleep(d) // the node is dead for d
		r.startNode(n)
		return fmt.Sprintf("%s: %s killed (SIGKILL), restarted after %s", kind, n.name, d.Round(time.Millisecond))
	case FaultNodePause:
		n := r.nodes[rng.IntN(len(r.nodes))]
		n.signal(syscall.SIGSTOP)
		time.Sleep(r.cfg.PauseFor / 2) // paused: the others write
		rev := r.etcd.Compact(r.watchRev.Load())
		time.Sleep(r.cfg.PauseFor - r.cfg.PauseFor/2) // past its lease
		n.signal(syscall.SIGCONT)
		return fmt.Sprintf("%s: %s stopped (SIGSTOP) for %s, etcd compacted to %d meanwhile", kind, n.name, r.cfg.PauseFor, rev)
	case FaultPartition:
		n := r.nodes[rng.IntN(len(r.nodes))]
		for _, p := range n.proxies {
			p.Stop()
		}
		time.Sleep(d) // cut off for d
		for _, p := range n.proxies {
			if err := p.Start(); err != nil {
				r.t.Fatal(err)
			}
		}
		return fmt.Sprintf("%s: %s cut off from etcd for %s", kind, n.name, d.Round(time.Millisecond))
	case FaultCompact:
		rev := r.etcd.Compact(r.watchRev.Load())
		return fmt.Sprintf("%s: etcd compacted to %d", kind, rev)
	case FaultRestoreBump, FaultRestoreNoBump:
		return r.restore(kind, d, rng)
	}
	r.t.Fatalf("chaos: unknown fault %q (known: %s)", kind, strings.Join(AllFaults, ", "))
	return ""
}

// restore is one restore of etcd from a snapshot, for the check: the
// history is split into epochs at each.
type restore struct {
	stop, up int64   // the nodes were cut off from etcd at stop, reconnected at up
	states   []State // etcd's state once restored, by group: the next epoch's start
}

// restore saves a snapshot of etcd, lets the writers go on for d, then
// restores every member from it and starts the cluster again. The nodes
// are cut off from etcd first, so that the history's watch sees every
// change before the restore and the restored state is read before any
// node writes; they are reconnected once etcd runs again. Without a bump,
// writes outside the nodes' prefix may first take the revision past the
// one the nodes had seen, so that the revision they find is not behind
// theirs.
func (r *run) restore(kind string, d time.Duration, rng *rand.Rand) string {
	snap := filepath.Join(r.t.TempDir(), "snapshot.db")
	restorable := r.etcd.(*etcdtest.Cluster) // Run refuses a restore fault with other members
	snapRev := restorable.Snapshot(snap)
	time.Sleep(d) // the writers go on: the restore undoes what they change now
	stop := r.now()
	for _, n := range r.nodes {
		for _, p := range n.proxies {
			p.Stop()
		}
	}
	before := r.etcd.Revision()
	for wait := time.Now(); r.watchRev.Load() < before; {
		if time.Since(wait) > 30*time.Second {
			r.t.Fatalf("chaos: the history's watch is at revision %d, etcd at %d, before a restore", r.watchRev.Load(), before)
		}
		time.Sleep(10 * time.Millisecond) // polling for the watch's progress
	}
	r.stopWatch()
	var bump int64
	if kind == FaultRestoreBump {
		bump = RestoreBump
	}
	rev := restorable.RestoreAll(snap, bump)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	states, err := r.readEtcd(ctx)
	if err != nil {
		r.t.Fatalf("chaos: reading etcd after the restore: %v", err)
	}
	r.watchMu.Lock()
	r.watchEpoch++ // the marks the watch sees from now on are the next epoch's
	for g, s := range states {
		for slot, im := range s {
			id := ImageID(g, slot)
			r.watched[id] = append(r.watched[id], im)
			r.watchedAt[id] = append(r.watchedAt[id], rev)
			r.watchedMarks[id] = append(r.watchedMarks[id], nil)
		}
	}
	r.watchMu.Unlock()
	overtaken := ""
	if bump == 0 && rng.IntN(2) == 0 {
		r.fill(ctx, before+10-rev)
		overtaken = fmt.Sprintf(", then written past it to %d", r.etcd.Revision())
	}
	r.startWatch(r.watchCtx, rev)
	for _, n := range r.nodes {
		for _, p := range n.proxies {
			if err := p.Start(); err != nil {
				r.t.Fatal(err)
			}
		}
	}
	r.mu.Lock()
	r.restores = append(r.restores, restore{stop: stop, up: r.now(), states: states})
	r.mu.Unlock()
	return fmt.Sprintf("%s: etcd restored from a snapshot at revision %d taken %s before, when at %d: now at %d%s",
		kind, snapRev, d.Round(time.Millisecond), before, rev, overtaken)
}

// fill makes n writes to a key outside the nodes' prefix, 8 at a time.
func (r *run) fill(ctx context.Context, n int64) {
	cli := r.etcd.Client()
	var wg sync.WaitGroup
	var next atomic.Int64
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for next.Add(1) <= n {
				if _, err := cli.Put(ctx, "/chaos/filler", "x"); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		r.t.Fatalf("chaos: filling etcd after the restore: %v", err)
	default:
	}
}

// converge waits until every node serves etcd's state, and returns it.
func (r *run) converge(timeout time.Duration) ([]State, error) {
	deadline := time.Now().Add(timeout)
	var final []State
	var diff string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		states, err := r.readEtcd(ctx)
		cancel()
		if err == nil {
			final, diff = states, ""
			for _, n := range r.nodes {
				images, ok := r.readNode(n)
				if !ok {
					diff = n.name + " does not answer"
					break
				}
				for g, s := range states {
					for slot, want := range s {
						id := ImageID(g, slot)
						if got := images[id]; got != want {
							diff = fmt.Sprintf("%s has image %d as %s, etcd has %s", n.name, id, got, want)
						}
					}
				}
			}
			if diff == "" {
				return final, nil
			}
		} else {
			diff = "etcd: " + err.Error()
		}
		if time.Now().After(deadline) {
			return final, fmt.Errorf("not converged %s after the faults were healed: %s", timeout, diff)
		}
		time.Sleep(50 * time.Millisecond) // polling until the nodes catch up
	}
}
