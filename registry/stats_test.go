package registry

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// exactQuantile is the nearest-rank quantile of sorted durations, in ms.
func exactQuantile(sorted []time.Duration, q float64) float64 {
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = max(rank, 1)
	return float64(sorted[rank-1]) / float64(time.Millisecond)
}

func TestHistogramQuantiles(t *testing.T) {
	series := func(n int, f func(i int) time.Duration) []time.Duration {
		out := make([]time.Duration, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	tests := []struct {
		name string
		in   []time.Duration
	}{
		{"one value", []time.Duration{7 * time.Millisecond}},
		{"constant", series(100, func(int) time.Duration { return 42 * time.Millisecond })},
		{"uniform 1..1000ms", series(1000, func(i int) time.Duration { return time.Duration(i+1) * time.Millisecond })},
		{"bimodal", series(1000, func(i int) time.Duration {
			if i%10 == 0 {
				return 800 * time.Millisecond
			}
			return 2 * time.Millisecond
		})},
		{"long tail", series(1000, func(i int) time.Duration {
			return time.Duration(math.Pow(1.01, float64(i))*100) * time.Microsecond
		})},
		{"microseconds", series(200, func(i int) time.Duration { return time.Duration(60+i) * time.Microsecond })},
		{"at bucket bounds", series(90, func(i int) time.Duration { return bucketBound(i) })},
		{"seconds", series(300, func(i int) time.Duration { return time.Duration(i+1) * time.Second })},
	}
	qs := []float64{0.50, 0.95, 0.99}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			for _, d := range tt.in {
				h.Observe(d)
			}
			got, ok := h.Quantiles(qs...)
			if !ok || len(got) != len(qs) {
				t.Fatalf("Quantiles = %v, %v", got, ok)
			}
			if !(got[0] <= got[1] && got[1] <= got[2]) {
				t.Fatalf("quantiles not ordered: p50 %v p95 %v p99 %v", got[0], got[1], got[2])
			}
			sorted := slices.Clone(tt.in)
			slices.Sort(sorted)
			for i, q := range qs {
				want := exactQuantile(sorted, q)
				// The answer is the upper bound of the bucket holding the
				// value: not below it, and at most one bucket (19%) above,
				// give or take the rounding to the microsecond.
				lo, hi := want-0.001, want*bucketGrowth+0.001
				if got[i] < lo || got[i] > hi {
					t.Errorf("q%.2f = %vms, exact %vms: want within [%v, %v]", q, got[i], want, lo, hi)
				}
			}
		})
	}
}

func TestHistogramEdges(t *testing.T) {
	t.Run("empty", func(t *testing.T) {
		var h Histogram
		got, ok := h.Quantiles(0.5, 0.99)
		if ok || len(got) != 2 || got[0] != 0 || got[1] != 0 {
			t.Fatalf("empty histogram: %v, %v; want zeros and ok=false", got, ok)
		}
	})
	t.Run("below the first bound", func(t *testing.T) {
		var h Histogram
		h.Observe(0)
		h.Observe(-time.Second) // a clock step backwards must not panic
		h.Observe(10 * time.Microsecond)
		got, ok := h.Quantiles(1)
		if !ok || got[0] != 0.05 {
			t.Fatalf("sub-50µs quantile = %v, %v; want 0.05ms", got, ok)
		}
	})
	t.Run("beyond the last bound", func(t *testing.T) {
		var h Histogram
		h.Observe(24 * time.Hour)
		got, ok := h.Quantiles(0.5)
		last := float64(bucketBound(numBuckets-1)) / float64(time.Millisecond)
		if !ok || math.Abs(got[0]-last) > 0.001 {
			t.Fatalf("overflow quantile = %v, want the last bound %vms", got, last)
		}
	})
	t.Run("extreme quantiles", func(t *testing.T) {
		var h Histogram
		h.Observe(time.Millisecond)
		h.Observe(time.Second)
		got, _ := h.Quantiles(0.0001, 1)
		if got[0] >= 1.19 || got[1] < 1000 || got[1] > 1190 {
			t.Fatalf("q~0 = %v, q1 = %v", got[0], got[1])
		}
	})
	t.Run("bucket bounds grow", func(t *testing.T) {
		for i := 1; i < numBuckets; i++ {
			if bucketBound(i) <= bucketBound(i-1) {
				t.Fatalf("bound %d = %v not above %v", i, bucketBound(i), bucketBound(i-1))
			}
			// A value just above a bound lands in the next bucket, the bound itself in its own.
			if b := bucketOf(bucketBound(i-1) + time.Microsecond); b != i && i < numBuckets-1 {
				t.Fatalf("bucketOf(bound(%d)+1µs) = %d, want %d", i-1, b, i)
			}
		}
		if math.Abs(logGrowthBase-math.Log(bucketGrowth)) > 1e-12 {
			t.Fatal("logGrowthBase is not log(bucketGrowth)")
		}
	})
	t.Run("observe allocates nothing", func(t *testing.T) {
		var h Histogram
		if a := testing.AllocsPerRun(100, func() { h.Observe(3 * time.Millisecond) }); a != 0 {
			t.Fatalf("Observe allocates %.1f", a)
		}
	})
}

