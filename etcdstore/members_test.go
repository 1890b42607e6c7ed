package etcdstore

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

func fastLease(c *Config) {
	c.LeaseTTL = 2 * time.Second
	c.HeartbeatInterval = 100 * time.Millisecond
}

func join(t testing.TB, s *Store, node Node, applied func() int64) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Join(ctx, node, applied)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return cancel
}

func nodeIDs(t testing.TB, s *Store) string {
	t.Helper()
	nodes, err := s.Nodes(context.Background())
	if err != nil {
		t.Fatalf("Nodes: %v", err)
	}
	ids := ""
	for _, n := range nodes {
		ids += n.NodeID + " "
	}
	return ids
}

func TestMembership(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	a, b := open(t, c.Endpoints(), nil, fastLease), open(t, c.Endpoints(), nil, fastLease)
	var applied atomic.Int64
	applied.Store(41)
	join(t, b, Node{ID: "lb-2", Address: "10.0.0.2:2019", Version: "v1.2.3"}, applied.Load)
	join(t, a, Node{ID: "lb-1", Address: "10.0.0.1:2019", Version: "v1.2.3"}, nil)
	testkit.Eventually(t, "both nodes", func() bool { return nodeIDs(t, a) == "lb-1 lb-2 " })

	nodes, err := b.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := nodes[1]
	if n.NodeID != "lb-2" || n.Address != "10.0.0.2:2019" || n.Version != "v1.2.3" || n.Revision != 41 ||
		time.Since(n.LastSeen) > 5*time.Second || n.LastSeen.Location() != time.UTC {
		t.Fatalf("node %+v", n)
	}
	// The heartbeat keeps revision and last_seen current.
	applied.Store(42)
	testkit.Eventually(t, "the new revision", func() bool {
		nodes, err := b.Nodes(context.Background())
		return err == nil && len(nodes) == 2 && nodes[1].Revision == 42 && nodes[1].LastSeen.After(n.LastSeen)
	})
	// The key's JSON.
	resp, err := c.Client().Get(context.Background(), "/imagelb/nodes/lb-2")
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("the node's key: %v %v", resp, err)
	}
	var raw map[string]any
	if err := json.Unmarshal(resp.Kvs[0].Value, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"node_id", "address", "version", "revision", "last_seen"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("the node's JSON %s lacks %q", resp.Kvs[0].Value, k)
		}
	}
	if ls, _ := raw["last_seen"].(string); len(ls) == 0 || ls[len(ls)-1] != 'Z' {
		t.Errorf("last_seen %q is not RFC 3339 in UTC", raw["last_seen"])
	}

	// Close revokes the lease: the node drops out at once.
	b.Close()
	if ids := nodeIDs(t, a); ids != "lb-1 " {
		t.Fatalf("after b's Close: %q", ids)
	}
}

// A node that stops without revoking its lease (killed) drops out when the
// lease expires.
func TestMembershipExpires(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	a, b := open(t, c.Endpoints(), nil, fastLease), open(t, c.Endpoints(), nil, fastLease)
	stop := join(t, b, Node{ID: "lb-2"}, nil)
	testkit.Eventually(t, "lb-2", func() bool { return nodeIDs(t, a) == "lb-2 " })
	stop()
	start := time.Now()
	time.Sleep(500 * time.Millisecond) // still there: it was not revoked
	if ids := nodeIDs(t, a); ids != "lb-2 " {
		t.Fatalf("right after the stop: %q", ids)
	}
	testkit.Eventually(t, "lb-2 to expire", func() bool { return nodeIDs(t, a) == "" })
	if d := time.Since(start); d < time.Second || d > 4*time.Second {
		t.Errorf("dropped out after %s, TTL 2s", d)
	}
}

// A node whose lease expired while etcd was down joins again once it is back.
func TestMembershipAfterOutage(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("waits for a lease to expire")
	}
	c := etcdtest.Start(t, 1)
	a := open(t, c.Endpoints(), nil, fastLease)
	join(t, a, Node{ID: "lb-1"}, nil)
	testkit.Eventually(t, "lb-1", func() bool { return nodeIDs(t, a) == "lb-1 " })
	c.StopAll()
	time.Sleep(3 * time.Second) // longer than the TTL: the client gives the lease up
	c.RestartAll()
	restarted := time.Now()
	testkit.Eventually(t, "lb-1 back, seen after the restart", func() bool {
		nodes, err := a.Nodes(context.Background())
		return err == nil && len(nodes) == 1 && nodes[0].LastSeen.After(restarted)
	})
	// etcd renews every lease when a leader is elected, so the old lease
	// outlives the outage; the key has moved to the new one, so the old
	// one's expiry must not remove it.
	time.Sleep(2500 * time.Millisecond)
	if ids := nodeIDs(t, a); ids != "lb-1 " {
		t.Fatalf("after the old lease's expiry: %q", ids)
	}
}

func TestJoinWithoutID(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	s := open(t, c.Endpoints(), nil)
	done := make(chan struct{})
	go func() { s.Join(context.Background(), Node{}, nil); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Join without an ID did not return")
	}
}
