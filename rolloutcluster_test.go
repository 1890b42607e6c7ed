package imagelb

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/imagelb/caddy-imagelb/etcdstore"
	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/registry"
)

// clusterRegistry opens a store on etcd and a registry restored from it,
// writing through it.
func clusterRegistry(t *testing.T, c *etcdtest.Cluster) (*registry.Registry, *etcdstore.Store, *registry.Loaded) {
	t.Helper()
	st, err := etcdstore.Open(etcdstore.Config{Endpoints: c.Endpoints(), RequestTimeout: 5 * time.Second}, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	loaded, err := st.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	reg := registry.New(registry.Options{})
	if _, err := reg.Restore(loaded); err != nil {
		t.Fatal(err)
	}
	reg.SetStore(st)
	return reg, st, loaded
}

// TestRolloutLeadWaitsForTheRecord: a node that takes the lead of a rollout
// drives it only once its registry has the version of the record etcd had
// then. A node whose watch lags would otherwise act on a version the node
// before it has already acted on: judge a step already decided, or
// announce an outcome again.
func TestRolloutLeadWaitsForTheRecord(t *testing.T) {
	c := etcdtest.Start(t, 1)
	regA, _, _ := clusterRegistry(t, c)
	for _, id := range []int64{1, 2} {
		if _, err := regA.Register(registry.ServiceSpec{ImageID: id, ImageName: "x", Containers: []registry.ContainerSpec{
			{ContainerID: "c", Host: "127.0.0.1", Port: 8000 + int(id), Status: registry.StatusHealthy, Weight: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	ro, err := registry.DecodeRollout([]byte(`{"canary_image_id": 2, "steps": [50, 100], "interval": "1m"}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := regA.StartRollout(1, ro); err != nil {
		t.Fatal(err)
	}
	// Node b loads the registry now, and does not follow it yet.
	regB, stB, loadedB := clusterRegistry(t, c)
	if _, err := regA.PauseRollout(1); err != nil { // a change b has not seen
		t.Fatal(err)
	}
	rc := newRolloutCluster(regB, stB, "b", zaptest.NewLogger(t))
	defer rc.unlisten()
	followed := make(chan int64, 1)
	rc.onLead = func(id int64) { followed <- id }
	ctx := context.Background()
	rc.update()
	rc.takeLeads(ctx)
	rc.catchUp()
	if h, err := stB.Leader(ctx, "rollout/1"); h != "b" || err != nil {
		t.Fatalf("the lead is held by %q (%v), want b", h, err)
	}
	if rc.drives(1) {
		t.Fatal("b drives the rollout on a version of its record older than etcd's")
	}
	// b's watch delivers the change: b drives.
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		stB.Watch(wctx, loadedB.Revision, func(ev registry.RemoteEvent) { regB.ApplyRemote(ev) })
	}()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(30 * time.Second)
	for !rc.drives(1) {
		if time.Now().After(deadline) {
			t.Fatal("b never drove the rollout after its registry caught up")
		}
		rc.update()
		rc.catchUp()
		time.Sleep(10 * time.Millisecond) // the polling interval of a condition
	}
	if got := <-followed; got != 1 {
		t.Fatalf("the driver was told of image %d, want 1", got)
	}
	if ro, _ := regB.GetRollout(1); ro.State != registry.RolloutPaused {
		t.Fatalf("b drives on a rollout %s, want the paused one", ro.State)
	}
}