func TestCountersBeginEnd(t *testing.T) {
	t.Run("container", func(t *testing.T) {
		var c ContainerStats
		c.Begin()
		c.Begin()
		c.Begin()
		c.Finish(0, false, time.Millisecond)
		c.Finish(0, true, 3*time.Millisecond)
		if r, f, n := c.Requests.Load(), c.Failures.Load(), c.InFlight.Load(); r != 3 || f != 1 || n != 1 {
			t.Fatalf("requests/failures/in flight = %d/%d/%d, want 3/1/1", r, f, n)
		}
		if q, ok := c.Traffic().Latency.Quantiles(1); !ok || q[0] < 3 || q[0] > 3*bucketGrowth {
			t.Fatalf("latency max = %v", q)
		}
		c.Finish(0, false, time.Millisecond)
		if c.InFlight.Load() != 0 || c.Requests.Load() != 3 {
			t.Fatal("End changed the request count or left one in flight")
		}
	})
	t.Run("service", func(t *testing.T) {
		var s ServiceState
		s.Begin()
		s.Begin()
		s.Finish(0, true, time.Millisecond)
		if r, f, n := s.Requests.Load(), s.Failures.Load(), s.InFlight.Load(); r != 2 || f != 1 || n != 1 {
			t.Fatalf("requests/failures/in flight = %d/%d/%d, want 2/1/1", r, f, n)
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		var c ContainerStats
		const goroutines, each = 8, 1000
		var wg sync.WaitGroup
		for g := 0; g < goroutines; g++ {
			wg.Go(func() {
				for i := 0; i < each; i++ {
					c.Begin()
					c.Finish(0, i%4 == 0, time.Duration(i)*time.Microsecond)
				}
			})
		}
		wg.Wait()
		if r, f, n := c.Requests.Load(), c.Failures.Load(), c.InFlight.Load(); r != goroutines*each || f != goroutines*each/4 || n != 0 {
			t.Fatalf("requests/failures/in flight = %d/%d/%d", r, f, n)
		}
	})
	t.Run("health", func(t *testing.T) {
		var c ContainerStats
		if at, e := c.Health(); !at.IsZero() || e != "" {
			t.Fatalf("fresh Health = %v, %q", at, e)
		}
		when := time.Date(2025, 5, 6, 7, 8, 9, 0, time.UTC)
		c.SetHealth(when, "connection refused")
		if at, e := c.Health(); !at.Equal(when) || e != "connection refused" {
			t.Fatalf("Health = %v, %q", at, e)
		}
	})
}

func TestRegistryStats(t *testing.T) {
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := base
	now = func() time.Time { return clock }
	t.Cleanup(func() { now = time.Now })

	r := newTestRegistry(t, Options{})
	one := mustRegister(t, r, svcSpec(1, ctr("a", 1), ctr("b", 2)))
	two := mustRegister(t, r, svcSpec(2, ctr("c", 3)))
	three := mustRegister(t, r, svcSpec(3)) // nothing measured
	request := func(svc *Service, c *Container, failed, finish bool) {
		svc.State.Begin()
		c.Stats.Begin()
		if finish {
			c.Stats.Finish(0, failed, 4*time.Millisecond)
			svc.State.Finish(0, failed, 5*time.Millisecond)
		}
	}
	a, b, c := one.Container("a"), one.Container("b"), two.Container("c")
	request(one, a, false, true)
	request(one, a, true, true)
	request(one, b, false, true)
	request(one, b, false, false) // in flight
	request(two, c, true, true)
	request(two, c, false, false) // in flight
	request(two, c, false, true)
	clock = base.Add(30 * time.Second)

	v := r.Stats(r.Services())
	if v.UptimeSeconds != 30 {
		t.Fatalf("uptime = %v, want 30", v.UptimeSeconds)
	}
	if len(v.Services) != 3 || v.Services[0].ImageID != 1 || v.Services[1].ImageID != 2 || v.Services[2].ImageID != 3 {
		t.Fatalf("services = %+v", v.Services)
	}
	s1, s2, s3 := v.Services[0], v.Services[1], v.Services[2]
	if s1.TotalRequests != 4 || s1.FailedRequests != 1 || s1.ActiveConnections != 1 || s1.HealthyContainers != 2 {
		t.Fatalf("service 1 = %+v", s1)
	}
	if s2.TotalRequests != 3 || s2.FailedRequests != 1 || s2.ActiveConnections != 1 {
		t.Fatalf("service 2 = %+v", s2)
	}
	if v.TotalRequests != s1.TotalRequests+s2.TotalRequests+s3.TotalRequests ||
		v.FailedRequests != s1.FailedRequests+s2.FailedRequests+s3.FailedRequests ||
		v.ActiveConnections != s1.ActiveConnections+s2.ActiveConnections+s3.ActiveConnections {
		t.Fatalf("totals %d/%d/%d do not add up the services", v.TotalRequests, v.FailedRequests, v.ActiveConnections)
	}
	if v.TotalRequests != 7 || v.FailedRequests != 2 || v.ActiveConnections != 2 {
		t.Fatalf("totals = %d/%d/%d, want 7/2/2", v.TotalRequests, v.FailedRequests, v.ActiveConnections)
	}
	// The containers of a service add up to the service when nothing was retried.
	for _, s := range v.Services {
		var req, fail, active int64
		for _, c := range s.Containers {
			req, fail, active = req+c.TotalRequests, fail+c.FailedRequests, active+c.ActiveConnections
		}
		if req != s.TotalRequests || fail != s.FailedRequests || active != s.ActiveConnections {
			t.Fatalf("service %d: containers add to %d/%d/%d, service says %d/%d/%d",
				s.ImageID, req, fail, active, s.TotalRequests, s.FailedRequests, s.ActiveConnections)
		}
	}
	ca := s1.Containers[0]
	if ca.ContainerID != "a" || ca.TotalRequests != 2 || ca.FailedRequests != 1 || ca.Status != StatusHealthy {
		t.Fatalf("container a = %+v", ca)
	}
	if l := ca.LatencyMS; l.P50 == nil || *l.P50 < 4 || *l.P99 > 4*bucketGrowth+0.001 {
		t.Fatalf("container a latency = %+v", l)
	}
	if l := s1.LatencyMS; l.P50 == nil || *l.P50 < 5 || *l.P50 > 5*bucketGrowth+0.001 {
		t.Fatalf("service 1 latency = %+v", l)
	}
	if l := s3.LatencyMS; l.P50 != nil || l.P95 != nil || l.P99 != nil || len(s3.Containers) != 0 {
		t.Fatalf("unmeasured service 3 = %+v", s3)
	}
	// 3 requests of service 1 and 2 of container a finished in the window,
	// which spans 50 s here (five whole slots and the current one, just
	// begun): one definition for both, however young the container
	if s1.RequestsPerSecond != 0.06 || ca.RequestsPerSecond != 0.04 {
		t.Fatalf("rates: service 1 %v/s, container a %v/s", s1.RequestsPerSecond, ca.RequestsPerSecond)
	}
	// a minute and a half later the window is empty; the counters are not
	clock = base.Add(120 * time.Second)
	v = r.Stats(r.Services())
	if s := v.Services[0]; s.LatencyMS.P50 != nil || s.RequestsPerSecond != 0 || s.TotalRequests != 4 {
		t.Fatalf("old window still shown: %+v", s)
	}

	// Stats of a subset add up that subset only.
	sub := r.Stats([]*Service{two, three})
	if sub.TotalRequests != 3 || sub.FailedRequests != 1 || sub.ActiveConnections != 1 || len(sub.Services) != 2 {
		t.Fatalf("subset totals = %d/%d/%d", sub.TotalRequests, sub.FailedRequests, sub.ActiveConnections)
	}
	if empty := r.Stats(nil); empty.TotalRequests != 0 || empty.Services == nil {
		t.Fatalf("stats of nothing = %+v (services must be an empty list, not null)", empty)
	}
}

// BenchmarkCounters is the per-request cost of the statistics: a request
// counted for its service and an attempt for its container, with the
// all-time histogram and the last-minute window.
func BenchmarkCounters(b *testing.B) {
	var svc, ctr Counters
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			svc.Begin()
			ctr.Begin()
			ctr.Finish(200, false, 700*time.Microsecond)
			svc.Finish(200, false, 750*time.Microsecond)
		}
	})
}

