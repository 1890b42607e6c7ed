package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imagelb/caddy-imagelb/registry"
)

// The usage ledger on etcd. Each node writes only its own keys, so no two
// nodes ever race for one:
//
//	{prefix}usage/{start}/{node_id}    the node's usage in the interval
//	                                    starting at start (unix nanoseconds,
//	                                    20 digits, so keys sort by time)
//	{prefix}usage-totals/{node_id}     the node's totals
//
// both JSON objects by image_id. A range query is one range read.
const (
	usageDir       = "usage/"
	usageTotalsDir = "usage-totals/"
	// usageOpsPerTxn keeps a flush's transaction under etcd's default of
	// 128 operations; a flush after a long outage is split.
	usageOpsPerTxn = 100
)

var _ registry.UsageStore = (*Store)(nil)

func (s *Store) usageKey(start time.Time, node string) string {
	return fmt.Sprintf("%s%s%020d/%s", s.prefix, usageDir, start.UnixNano(), node)
}

// CommitUsage implements registry.UsageStore: the node's buckets and, in
// the last transaction, its totals.
func (s *Store) CommitUsage(ctx context.Context, node string, buckets []registry.UsageBucket, totals map[int64]registry.Usage) error {
	if node == "" || strings.Contains(node, "/") {
		return fmt.Errorf("usage of node %q: a node id must be non-empty and have no /", node)
	}
	var ops []clientv3.Op
	for _, b := range buckets {
		data, err := json.Marshal(b.Images)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(s.usageKey(b.Start, node), string(data)))
	}
	data, err := json.Marshal(totals)
	if err != nil {
		return err
	}
	ops = append(ops, clientv3.OpPut(s.prefix+usageTotalsDir+node, string(data)))
	for len(ops) > 0 {
		n := min(len(ops), usageOpsPerTxn)
		if err := s.txn(ctx, "write the usage ledger to", ops[:n]); err != nil {
			return err
		}
		ops = ops[n:]
	}
	return nil
}

// txn runs ops in one transaction bounded by the request timeout.
func (s *Store) txn(ctx context.Context, what string, ops []clientv3.Op) error {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		return s.requestError(what, err)
	}
	if _, err := cli.Txn(rctx).Then(ops...).Commit(); err != nil {
		return s.requestError(what, err)
	}
	return nil
}

// LoadUsage implements registry.UsageStore: every node's buckets starting
// in [from, to), one range read.
func (s *Store) LoadUsage(ctx context.Context, from, to time.Time) ([]registry.UsageBucket, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		return nil, s.requestError("read the usage ledger from", err)
	}
	lo := fmt.Sprintf("%s%s%020d/", s.prefix, usageDir, from.UnixNano())
	hi := fmt.Sprintf("%s%s%020d/", s.prefix, usageDir, to.UnixNano())
	resp, err := cli.Get(rctx, lo, clientv3.WithRange(hi))
	if err != nil {
		return nil, s.requestError("read the usage ledger from", err)
	}
	out := make([]registry.UsageBucket, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		rest := strings.TrimPrefix(string(kv.Key), s.prefix+usageDir)
		startS, node, ok := strings.Cut(rest, "/")
		start, err := strconv.ParseInt(startS, 10, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("usage key %q is not %s{start}/{node_id}", kv.Key, s.prefix+usageDir)
		}
		b := registry.UsageBucket{Start: time.Unix(0, start).UTC(), Node: node}
		if err := json.Unmarshal(kv.Value, &b.Images); err != nil {
			return nil, fmt.Errorf("the usage under %q does not decode: %v", kv.Key, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// LoadUsageTotals implements registry.UsageStore.
func (s *Store) LoadUsageTotals(ctx context.Context, node string) (map[int64]registry.Usage, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		return nil, s.requestError("read the usage totals from", err)
	}
	resp, err := cli.Get(rctx, s.prefix+usageTotalsDir+node)
	if err != nil {
		return nil, s.requestError("read the usage totals from", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var out map[int64]registry.Usage
	if err := json.Unmarshal(resp.Kvs[0].Value, &out); err != nil {
		return nil, fmt.Errorf("the usage totals of node %q do not decode: %v", node, err)
	}
	return out, nil
}

// CompactUsage implements registry.UsageStore: the node's own buckets
// only, found by a keys-only range read.
func (s *Store) CompactUsage(ctx context.Context, node string, before time.Time) error {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		return s.requestError("compact the usage ledger in", err)
	}
	lo := s.prefix + usageDir
	hi := fmt.Sprintf("%s%s%020d/", s.prefix, usageDir, before.UnixNano())
	resp, err := cli.Get(rctx, lo, clientv3.WithRange(hi), clientv3.WithKeysOnly())
	if err != nil {
		return s.requestError("compact the usage ledger in", err)
	}
	var ops []clientv3.Op
	for _, kv := range resp.Kvs {
		if strings.HasSuffix(string(kv.Key), "/"+node) {
			ops = append(ops, clientv3.OpDelete(string(kv.Key)))
		}
	}
	for len(ops) > 0 {
		n := min(len(ops), usageOpsPerTxn)
		if err := s.txn(ctx, "compact the usage ledger in", ops[:n]); err != nil {
			return err
		}
		ops = ops[n:]
	}
	return nil
}
