//go:build unix

package health

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/registry"
)

// cpuTime returns the user+system CPU time the process has used so far.
func cpuTime(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchBackend is one HTTP server answering 200 at once, listening on one or
// more ports of 127.0.0.1, that counts the connections it accepts.
type benchBackend struct {
	srv   *http.Server
	ports []int
	conns atomic.Int64
}

func newBenchBackend(b *testing.B, ports int) *benchBackend {
	b.Helper()
	bb := &benchBackend{}
	bb.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				bb.conns.Add(1)
			}
		},
	}
	var wg sync.WaitGroup
	for range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		bb.ports = append(bb.ports, l.Addr().(*net.TCPAddr).Port)
		wg.Go(func() { _ = bb.srv.Serve(l) })
	}
	b.Cleanup(func() {
		_ = bb.srv.Close()
		wg.Wait()
	})
	return bb
}

// BenchmarkCheckNow measures one on-demand round over every container, all
// answered by one local backend that answers 200 at once: either on a single
// address shared by every container, or on one port per container as real
// containers are. One op is one round of containers checks. Metrics:
//
//   - checks/s: containers checked per second of wall time;
//   - cpu-µs/check: user+system CPU time of the whole process per check
//     (getrusage RUSAGE_SELF). The backend runs in this process, so this
//     includes its CPU time too: it is an upper bound of the checker's cost;
//   - conns/check: TCP connections the backend accepted per check. On a single
//     shared address the transport keeps only MaxIdleConnsPerHost idle
//     connections for MaxConcurrent checks in flight, so most checks dial.
func BenchmarkCheckNow(b *testing.B) {
	for _, tc := range []struct{ containers, ports int }{
		{100, 1}, {1000, 1}, // one shared address
		{100, 100}, {1000, 1000}, // one address per container
	} {
		n := tc.containers
		b.Run(fmt.Sprintf("containers=%d/ports=%d", n, tc.ports), func(b *testing.B) {
			bb := newBenchBackend(b, tc.ports)
			reg := registry.New(registry.Options{})
			const perImage = 100
			for img := range n / perImage {
				spec := registry.ServiceSpec{ImageID: int64(img + 1), ImageName: fmt.Sprintf("image-%d", img+1)}
				for i := range perImage {
					port := bb.ports[(img*perImage+i)%len(bb.ports)]
					spec.Containers = append(spec.Containers, ctrAt(fmt.Sprintf("c-%d", i), port, registry.StatusHealthy))
				}
				if _, err := reg.Register(spec); err != nil {
					b.Fatal(err)
				}
			}
			c := NewChecker(reg)
			c.Configure(Config{MaxConcurrent: 64}, nil, nil)
			ctx := context.Background()
			round := func() {
				rep, err := c.CheckNow(ctx, 0)
				if err != nil || rep.Healthy != n {
					b.Fatalf("CheckNow: %d of %d passed, error %v", rep.Healthy, n, err)
				}
			}
			round() // warm up: connections, goroutine stacks

			b.ReportAllocs()
			conns0, cpu0 := bb.conns.Load(), cpuTime(b)
			start := time.Now()
			for b.Loop() {
				round()
			}
			wall, cpu := time.Since(start), cpuTime(b)-cpu0
			checks := float64(n) * float64(b.N)
			b.ReportMetric(checks/wall.Seconds(), "checks/s")
			b.ReportMetric(float64(cpu.Microseconds())/checks, "cpu-µs/check")
			b.ReportMetric(float64(bb.conns.Load()-conns0)/checks, "conns/check")
		})
	}
}
