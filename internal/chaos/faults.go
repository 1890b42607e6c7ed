// The faults: the schedule that injects them during a run, each kind's
// injection and healing, and waiting for the nodes to converge afterwards.

package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"time"
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
	}
	r.t.Fatalf("chaos: unknown fault %q (known: %s)", kind, strings.Join(AllFaults, ", "))
	return ""
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
