// The readers: each node's reads, etcd's own reads of the records and
// port keys (or, with store local, the one node's reads in their place),
// and the history's watch of every version in etcd.

package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// svcJSON is a Service as the API answers it, and a record as etcd holds
// it: the fields the model has.
type svcJSON struct {
	ImageID      int64     `json:"image_id"`
	ExternalPort *int      `json:"external_port"`
	Containers   []ctrJSON `json:"containers"`
}

type ctrJSON struct {
	ID     string   `json:"container_id"`
	Weight int      `json:"weight"`
	Status string   `json:"status"`
	Mark   *float64 `json:"cpu_usage"`
}

func (c ctrJSON) ctr() Ctr {
	return Ctr{Present: true, Weight: c.Weight, Status: parseStatus(c.Status)}
}

func (s svcJSON) image(group int) Image {
	im := Image{Exists: true}
	if s.ExternalPort != nil && *s.ExternalPort != 0 {
		if *s.ExternalPort == GroupPort(group) {
			im.Port = true
		} else {
			im.Odd = true
		}
	}
	for _, c := range s.Containers {
		var k int
		if _, err := fmt.Sscanf(c.ID, "c%d", &k); err != nil || k < 0 || k >= Containers || im.Ctrs[k].Present ||
			fmt.Sprintf("c%d", k) != c.ID {
			im.Odd = true
			continue
		}
		im.Ctrs[k] = c.ctr()
	}
	return im
}

// reader reads the node's services, one read at a time, until deadline.
func (r *run) reader(i int, n *node, deadline time.Time) {
	for time.Now().Before(deadline) {
		epoch := int(n.epoch.Load())
		call := r.now()
		images, ok := r.readNode(n)
		ret := r.now()
		if ok && int(n.epoch.Load()) == epoch {
			r.mu.Lock()
			r.nodeReads = append(r.nodeReads, nodeRead{node: i, epoch: epoch, call: call, ret: ret, images: images})
			r.mu.Unlock()
		}
		time.Sleep(20 * time.Millisecond) // read interval
	}
}

// readNode reads the workload's images as a node serves them.
func (r *run) readNode(n *node) (map[int64]Image, bool) {
	resp, err := client.Get(n.adm + "/services")
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	var all []svcJSON
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&all) != nil {
		return nil, false
	}
	images := map[int64]Image{}
	for _, s := range all {
		if g, _, ok := imageOf(s.ImageID, r.cfg.Groups); ok {
			images[s.ImageID] = s.image(g)
		}
	}
	return images, true
}

const prefix = "/imagelb/"

// readEtcd reads every group's state from etcd in one linearizable
// transaction, and checks that the port keys agree with the records.
func (r *run) readEtcd(ctx context.Context) ([]State, error) {
	resp, err := r.etcd.Client().Txn(ctx).Then(
		clientv3.OpGet(prefix+"services/", clientv3.WithPrefix()),
		clientv3.OpGet(prefix+"ports/", clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, err
	}
	states := make([]State, r.cfg.Groups)
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		var s svcJSON
		if err := json.Unmarshal(kv.Value, &s); err != nil {
			return nil, fmt.Errorf("record %s: %v", kv.Key, err)
		}
		if g, slot, ok := imageOf(s.ImageID, r.cfg.Groups); ok {
			states[g][slot] = s.image(g)
		}
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var port int
		var owner int64
		fmt.Sscanf(strings.TrimPrefix(string(kv.Key), prefix+"ports/"), "%d", &port)
		fmt.Sscanf(string(kv.Value), "%d", &owner)
		g, slot, ok := imageOf(owner, r.cfg.Groups)
		if !ok || GroupPort(g) != port || !states[g][slot].Port {
			r.portProblem(fmt.Sprintf("at revision %d, etcd's key ports/%d names image %d, whose record does not hold the port",
				resp.Header.Revision, port, owner))
		}
	}
	for g := range states {
		for slot := range states[g] {
			if states[g][slot].Port && !portKey(resp, GroupPort(g)) {
				r.portProblem(fmt.Sprintf("at revision %d, image %d's record holds port %d, which no ports/ key claims",
					resp.Header.Revision, ImageID(g, slot), GroupPort(g)))
			}
		}
	}
	return states, nil
}

// portProblem notes a disagreement between the port keys and the records
// (the first few).
func (r *run) portProblem(what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ports) < 3 {
		r.ports = append(r.ports, what)
	}
}

