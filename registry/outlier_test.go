package registry

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestOutlierConsecutiveFailures(t *testing.T) {
	clock := useTrafficClock(t)
	r := newTestRegistry(t, Options{})
	opts := ServiceOptions{Outlier: &Outlier{ConsecutiveFailures: 3, Cooldown: Duration(10 * time.Second)}}
	svc := registerTraffic(t, r, RoundRobin, opts, wz("bad", 1, ""), wz("good", 1, ""))
	bad := svc.Container("bad")
	fail := func(n int) {
		for range n {
			r.Lookup(1).Observe(bad, true, time.Millisecond)
		}
	}
	onlyGood := func(when string) {
		t.Helper()
		if got := countPicks(t, r, &PickRequest{}, 20); got["good"] != 20 {
			t.Fatalf("%s: picks %v, want only good", when, got)
		}
	}

	fail(2)
	r.Lookup(1).Observe(bad, false, time.Millisecond) // a success resets the count
	fail(2)
	if bad.Stats.Ejected() {
		t.Fatal("ejected after 2 failures in a row")
	}
	fail(1)
	if !bad.Stats.Ejected() || bad.Stats.Ejections() != 1 {
		t.Fatalf("after 3 failures in a row: ejected %v, ejections %d; want true, 1", bad.Stats.Ejected(), bad.Stats.Ejections())
	}
	onlyGood("ejected")
	clock.Advance(10*time.Second - 1)
	onlyGood("just before the cooldown ends")

	// After the cooldown, concurrent picks let exactly one probe through.
	clock.Advance(1)
	probes := concurrentPicks(r, bad, 16, 50)
	if probes != 1 {
		t.Fatalf("after the cooldown %d concurrent picks got the ejected container, want exactly 1 probe", probes)
	}
	if !bad.Stats.Ejected() {
		t.Fatal("not ejected while the probe is in flight (half-open)")
	}
	// The probe succeeds: the circuit closes.
	r.Lookup(1).Observe(bad, false, time.Millisecond)
	if bad.Stats.Ejected() {
		t.Fatal("still ejected after the probe succeeded")
	}
	if got := countPicks(t, r, &PickRequest{}, 20); got["bad"] != 10 {
		t.Fatalf("closed again: picks %v, want the rotation back", got)
	}

	// Ejected again; this time the probe fails and the circuit re-opens.
	fail(3)
	if !bad.Stats.Ejected() || bad.Stats.Ejections() != 2 {
		t.Fatalf("ejected %v, ejections %d; want true, 2", bad.Stats.Ejected(), bad.Stats.Ejections())
	}
	clock.Advance(10 * time.Second)
	if got := countPicks(t, r, &PickRequest{}, 20); got["bad"] != 1 {
		t.Fatalf("after the cooldown: picks %v, want exactly one probe on bad", got)
	}
	r.Lookup(1).Observe(bad, true, time.Millisecond)
	if !bad.Stats.Ejected() || bad.Stats.Ejections() != 3 {
		t.Fatalf("after a failed probe: ejected %v, ejections %d; want true, 3", bad.Stats.Ejected(), bad.Stats.Ejections())
	}
	clock.Advance(10*time.Second - 1)
	onlyGood("a cooldown after the failed probe")

	// A probe that never reports back frees the slot after a cooldown.
	clock.Advance(1)
	if got := countPicks(t, r, &PickRequest{}, 20); got["bad"] != 1 {
		t.Fatalf("picks %v, want one probe", got)
	}
	clock.Advance(10 * time.Second)
	if got := countPicks(t, r, &PickRequest{}, 20); got["bad"] != 1 {
		t.Fatalf("the probe never reported back: picks %v, want another probe a cooldown later", got)
	}
}

