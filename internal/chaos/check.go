// Checking a history: the writes and etcd's reads with porcupine, the
// nodes' reads against the versions etcd had, and the files written for a
// failed run.

package chaos

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// check checks the history: the writes and etcd's reads with porcupine,
// each node's reads against the versions etcd had, in order.
func (r *run) check(rep *Report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.ops {
		op, res := o.Input.(Op), o.Output.(Result)
		if op.Kind == Read {
			rep.EtcdReads++
			continue
		}
		rep.Ops++
		switch res.Code {
		case 0:
			if !r.marked(op) {
				rep.Codes["unknown"]++
			}
		case 409:
			if res.PortConflict {
				rep.Codes["409 port"]++
			} else {
				rep.Codes["409 races"]++
			}
		default:
			rep.Codes[fmt.Sprint(res.Code)]++
		}
	}
	rep.NodeReads = len(r.nodeReads)
	r.watchMu.Lock()
	r.ops = r.epochs(r.ops, rep)
	r.watchMu.Unlock()

	model := Model
	if !r.cfg.StrictRejects {
		model.Step = func(state, input, output any) (bool, any) {
			res := output.(Result)
			if res.Code == 404 || res.Code == 409 { // rejected: changes nothing, whatever the node saw
				return true, state
			}
			return step(state.(State), input.(Op), res)
		}
	}
	r.model = model
	began := time.Now()
	result, info := porcupine.CheckOperationsVerbose(model, r.ops, r.cfg.CheckTimeout)
	rep.CheckTook = time.Since(began)
	rep.Result = result
	switch result {
	case porcupine.Illegal:
		rep.Anomalies = append(rep.Anomalies, "writes and etcd's reads are not linearizable: "+r.firstStuck(info))
	case porcupine.Unknown:
		rep.Anomalies = append(rep.Anomalies, fmt.Sprintf("porcupine did not finish within %s (not an anomaly of the system; a smaller history checks)", r.cfg.CheckTimeout))
	}
	r.lastInfo = info
	rep.Anomalies = append(rep.Anomalies, r.ports...)
	if !r.cfg.Local {
		rep.Anomalies = append(rep.Anomalies, r.checkNodeReads()...)
	}
}

// epochMark is a write's mark as the history's watch of one epoch saw it.
type epochMark struct {
	epoch int
	mark  int64
}

// marked says whether op's mark would be in the record it writes: a
// Register, Put or Patch leaves its number there (store local has no
// watch to see it).
func (r *run) marked(op Op) bool {
	return !r.cfg.Local && op.Mark != 0 && (op.Kind == Register || op.Kind == Put || op.Kind == Patch)
}