// An idle container costs little: what only traffic fills is not there
// until a request finishes, and every reader sees zeros meanwhile.
func TestIdleStateIsNotAllocated(t *testing.T) {
	r := newTestRegistry(t, Options{})
	svc := mustRegister(t, r, svcSpec(1, ctr("a", 1), ctr("b", 2)))
	for _, k := range []*Counters{&svc.State.Counters, &svc.Containers[0].Stats.Counters} {
		if k.traffic.Load() != nil || k.recent.Load() != nil {
			t.Fatal("a registered service or container that served nothing holds its traffic state")
		}
		tr := k.Traffic()
		counts, sum := tr.Latency.Snapshot()
		if counts != [numBuckets]uint64{} || sum != 0 || tr.Classes[2].Load() != 0 {
			t.Fatal("Traffic of an idle counter is not zero")
		}
		if _, perSecond, ok := k.Recent(0.5); ok || perSecond != 0 {
			t.Fatal("Recent of an idle counter is not zero")
		}
	}
	if svc.State.extra.Load() != nil || svc.State.Extra().Waiting.Load() != 0 {
		t.Fatal("an image without options holds their counters, or reads them as not zero")
	}
	st := svc.Containers[0].Stats
	if st.circuit.Load() != nil || st.Ejected() || st.Ejections() != 0 {
		t.Fatal("an idle container holds an outlier circuit, or reads as ejected")
	}
	// What every registered image and container holds stays in small size
	// classes of the allocator: ContainerStats and ServiceState were 1,088
	// and 1,072 bytes with the histogram inline, then 176 and 208 with
	// the body bytes and the options' counters inline, and Service 288
	// with its time.Time and split weights inline.
	for _, c := range []struct {
		name      string
		size, max uintptr
	}{
		{"ContainerStats", unsafe.Sizeof(ContainerStats{}), 160},
		{"Container", unsafe.Sizeof(Container{}), 160},
		{"ServiceState", unsafe.Sizeof(ServiceState{}), 128},
		{"Service", unsafe.Sizeof(Service{}), 256},
	} {
		if c.size > c.max {
			t.Errorf("%s is %d bytes, want at most %d (it is paid for every registered one)", c.name, c.size, c.max)
		}
	}
}

