package rollout

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/registry"
)

// events records what the driver announces.
type events struct {
	mu  sync.Mutex
	got []Event
}

func (e *events) emit(ev Event) {
	e.mu.Lock()
	e.got = append(e.got, ev)
	e.mu.Unlock()
}

// waitSteps waits until the driver announced n steps: it has read the
// counts the step is judged from.
func (e *events) waitSteps(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(e.names(), "step") < n {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for step %d to start: events %q", n, e.names())
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a condition, not a wait for time to pass
	}
}

func (e *events) names() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var n []string
	for _, ev := range e.got {
		n = append(n, strings.TrimPrefix(ev.Name, "imagelb.rollout_"))
	}
	return strings.Join(n, " ")
}

// setup returns a registry with images 1 (stable) and 2 (canary) and a
// started driver announcing into ev.
func setup(t *testing.T) (*registry.Registry, *Driver, *events) {
	t.Helper()
	reg := registry.New(registry.Options{})
	for _, id := range []int64{1, 2} {
		spec := registry.ServiceSpec{ImageID: id, ImageName: "img", Containers: []registry.ContainerSpec{
			{ContainerID: "c", Host: "127.0.0.1", Port: 9000 + int(id), Status: registry.StatusHealthy, Weight: 1}}}
		if _, err := reg.Register(spec); err != nil {
			t.Fatal(err)
		}
	}
	ev := &events{}
	d := New(reg)
	d.Configure(Config{Emit: ev.emit})
	d.Start()
	t.Cleanup(d.Stop)
	return reg, d, ev
}

func start(t *testing.T, reg *registry.Registry, body string) {
	t.Helper()
	ro, err := registry.DecodeRollout([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.StartRollout(1, ro); err != nil {
		t.Fatal(err)
	}
}

// serve counts n finished requests of the image with the status.
func serve(reg *registry.Registry, id int64, n, status int) {
	st := reg.Lookup(id).State
	for range n {
		st.Begin()
		st.Finish(status, status >= 500, time.Millisecond)
	}
}

// waitFor polls the rollout until cond holds.
func waitFor(t *testing.T, reg *registry.Registry, what string, cond func(*registry.Rollout) bool) *registry.Rollout {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ro, err := reg.GetRollout(1)
		if err == nil && cond(ro) {
			return ro
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, ro)
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a condition, not a wait for time to pass
	}
}

// TestDriverPromotes: steps end, are judged on their own requests and
// advance; the events come in order, each once.
func TestDriverPromotes(t *testing.T) {
	reg, _, ev := setup(t)
	serve(reg, 2, 100, 500) // failures before the rollout are not the step's
	start(t, reg, `{"canary_image_id": 2, "steps": [50, 100], "interval": "1s", "min_requests": 5, "max_p99_ratio": 0}`)
	ev.waitSteps(t, 1)
	serve(reg, 1, 10, 200)
	serve(reg, 2, 10, 200)
	ro := waitFor(t, reg, "step 2", func(ro *registry.Rollout) bool { return ro.Step == 2 })
	if a := ro.Analysis[0]; a.Decision != registry.DecisionAdvance || a.Canary.Requests != 10 || a.Canary.Errors != 0 || a.Stable.Requests != 10 {
		t.Fatalf("step 1 judged %+v on %+v and %+v; want 10 requests a side, none failed", a, a.Canary, a.Stable)
	}
	ev.waitSteps(t, 2)
	serve(reg, 2, 5, 200)
	ro = waitFor(t, reg, "the promotion", func(ro *registry.Rollout) bool { return ro.Notified })
	if ro.State != registry.RolloutPromoted || ro.Analysis[1].Canary.Requests != 5 {
		t.Fatalf("ended %s, step 2 judged on %+v", ro.State, ro.Analysis[1].Canary)
	}
	if got := ev.names(); got != "step step promoted" {
		t.Fatalf("events %q, want step step promoted", got)
	}
}

// TestDriverWaitsForMinRequests: a step that ended short of min_requests
// waits, and advances once the canary served them.
func TestDriverWaitsForMinRequests(t *testing.T) {
	reg, _, ev := setup(t)
	start(t, reg, `{"canary_image_id": 2, "steps": [50, 100], "interval": "1s", "min_requests": 20, "max_p99_ratio": 0}`)
	ev.waitSteps(t, 1)
	serve(reg, 2, 19, 200)
	began := time.Now()
	for time.Since(began) < 2*time.Second { // twice the interval: the step has ended
		if ro, _ := reg.GetRollout(1); ro.Step != 1 {
			t.Fatalf("advanced on 19 requests of min_requests 20: %+v", ro.Analysis)
		}
		time.Sleep(10 * time.Millisecond) // polling interval of a condition, not a wait for time to pass
	}
	serve(reg, 2, 1, 200)
	waitFor(t, reg, "step 2", func(ro *registry.Rollout) bool { return ro.Step == 2 })
}

// TestDriverRollsBackAndCallsTheWebhook: failures roll back before the
// step ends; the webhook is tried again after a failed attempt.
func TestDriverRollsBackAndCallsTheWebhook(t *testing.T) {
	old := webhookRetries
	webhookRetries = []time.Duration{10 * time.Millisecond, 10 * time.Millisecond}
	t.Cleanup(func() { webhookRetries = old })
	var mu sync.Mutex
	var calls []Outcome
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var o Outcome
		json.NewDecoder(r.Body).Decode(&o)
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, o)
		if len(calls) == 1 {
			w.WriteHeader(http.StatusBadGateway) // the first attempt fails
		}
	}))
	t.Cleanup(hook.Close)
	reg, _, ev := setup(t)
	start(t, reg, `{"canary_image_id": 2, "steps": [50, 100], "interval": "1h", "min_requests": 50, "promote_url": "`+hook.URL+`"}`)
	ev.waitSteps(t, 1)
	serve(reg, 2, 3, 200)
	serve(reg, 2, 1, 503)
	ro := waitFor(t, reg, "the rollback", func(ro *registry.Rollout) bool { return ro.Notified })
	last := ro.Analysis[len(ro.Analysis)-1]
	if ro.State != registry.RolloutRolledBack || ro.Percent != 0 || !strings.Contains(last.Reason, "1 of its first 4 requests failed") {
		t.Fatalf("ended %s at %v%%: %q", ro.State, ro.Percent, last.Reason)
	}
	if len(reg.Lookup(1).Options.Split) != 0 {
		t.Fatal("the split outlived the rollback")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 2 || calls[1].State != "rolled_back" || calls[1].ImageID != 1 || calls[1].CanaryImageID != 2 {
		t.Fatalf("webhook calls %+v, want two (one failed) with the rollback", calls)
	}
	if got := ev.names(); got != "step rolled_back" {
		t.Fatalf("events %q", got)
	}
}

