package etcdstore

import (
	"context"
	"errors"
	"math"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Leads: work one node does for the cluster as long as it can, such as
// driving a rollout. A lead is a claim (ondemand.go) that its holder keeps:
//
//	leads/{name}   the holder's node id, attached to a lease of the lead's TTL
//
// kept alive while the holder holds it. Another node takes it only once the
// key is gone: the holder released it or stopped (Close revokes it), or its
// lease expired (it died, or could not reach etcd for the TTL).
const leadsDir = "leads/"

// Lead takes name for holder, if no node holds it, and keeps it until
// release is called, ctx is done or the store is closed. lost is closed
// when the holder must stop acting on the lead: it was released, or its
// lease could not be renewed for two thirds of ttl, before another node can
// take it (ttl after etcd last renewed it). won is false when another node
// holds it.
func (s *Store) Lead(ctx context.Context, name, holder string, ttl time.Duration) (lost <-chan struct{}, release func(), won bool, err error) {
	if !s.enter() {
		return nil, nil, false, errors.New("etcd store: closed")
	}
	entered := true
	defer func() {
		if entered {
			s.wg.Done()
		}
	}()
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		return nil, nil, false, s.requestError("take the lead "+name+" in", err)
	}
	grant, err := cli.Grant(rctx, max(int64(math.Ceil(ttl.Seconds())), 1))
	if err != nil {
		return nil, nil, false, s.requestError("take the lead "+name+" in", err)
	}
	lease := grant.ID
	s.mu.Lock()
	s.leases[lease] = struct{}{}
	s.mu.Unlock()
	revoke := func() {
		c, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
		defer cancel()
		_, _ = cli.Revoke(c, lease) // a lease that outlives us expires by itself
		s.mu.Lock()
		delete(s.leases, lease)
		s.mu.Unlock()
	}
	key := s.prefix + leadsDir + name
	resp, err := cli.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, holder, clientv3.WithLease(lease))).
		Commit()
	if err != nil || !resp.Succeeded {
		revoke()
		if err != nil {
			return nil, nil, false, s.requestError("take the lead "+name+" in", err)
		}
		return nil, nil, false, nil
	}
	kctx, stop := context.WithCancel(s.ctx)
	stopOnCtx := context.AfterFunc(ctx, stop)
	ka, err := cli.KeepAlive(kctx, lease)
	if err != nil {
		stop()
		stopOnCtx()
		revoke()
		return nil, nil, false, s.requestError("take the lead "+name+" in", err)
	}
	done := make(chan struct{})
	var once sync.Once
	release = func() {
		once.Do(func() {
			stop()
			stopOnCtx()
			revoke()
		})
	}
	entered = false // the keeper goroutine leaves it
	go func() {
		defer s.wg.Done()
		defer release()
		defer close(done) // first: the holder stops at once, the revoke may wait on etcd
		grace := ttl * 2 / 3
		timer := time.NewTimer(grace)
		defer timer.Stop()
		for {
			select {
			case _, ok := <-ka:
				if !ok {
					return // the lease expired, or ctx or the store ended
				}
				timer.Reset(grace)
			case <-timer.C:
				return // no renewal for too long: another node may take it soon
			case <-kctx.Done():
				return
			}
		}
	}()
	return done, release, true, nil
}

// Leader returns the holder of name ("" when no node holds it).
func (s *Store) Leader(ctx context.Context, name string) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		return "", s.requestError("read the lead "+name+" from", err)
	}
	resp, err := cli.Get(rctx, s.prefix+leadsDir+name)
	if err != nil {
		return "", s.requestError("read the lead "+name+" from", err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// RecordRevision returns the mod revision of the image's record in etcd
// now (0: none): a node that takes over work on the record from another
// node waits until it has that version (registry.RecordRevision) before it
// acts on it.
func (s *Store) RecordRevision(ctx context.Context, imageID int64) (int64, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		return 0, s.requestError("read a record's revision from", err)
	}
	resp, err := cli.Get(rctx, s.recordKey(imageID), clientv3.WithKeysOnly())
	if err != nil {
		return 0, s.requestError("read a record's revision from", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return resp.Kvs[0].ModRevision, nil
}