// The first requests of a fresh container, from many goroutines at once,
// race to allocate its traffic state: one allocation wins, and every
// request is counted in it.
func TestFirstRequestsCountedExactly(t *testing.T) {
	useTrafficClock(t)
	r := newTestRegistry(t, Options{})
	opts := ServiceOptions{Outlier: &Outlier{ConsecutiveFailures: 1_000_000, Cooldown: Duration(time.Minute)}}
	for round := range 200 {
		spec := svcSpec(int64(round+1), wz(fmt.Sprintf("c%d", round), 1, ""))
		spec.Options = opts
		svc := mustRegister(t, r, spec) // a new image: fresh service and container state
		c := svc.Containers[0]
		const goroutines = 32
		start := make(chan struct{})
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				<-start
				c.Stats.Begin()
				c.Stats.Finish(200+100*(g%4), g%4 == 3, time.Millisecond)
				svc.State.Refuse(429, false)
				svc.Observe(c, g%2 == 0, time.Millisecond)
			})
		}
		close(start)
		wg.Wait()
		tr := c.Stats.Traffic()
		for class, want := range map[int]int64{2: 8, 3: 8, 4: 8, 5: 8} {
			if n := tr.Classes[class].Load(); n != want {
				t.Fatalf("round %d: class %dxx counted %d, want %d", round, class, n, want)
			}
		}
		if counts, _ := tr.Latency.Snapshot(); sumCounts(counts) != goroutines {
			t.Fatalf("round %d: the histogram holds %d, want %d", round, sumCounts(counts), goroutines)
		}
		if n := svc.State.Traffic().Classes[4].Load(); n != goroutines {
			t.Fatalf("round %d: the service counted %d refusals, want %d", round, n, goroutines)
		}
		at := now()
		span := at.Sub(time.Unix((at.Unix()/slotSeconds-windowSlots+1)*slotSeconds, 0)).Seconds() // as summary divides
		if _, perSecond, _ := c.Stats.Recent(0.5); math.Abs(perSecond*span-goroutines) > 1e-9 {
			t.Fatalf("round %d: the last minute holds %.1f requests, want %d", round, perSecond*span, goroutines)
		}
		if c.Stats.circuit.Load() == nil {
			t.Fatalf("round %d: no circuit after outcomes were judged", round)
		}
	}
}

func sumCounts(counts [numBuckets]uint64) (n uint64) {
	for _, x := range counts {
		n += x
	}
	return n
}

// Once a container has served, counting a request allocates nothing.
func TestCountingAfterFirstRequestAllocatesNothing(t *testing.T) {
	useTrafficClock(t)
	r := newTestRegistry(t, Options{})
	opts := ServiceOptions{Outlier: &Outlier{ConsecutiveFailures: 1_000_000, Cooldown: Duration(time.Minute)}}
	svc := registerTraffic(t, r, RoundRobin, opts, wz("a", 1, ""))
	c := svc.Containers[0]
	serve := func() {
		svc.State.Begin()
		c.Stats.Begin()
		c.Stats.Finish(200, false, time.Millisecond)
		svc.Observe(c, false, time.Millisecond)
		svc.State.Finish(200, false, time.Millisecond)
	}
	serve()
	if c.Stats.traffic.Load() == nil || c.Stats.circuit.Load() == nil || svc.State.traffic.Load() == nil {
		t.Fatal("a request did not make the traffic state")
	}
	if n := testing.AllocsPerRun(100, serve); n != 0 {
		t.Fatalf("a request of a container that has served allocates %.1f times", n)
	}
}
