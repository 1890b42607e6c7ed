// Writing the registry to etcd: a commit is one transaction that compares
// each record's revision and claims its external ports; on a mismatch, the
// conflict says what the records are now.

package etcdstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

// claim is an external port a commit takes: free, or from the image
// that releases it in the same commit.
type claim struct {
	port  int
	image int64
	from  int64 // the image releasing it in this commit; 0: the port must be free
}

// Commit applies the changes in one transaction. It compares each record's
// mod revision with the change's Expect (a missing key has 0), and that
// each port a change claims is free, so that two nodes can never both
// take a port; on a mismatch nothing is applied and a *registry.ConflictError
// carries the records as they are now.
func (s *Store) Commit(ctx context.Context, changes []registry.Change) (int64, error) {
	if len(changes) == 0 {
		return s.Status().Revision, nil
	}
	if len(changes) > MaxChanges {
		return 0, fmt.Errorf("etcd store: %d changes in one commit, at most %d", len(changes), MaxChanges)
	}
	cmps, ops, gets, claims, err := s.plan(changes)
	if err != nil {
		return 0, err
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		s.setDegraded(err.Error())
		return 0, err
	}
	resp, err := cli.Txn(rctx).If(cmps...).Then(ops...).Else(gets...).Commit()
	if err != nil {
		// Once the request is sent, only etcd's refusal says that nothing
		// was applied: a timeout or a lost connection may come after etcd
		// committed it.
		switch {
		case refused(err):
			return 0, fmt.Errorf("etcd at %s refused the change: %w", s.eps, err)
		case ctx.Err() != nil && !errors.Is(rctx.Err(), context.DeadlineExceeded):
			return 0, commitUnknown("the commit to etcd was abandoned", ctx.Err())
		case errors.Is(err, context.DeadlineExceeded):
			err = commitUnknown(fmt.Sprintf("etcd at %s did not answer within %s", s.eps, s.cfg.RequestTimeout), err)
		default:
			err = commitUnknown(fmt.Sprintf("etcd at %s did not confirm the commit", s.eps), err)
		}
		if unreachable(err) {
			s.setDegraded(err.Error())
		}
		return 0, err
	}
	if !resp.Succeeded {
		return 0, s.conflict(ctx, cli, changes, claims, resp)
	}
	rev := resp.Header.Revision
	s.setOK(rev)
	mirror := make([]registry.Change, len(changes))
	for i, ch := range changes {
		mirror[i] = registry.Change{ImageID: ch.ImageID, Expect: ch.Expect, PrevPort: ch.PrevPort}
		if ch.Record != nil {
			rec := *ch.Record
			rec.Revision = rev
			mirror[i].Record = &rec
		}
	}
	s.mirrorCommit(mirror, rev)
	return rev, nil
}

// plan builds the transaction of a commit: the comparisons, the operations
// when they hold, and the reads when they do not (each change's record
// key, then each claimed port's key).
func (s *Store) plan(changes []registry.Change) (cmps []clientv3.Cmp, ops, gets []clientv3.Op, claims []claim, err error) {
	seen := make(map[int64]bool, len(changes))
	released := map[int]int64{} // port → the image releasing it
	claimed := map[int]int64{}  // port → the image claiming it
	for _, ch := range changes {
		if ch.ImageID <= 0 {
			return nil, nil, nil, nil, fmt.Errorf("etcd store: a change of image_id %d", ch.ImageID)
		}
		if seen[ch.ImageID] {
			return nil, nil, nil, nil, fmt.Errorf("etcd store: two changes of image %d in one commit", ch.ImageID)
		}
		seen[ch.ImageID] = true
		if ch.Record != nil && ch.Record.ImageID != ch.ImageID {
			return nil, nil, nil, nil, fmt.Errorf("etcd store: the change of image %d carries the record of image %d", ch.ImageID, ch.Record.ImageID)
		}
		port := 0
		if ch.Record != nil {
			port = ch.Record.ExternalPort
		}
		if ch.PrevPort != 0 && ch.PrevPort != port {
			released[ch.PrevPort] = ch.ImageID
		}
		if port != 0 && port != ch.PrevPort {
			if other, ok := claimed[port]; ok {
				return nil, nil, nil, nil, fmt.Errorf("etcd store: images %d and %d both claim port %d in one commit", other, ch.ImageID, port)
			}
			claimed[port] = ch.ImageID
		}
	}
	for _, ch := range changes {
		key := s.recordKey(ch.ImageID)
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", ch.Expect))
		gets = append(gets, clientv3.OpGet(key))
		if ch.Record != nil {
			value, err := json.Marshal(ch.Record)
			if err != nil {
				return nil, nil, nil, nil, fmt.Errorf("etcd store: encoding the record of image %d: %w", ch.ImageID, err)
			}
			ops = append(ops, clientv3.OpPut(key, string(value)))
		} else {
			ops = append(ops, clientv3.OpDelete(key))
		}
	}
	for port, image := range claimed {
		claims = append(claims, claim{port: port, image: image, from: released[port]})
	}
	slices.SortFunc(claims, func(a, b claim) int { return cmp.Compare(a.port, b.port) })
	for _, c := range claims {
		key := s.portKey(c.port)
		if c.from == 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
		} else {
			// The port passes from one image to another in this commit.
			cmps = append(cmps, clientv3.Compare(clientv3.Value(key), "=", strconv.FormatInt(c.from, 10)))
		}
		ops = append(ops, clientv3.OpPut(key, strconv.FormatInt(c.image, 10)))
		gets = append(gets, clientv3.OpGet(key))
	}
	for port, image := range released {
		if _, ok := claimed[port]; ok {
			continue
		}
		// Released only if it is still the image's: a nested transaction,
		// so a port key written by hand for another image is left alone
		// rather than blocking the change.
		key := s.portKey(port)
		ops = append(ops, clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "=", strconv.FormatInt(image, 10))},
			[]clientv3.Op{clientv3.OpDelete(key)}, nil))
	}
	return cmps, ops, gets, claims, nil
}

