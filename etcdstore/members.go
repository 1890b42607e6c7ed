package etcdstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Node is this node, as Join announces it.
type Node struct {
	ID      string
	Address string
	Version string
}

// NodeInfo is a member of the cluster, as Nodes lists it; it is also the
// JSON of the node's key.
type NodeInfo struct {
	NodeID   string    `json:"node_id"`
	Address  string    `json:"address"`
	Version  string    `json:"version"`
	LastSeen time.Time `json:"last_seen"`
	Revision int64     `json:"revision"` // the registry revision the node has applied
}

// Join announces node until ctx is done or the store is closed; the
// caller runs it in a goroutine. The node's key {prefix}nodes/{id} is
// attached to a lease (Config.LeaseTTL) that is kept alive, and re-written
// every Config.HeartbeatInterval with last_seen and applied() (the registry
// revision the node has applied; nil: the store's Status().Revision). When
// the lease is lost (etcd was unreachable for longer than its TTL) Join
// grants a new one once etcd answers. Close revokes the lease, so the node
// drops out at once; a node that dies drops out when its lease expires.
func (s *Store) Join(ctx context.Context, node Node, applied func() int64) {
	if node.ID == "" {
		s.log.Error("etcd store: a node without an ID cannot join")
		return
	}
	if !s.enter() {
		return
	}
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	if applied == nil {
		applied = func() int64 { return s.Status().Revision }
	}
	key := s.prefix + nodesDir + node.ID
	bo := newBackoff(100*time.Millisecond, 2*time.Second)
	warned := false
	for {
		cli, err := s.client(ctx)
		if err != nil {
			if !sleep(ctx, bo.next()) {
				return
			}
			continue
		}
		lease, err := s.grant(ctx, cli)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !warned {
				s.log.Warn("cannot join the cluster; retrying", zap.String("node_id", node.ID), zap.Error(err))
				warned = true
			}
			if !sleep(ctx, bo.next()) {
				return
			}
			continue
		}
		bo.reset()
		warned = false
		err = s.heartbeat(ctx, cli, lease, key, node, applied)
		if ctx.Err() != nil {
			return // the lease stays recorded: Close revokes it
		}
		s.mu.Lock()
		delete(s.leases, lease)
		s.mu.Unlock()
		// A lease lost while the node held it may be a restored etcd
		// that never had it (a snapshot from before the grant): its
		// history is not the one the watch followed.
		s.log.Warn("the node's etcd lease is lost; granting a new one and re-listing the registry", zap.String("node_id", node.ID), zap.Error(err))
		s.fence()
	}
}

func (s *Store) grant(ctx context.Context, cli *clientv3.Client) (clientv3.LeaseID, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	resp, err := cli.Grant(rctx, int64(math.Ceil(s.cfg.LeaseTTL.Seconds())))
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	s.leases[resp.ID] = struct{}{}
	s.mu.Unlock()
	return resp.ID, nil
}

// heartbeat keeps the lease alive and the node's key current until the
// lease is lost or ctx is done.
//
// The key is also a fence on etcd's history. The node is its only writer,
// so the key's mod revision is the revision of the node's last write
// (last), and each write is a transaction on it: when the key is not the
// one the node wrote (older, or gone: etcd was restored from a backup;
// newer: another node has the same node_id), etcd's history is not the
// one the node followed. A write whose revision is not past every revision
// the node had seen before it says so too (restored from a snapshot taken
// after the node's last heartbeat). Either way the node says so and its
// watch re-lists, as after a rewind (fence): a restore the watch cannot
// see (the connection was down for less than the probe's interval, the
// cluster ID is the same, and nothing is written to the registry after)
// would otherwise leave the node with what etcd no longer has.
func (s *Store) heartbeat(ctx context.Context, cli *clientv3.Client, lease clientv3.LeaseID, key string, node Node, applied func() int64) error {
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ka, err := cli.KeepAlive(kctx, lease)
	if err != nil {
		return err
	}
	var last int64 // the revision of the node's last write of key; 0: none on this lease
	put := func() error {
		value, err := json.Marshal(NodeInfo{
			NodeID: node.ID, Address: node.Address, Version: node.Version,
			LastSeen: time.Now().UTC(), Revision: applied(),
		})
		if err != nil {
			return err
		}
		seen := s.Status().Revision // read before the write: every revision seen was earlier than it
		rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		defer cancel()
		write := clientv3.OpPut(key, string(value), clientv3.WithLease(lease))
		if last == 0 {
			resp, err := cli.Do(rctx, write)
			if err != nil {
				return err
			}
			last = resp.Put().Header.Revision
			return nil
		}
		resp, err := cli.Txn(rctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", last)).
			Then(write).
			Else(clientv3.OpGet(key)).
			Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			var found int64 // the key's mod revision; 0: gone
			if rs := resp.Responses; len(rs) > 0 {
				if kvs := rs[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
					found = kvs[0].ModRevision
				}
			}
			why := "older than this node's last write, or gone: was etcd restored from a backup?"
			if found > last {
				why = "written by another writer: does another node have the same node_id?"
			}
			s.log.Warn("this node's heartbeat key in etcd is not the one it last wrote: either etcd was restored from a backup or another node has the same node_id; re-listing the registry",
				zap.String("key", key), zap.String("node_id", node.ID), zap.Int64("last_write", last),
				zap.Int64("found_mod_revision", found), zap.String("likely", why))
			last = 0 // the next write is a plain put
			s.fence()
			return nil
		}
		last = resp.Header.Revision
		if last <= seen {
			s.log.Warn("this node's heartbeat was written at a revision it had seen already: etcd's revision went back (was it restored from a backup?); re-listing the registry",
				zap.String("key", key), zap.Int64("write_revision", last), zap.Int64("seen_revision", seen))
			s.fence()
		}
		return nil
	}
	if err := put(); errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return err
	}
	tick := time.NewTicker(s.cfg.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-ka:
			if !ok {
				return errors.New("the lease expired or its keep-alive gave up")
			}
		case <-tick.C:
			if err := put(); err != nil {
				if errors.Is(err, rpctypes.ErrLeaseNotFound) {
					return err
				}
				s.log.Debug("cannot refresh the node's key", zap.String("key", key), zap.Error(err))
			}
		}
	}
}

// Nodes lists the nodes that have joined and are alive, by node_id.
func (s *Store) Nodes(ctx context.Context) ([]NodeInfo, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	cli, err := s.client(rctx)
	if err != nil {
		return nil, err
	}
	resp, err := cli.Get(rctx, s.prefix+nodesDir, clientv3.WithPrefix())
	if err != nil {
		return nil, s.requestError("list the nodes from", err)
	}
	nodes := make([]NodeInfo, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var n NodeInfo
		if err := json.Unmarshal(kv.Value, &n); err != nil {
			s.log.Warn("skipping an etcd node key that does not decode", zap.String("key", string(kv.Key)), zap.Error(err))
			continue
		}
		if n.NodeID == "" {
			n.NodeID = strings.TrimPrefix(string(kv.Key), s.prefix+nodesDir)
		}
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(a, b NodeInfo) int { return cmp.Compare(a.NodeID, b.NodeID) })
	return nodes, nil
}

// leaseHex formats a lease ID as etcdctl does.
func leaseHex(id clientv3.LeaseID) string { return strconv.FormatInt(int64(id), 16) }