// epochs places each operation in the epochs it may take effect in, with
// the times it may take effect between. The history is split at each
// restore of etcd, which undoes the acknowledged changes made after its
// snapshot: each epoch is checked alone, starting from the state etcd was
// restored to (a Restored operation placed before every other).
//
// An operation belongs to the epoch it was called in if it returned before
// the next restore began. One in flight across a restore:
//   - an etcd read says nothing and is left out;
//   - a rejected write (404, 409) changed nothing, in either epoch, and is
//     left out too (the node answered from its own view, which either
//     epoch may have shown);
//   - a write the history's watch saw the mark of, in the epoch it was
//     called in or in the next, took effect there and in no other (a node
//     sends each change to etcd once): it is placed in those epochs only,
//     with its answer;
//   - any other write, unknown or acknowledged, may have taken effect in
//     either epoch or none: it is pending in both.
//
// A write whose effect is unknown (res.Code 0) may take effect at any time
// after its call: if the watch saw its mark, it took effect before (and in
// the epoch of) the watch's first sight; if not it stays pending (it
// returns after everything, porcupine's way to say so). It may still have
// taken effect: a node commits the changes queued meanwhile as one record
// per image, so a write followed in the same commit by another write of
// the same image (or a removal) leaves no mark of its own, a registration
// without containers has none, nor has a delete.
//
// Leaving the writes in flight across a restore pending in both epochs
// made the check exponential (issue 25): the ~30 called while the nodes
// were cut off for a restore could each be placed anywhere in the next
// epoch, and porcupine did not finish within 2 min.
func (r *run) epochs(ops []porcupine.Operation, rep *Report) []porcupine.Operation {
	// a pending write returns after everything: it may take effect at any
	// time after its call, or never
	var never int64
	for _, o := range ops {
		never = max(never, o.Return+1)
	}
	out := make([]porcupine.Operation, 0, len(ops)+len(r.restores)*r.cfg.Groups)
	for k, rs := range r.restores {
		for g, s := range rs.states {
			out = append(out, porcupine.Operation{ClientId: 0, Input: Op{Kind: Restored, Group: g, Node: "etcd", Epoch: k + 1},
				Output: Result{Code: 200, State: s}, Call: rs.stop, Return: rs.stop + 1})
		}
	}
	in := func(o porcupine.Operation, epoch int) {
		op := o.Input.(Op)
		op.Epoch = epoch
		o.Input = op
		out = append(out, o)
	}
	for _, o := range ops {
		op, res := o.Input.(Op), o.Output.(Result)
		k := 0 // the restores before its call
		for k < len(r.restores) && r.restores[k].up < o.Call {
			k++
		}
		across := k < len(r.restores) && o.Return >= r.restores[k].stop
		if op.Kind == Read || res.Code == 404 || res.Code == 409 {
			if across {
				if op.Kind != Read {
					rep.Codes["rejected across a restore"]++
				}
				continue
			}
			in(o, k)
			continue
		}
		// The epochs the watch saw its mark in: those it may take effect in
		// if unknown (any after its call), or if acknowledged (the one it
		// was called in, and the next if in flight across a restore).
		last := len(r.restores)
		if res.Code == 200 {
			last = k
			if across {
				last = k + 1
			}
		}
		seen := false
		for e := k; e <= last && r.marked(op); e++ {
			at, ok := r.marks[epochMark{e, op.Mark}]
			if !ok {
				continue
			}
			seen = true
			p := o
			if e > k { // called before etcd was back
				p.Call = r.restores[e-1].up
			}
			if res.Code == 0 {
				applied := res
				applied.Applied = true
				p.Output, p.Return = applied, max(at, p.Call)
			} else {
				p.Return = max(p.Return, p.Call)
			}
			in(p, e)
		}
		if res.Code == 0 && r.marked(op) {
			if seen {
				rep.Codes["unknown, applied"]++
			} else {
				rep.Codes["unknown, no mark"]++
			}
		}
		switch {
		case seen:
		case !across && res.Code == 200:
			in(o, k)
		case !across:
			o.Return = never
			in(o, k)
		default:
			pending := o
			pending.Output, pending.Return = Result{Detail: "in flight across a restore of etcd: " + res.String()}, never
			in(pending, k)
			pending.Call = r.restores[k].up
			in(pending, k+1)
		}
	}
	return out
}

// firstStuck names the operations porcupine could not place: for each
// partition that failed, the longest partial linearization's last
// operations and state, and the unplaced operations that had returned
// first (one of them has no place after that state).
func (r *run) firstStuck(info porcupine.LinearizationInfo) string {
	var out []string
	parts := r.model.Partition(r.ops)
	for p, lins := range info.PartialLinearizationsOperations() {
		longest := -1
		for i, l := range lins {
			if longest < 0 || len(l) > len(lins[longest]) {
				longest = i
			}
		}
		if longest < 0 || len(lins[longest]) == len(parts[p]) {
			continue
		}
		l := lins[longest]
		state := State{}
		for _, o := range l {
			_, st := r.model.Step(state, o.Input, o.Output)
			state = st.(State)
		}
		placed := map[[2]int64]bool{}
		for _, o := range l {
			placed[[2]int64{o.Call, int64(o.ClientId)}] = true
		}
		var rest []porcupine.Operation
		for _, o := range parts[p] {
			if !placed[[2]int64{o.Call, int64(o.ClientId)}] {
				rest = append(rest, o)
			}
		}
		slices.SortFunc(rest, func(a, b porcupine.Operation) int { return int(a.Return - b.Return) })
		var b strings.Builder
		fmt.Fprintf(&b, "\n  group %d (epoch %d): %d of %d operations placed; the last placed:", parts[p][0].Input.(Op).Group,
			parts[p][0].Input.(Op).Epoch, len(l), len(parts[p]))
		for _, o := range l[max(0, len(l)-4):] {
			fmt.Fprintf(&b, "\n    %s", describe(o))
		}
		fmt.Fprintf(&b, "\n  state then: %s\n  unplaced, by return:", state)
		for _, o := range rest[:min(6, len(rest))] {
			fmt.Fprintf(&b, "\n    %s", describe(o))
		}
		out = append(out, b.String())
	}
	return strings.Join(out, "")
}

func describe(o porcupine.Operation) string {
	return fmt.Sprintf("[%.3fs %.3fs] %s", float64(o.Call)/1e9, float64(o.Return)/1e9, Model.DescribeOperation(o.Input, o.Output))
}