// TestDriverRestartsTheStep: a driver that starts on a rollout already
// under way (a restart) starts its step again, on fresh counts.
func TestDriverRestartsTheStep(t *testing.T) {
	reg := registry.New(registry.Options{})
	for _, id := range []int64{1, 2} {
		reg.Register(registry.ServiceSpec{ImageID: id, ImageName: "img", Containers: []registry.ContainerSpec{
			{ContainerID: "c", Host: "127.0.0.1", Port: 9000 + int(id), Status: registry.StatusHealthy, Weight: 1}}})
	}
	start(t, reg, `{"canary_image_id": 2, "steps": [50, 100], "interval": "1s", "min_requests": 5, "max_p99_ratio": 0}`)
	serve(reg, 2, 5, 500) // before this driver: not its step's
	ev := &events{}
	d := New(reg)
	d.Configure(Config{Emit: ev.emit})
	d.Start()
	t.Cleanup(d.Stop)
	ev.waitSteps(t, 1)
	serve(reg, 1, 5, 200)
	serve(reg, 2, 5, 200)
	ro := waitFor(t, reg, "step 2", func(ro *registry.Rollout) bool { return ro.Step == 2 || ro.State != registry.RolloutProgressing })
	if ro.State != registry.RolloutProgressing || ro.Analysis[0].Canary.Errors != 0 {
		t.Fatalf("after a restart: %s, %+v", ro.State, ro.Analysis)
	}
}

// TestDriverWebhookDialControl: the webhook's connections pass the
// configured dial control, which may refuse them (this Caddy's own
// listeners); the outcome is still marked announced.
func TestDriverWebhookDialControl(t *testing.T) {
	old := webhookRetries
	webhookRetries = []time.Duration{time.Millisecond}
	t.Cleanup(func() { webhookRetries = old })
	var calls atomic.Int64
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }))
	t.Cleanup(hook.Close)
	reg, d, _ := setup(t)
	var refused atomic.Int64
	d.Configure(Config{DialControl: func(network, address string, rc syscall.RawConn) error {
		refused.Add(1)
		return errors.New("this Caddy's own listener")
	}})
	start(t, reg, `{"canary_image_id": 2, "steps": [50, 100], "interval": "1h", "promote_url": "`+hook.URL+`"}`)
	if _, err := reg.PromoteRollout(1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, reg, "the announcement", func(ro *registry.Rollout) bool { return ro.Notified })
	if calls.Load() != 0 || refused.Load() != 2 {
		t.Fatalf("the webhook got %d calls, the control refused %d dials; want 0 and 2 (both attempts)", calls.Load(), refused.Load())
	}
}
