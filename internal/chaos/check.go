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
	// A write whose effect is unknown may take effect at any time after its
	// call: it returns after everything else (porcupine's way to say
	// "pending").
	var end int64
	for _, o := range r.ops {
		end = max(end, o.Return)
	}
	// A Register, Put or Patch leaves its mark in the record it writes: if
	// etcd's history has it, the write took effect before the watch saw it.
	// If not, it may still have taken effect: a node commits the changes
	// queued meanwhile as one record per image, so a write followed in the
	// same commit by another write of the same image (or a removal) leaves
	// no mark of its own, and a registration without containers has none.
	// Such a write stays pending, as a delete does.
	r.watchMu.Lock()
	for _, i := range r.unknown {
		op, res := r.ops[i].Input.(Op), r.ops[i].Output.(Result)
		if op.Kind == DelCtr || op.Kind == DelSvc || r.cfg.Local {
			r.ops[i].Return = end + 1
			continue
		}
		if at, ok := r.marks[op.Mark]; ok {
			res.Applied = true
			r.ops[i].Output, r.ops[i].Return = res, max(at, r.ops[i].Call)
			rep.Codes["unknown, applied"]++
		} else {
			r.ops[i].Return = end + 1
			rep.Codes["unknown, no mark"]++
		}
	}
	r.watchMu.Unlock()
	for _, o := range r.ops {
		op, res := o.Input.(Op), o.Output.(Result)
		if op.Kind == Read {
			rep.EtcdReads++
			continue
		}
		rep.Ops++
		switch res.Code {
		case 0:
			if op.Kind == DelCtr || op.Kind == DelSvc || r.cfg.Local {
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
	r.ops = r.epochs(r.ops)

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

// epochs splits the history at each restore of etcd, which undoes the
// acknowledged changes made after its snapshot: each epoch is checked
// alone, starting from the state etcd was restored to (a Restored
// operation placed before every other). An operation of the epoch it was
// called in if it returned before the next restore began; one in flight
// across a restore (the unknown writes still pending among them) is
// unknown in that epoch and in the next, where it may take effect after
// etcd is back; an etcd read in flight across it says nothing and is left
// out.
func (r *run) epochs(ops []porcupine.Operation) []porcupine.Operation {
	if len(r.restores) == 0 {
		return ops
	}
	// an unknown operation returns after everything: it may take effect
	// at any time after its call, or never
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
	for _, o := range ops {
		op := o.Input.(Op)
		k := 0 // the restores before its call
		for k < len(r.restores) && r.restores[k].up < o.Call {
			k++
		}
		if k == len(r.restores) || o.Return < r.restores[k].stop {
			op.Epoch = k
			o.Input = op
			out = append(out, o)
			continue
		}
		if op.Kind == Read {
			continue
		}
		res := o.Output.(Result)
		unknown := Result{Detail: "in flight across a restore of etcd: " + res.String()}
		end := never
		op.Epoch = k
		out = append(out, porcupine.Operation{ClientId: o.ClientId, Input: op, Output: unknown, Call: o.Call, Return: end})
		if k+1 <= len(r.restores) {
			op.Epoch = k + 1
			out = append(out, porcupine.Operation{ClientId: o.ClientId, Input: op, Output: unknown, Call: r.restores[k].up, Return: end})
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