// checkNodeReads checks that each node's reads of each image are versions
// etcd had, never older than one the node showed before (within one
// process of the node: a restarted node starts from its local copy).
func (r *run) checkNodeReads() []string {
	r.watchMu.Lock()
	defer r.watchMu.Unlock()
	if r.watchErr != nil {
		return []string{"the history's own watch ended (" + r.watchErr.Error() + "): node reads not checked"}
	}
	reads := slices.Clone(r.nodeReads)
	slices.SortStableFunc(reads, func(a, b nodeRead) int { return int(a.call - b.call) })
	var found []string
	type key struct {
		node, epoch int
		id          int64
	}
	at := map[key]int{}     // the index of the version a node showed last
	when := map[key]int64{} // and when it read it
	// earliest[id][i]: version i of image id cannot have been committed
	// before this time (the latest call of the writes it holds, or of its
	// predecessor's): a read that returned before it cannot show it.
	earliest := map[int64][]int64{}
	for id, vs := range r.watchedMarks {
		e := make([]int64, len(vs)+1)
		for i, marks := range vs {
			e[i+1] = e[i]
			for _, m := range marks {
				if c, ok := r.markCall[m]; ok {
					e[i+1] = max(e[i+1], c)
				}
			}
		}
		earliest[id] = e
	}
	for _, rd := range reads {
		for g := range r.cfg.Groups {
			for slot := range ImagesPerGroup {
				id := ImageID(g, slot)
				versions := append([]Image{{}}, r.watched[id]...)
				k := key{rd.node, rd.epoch, id}
				from := at[k]
				got := rd.images[id]
				j := -1
				for i := from; i < len(versions); i++ {
					if i > 0 && earliest[id][i] > rd.ret {
						break // not committed yet when the read returned
					}
					if versions[i] == got {
						j = i
						break
					}
				}
				if j < 0 {
					if len(found) < 10 {
						what := "a version etcd did not have"
						if old := slices.Index(versions[:from], got); old >= 0 {
							what = fmt.Sprintf("etcd's version %s (at revision %d), older than version %s (revision %d) which it showed at %s: it went back",
								vname(old), rev(r.watchedAt[id], old), vname(from), rev(r.watchedAt[id], from),
								time.Duration(when[k]).Round(time.Millisecond))
						}
						found = append(found, fmt.Sprintf("%s at %s showed image %d as %s: %s",
							r.nodes[rd.node].name, time.Duration(rd.call).Round(time.Millisecond), id, got, what))
					}
					continue
				}
				at[k], when[k] = j, rd.call
			}
		}
	}
	return found
}

// vname names version i of an image's versions (0: before the first).
func vname(i int) string { return fmt.Sprintf("#%d", i) }

// rev is the revision of version i (0 for the version before the first).
func rev(revs []int64, i int) int64 {
	if i == 0 {
		return 0
	}
	return revs[i-1]
}

// write writes the history and porcupine's visualization of the run to
// cfg.Out, and returns the files' paths.
func (r *run) write(rep *Report) []string {
	base := filepath.Join(r.cfg.Out, fmt.Sprintf("chaos-seed-%d", r.cfg.Seed))
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %d writes, %d etcd reads, %d node reads\nfaults:\n", rep.Seed, rep.Ops, rep.EtcdReads, rep.NodeReads)
	for _, f := range rep.Faults {
		fmt.Fprintf(&b, "  %s\n", f)
	}
	fmt.Fprintf(&b, "anomalies:\n")
	for _, a := range rep.Anomalies {
		fmt.Fprintf(&b, "  %s\n", a)
	}
	fmt.Fprintf(&b, "history (call, return in ms since the start; unknown effects return at the end):\n")
	ops := slices.Clone(r.ops)
	slices.SortStableFunc(ops, func(a, b porcupine.Operation) int { return int(a.Call - b.Call) })
	for _, o := range ops {
		fmt.Fprintf(&b, "  %10.3f %10.3f  %s\n", float64(o.Call)/1e6, float64(o.Return)/1e6,
			Model.DescribeOperation(o.Input, o.Output))
	}
	fmt.Fprintf(&b, "etcd's versions of each image (the history's watch):\n")
	for g := range r.cfg.Groups {
		for slot := range ImagesPerGroup {
			id := ImageID(g, slot)
			fmt.Fprintf(&b, "  image %d:\n", id)
			for i, v := range r.watched[id] {
				fmt.Fprintf(&b, "    #%d rev %d: %s\n", i+1, r.watchedAt[id][i], v)
			}
		}
	}
	files := []string{base + ".txt"}
	if err := os.WriteFile(files[0], []byte(b.String()), 0o644); err != nil {
		r.cfg.Log("writing %s: %v", files[0], err)
	}
	if rep.Result == porcupine.Illegal {
		html := base + ".html"
		if err := porcupine.VisualizePath(r.model, r.lastInfo, html); err != nil {
			r.cfg.Log("writing %s: %v", html, err)
		} else {
			files = append(files, html)
		}
	}
	return files
}