// conflict explains a refused commit from the reads of its else branch,
// reading the records of the images that own the claimed ports.
func (s *Store) conflict(ctx context.Context, cli *clientv3.Client, changes []registry.Change, claims []claim, resp *clientv3.TxnResponse) error {
	e := &registry.ConflictError{}
	var details []string
	have := map[int64]bool{}
	for i, ch := range changes {
		// A record that is gone is gone as of the transaction's revision:
		// the watch's older events of it must not bring it back.
		cur := registry.Remote{ImageID: ch.ImageID, Revision: resp.Header.Revision}
		kvs := resp.Responses[i].GetResponseRange().GetKvs()
		exists := len(kvs) > 0
		if exists {
			_, rec, err := s.decode(kvs[0])
			if err != nil {
				s.log.Error("an etcd record does not decode", zap.String("key", string(kvs[0].Key)), zap.Error(err))
			}
			cur.Record, cur.Revision = rec, kvs[0].ModRevision
		}
		have[ch.ImageID] = true
		e.Current = append(e.Current, cur)
		switch {
		case exists && cur.Revision == ch.Expect, !exists && ch.Expect == 0:
		case ch.Expect == 0:
			details = append(details, fmt.Sprintf("image %d was created by another node (at revision %d)", ch.ImageID, cur.Revision))
		case !exists:
			details = append(details, fmt.Sprintf("image %d was deleted by another node (it was at revision %d)", ch.ImageID, ch.Expect))
		default:
			details = append(details, fmt.Sprintf("image %d was changed by another node (revision %d, not %d)", ch.ImageID, cur.Revision, ch.Expect))
		}
	}
	var owners []int64
	ownerPort := map[int64]int{}
	for j, c := range claims {
		kvs := resp.Responses[len(changes)+j].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			if c.from != 0 {
				details = append(details, fmt.Sprintf("port %d is no longer held by image %d", c.port, c.from))
			}
			continue
		}
		owner, err := strconv.ParseInt(string(kvs[0].Value), 10, 64)
		if err != nil || owner <= 0 {
			details = append(details, fmt.Sprintf("port %d is held by %q, not an image_id (the key %s)", c.port, kvs[0].Value, kvs[0].Key))
			continue
		}
		if c.from != 0 && owner == c.from || owner == c.image {
			continue
		}
		details = append(details, fmt.Sprintf("port %d is taken by image %d", c.port, owner))
		if !have[owner] {
			have[owner] = true
			owners = append(owners, owner)
			ownerPort[owner] = c.port
		}
	}
	if len(owners) > 0 {
		gets := make([]clientv3.Op, len(owners))
		for i, id := range owners {
			gets[i] = clientv3.OpGet(s.recordKey(id))
		}
		rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		oresp, err := cli.Txn(rctx).Then(gets...).Commit()
		cancel()
		if err != nil {
			details = append(details, "the records of the ports' owners could not be read: "+err.Error())
		} else {
			for i, id := range owners {
				cur := registry.Remote{ImageID: id, Revision: oresp.Header.Revision}
				if kvs := oresp.Responses[i].GetResponseRange().GetKvs(); len(kvs) > 0 {
					_, cur.Record, _ = s.decode(kvs[0])
					cur.Revision = kvs[0].ModRevision
				} else {
					details = append(details, fmt.Sprintf("image %d has no record: the key %s is stale", id, s.portKey(ownerPort[id])))
				}
				e.Current = append(e.Current, cur)
			}
		}
	}
	if len(details) == 0 {
		details = append(details, "a concurrent change refused the commit")
	}
	e.Detail = strings.Join(details, "; ")
	return e
}
