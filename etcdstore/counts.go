package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

// Shared counts of a rollout's images. Each node writes only its own keys:
//
//	{prefix}rollout-counts/{image_id}/{node_id}   the node's counts of the image
//
// a JSON object (countsValue) attached to a lease of the node's counts
// (Config.LeaseTTL, renewed at each publication): the counts of a node that
// dies disappear when it expires, and those of a node that stops cleanly at
// once (Close revokes the lease).
const countsDir = "rollout-counts/"

// countsValue is the JSON of a counts key: the finished requests, those
// that got a 5xx or no answer, and the count of each latency bucket (bucket
// i holds the durations up to registry.BucketBound(i); trailing empty
// buckets left out).
type countsValue struct {
	Series   string   `json:"series"`
	Requests uint64   `json:"requests"`
	Errors   uint64   `json:"errors"`
	Latency  []uint64 `json:"latency,omitempty"`
}

func encodeCounts(c registry.NodeCounts) ([]byte, error) {
	v := countsValue{Series: c.Series, Requests: c.Requests, Errors: c.Errors, Latency: c.Latency[:]}
	for len(v.Latency) > 0 && v.Latency[len(v.Latency)-1] == 0 {
		v.Latency = v.Latency[:len(v.Latency)-1]
	}
	return json.Marshal(v)
}

func decodeCounts(data []byte) (registry.NodeCounts, error) {
	var v countsValue
	if err := json.Unmarshal(data, &v); err != nil {
		return registry.NodeCounts{}, err
	}
	if v.Series == "" {
		return registry.NodeCounts{}, errors.New("no series")
	}
	if len(v.Latency) > registry.NumBuckets {
		return registry.NodeCounts{}, fmt.Errorf("%d latency buckets, more than %d", len(v.Latency), registry.NumBuckets)
	}
	c := registry.NodeCounts{Series: v.Series, StepCounts: registry.StepCounts{Requests: v.Requests, Errors: v.Errors}}
	copy(c.Latency[:], v.Latency)
	return c, nil
}

var _ registry.SharedCounts = (*Store)(nil)

func (s *Store) countsKey(imageID int64, node string) string {
	return s.prefix + countsDir + strconv.FormatInt(imageID, 10) + "/" + node
}

// PublishCounts implements registry.SharedCounts: one keep-alive of the
// node's counts lease, then one transaction of the keys. When the lease is
// gone (it expired while etcd could not be reached, or etcd was restored),
// a new one is granted, nothing is written, and the error wraps
// registry.ErrCountsLost: the caller starts new series and publishes again.
func (s *Store) PublishCounts(ctx context.Context, node string, counts map[int64]registry.NodeCounts) error {
	if node == "" || strings.Contains(node, "/") {
		return fmt.Errorf("counts of node %q: a node id must be non-empty and have no /", node)
	}
	if len(counts) == 0 {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		return s.requestError("publish the counts in", err)
	}
	lease, lost, err := s.countsLeaseAlive(rctx, cli)
	if err != nil {
		return s.requestError("publish the counts in", err)
	}
	if lost {
		// Nothing is written in the old series: a reader that read while
		// the keys were gone would take all of them as new.
		return fmt.Errorf("%w: the lease of its counts expired", registry.ErrCountsLost)
	}
	var ops []clientv3.Op
	for id, c := range counts {
		data, err := encodeCounts(c)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(s.countsKey(id, node), string(data), clientv3.WithLease(lease)))
	}
	for len(ops) > 0 {
		n := min(len(ops), usageOpsPerTxn)
		if _, err := cli.Txn(rctx).Then(ops[:n]...).Commit(); err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				s.dropCountsLease(lease)
				return fmt.Errorf("%w: the lease of its counts expired", registry.ErrCountsLost)
			}
			return s.requestError("publish the counts in", err)
		}
		ops = ops[n:]
	}
	return nil
}

// countsLeaseAlive renews the node's counts lease, or grants it; lost is
// true when a lease the node had is gone.
func (s *Store) countsLeaseAlive(ctx context.Context, cli *clientv3.Client) (lease clientv3.LeaseID, lost bool, err error) {
	s.mu.Lock()
	lease = s.countsLease
	s.mu.Unlock()
	if lease != 0 {
		_, err := cli.KeepAliveOnce(ctx, lease)
		if err == nil {
			return lease, false, nil
		}
		if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return 0, false, err
		}
		s.dropCountsLease(lease)
		lost = true
	}
	lease, err = s.grant(ctx, cli)
	if err != nil {
		return 0, lost, err
	}
	s.mu.Lock()
	s.countsLease = lease
	s.mu.Unlock()
	return lease, lost, nil
}

// dropCountsLease forgets the counts lease if it is still lease.
func (s *Store) dropCountsLease(lease clientv3.LeaseID) {
	s.mu.Lock()
	if s.countsLease == lease {
		s.countsLease = 0
	}
	delete(s.leases, lease)
	s.mu.Unlock()
}

// UnpublishCounts implements registry.SharedCounts.
func (s *Store) UnpublishCounts(ctx context.Context, node string, images []int64) error {
	var ops []clientv3.Op
	for _, id := range images {
		ops = append(ops, clientv3.OpDelete(s.countsKey(id, node)))
	}
	for len(ops) > 0 {
		n := min(len(ops), usageOpsPerTxn)
		if err := s.txn(ctx, "delete the counts in", ops[:n]); err != nil {
			return err
		}
		ops = ops[n:]
	}
	return nil
}

// LoadCounts implements registry.SharedCounts: one range read. A key that
// does not decode is left out.
func (s *Store) LoadCounts(ctx context.Context, imageID int64) ([]registry.NodeCounts, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		return nil, s.requestError("read the counts from", err)
	}
	dir := s.prefix + countsDir + strconv.FormatInt(imageID, 10) + "/"
	resp, err := cli.Get(rctx, dir, clientv3.WithPrefix())
	if err != nil {
		return nil, s.requestError("read the counts from", err)
	}
	out := make([]registry.NodeCounts, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		c, err := decodeCounts(kv.Value)
		if err != nil {
			s.log.Warn("skipping a counts key that does not decode", zap.ByteString("key", kv.Key), zap.Error(err))
			continue
		}
		c.Node = strings.TrimPrefix(string(kv.Key), dir)
		out = append(out, c)
	}
	return out, nil
}
