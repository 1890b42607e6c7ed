package registry

import (
	"math"
	"testing"
	"time"
)

func TestLeastLatencyPrefersFast(t *testing.T) {
	useTrafficClock(t)
	seedRandom(t, 6)
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, LeastLatency, ServiceOptions{}, wz("fast", 1, ""), wz("slow1", 1, ""), wz("slow2", 1, ""))
	for range 5 {
		svc.Observe(svc.Container("fast"), false, 10*time.Millisecond)
		svc.Observe(svc.Container("slow1"), false, 50*time.Millisecond)
		svc.Observe(svc.Container("slow2"), false, 50*time.Millisecond)
	}
	if got := svc.Container("fast").Stats.PeakLatency(); got != 10*time.Millisecond {
		t.Fatalf("fast PeakLatency = %v, want 10ms", got)
	}
	const n = 30_000
	got := countPicks(t, r, &PickRequest{}, n)
	// P2C over three: fast wins whenever it is one of the two drawn (2/3).
	checkShare(t, "fast", got["fast"], n, 2.0/3, 0.02)
	checkShare(t, "slow1", got["slow1"], n, 1.0/6, 0.02)
	checkShare(t, "slow2", got["slow2"], n, 1.0/6, 0.02)

	// Requests in flight count too: 10ms × (9+1) costs more than 50ms × 1.
	setInFlight(svc.Container("fast"), 9)
	if got := countPicks(t, r, &PickRequest{}, 1000); got["fast"] != 0 {
		t.Fatalf("fast with 9 in flight: picks %v, want none on fast", got)
	}
	setInFlight(svc.Container("fast"), 0)
}

func TestPeakEWMA(t *testing.T) {
	clock := useTrafficClock(t)
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, LeastLatency, ServiceOptions{}, wz("c0", 1, ""))
	c := svc.Container("c0")
	svc.Observe(c, false, 10*time.Millisecond)
	svc.Observe(c, false, 50*time.Millisecond)
	if got := c.Stats.PeakLatency(); got != 50*time.Millisecond {
		t.Fatalf("after a slower response PeakLatency = %v, want the peak 50ms at once", got)
	}
	// One time constant (10s) later a 10ms response pulls the average
	// 1-1/e of the way down: 50·e⁻¹ + 10·(1-e⁻¹) ≈ 24.72ms.
	clock.Advance(10 * time.Second)
	svc.Observe(c, false, 10*time.Millisecond)
	want := 50*math.Exp(-1) + 10*(1-math.Exp(-1))
	if got := float64(c.Stats.PeakLatency()) / float64(time.Millisecond); math.Abs(got-want) > 0.01 {
		t.Fatalf("after decay PeakLatency = %.3fms, want %.3fms", got, want)
	}
	// A failure never lowers the average; a slow failure raises it.
	before := c.Stats.PeakLatency()
	svc.Observe(c, true, time.Millisecond)
	if got := c.Stats.PeakLatency(); got != before {
		t.Fatalf("a fast failure moved PeakLatency from %v to %v", before, got)
	}
	svc.Observe(c, true, time.Second)
	if got := c.Stats.PeakLatency(); got != time.Second {
		t.Fatalf("a slow failure: PeakLatency = %v, want 1s", got)
	}
	// Without responses it decays toward 0, one time constant by 1/e.
	clock.Advance(10 * time.Second)
	if got, want := c.Stats.PeakLatency(), time.Duration(float64(time.Second)*math.Exp(-1)); got < want-time.Microsecond || got > want+time.Microsecond {
		t.Fatalf("10s without a response: PeakLatency = %v, want %v", got, want)
	}

	// Other algorithms keep no latency average.
	other := serviceWith(t, r, 2, RoundRobin, 1)
	other.Observe(other.Available()[0], false, 10*time.Millisecond)
	if got := other.Available()[0].Stats.PeakLatency(); got != 0 {
		t.Fatalf("round_robin service: PeakLatency = %v, want 0", got)
	}
}