// concurrentPicks picks from image 1 on g goroutines, each making n picks,
// and returns how many times target was picked.
func concurrentPicks(r *Registry, target *Container, g, n int) int64 {
	var hits atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range g {
		wg.Go(func() {
			<-start
			for range n {
				if c := r.Lookup(1).ChooseContainer(&PickRequest{}); c != nil && c.ContainerID == target.ContainerID {
					hits.Add(1)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	return hits.Load()
}

func TestOutlierErrorRate(t *testing.T) {
	clock := useTrafficClock(t)
	r := newTestRegistry(t, Options{})
	opts := ServiceOptions{Outlier: &Outlier{ErrorRate: 0.5, Cooldown: Duration(5 * time.Second)}}
	svc := registerTraffic(t, r, RoundRobin, opts, wz("flaky", 1, ""), wz("good", 1, ""))
	if od := svc.Options.Outlier; od.MinRequests != 10 || od.ConsecutiveFailures != 0 || time.Duration(od.Interval) != 10*time.Second {
		t.Fatalf("normalized outlier %+v, want min_requests 10, interval 10s, no consecutive count", *od)
	}
	flaky := svc.Container("flaky")
	// Every other attempt fails: never two failures in a row.
	for i := range 9 {
		svc.Observe(flaky, i%2 == 0, time.Millisecond)
	}
	if flaky.Stats.Ejected() {
		t.Fatal("ejected with fewer than min_requests attempts")
	}
	for i := 9; i < 12; i++ {
		svc.Observe(flaky, i%2 == 0, time.Millisecond)
	}
	if !flaky.Stats.Ejected() || flaky.Stats.Ejections() != 1 {
		t.Fatalf("after 12 attempts half failed: ejected %v, ejections %d", flaky.Stats.Ejected(), flaky.Stats.Ejections())
	}
	if got := countPicks(t, r, &PickRequest{}, 10); got["good"] != 10 {
		t.Fatalf("picks %v, want only good", got)
	}
	clock.Advance(5 * time.Second)
	if got := countPicks(t, r, &PickRequest{}, 10); got["flaky"] != 1 {
		t.Fatalf("after the cooldown: picks %v, want one probe", got)
	}
	svc.Observe(flaky, false, time.Millisecond)
	if flaky.Stats.Ejected() {
		t.Fatal("still ejected after a successful probe")
	}
	if got := countPicks(t, r, &PickRequest{}, 10); got["flaky"] != 5 {
		t.Fatalf("back: picks %v, want the rotation", got)
	}

	// Failures spread over more than the interval do not add up.
	for range 30 {
		clock.Advance(11 * time.Second)
		svc.Observe(flaky, true, time.Millisecond)
		svc.Observe(flaky, false, time.Millisecond)
	}
	if flaky.Stats.Ejected() {
		t.Fatal("ejected by failures in different intervals")
	}
}

func TestOutlierMaxEjectedPercent(t *testing.T) {
	useTrafficClock(t)
	for _, tt := range []struct {
		name       string
		containers int
		percent    int
		want       int // containers ejected when all fail
	}{
		{"one container never", 1, 50, 0},
		{"half of two", 2, 50, 1},
		{"half of four", 4, 50, 2},
		{"a third of three at 34%", 3, 34, 1},
		{"all of two at 100%", 2, 100, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, Options{})
			var cs []ContainerSpec
			for i := range tt.containers {
				cs = append(cs, wz(fmt.Sprintf("c%d", i), 1, ""))
			}
			svc := registerTraffic(t, r, RoundRobin,
				ServiceOptions{Outlier: &Outlier{ConsecutiveFailures: 1, MaxEjectedPercent: tt.percent}}, cs...)
			for range 5 {
				for _, c := range svc.Containers {
					svc.Observe(c, true, time.Millisecond)
				}
			}
			ejected := 0
			for _, c := range svc.Containers {
				if c.Stats.Ejected() {
					ejected++
				}
			}
			if ejected != tt.want {
				t.Fatalf("%d of %d ejected at max_ejected_percent %d, want %d", ejected, tt.containers, tt.percent, tt.want)
			}
			if got := countPicks(t, r, &PickRequest{}, 10); tt.want < tt.containers && got[""] != 0 {
				t.Fatalf("picks %v: the containers left must take the requests", got)
			}
		})
	}
}
