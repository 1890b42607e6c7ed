package registry

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRetryBudget(t *testing.T) {
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, RoundRobin, ServiceOptions{RetryBudget: 0.2}, wz("c0", 1, ""))
	const requests = 1000
	allowed, denied := 0, 0
	for range requests {
		svc.DepositRetry()
		for range 3 {
			if !svc.AllowRetry() {
				denied++
				break
			}
			allowed++
		}
	}
	if lo, hi := int(0.2*requests)-1, int(0.2*requests)+retryTokenCap; allowed < lo || allowed > hi {
		t.Fatalf("%d retries allowed over %d requests, want %d-%d", allowed, requests, lo, hi)
	}
	if got := svc.State.Extra().RetriesDenied.Load(); got != int64(denied) || denied == 0 {
		t.Fatalf("RetriesDenied = %d, want %d (> 0)", got, denied)
	}

	// The bucket holds at most 10: a long quiet spell saves no more.
	r2 := newTestRegistry(t, Options{})
	quiet := registerTraffic(t, r2, RoundRobin, ServiceOptions{RetryBudget: 0.5}, wz("c0", 1, ""))
	for range 1000 {
		quiet.DepositRetry()
	}
	n := 0
	for quiet.AllowRetry() {
		n++
	}
	if n != retryTokenCap {
		t.Fatalf("after 1000 quiet requests %d retries allowed in a row, want %d", n, retryTokenCap)
	}

	// Without a budget every retry is allowed.
	r3 := newTestRegistry(t, Options{})
	free := registerTraffic(t, r3, RoundRobin, ServiceOptions{}, wz("c0", 1, ""))
	for range 1000 {
		if !free.AllowRetry() {
			t.Fatal("retry denied without a budget")
		}
	}
	if got := free.State.Extra().RetriesDenied.Load(); got != 0 {
		t.Fatalf("RetriesDenied = %d without a budget", got)
	}
}

func TestRateLimit(t *testing.T) {
	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	limit := func(per string) ServiceOptions {
		return ServiceOptions{RateLimit: &RateLimit{Requests: 10, Interval: Duration(time.Second), Burst: 5, Per: per}}
	}
	checkRetryAfter := func(t *testing.T, got, want time.Duration) {
		t.Helper()
		if d := got - want; d < -time.Millisecond || d > time.Millisecond {
			t.Fatalf("retryAfter = %v, want %v", got, want)
		}
	}

	t.Run("burst then denied", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, limit(PerService), wz("c0", 1, ""))
		for i := range 5 {
			if ok, wait := svc.AllowRate("1.2.3.4", t0); !ok || wait != 0 {
				t.Fatalf("request %d of the burst: %v %v", i, ok, wait)
			}
		}
		ok, wait := svc.AllowRate("1.2.3.4", t0)
		if ok {
			t.Fatal("6th request at the same instant allowed")
		}
		checkRetryAfter(t, wait, 100*time.Millisecond)
		// Half a token later, half the wait is left.
		_, wait = svc.AllowRate("1.2.3.4", t0.Add(50*time.Millisecond))
		checkRetryAfter(t, wait, 50*time.Millisecond)
		if ok, _ := svc.AllowRate("1.2.3.4", t0.Add(100*time.Millisecond)); !ok {
			t.Fatal("denied 100ms later")
		}
		if got := svc.State.Extra().RateLimited.Load(); got != 2 {
			t.Fatalf("RateLimited = %d, want 2", got)
		}
	})

	t.Run("sustained rate", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, limit(PerService), wz("c0", 1, ""))
		allowed, denied := 0, 0
		for i := range 1000 { // 10 simulated seconds in 10ms steps
			for range 2 {
				if ok, _ := svc.AllowRate("1.2.3.4", t0.Add(time.Duration(i)*10*time.Millisecond)); ok {
					allowed++
				} else {
					denied++
				}
			}
		}
		if allowed < 103 || allowed > 107 {
			t.Fatalf("%d allowed over 10s, want 5 + 100 ± 2", allowed)
		}
		if got := svc.State.Extra().RateLimited.Load(); got != int64(denied) {
			t.Fatalf("RateLimited = %d, want %d", got, denied)
		}
	})

	t.Run("per client_ip", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, limit(PerClientIP), wz("c0", 1, ""))
		for _, client := range []string{"10.0.0.1", "10.0.0.2"} {
			for i := range 5 {
				if ok, _ := svc.AllowRate(client, t0); !ok {
					t.Fatalf("%s request %d denied: each client has its own bucket", client, i)
				}
			}
			if ok, _ := svc.AllowRate(client, t0); ok {
				t.Fatalf("%s: 6th request allowed", client)
			}
		}
		if got := svc.State.Extra().RateLimited.Load(); got != 2 {
			t.Fatalf("RateLimited = %d, want 2", got)
		}
	})

	t.Run("per service shares one bucket", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, limit(PerService), wz("c0", 1, ""))
		for i := range 5 {
			svc.AllowRate(fmt.Sprintf("10.0.0.%d", i), t0)
		}
		if ok, _ := svc.AllowRate("10.0.0.99", t0); ok {
			t.Fatal("a new client got past the service's limit")
		}
	})

	t.Run("a new configuration takes effect", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		registerTraffic(t, r, RoundRobin, limit(PerService), wz("c0", 1, ""))
		for range 6 {
			r.Lookup(1).AllowRate("", t0)
		}
		// The same configuration again keeps the bucket (still empty).
		registerTraffic(t, r, RoundRobin, limit(PerService), wz("c0", 1, ""), wz("c1", 1, ""))
		if ok, _ := r.Lookup(1).AllowRate("", t0); ok {
			t.Fatal("re-registering the same rate_limit refilled the bucket")
		}
		slow := ServiceOptions{RateLimit: &RateLimit{Requests: 1, Interval: Duration(2 * time.Second)}}
		registerTraffic(t, r, RoundRobin, slow, wz("c0", 1, ""))
		if ok, _ := r.Lookup(1).AllowRate("", t0); !ok {
			t.Fatal("first request under the new rate_limit denied")
		}
		ok, wait := r.Lookup(1).AllowRate("", t0)
		if ok {
			t.Fatal("second request allowed: burst defaults to requests (1)")
		}
		checkRetryAfter(t, wait, 2*time.Second)
		// Removing the limit lifts it.
		registerTraffic(t, r, RoundRobin, ServiceOptions{}, wz("c0", 1, ""))
		for range 100 {
			if ok, wait := r.Lookup(1).AllowRate("", t0); !ok || wait != 0 {
				t.Fatal("denied without a rate_limit")
			}
		}
	})
}