// TestLeastLatencyUnansweredContainerCountsInFlight: a container that has
// not answered yet (no latency observed) must not win every comparison
// whatever its requests in flight: with a cost of 0 × (in flight+1), a new
// container that hangs would take every request it is drawn for until its
// first response.
func TestLeastLatencyUnansweredContainerCountsInFlight(t *testing.T) {
	useTrafficClock(t)
	seedRandom(t, 7)
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, LeastLatency, ServiceOptions{}, wz("known", 1, ""), wz("hung", 1, ""))
	svc.Observe(svc.Container("known"), false, 10*time.Millisecond)
	setInFlight(svc.Container("hung"), 20) // 20 requests sent, none answered
	got := countPicks(t, r, &PickRequest{}, 100)
	if got["hung"] > 50 {
		t.Errorf("picks %v: the container with 20 unanswered requests in flight took most of the traffic", got)
	}
	setInFlight(svc.Container("hung"), 0)
}

// TestLeastLatencyPeakDecaysWithoutTraffic: one slow response must not
// shut a container out for good. A container that loses every comparison
// gets no request, so no new response would ever pull its average down;
// as in Finagle and linkerd the average decays when it is read (toward 0,
// so an idle container is tried again).
func TestLeastLatencyPeakDecaysWithoutTraffic(t *testing.T) {
	clock := useTrafficClock(t)
	seedRandom(t, 12)
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, LeastLatency, ServiceOptions{}, wz("steady", 1, ""), wz("spiked", 1, ""))
	svc.Observe(svc.Container("steady"), false, 10*time.Millisecond)
	svc.Observe(svc.Container("spiked"), false, 10*time.Millisecond)
	svc.Observe(svc.Container("spiked"), false, 500*time.Millisecond) // one slow response
	if got := countPicks(t, r, &PickRequest{}, 100); got["spiked"] != 0 {
		t.Fatalf("right after the spike: picks %v, want all on steady", got)
	}
	clock.Advance(5 * time.Minute) // steady keeps answering in 10ms meanwhile
	svc.Observe(svc.Container("steady"), false, 10*time.Millisecond)
	if got := countPicks(t, r, &PickRequest{}, 100); got["spiked"] == 0 {
		t.Errorf("5 minutes after a single slow response: picks %v, the spiked container is still shut out", got)
	}
}

// TestLeastLatencyFailureAfterIdleDoesNotLookFaster: "a failure only ever
// raises" the average, so after an idle spell a failed response must not
// leave a container looking faster than the same response as a success.
// Since the average decays when read, a failure must be compared with the
// decayed value, not the stored one: dropped for being below the stored
// value, it would leave the decayed ~0, which wins every comparison while
// the container fails.
func TestLeastLatencyFailureAfterIdleDoesNotLookFaster(t *testing.T) {
	clock := useTrafficClock(t)
	seedRandom(t, 13)
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, LeastLatency, ServiceOptions{}, wz("ok", 1, ""), wz("failing", 1, ""))
	ok, failing := svc.Container("ok"), svc.Container("failing")
	svc.Observe(ok, false, 50*time.Millisecond)
	svc.Observe(failing, false, 50*time.Millisecond)
	clock.Advance(5 * time.Minute)
	svc.Observe(ok, false, 20*time.Millisecond)
	svc.Observe(failing, true, 30*time.Millisecond)
	if got := failing.Stats.PeakLatency(); got < 30*time.Millisecond {
		t.Errorf("after a failure in 30ms: PeakLatency %v, want at least 30ms (ok answered in 20ms: %v)", got, ok.Stats.PeakLatency())
	}
	// so the container answering in 20ms is preferred to the one failing in 30ms
	if got := countPicks(t, r, &PickRequest{}, 20); got["failing"] != 0 {
		t.Errorf("picks %v: the container failing in 30ms beat the one answering in 20ms", got)
	}
}
