package registry

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// BenchmarkIdleMemory is the Go heap that registered images of two
// containers hold before any request, per container, the way the binary
// registers them (bench/scale): a registration body decoded as the admin
// API decodes it, committed to the local database. The process's RSS is
// about twice the live heap (the collector lets the heap grow to twice
// what survived, GOGC=100), so this is the figure to make small; bench/scale
// measures the RSS. With -memprofile and -memprofilerate 1 the profile
// shows, exactly, what each allocation site holds:
//
//	go test -run xxx -bench IdleMemory -benchtime 1x -memprofile mem.out -memprofilerate 1 ./registry/
//	go tool pprof -sample_index=inuse_space -top mem.out
func BenchmarkIdleMemory(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("images=%d", n), func(b *testing.B) {
			var perContainer float64
			for b.Loop() {
				perContainer = idleHeap(b, n)
			}
			b.ReportMetric(perContainer, "heap-B/container")
		})
	}
}

// idleHeap registers n images into a fresh registry with a local database
// and returns the live heap they added, per container.
func idleHeap(b *testing.B, n int) float64 {
	dir := b.TempDir()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		// a tmpfs: the database's syncs cost nothing, and 100,000
		// registrations take seconds rather than minutes
		if dir, err = os.MkdirTemp("/dev/shm", "imagelb-bench-"); err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
	}
	store, err := OpenBolt(filepath.Join(dir, "registry.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	idleSink = nil
	before := liveHeap()
	r := New(Options{})
	r.SetStore(store)
	body := []byte(`[{"container_id":"c0","host":"127.0.0.1","port":40001},{"container_id":"c1","host":"127.0.0.1","port":40002}]`)
	const writers = 16 // as bench/scale registers them: concurrent writers share commits
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for id := int64(w + 1); id <= int64(n); id += writers {
				spec, err := DecodeRegistration(id, body, url.Values{"image_name": {fmt.Sprintf("img%d", id)}})
				if err == nil {
					_, err = r.Register(spec)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	after := liveHeap()
	idleSink = r // kept for -memprofile, written after the benchmark
	return float64(after-before) / float64(2*n)
}

// idleSink keeps the last registry measured alive.
var idleSink *Registry

// liveHeap is the heap that survives a collection.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// A container's dial value, handed to Caddy's replacer per request, is the
// address without an allocation, and its host shares the address's bytes.
func TestDialValue(t *testing.T) {
	r := newTestRegistry(t, Options{})
	svc := mustRegister(t, r, svcSpec(1,
		ContainerSpec{ContainerID: "a", Host: "10.0.0.7", Port: 8080, Status: StatusHealthy, Weight: 1},
		ContainerSpec{ContainerID: "b", Host: "::1", Port: 9090, Status: StatusHealthy, Weight: 1}))
	for i, want := range []struct{ host, dial string }{{"10.0.0.7", "10.0.0.7:8080"}, {"::1", "[::1]:9090"}} {
		c := svc.Containers[i]
		s, ok := c.DialValue().(fmt.Stringer)
		if !ok || s.String() != want.dial || c.DialAddr() != want.dial || c.Host != want.host {
			t.Fatalf("container %s: DialValue %v (a Stringer: %v), DialAddr %q, Host %q; want %q and %q",
				c.ContainerID, c.DialValue(), ok, c.DialAddr(), c.Host, want.dial, want.host)
		}
		if n := testing.AllocsPerRun(100, func() { sinkAny = c.DialValue() }); n != 0 {
			t.Fatalf("DialValue allocates %.0f times", n)
		}
	}
	if len(svc.Available()) != 2 || &svc.Available()[0] != &svc.Containers[0] {
		t.Fatal("with every container available, Available is not the slice of all")
	}
	svc = mustRegister(t, r, svcSpec(1,
		ContainerSpec{ContainerID: "a", Host: "10.0.0.7", Port: 8080, Status: StatusHealthy, Weight: 1},
		ContainerSpec{ContainerID: "b", Host: "::1", Port: 9090, Status: StatusDraining, Weight: 1}))
	if av := svc.Available(); len(av) != 1 || av[0] != svc.Containers[0] || len(svc.Containers) != 2 {
		t.Fatalf("with one draining: Available %v", av)
	}
}

var sinkAny any
