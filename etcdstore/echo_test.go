package etcdstore

import (
	"context"
	"sync"
	"testing"

	"github.com/imagelb/caddy-imagelb/internal/etcdtest"
	"github.com/imagelb/caddy-imagelb/registry"
)

// TestOwnCommitFromTheWatchIsKept: a node's own commit often comes back on
// its watch before Commit returns, and the watch publishes it (waking a
// health check of the new containers). The commit must then keep that
// version, not replace it with its own: a replaced container's check
// result would be dropped ("removed or replaced meanwhile") and a dead
// container served for a whole health interval on the writing node.
func TestOwnCommitFromTheWatchIsKept(t *testing.T) {
	c := etcdtest.Start(t, 1)
	st := open(t, c.Endpoints(), bolt(t))
	loaded := load(t, st)
	reg := registry.New(registry.Options{})
	if _, err := reg.Restore(loaded); err != nil {
		t.Fatal(err)
	}
	reg.SetStore(st)
	var mu sync.Mutex
	seen := map[int64]*registry.ContainerStats{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.Watch(ctx, loaded.Revision, func(ev registry.RemoteEvent) {
			reg.ApplyRemote(ev)
			for _, r := range ev.Records {
				if svc := reg.Lookup(r.ImageID); svc != nil && len(svc.Containers) > 0 {
					mu.Lock()
					if _, ok := seen[r.ImageID]; !ok {
						seen[r.ImageID] = svc.Containers[0].Stats
					}
					mu.Unlock()
				}
			}
		})
	}()
	defer func() { cancel(); <-done }()
	replaced := 0
	const n = 50
	for id := int64(1); id <= n; id++ {
		if _, err := reg.Register(registry.ServiceSpec{ImageID: id, ImageName: "x",
			Containers: []registry.ContainerSpec{{ContainerID: "c", Host: "127.0.0.1", Port: 80, Status: registry.StatusHealthy, Weight: 1}}}); err != nil {
			t.Fatal(err)
		}
		final := reg.Lookup(id).Containers[0].Stats
		mu.Lock()
		w, ok := seen[id]
		mu.Unlock()
		if ok && w != final {
			replaced++
		}
	}
	t.Logf("%d of %d registrations: the watch published a version of the new container that the commit then replaced", replaced, n)
	if replaced > 0 {
		t.Fail()
	}
}
