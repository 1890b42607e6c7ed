package etcdstore

import (
	"context"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
)

// TestLead: one node holds a lead past its TTL while it renews it, the
// other cannot take it; released, or its holder closed, it goes to the
// other; a holder cut off from etcd is told it lost the lead before the
// other node can take it.
func TestLead(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := open(t, c.Endpoints(), nil), open(t, c.Endpoints(), nil)
	ctx := context.Background()
	const ttl = 2 * time.Second
	lost, release, won, err := a.Lead(ctx, "rollout/1", "a", ttl)
	if err != nil || !won {
		t.Fatalf("a's lead: %v %v", won, err)
	}
	// For twice the TTL, b never takes it: a renews it.
	for end := time.Now().Add(2 * ttl); time.Now().Before(end); {
		if _, _, won, err := b.Lead(ctx, "rollout/1", "b", ttl); won || err != nil {
			t.Fatalf("b took a's lead: %v %v", won, err)
		}
		select {
		case <-lost:
			t.Fatal("a lost a lead it renews")
		case <-time.After(200 * time.Millisecond): // the pace of b's attempts
		}
	}
	if h, err := b.Leader(ctx, "rollout/1"); h != "a" || err != nil {
		t.Fatalf("leader %q %v, want a", h, err)
	}
	release()
	select {
	case <-lost:
	case <-time.After(30 * time.Second):
		t.Fatal("release did not close lost")
	}
	lostB, _, won, err := b.Lead(ctx, "rollout/1", "b", ttl)
	if err != nil || !won {
		t.Fatalf("b's lead after a released it: %v %v", won, err)
	}
	// b stops (Close revokes its leases): a takes it at once.
	b.Close()
	<-lostB
	lost, _, won, err = a.Lead(ctx, "rollout/1", "a", ttl)
	if err != nil || !won {
		t.Fatalf("a's lead after b closed: %v %v", won, err)
	}
	// Another lead is another key.
	if _, _, won, err := a.Lead(ctx, "rollout/2", "a", ttl); !won || err != nil {
		t.Fatalf("a second lead: %v %v", won, err)
	}

	// a is cut off: it is told within the TTL, and the lead is free once
	// etcd's lease expires.
	b2 := open(t, c.Endpoints(), nil)
	c.Disconnect(0)
	cut := time.Now()
	select {
	case <-lost:
		t.Logf("a was told it lost the lead %s after it was cut off", time.Since(cut).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatal("a was not told it lost the lead")
	}
	c.Reconnect(0)
	eventually(t, 30*time.Second, "b2 to take the lead after a's lease expired", func() bool {
		_, _, won, _ := b2.Lead(ctx, "rollout/1", "b2", ttl)
		return won
	})

	// A holder whose context ends stops holding.
	cctx, cancel := context.WithCancel(ctx)
	lost, _, won, err = b2.Lead(cctx, "rollout/3", "b2", ttl)
	if !won || err != nil {
		t.Fatalf("b2's lead 3: %v %v", won, err)
	}
	cancel()
	<-lost
	eventually(t, 30*time.Second, "lead 3 to be free after its holder's context ended", func() bool {
		h, err := b2.Leader(ctx, "rollout/3")
		return h == "" && err == nil
	})
}
