package etcdstore

import (
	"context"
	"math"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Start on demand in a cluster: one node calls the start (or stop) webhook
// of an image, whichever claims it first, and the nodes share when each
// image was last active, so that no node stops an image another one serves.
const (
	claimsDir   = "ondemand/claims/"
	activityDir = "ondemand/active/"
)

// Claim takes name ("start/7") for holder (a node id) for ttl across the
// nodes: won is true for the one node that took it, until release is
// called or ttl passes. The claim is a key attached to a lease of its own,
// created only if absent.
func (s *Store) Claim(ctx context.Context, name, holder string, ttl time.Duration) (release func(), won bool, err error) {
	cli, err := s.client(ctx)
	if err != nil {
		return nil, false, err
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	lease, err := cli.Grant(rctx, max(int64(math.Ceil(ttl.Seconds())), 1))
	if err != nil {
		return nil, false, s.requestError("claim "+name+" in", err)
	}
	key := s.prefix + claimsDir + name
	resp, err := cli.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, holder, clientv3.WithLease(lease.ID))).
		Commit()
	revoke := func() {
		c, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
		defer cancel()
		_, _ = cli.Revoke(c, lease.ID) // a lease that outlives us expires by itself
	}
	if err != nil {
		revoke()
		return nil, false, s.requestError("claim "+name+" in", err)
	}
	if !resp.Succeeded {
		revoke()
		return nil, false, nil
	}
	return revoke, true, nil
}

// MarkActive records that the image was active at t on some node.
func (s *Store) MarkActive(ctx context.Context, imageID int64, t time.Time) error {
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	if _, err := cli.Put(rctx, s.activityKey(imageID), strconv.FormatInt(t.UnixMilli(), 10)); err != nil {
		return s.requestError("record activity in", err)
	}
	return nil
}

// LastActive returns when any node last recorded activity of the image
// (zero: never).
func (s *Store) LastActive(ctx context.Context, imageID int64) (time.Time, error) {
	cli, err := s.client(ctx)
	if err != nil {
		return time.Time{}, err
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	resp, err := cli.Get(rctx, s.activityKey(imageID))
	if err != nil {
		return time.Time{}, s.requestError("read activity from", err)
	}
	if len(resp.Kvs) == 0 {
		return time.Time{}, nil
	}
	ms, err := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
	if err != nil {
		return time.Time{}, nil // not ours: as if never active
	}
	return time.UnixMilli(ms), nil
}

func (s *Store) activityKey(id int64) string {
	return s.prefix + activityDir + strconv.FormatInt(id, 10)
}