func portKey(resp *clientv3.TxnResponse, port int) bool {
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		if string(kv.Key) == fmt.Sprintf("%sports/%d", prefix, port) {
			return true
		}
	}
	return false
}

// etcdReader reads etcd every 100 ms: linearizable reads in the history.
func (r *run) etcdReader(deadline time.Time) {
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		call := r.now()
		states, err := r.readEtcd(ctx)
		ret := r.now()
		cancel()
		if err == nil {
			for g, s := range states {
				r.record(0, Op{Kind: Read, Group: g, Node: "etcd"}, Result{Code: 200, State: s}, call, ret)
			}
		}
		time.Sleep(100 * time.Millisecond) // read interval
	}
}

// localReader reads the one node of store local every 50 ms: on one node
// its reads are linearizable, and stand in the history where etcd's are.
func (r *run) localReader(n *node, deadline time.Time) {
	for time.Now().Before(deadline) {
		call := r.now()
		images, ok := r.readNode(n)
		ret := r.now()
		if ok {
			for g := range r.cfg.Groups {
				var s State
				for slot := range ImagesPerGroup {
					s[slot] = images[ImageID(g, slot)]
				}
				r.record(0, Op{Kind: Read, Group: g, Node: n.name}, Result{Code: 200, State: s}, call, ret)
			}
		}
		time.Sleep(50 * time.Millisecond) // read interval
	}
}

// startWatch starts the history's watch after revision from, and returns
// once it watches; a restore stops it (stopWatch) and starts it again from
// the restored revision.
func (r *run) startWatch(ctx context.Context, from int64) {
	ctx, cancel := context.WithCancel(ctx)
	ready, done := make(chan struct{}), make(chan struct{})
	r.watchCancel, r.watchDone = cancel, done
	r.watchRev.Store(from)
	go func() {
		defer close(done)
		r.watch(ctx, ready)
	}()
	<-ready
}

// stopWatch stops the history's watch and waits for it.
func (r *run) stopWatch() {
	r.watchCancel()
	<-r.watchDone
}

// watch records every version of every record, from the start, for the
// check of the nodes' reads and of unknown writes; ready is closed once it
// watches. A watch that ends (etcd lost its leader, say) starts again after
// the last revision it saw.
func (r *run) watch(ctx context.Context, ready chan struct{}) {
	for ctx.Err() == nil {
		wc := r.etcd.Client().Watch(ctx, prefix+"services/", clientv3.WithPrefix(),
			clientv3.WithRev(r.watchRev.Load()+1), clientv3.WithProgressNotify())
		if ready != nil {
			close(ready)
			ready = nil
		}
		for resp := range wc {
			if err := resp.Err(); err != nil {
				if resp.CompactRevision != 0 {
					r.watchMu.Lock()
					r.watchErr = err
					r.watchMu.Unlock()
					return
				}
				break
			}
			r.watchMu.Lock()
			for _, ev := range resp.Events {
				r.event(ev)
			}
			r.watchMu.Unlock()
			r.watchRev.Store(max(r.watchRev.Load(), resp.Header.Revision))
		}
		if ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond) // before watching again
		}
	}
	if ready != nil {
		close(ready)
	}
}

// event records one version of a record; r.watchMu is held.
func (r *run) event(ev *clientv3.Event) {
	var id int64
	fmt.Sscanf(strings.TrimPrefix(string(ev.Kv.Key), prefix+"services/"), "%d", &id)
	g, _, ok := imageOf(id, r.cfg.Groups)
	if !ok {
		return
	}
	im := Image{}
	var marks []int64
	if ev.Type == clientv3.EventTypePut {
		var s svcJSON
		if json.Unmarshal(ev.Kv.Value, &s) != nil {
			im.Odd = true
		} else {
			im = s.image(g)
			for _, c := range s.Containers {
				if c.Mark != nil {
					marks = append(marks, int64(*c.Mark))
					k := epochMark{r.watchEpoch, int64(*c.Mark)}
					if _, seen := r.marks[k]; !seen {
						r.marks[k] = r.now()
					}
				}
			}
		}
	}
	r.watched[id] = append(r.watched[id], im)
	r.watchedAt[id] = append(r.watchedAt[id], ev.Kv.ModRevision)
	r.watchedMarks[id] = append(r.watchedMarks[id], marks)
}