func TestTryBegin(t *testing.T) {
	r := newTestRegistry(t, Options{})
	svc := registerTraffic(t, r, RoundRobin, ServiceOptions{MaxInFlight: 2}, wz("c0", 1, ""))
	st := svc.State
	first, second := svc.TryBegin(), svc.TryBegin()
	if !first || !second {
		t.Fatal("the first two requests were shed")
	}
	if svc.TryBegin() {
		t.Fatal("a third request in flight was admitted with max_in_flight 2")
	}
	if st.Extra().Shed.Load() != 1 || st.Failures.Load() != 1 || st.Traffic().Classes[5].Load() != 1 ||
		st.Requests.Load() != 3 || st.InFlight.Load() != 2 {
		t.Fatalf("shed %d failures %d 5xx %d requests %d in flight %d; want 1 1 1 3 2",
			st.Extra().Shed.Load(), st.Failures.Load(), st.Traffic().Classes[5].Load(), st.Requests.Load(), st.InFlight.Load())
	}
	st.Finish(200, false, time.Millisecond)
	if !svc.TryBegin() {
		t.Fatal("shed after a request finished")
	}
	if svc.TryBegin() {
		t.Fatal("admitted over the cap again")
	}
	if st.Extra().Shed.Load() != 2 {
		t.Fatalf("Shed = %d, want 2", st.Extra().Shed.Load())
	}

	t.Run("concurrent", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, ServiceOptions{MaxInFlight: 5}, wz("c0", 1, ""))
		var admitted atomic.Int64
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				if svc.TryBegin() {
					admitted.Add(1)
				}
			})
		}
		wg.Wait()
		if admitted.Load() != 5 || svc.State.Extra().Shed.Load() != 27 || svc.State.InFlight.Load() != 5 {
			t.Fatalf("admitted %d shed %d in flight %d, want 5 27 5", admitted.Load(), svc.State.Extra().Shed.Load(), svc.State.InFlight.Load())
		}
	})

	t.Run("no cap", func(t *testing.T) {
		r := newTestRegistry(t, Options{})
		svc := registerTraffic(t, r, RoundRobin, ServiceOptions{}, wz("c0", 1, ""))
		for range 100 {
			if !svc.TryBegin() {
				t.Fatal("shed without max_in_flight")
			}
		}
		if svc.State.InFlight.Load() != 100 || svc.State.Extra().Shed.Load() != 0 {
			t.Fatalf("in flight %d shed %d", svc.State.InFlight.Load(), svc.State.Extra().Shed.Load())
		}
	})
}
