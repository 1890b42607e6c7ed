package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/imagelb/caddy-imagelb/internal/testkit"
	"github.com/imagelb/caddy-imagelb/registry"
)

// ---- fixtures ----

// backend is a real HTTP server on 127.0.0.1 playing a container: it answers
// every request with code, after delay, and counts what it received.
type backend struct {
	*httptest.Server
	code  atomic.Int32
	delay atomic.Int64 // time.Duration before answering
	hits  atomic.Int64

	mu        sync.Mutex
	lastPath  string
	lastAgent string
}

func newBackend(t testing.TB, code int) *backend {
	t.Helper()
	b := &backend{}
	b.code.Store(int32(code))
	b.Server = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.Close)
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	b.hits.Add(1)
	b.mu.Lock()
	b.lastPath, b.lastAgent = r.URL.Path, r.UserAgent()
	b.mu.Unlock()
	if d := time.Duration(b.delay.Load()); d > 0 {
		timer := time.NewTimer(d)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-r.Context().Done():
			return
		}
	}
	code := int(b.code.Load())
	if code >= 300 && code < 400 {
		w.Header().Set("Location", "/elsewhere") // must not be followed
	}
	w.WriteHeader(code)
}

func (b *backend) port() int { return b.Listener.Addr().(*net.TCPAddr).Port }

func (b *backend) last() (path, agent string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lastPath, b.lastAgent
}

// closedPort returns a port of 127.0.0.1 nothing listens on.
func closedPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func ctrAt(id string, port int, st registry.Status) registry.ContainerSpec {
	return registry.ContainerSpec{ContainerID: id, Host: "127.0.0.1", Port: port, Status: st, Weight: 1}
}

func register(t testing.TB, reg *registry.Registry, imageID int64, cs ...registry.ContainerSpec) {
	t.Helper()
	spec := registry.ServiceSpec{ImageID: imageID, ImageName: fmt.Sprintf("image-%d", imageID), Containers: cs}
	if _, err := reg.Register(spec); err != nil {
		t.Fatalf("Register(%d): %v", imageID, err)
	}
}

func container(t testing.TB, reg *registry.Registry, imageID int64, id string) *registry.Container {
	t.Helper()
	svc := reg.Lookup(imageID)
	if svc == nil {
		t.Fatalf("image %d is not registered", imageID)
	}
	c := svc.Container(id)
	if c == nil {
		t.Fatalf("container %q of image %d is not registered", id, imageID)
	}
	return c
}

func statusOf(t testing.TB, reg *registry.Registry, imageID int64, id string) registry.Status {
	t.Helper()
	return container(t, reg, imageID, id).Status
}

// recorder collects the changes the checker announces.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) onChange(c Change) {
	r.mu.Lock()
	r.changes = append(r.changes, c)
	r.mu.Unlock()
}

func (r *recorder) all() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Change(nil), r.changes...)
}

// newChecker returns a checker of reg configured with cfg, the recorder of
// its changes and its observed log lines; it is stopped when the test ends.
func newChecker(t testing.TB, reg *registry.Registry, cfg Config) (*Checker, *recorder, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	c := NewChecker(reg)
	rec := &recorder{}
	c.Configure(cfg, rec.onChange, zap.New(core))
	t.Cleanup(c.Stop)
	return c, rec, logs
}

func checkNow(t testing.TB, c *Checker, imageID int64) Report {
	t.Helper()
	rep, err := c.CheckNow(context.Background(), imageID)
	if err != nil {
		t.Fatalf("CheckNow(%d): %v", imageID, err)
	}
	return rep
}

var eventually = testkit.Eventually

func countMessage(logs *observer.ObservedLogs, msg string) int {
	return logs.FilterMessage(msg).Len()
}

// ---- on-demand checks ----

func TestCheckNowThresholds(t *testing.T) {
	type step struct {
		code int             // answered by the backend
		want registry.Status // status after the check
	}
	const (
		healthy   = registry.StatusHealthy
		unhealthy = registry.StatusUnhealthy
		starting  = registry.StatusStarting
		draining  = registry.StatusDraining
	)
	tests := []struct {
		name    string
		initial registry.Status
		cfg     Config
		steps   []step
	}{
		{
			name: "a failing check makes healthy unhealthy (threshold 1)", initial: healthy,
			steps: []step{{500, unhealthy}, {500, unhealthy}},
		},
		{
			name: "a passing check keeps healthy", initial: healthy,
			steps: []step{{200, healthy}, {200, healthy}},
		},
		{
			name: "unhealthy_threshold 3", initial: healthy, cfg: Config{UnhealthyThreshold: 3},
			steps: []step{{500, healthy}, {500, healthy}, {500, unhealthy}},
		},
		{
			name: "a pass resets the consecutive failures", initial: healthy, cfg: Config{UnhealthyThreshold: 2},
			steps: []step{{500, healthy}, {200, healthy}, {500, healthy}, {500, unhealthy}},
		},
		{
			name: "a passing check makes unhealthy healthy (threshold 1)", initial: unhealthy,
			steps: []step{{500, unhealthy}, {200, healthy}},
		},
		{
			name: "healthy_threshold 2", initial: healthy, cfg: Config{HealthyThreshold: 2},
			steps: []step{{500, unhealthy}, {200, unhealthy}, {200, healthy}},
		},
		{
			name: "a failure resets the consecutive passes", initial: unhealthy, cfg: Config{HealthyThreshold: 2},
			steps: []step{{200, unhealthy}, {500, unhealthy}, {200, unhealthy}, {200, healthy}},
		},
		{
			name: "starting becomes healthy on the first pass", initial: starting,
			steps: []step{{200, healthy}},
		},
		{
			name: "a failing check leaves starting as it is", initial: starting, cfg: Config{UnhealthyThreshold: 1},
			steps: []step{{500, starting}, {500, starting}, {200, healthy}},
		},
		{
			name: "draining is checked but keeps its status", initial: draining,
			steps: []step{{500, draining}, {200, draining}, {500, draining}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t, 200)
			reg := registry.New(registry.Options{})
			register(t, reg, 1, ctrAt("c", b.port(), tt.initial))
			c, rec, logs := newChecker(t, reg, tt.cfg)
			prev, wantChanges := tt.initial, 0
			for i, s := range tt.steps {
				b.code.Store(int32(s.code))
				before := time.Now()
				rep := checkNow(t, c, 0)
				pass := s.code >= 200 && s.code <= 299
				if rep.Checked != 1 || len(rep.Results) != 1 {
					t.Fatalf("step %d: checked %d, %d results, want 1", i, rep.Checked, len(rep.Results))
				}
				if pass != (rep.Healthy == 1) || rep.Healthy+rep.Unhealthy != 1 {
					t.Errorf("step %d (%d): healthy %d unhealthy %d", i, s.code, rep.Healthy, rep.Unhealthy)
				}
				r := rep.Results[0]
				if r.PreviousStatus != prev || r.Status != s.want {
					t.Fatalf("step %d (%d): result %s -> %s, want %s -> %s", i, s.code, r.PreviousStatus, r.Status, prev, s.want)
				}
				if got := statusOf(t, reg, 1, "c"); got != s.want {
					t.Fatalf("step %d (%d): registry status %s, want %s", i, s.code, got, s.want)
				}
				// the result is recorded whatever the status, draining included
				at, errText := container(t, reg, 1, "c").Stats.Health()
				if at.Before(before) {
					t.Errorf("step %d: last_health_check %v is older than the check (%v)", i, at, before)
				}
				if pass != (errText == "") {
					t.Errorf("step %d (%d): last_health_error %q", i, s.code, errText)
				}
				if s.want != prev {
					wantChanges++
					all := rec.all()
					if len(all) != wantChanges {
						t.Fatalf("step %d: %d changes announced, want %d", i, len(all), wantChanges)
					}
					ch := all[len(all)-1]
					if ch.ImageID != 1 || ch.ContainerID != "c" || ch.From != prev || ch.To != s.want {
						t.Errorf("step %d: change %+v, want c %s -> %s", i, ch, prev, s.want)
					}
					wantReason := "consecutive passing checks"
					if !pass {
						wantReason = "consecutive failing checks: status 500"
					}
					if !strings.Contains(ch.Reason, wantReason) {
						t.Errorf("step %d: reason %q, want it to contain %q", i, ch.Reason, wantReason)
					}
				}
				prev = s.want
			}
			if got := len(rec.all()); got != wantChanges {
				t.Errorf("%d changes announced, want %d", got, wantChanges)
			}
			if got := countMessage(logs, "container status changed"); got != wantChanges {
				t.Errorf("%d change log lines, want %d", got, wantChanges)
			}
		})
	}
}

// A status pushed by the orchestrator stays until a check result crosses a
// threshold the other way.
func TestCheckNowAfterPatch(t *testing.T) {
	patch := func(t *testing.T, reg *registry.Registry, st registry.Status) {
		t.Helper()
		if _, err := reg.PatchContainer(1, "c", registry.ContainerPatch{Status: &st}); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("patched unhealthy, next pass makes it healthy", func(t *testing.T) {
		b := newBackend(t, 200)
		reg := registry.New(registry.Options{})
		register(t, reg, 1, ctrAt("c", b.port(), registry.StatusHealthy))
		c, rec, _ := newChecker(t, reg, Config{})
		checkNow(t, c, 0)
		patch(t, reg, registry.StatusUnhealthy)
		if got := statusOf(t, reg, 1, "c"); got != registry.StatusUnhealthy {
			t.Fatalf("status %s after PATCH, want unhealthy", got)
		}
		r := checkNow(t, c, 0).Results[0]
		if r.PreviousStatus != registry.StatusUnhealthy || r.Status != registry.StatusHealthy {
			t.Errorf("result %s -> %s, want unhealthy -> healthy", r.PreviousStatus, r.Status)
		}
		if all := rec.all(); len(all) != 1 || all[0].From != registry.StatusUnhealthy || all[0].To != registry.StatusHealthy {
			t.Errorf("changes %+v, want one unhealthy -> healthy", all)
		}
	})
	t.Run("patched unhealthy stays while checks fail", func(t *testing.T) {
		b := newBackend(t, 500)
		reg := registry.New(registry.Options{})
		register(t, reg, 1, ctrAt("c", b.port(), registry.StatusHealthy))
		patch(t, reg, registry.StatusUnhealthy)
		c, rec, _ := newChecker(t, reg, Config{})
		for range 3 {
			if r := checkNow(t, c, 0).Results[0]; r.Status != registry.StatusUnhealthy {
				t.Fatalf("status %s, want unhealthy", r.Status)
			}
		}
		if all := rec.all(); len(all) != 0 {
			t.Errorf("changes %+v, want none", all)
		}
	})
	t.Run("patched healthy, next failure makes it unhealthy", func(t *testing.T) {
		b := newBackend(t, 500)
		reg := registry.New(registry.Options{})
		register(t, reg, 1, ctrAt("c", b.port(), registry.StatusHealthy))
		c, rec, _ := newChecker(t, reg, Config{})
		checkNow(t, c, 0)
		patch(t, reg, registry.StatusHealthy)
		if got := statusOf(t, reg, 1, "c"); got != registry.StatusHealthy {
			t.Fatalf("status %s after PATCH, want healthy", got)
		}
		checkNow(t, c, 0)
		if got := statusOf(t, reg, 1, "c"); got != registry.StatusUnhealthy {
			t.Fatalf("status %s, want unhealthy", got)
		}
		if all := rec.all(); len(all) != 2 || all[1].From != registry.StatusHealthy || all[1].To != registry.StatusUnhealthy {
			t.Errorf("changes %+v, want the second healthy -> unhealthy", all)
		}
	})
}

// TestCheckNowThresholdAfterPatch: with healthy_threshold 3, a container the
// orchestrator PATCHes to unhealthy needs 3 fresh passing checks; the passes
// counted before the PATCH must not bring it back after a single check.
func TestCheckNowThresholdAfterPatch(t *testing.T) {
	b := newBackend(t, 200)
	reg := registry.New(registry.Options{})
	register(t, reg, 1, ctrAt("c", b.port(), registry.StatusHealthy))
	c, _, _ := newChecker(t, reg, Config{HealthyThreshold: 3})
	for range 5 {
		checkNow(t, c, 0)
	}
	unhealthy := registry.StatusUnhealthy
	if _, err := reg.PatchContainer(1, "c", registry.ContainerPatch{Status: &unhealthy}); err != nil {
		t.Fatal(err)
	}
	checkNow(t, c, 0)
	if got := statusOf(t, reg, 1, "c"); got != registry.StatusUnhealthy {
		t.Fatalf("status %s after 1 passing check since the PATCH, want unhealthy until 3", got)
	}
}

func TestCheckNowResult(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		expect  string // health_status; "" is the default 2xx
		code    int    // answered by the backend
		slow    bool   // the backend answers long after the timeout
		refused bool   // nothing listens on the container's port
		wantErr string // "" when the check passes
	}{
		{name: "200 passes 2xx", code: 200},
		{name: "204 passes 2xx", code: 204},
		{name: "301 fails 2xx and is not followed", code: 301, wantErr: "status 301 from /health (expected 200-299)"},
		{name: "301 passes 200-399", expect: "200-399", code: 301},
		{name: "399 passes 200-399", expect: "200-399", code: 399},
		{name: "400 fails 200-399", expect: "200-399", code: 400, wantErr: "status 400 from /health (expected 200-399)"},
		{name: "404 passes 404", expect: "404", code: 404},
		{name: "200 fails 404", expect: "404", code: 200, wantErr: "status 200 from /health (expected 404-404)"},
		{name: "500 fails", code: 500, wantErr: "status 500 from /health (expected 200-299)"},
		{name: "503 passes 5xx", expect: "5xx", code: 503},
		{name: "the configured path is requested", cfg: Config{Path: "/ready"}, code: 200},
		{name: "failure names the configured path", cfg: Config{Path: "/ready"}, code: 500, wantErr: "status 500 from /ready"},
		{name: "connection refused", refused: true, wantErr: "connection refused"},
		{name: "timeout", cfg: Config{Timeout: 200 * time.Millisecond}, code: 200, slow: true, wantErr: "no answer within 200ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			if tt.expect != "" {
				var err error
				if cfg.ExpectLo, cfg.ExpectHi, err = ParseStatusRange(tt.expect); err != nil {
					t.Fatal(err)
				}
			}
			b := newBackend(t, tt.code)
			port := b.port()
			if tt.slow {
				b.delay.Store(int64(time.Minute)) // ended by the check's timeout
			}
			if tt.refused {
				port = closedPort(t)
			}
			reg := registry.New(registry.Options{})
			register(t, reg, 7, ctrAt("c", port, registry.StatusHealthy))
			c, _, _ := newChecker(t, reg, cfg)

			rep := checkNow(t, c, 0)
			pass := tt.wantErr == ""
			wantHealthy, wantStatus := 0, registry.StatusUnhealthy
			if pass {
				wantHealthy, wantStatus = 1, registry.StatusHealthy
			}
			if rep.Checked != 1 || rep.Healthy != wantHealthy || rep.Unhealthy != 1-wantHealthy || len(rep.Results) != 1 {
				t.Fatalf("report %+v, want checked 1, healthy %d, unhealthy %d", rep, wantHealthy, 1-wantHealthy)
			}
			r := rep.Results[0]
			if r.ImageID != 7 || r.ContainerID != "c" {
				t.Errorf("result of %d/%s, want 7/c", r.ImageID, r.ContainerID)
			}
			if r.PreviousStatus != registry.StatusHealthy || r.Status != wantStatus {
				t.Errorf("result %s -> %s, want healthy -> %s", r.PreviousStatus, r.Status, wantStatus)
			}
			if r.LatencyMS < 0 {
				t.Errorf("latency_ms %v < 0", r.LatencyMS)
			}
			switch {
			case pass && r.Error != nil:
				t.Errorf("error %q, want nil", *r.Error)
			case !pass && r.Error == nil:
				t.Errorf("error nil, want one containing %q", tt.wantErr)
			case !pass && !strings.Contains(*r.Error, tt.wantErr):
				t.Errorf("error %q, want it to contain %q", *r.Error, tt.wantErr)
			}
			if _, errText := container(t, reg, 7, "c").Stats.Health(); (r.Error == nil && errText != "") ||
				(r.Error != nil && errText != *r.Error) {
				t.Errorf("last_health_error %q, want the result's error", errText)
			}
			if tt.refused {
				return
			}
			if got := b.hits.Load(); got != 1 {
				t.Errorf("backend got %d requests, want 1 (redirects are not followed)", got)
			}
			path, agent := b.last()
			if want := c.Config().Path; path != want {
				t.Errorf("requested %q, want %q", path, want)
			}
			if agent != "imagelb-health-check" {
				t.Errorf("User-Agent %q", agent)
			}
		})
	}
}

func TestCheckNowReport(t *testing.T) {
	ok, bad := newBackend(t, 200), newBackend(t, 500)
	reg := registry.New(registry.Options{})
	register(t, reg, 2, ctrAt("z", ok.port(), registry.StatusHealthy))
	register(t, reg, 1, ctrAt("ok", ok.port(), registry.StatusHealthy), ctrAt("bad", bad.port(), registry.StatusHealthy),
		ctrAt("new", ok.port(), registry.StatusStarting))
	c, _, _ := newChecker(t, reg, Config{})

	rep := checkNow(t, c, 0)
	if rep.Checked != 4 || rep.Healthy != 3 || rep.Unhealthy != 1 {
		t.Errorf("checked %d healthy %d unhealthy %d, want 4 3 1", rep.Checked, rep.Healthy, rep.Unhealthy)
	}
	// by image_id, then in registration order
	var got []string
	for _, r := range rep.Results {
		got = append(got, fmt.Sprintf("%d/%s %s->%s", r.ImageID, r.ContainerID, r.PreviousStatus, r.Status))
	}
	want := []string{"1/ok healthy->healthy", "1/bad healthy->unhealthy", "1/new starting->healthy", "2/z healthy->healthy"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("results\n%q\nwant\n%q", got, want)
	}

	// the JSON the API answers
	data, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Checked, Healthy, Unhealthy *int
		Results                     []map[string]any
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Checked == nil || *doc.Checked != 4 || doc.Healthy == nil || *doc.Healthy != 3 ||
		doc.Unhealthy == nil || *doc.Unhealthy != 1 || len(doc.Results) != 4 {
		t.Fatalf("JSON %s", data)
	}
	keys := []string{"image_id", "container_id", "status", "previous_status", "latency_ms", "error"}
	for i, r := range doc.Results {
		if len(r) != len(keys) {
			t.Errorf("result %d has keys %v, want %v", i, r, keys)
		}
		for _, k := range keys {
			if _, ok := r[k]; !ok {
				t.Errorf("result %d lacks %q: %v", i, k, r)
			}
		}
	}
	if doc.Results[0]["error"] != nil {
		t.Errorf("error of a pass is %v, want null", doc.Results[0]["error"])
	}
	if e, _ := doc.Results[1]["error"].(string); !strings.Contains(e, "status 500") {
		t.Errorf("error of a failure is %v", doc.Results[1]["error"])
	}
	if doc.Results[1]["status"] != "unhealthy" || doc.Results[1]["previous_status"] != "healthy" {
		t.Errorf("result of bad: %v", doc.Results[1])
	}
}

func TestCheckNowEmptyRegistry(t *testing.T) {
	c, _, _ := newChecker(t, registry.New(registry.Options{}), Config{})
	rep := checkNow(t, c, 0)
	if rep.Checked != 0 || rep.Healthy != 0 || rep.Unhealthy != 0 {
		t.Errorf("report %+v, want all zero", rep)
	}
	data, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"results":[]`) {
		t.Errorf("JSON %s, want an empty results list, not null", data)
	}
}

func TestCheckNowOneImage(t *testing.T) {
	b1, b2 := newBackend(t, 200), newBackend(t, 500)
	reg := registry.New(registry.Options{})
	register(t, reg, 1, ctrAt("a1", b1.port(), registry.StatusHealthy), ctrAt("a2", b1.port(), registry.StatusHealthy))
	register(t, reg, 2, ctrAt("b1", b2.port(), registry.StatusHealthy))
	c, _, _ := newChecker(t, reg, Config{})

	rep := checkNow(t, c, 2)
	if rep.Checked != 1 || rep.Results[0].ImageID != 2 || rep.Results[0].ContainerID != "b1" {
		t.Errorf("CheckNow(2) = %+v, want image 2's container only", rep)
	}
	if h1, h2 := b1.hits.Load(), b2.hits.Load(); h1 != 0 || h2 != 1 {
		t.Errorf("backends got %d and %d checks, want 0 and 1", h1, h2)
	}
	if got := statusOf(t, reg, 2, "b1"); got != registry.StatusUnhealthy {
		t.Errorf("b1 is %s, want unhealthy", got)
	}

	rep = checkNow(t, c, 1)
	if rep.Checked != 2 || rep.Results[0].ContainerID != "a1" || rep.Results[1].ContainerID != "a2" {
		t.Errorf("CheckNow(1) = %+v, want a1 and a2", rep)
	}
	if h1, h2 := b1.hits.Load(), b2.hits.Load(); h1 != 2 || h2 != 1 {
		t.Errorf("backends got %d and %d checks, want 2 and 1", h1, h2)
	}

	rep, err := c.CheckNow(context.Background(), 3)
	var rerr *registry.Error
	if !errors.As(err, &rerr) || rerr.Kind != registry.KindNotFound {
		t.Fatalf("CheckNow(unknown image) error %v (%T), want a *registry.Error of KindNotFound", err, err)
	}
	if !strings.Contains(err.Error(), "3") {
		t.Errorf("error %q does not name the image", err)
	}
	if rep.Checked != 0 || rep.Results != nil {
		t.Errorf("report %+v with the error, want the zero report", rep)
	}
	if h1, h2 := b1.hits.Load(), b2.hits.Load(); h1 != 2 || h2 != 1 {
		t.Errorf("backends got %d and %d checks after the error, want 2 and 1", h1, h2)
	}
}

// TestOnChangeOncePerChange hammers one container with concurrent checks:
// each change is announced and logged exactly once.
func TestOnChangeOncePerChange(t *testing.T) {
	b := newBackend(t, 500)
	reg := registry.New(registry.Options{})
	register(t, reg, 1, ctrAt("c", b.port(), registry.StatusHealthy))
	c, rec, logs := newChecker(t, reg, Config{})

	hammer := func() {
		const goroutines, rounds = 8, 5
		start := make(chan struct{})
		var wg sync.WaitGroup
		for range goroutines {
			wg.Go(func() {
				<-start
				for range rounds {
					if _, err := c.CheckNow(context.Background(), 0); err != nil {
						t.Error(err)
					}
				}
			})
		}
		close(start)
		wg.Wait()
	}

	hammer()
	if got := statusOf(t, reg, 1, "c"); got != registry.StatusUnhealthy {
		t.Fatalf("status %s, want unhealthy", got)
	}
	all := rec.all()
	if len(all) != 1 || all[0].From != registry.StatusHealthy || all[0].To != registry.StatusUnhealthy {
		t.Fatalf("changes %+v, want exactly one healthy -> unhealthy", all)
	}

	b.code.Store(200)
	hammer()
	if got := statusOf(t, reg, 1, "c"); got != registry.StatusHealthy {
		t.Fatalf("status %s, want healthy", got)
	}
	all = rec.all()
	if len(all) != 2 || all[1].From != registry.StatusUnhealthy || all[1].To != registry.StatusHealthy {
		t.Fatalf("changes %+v, want exactly one more, unhealthy -> healthy", all)
	}
	if got := countMessage(logs, "container status changed"); got != 2 {
		t.Errorf("%d change log lines, want 2", got)
	}
}

// TestConcurrentChecksAndPassiveFailures mixes active checks of a flapping
// container with passive failures: whatever the interleaving, the changes
// announced add up to the final status.
func TestConcurrentChecksAndPassiveFailures(t *testing.T) {
	b := newBackend(t, 200)
	reg := registry.New(registry.Options{})
	register(t, reg, 1, ctrAt("c", b.port(), registry.StatusHealthy))
	c, rec, logs := newChecker(t, reg, Config{MaxFails: 2, FailDuration: time.Minute})

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 10 {
				if _, err := c.CheckNow(context.Background(), 1); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			for range 50 {
				c.PassiveFailure(1, reg.Lookup(1).Container("c"))
			}
		})
	}
	wg.Go(func() {
		for i := range 40 {
			b.code.Store(int32(200 + 300*(i%2)))
			if _, err := c.CheckNow(context.Background(), 1); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()

	balance := 0 // +1 per healthy -> unhealthy, -1 per unhealthy -> healthy
	all := rec.all()
	for _, ch := range all {
		switch {
		case ch.From == registry.StatusHealthy && ch.To == registry.StatusUnhealthy:
			balance++
		case ch.From == registry.StatusUnhealthy && ch.To == registry.StatusHealthy:
			balance--
		default:
			t.Errorf("unexpected change %+v", ch)
		}
	}
	wantNet := 0
	if statusOf(t, reg, 1, "c") == registry.StatusUnhealthy {
		wantNet = 1
	}
	if balance != wantNet {
		t.Errorf("%d changes add up to %d, want %d for the final status", len(all), balance, wantNet)
	}
	if got := countMessage(logs, "container status changed"); got != len(all) {
		t.Errorf("%d change log lines for %d changes", got, len(all))
	}
}

// gate is a /health handler that records how many requests it holds at once;
// it holds each until hold requests are in flight or 20ms pass, whichever
// comes first, so the checker's concurrency shows without slowing the test.
type gate struct {
	hold int

	mu               sync.Mutex
	cur, peak, total int
	release          chan struct{} // closed to let the requests held go
}

func newGate(hold int) *gate { return &gate{hold: hold, release: make(chan struct{})} }

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	g.cur++
	g.total++
	g.peak = max(g.peak, g.cur)
	wait := g.release
	if g.cur >= g.hold {
		close(g.release)
		g.release = make(chan struct{})
	}
	g.mu.Unlock()

	timer := time.NewTimer(20 * time.Millisecond)
	select {
	case <-wait:
	case <-timer.C:
	case <-r.Context().Done():
	}
	timer.Stop()

	g.mu.Lock()
	g.cur--
	g.mu.Unlock()
}

func (g *gate) counts() (peak, total int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.peak, g.total
}

func TestMaxConcurrent(t *testing.T) {
	const containers, maxConcurrent = 500, 16
	setup := func(t *testing.T) (*registry.Registry, *gate) {
		g := newGate(maxConcurrent)
		srv := httptest.NewServer(g)
		t.Cleanup(srv.Close)
		port := srv.Listener.Addr().(*net.TCPAddr).Port
		reg := registry.New(registry.Options{})
		for img := range 10 { // 10 images of 50 containers, all on one backend
			var cs []registry.ContainerSpec
			for i := range containers / 10 {
				cs = append(cs, ctrAt(fmt.Sprintf("c-%d-%d", img, i), port, registry.StatusHealthy))
			}
			register(t, reg, int64(img+1), cs...)
		}
		return reg, g
	}
	t.Run("CheckNow", func(t *testing.T) {
		reg, g := setup(t)
		c, _, _ := newChecker(t, reg, Config{MaxConcurrent: maxConcurrent})
		rep := checkNow(t, c, 0)
		if rep.Checked != containers || rep.Healthy != containers {
			t.Fatalf("checked %d, healthy %d, want %d", rep.Checked, rep.Healthy, containers)
		}
		peak, total := g.counts()
		if total != containers {
			t.Errorf("backend got %d checks, want %d", total, containers)
		}
		if peak > maxConcurrent || peak < 2 {
			t.Errorf("%d checks in flight at most, want 2..%d", peak, maxConcurrent)
		}
		t.Logf("%d checks in flight at most", peak)
	})
	t.Run("first round of the loop", func(t *testing.T) {
		reg, g := setup(t)
		c, _, _ := newChecker(t, reg, Config{MaxConcurrent: maxConcurrent, Interval: time.Hour})
		c.Start()
		eventually(t, "the first round", func() bool { _, total := g.counts(); return total >= containers })
		c.Stop()
		if peak, _ := g.counts(); peak > maxConcurrent || peak < 2 {
			t.Errorf("%d checks in flight at most, want 2..%d", peak, maxConcurrent)
		}
	})
}

// ---- the periodic loop ----

func TestLoopChecksEveryContainer(t *testing.T) {
	bs := []*backend{newBackend(t, 200), newBackend(t, 200), newBackend(t, 500)}
	reg := registry.New(registry.Options{})
	register(t, reg, 1, ctrAt("a", bs[0].port(), registry.StatusHealthy), ctrAt("b", bs[1].port(), registry.StatusStarting))
	register(t, reg, 2, ctrAt("c", bs[2].port(), registry.StatusHealthy))
	c, rec, _ := newChecker(t, reg, Config{Interval: 50 * time.Millisecond})
	c.Start()

	eventually(t, "3 checks of every container", func() bool {
		for _, b := range bs {
			if b.hits.Load() < 3 {
				return false
			}
		}
		return true
	})
	c.Stop()
	for _, want := range []struct {
		img    int64
		id     string
		status registry.Status
	}{
		{1, "a", registry.StatusHealthy},
		{1, "b", registry.StatusHealthy},
		{2, "c", registry.StatusUnhealthy},
	} {
		ctr := container(t, reg, want.img, want.id)
		if ctr.Status != want.status {
			t.Errorf("%s is %s, want %s", want.id, ctr.Status, want.status)
		}
		if at, _ := ctr.Stats.Health(); at.IsZero() {
			t.Errorf("%s: no last_health_check", want.id)
		}
	}
	if got := len(rec.all()); got != 2 { // b starting -> healthy, c healthy -> unhealthy
		t.Errorf("changes %+v, want 2", rec.all())
	}
}

func TestLoopFollowsTheRegistry(t *testing.T) {
	ba, bb, bc := newBackend(t, 200), newBackend(t, 200), newBackend(t, 200)
	reg := registry.New(registry.Options{})
	register(t, reg, 1, ctrAt("a", ba.port(), registry.StatusHealthy))
	c, _, _ := newChecker(t, reg, Config{Interval: 50 * time.Millisecond})
	c.Start()
	eventually(t, "a checked", func() bool { return ba.hits.Load() >= 1 })

	// added after Start: a container of a known image, and a new image
	if _, err := reg.PutContainer(1, ctrAt("b", bb.port(), registry.StatusHealthy)); err != nil {
		t.Fatal(err)
	}
	register(t, reg, 2, ctrAt("c", bc.port(), registry.StatusHealthy))
	eventually(t, "b and c checked repeatedly", func() bool { return bb.hits.Load() >= 3 && bc.hits.Load() >= 3 })

	// removed: neither is checked any more. A round that began before the
	// removal may still check them, so count their checks only once 5 more
	// rounds (a is checked once per round) have passed, then see that they
	// get none during 5 rounds more.
	if _, err := reg.RemoveContainer(1, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Remove(2); err != nil {
		t.Fatal(err)
	}
	waitRounds := func(n int64) {
		t.Helper()
		target := ba.hits.Load() + n
		c.Wake()
		eventually(t, fmt.Sprintf("%d more checks of a", n), func() bool { return ba.hits.Load() >= target })
	}
	waitRounds(5)
	hb, hc := bb.hits.Load(), bc.hits.Load()
	waitRounds(5)
	if gb, gc := bb.hits.Load(), bc.hits.Load(); gb != hb || gc != hc {
		t.Errorf("removed containers still checked: b %d -> %d, c %d -> %d", hb, gb, hc, gc)
	}
}

func TestStartStop(t *testing.T) {
	if n := Running(); n != 0 {
		t.Fatalf("Running() = %d before the test, want 0", n)
	}
	ignore := goleak.IgnoreCurrent()
	b := newBackend(t, 200)
	reg := registry.New(registry.Options{})
	register(t, reg, 1, ctrAt("a", b.port(), registry.StatusHealthy))
	c, _, _ := newChecker(t, reg, Config{Interval: 50 * time.Millisecond})

	c.Stop() // not started: nothing to do
	c.Start()
	c.Start()
	if n := Running(); n != 1 {
		t.Fatalf("Running() = %d after Start twice, want 1", n)
	}
	eventually(t, "2 checks", func() bool { return b.hits.Load() >= 2 })
	c.Stop()
	if n := Running(); n != 0 {
		t.Fatalf("Running() = %d after Stop, want 0", n)
	}
	c.Stop()

	// it starts again after a Stop
	before := b.hits.Load()
	c.Start()
	if n := Running(); n != 1 {
		t.Fatalf("Running() = %d after a restart, want 1", n)
	}
	eventually(t, "checks after the restart", func() bool { return b.hits.Load() >= before+2 })
	c.Stop()
	if n := Running(); n != 0 {
		t.Fatalf("Running() = %d after the second Stop, want 0", n)
	}

	// Closing the backend closes its connections, which ends the goroutines
	// of the checker's idle keep-alive connections: Stop leaves those
	// behind (TestStopClosesIdleConnections). What remains must be nothing.
	b.Close()
	goleak.VerifyNone(t, ignore)
}

func TestStartStopConcurrent(t *testing.T) {
	b := newBackend(t, 200)
	reg := registry.New(registry.Options{})
	register(t, reg, 1, ctrAt("a", b.port(), registry.StatusHealthy))
	c, _, _ := newChecker(t, reg, Config{Interval: 10 * time.Millisecond})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 20 {
				if (i+j)%2 == 0 {
					c.Start()
					c.Wake()
				} else {
					c.Stop()
				}
			}
		})
	}
	wg.Wait()
	c.Stop()
	if n := Running(); n != 0 {
		t.Fatalf("Running() = %d after the last Stop, want 0", n)
	}
}

// TestStopClosesIdleConnections: once stopped, the checker keeps no
// goroutine, not even those of its idle keep-alive connections.
func TestStopClosesIdleConnections(t *testing.T) {
	b := newBackend(t, 200)
	ignore := goleak.IgnoreCurrent()
	reg := registry.New(registry.Options{})
	register(t, reg, 1, ctrAt("a", b.port(), registry.StatusHealthy))
	c, _, _ := newChecker(t, reg, Config{Interval: time.Hour})
	c.Start()
	eventually(t, "a check", func() bool { return b.hits.Load() >= 1 })
	c.Stop()
	// the backend's own connection goroutines are not the checker's
	goleak.VerifyNone(t, ignore, goleak.IgnoreAnyFunction("net/http.(*conn).serve"))
}

// TestCanceledCheckIsNotAFailure: a check that did not finish because its
// caller gave up (CheckNow's context ended, or Stop) says nothing about the
// container and must not count as a failing check.
func TestCanceledCheckIsNotAFailure(t *testing.T) {
	setup := func(t *testing.T, cfg Config) (*registry.Registry, *Checker, *recorder, chan struct{}) {
		arrived := make(chan struct{}, 16)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			arrived <- struct{}{}
			<-r.Context().Done() // answers only when the check gives up
		}))
		t.Cleanup(srv.Close)
		reg := registry.New(registry.Options{})
		register(t, reg, 1, ctrAt("a", srv.Listener.Addr().(*net.TCPAddr).Port, registry.StatusHealthy))
		c, rec, _ := newChecker(t, reg, cfg)
		return reg, c, rec, arrived
	}
	t.Run("CheckNow's context ends", func(t *testing.T) {
		reg, c, rec, arrived := setup(t, Config{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { _, err := c.CheckNow(ctx, 0); done <- err }()
		<-arrived
		cancel()
		<-done
		if got := statusOf(t, reg, 1, "a"); got != registry.StatusHealthy || len(rec.all()) != 0 {
			t.Errorf("status %s, changes %+v after a canceled CheckNow, want healthy and none", got, rec.all())
		}
	})
	t.Run("CheckNow with a canceled context", func(t *testing.T) {
		reg, c, rec, _ := setup(t, Config{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		for range 20 {
			if _, err := c.CheckNow(ctx, 0); !errors.Is(err, context.Canceled) {
				t.Errorf("CheckNow(canceled context) error %v, want context.Canceled", err)
			}
		}
		if got := statusOf(t, reg, 1, "a"); got != registry.StatusHealthy || len(rec.all()) != 0 {
			t.Errorf("status %s, changes %+v, want healthy and none", got, rec.all())
		}
	})
	t.Run("Stop", func(t *testing.T) {
		reg, c, rec, arrived := setup(t, Config{Interval: time.Hour})
		c.Start()
		<-arrived
		c.Stop()
		if got := statusOf(t, reg, 1, "a"); got != registry.StatusHealthy || len(rec.all()) != 0 {
			t.Errorf("status %s, changes %+v after Stop, want healthy and none", got, rec.all())
		}
	})
}

// ---- passive checks ----

func TestPassiveFailure(t *testing.T) {
	tests := []struct {
		name     string
		maxFails int
		failures int
		want     registry.Status
	}{
		{name: "max_fails 2, one failure", maxFails: 2, failures: 1, want: registry.StatusHealthy},
		{name: "max_fails 2, two failures", maxFails: 2, failures: 2, want: registry.StatusUnhealthy},
		{name: "max_fails 2, five failures", maxFails: 2, failures: 5, want: registry.StatusUnhealthy},
		{name: "max_fails 1", maxFails: 1, failures: 1, want: registry.StatusUnhealthy},
		{name: "max_fails 0 never ejects", maxFails: 0, failures: 50, want: registry.StatusHealthy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := registry.New(registry.Options{})
			register(t, reg, 1, ctrAt("c", closedPort(t), registry.StatusHealthy))
			c, rec, logs := newChecker(t, reg, Config{MaxFails: tt.maxFails, FailDuration: time.Minute})
			for i := range tt.failures {
				c.PassiveFailure(1, container(t, reg, 1, "c"))
				if i+1 < tt.maxFails {
					if got := statusOf(t, reg, 1, "c"); got != registry.StatusHealthy {
						t.Fatalf("status %s after %d failures, want healthy", got, i+1)
					}
				}
			}
			if got := statusOf(t, reg, 1, "c"); got != tt.want {
				t.Fatalf("status %s after %d failures, want %s", got, tt.failures, tt.want)
			}
			all := rec.all()
			if tt.want == registry.StatusHealthy {
				if len(all) != 0 {
					t.Errorf("changes %+v, want none", all)
				}
				return
			}
			if len(all) != 1 || all[0].From != registry.StatusHealthy || all[0].To != registry.StatusUnhealthy ||
				all[0].ImageID != 1 || all[0].ContainerID != "c" {
				t.Fatalf("changes %+v, want one healthy -> unhealthy of 1/c", all)
			}
			want := fmt.Sprintf("passive: %d failed attempts within 1m0s", tt.maxFails)
			if all[0].Reason != want {
				t.Errorf("reason %q, want %q", all[0].Reason, want)
			}
			if got := countMessage(logs, "container status changed"); got != 1 {
				t.Errorf("%d change log lines, want 1", got)
			}
		})
	}
}

func TestPassiveFailureOnlyEjectsHealthy(t *testing.T) {
	for _, st := range []registry.Status{registry.StatusStarting, registry.StatusDraining, registry.StatusUnhealthy} {
		t.Run(string(st), func(t *testing.T) {
			reg := registry.New(registry.Options{})
			register(t, reg, 1, ctrAt("c", closedPort(t), st))
			c, rec, _ := newChecker(t, reg, Config{MaxFails: 1, FailDuration: time.Minute})
			for range 3 {
				c.PassiveFailure(1, container(t, reg, 1, "c"))
			}
			if got := statusOf(t, reg, 1, "c"); got != st || len(rec.all()) != 0 {
				t.Errorf("status %s, changes %+v, want %s and none", got, rec.all(), st)
			}
		})
	}
}

func TestPassiveFailureConcurrent(t *testing.T) {
	reg := registry.New(registry.Options{})
	register(t, reg, 1, ctrAt("c", closedPort(t), registry.StatusHealthy))
	c, rec, logs := newChecker(t, reg, Config{MaxFails: 2, FailDuration: time.Minute})
	ctr := container(t, reg, 1, "c") // the version a request holds
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			<-start
			for range 10 {
				c.PassiveFailure(1, ctr)
			}
		})
	}
	close(start)
	wg.Wait()
	if got := statusOf(t, reg, 1, "c"); got != registry.StatusUnhealthy {
		t.Fatalf("status %s, want unhealthy", got)
	}
	if all := rec.all(); len(all) != 1 {
		t.Errorf("changes %+v, want exactly one", all)
	}
	if got := countMessage(logs, "container status changed"); got != 1 {
		t.Errorf("%d change log lines, want 1", got)
	}
}

// After a passive ejection, healthy_threshold fresh passing checks bring the
// container back: the passes counted before the ejection do not count.
func TestPassiveEjectionThenActiveRecovery(t *testing.T) {
	for _, threshold := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("healthy_threshold %d", threshold), func(t *testing.T) {
			b := newBackend(t, 200)
			reg := registry.New(registry.Options{})
			register(t, reg, 1, ctrAt("c", b.port(), registry.StatusHealthy))
			c, rec, _ := newChecker(t, reg, Config{MaxFails: 2, FailDuration: time.Minute, HealthyThreshold: threshold})
			for range 5 {
				checkNow(t, c, 1)
			}
			c.PassiveFailure(1, container(t, reg, 1, "c"))
			c.PassiveFailure(1, container(t, reg, 1, "c"))
			if got := statusOf(t, reg, 1, "c"); got != registry.StatusUnhealthy {
				t.Fatalf("status %s after 2 passive failures, want unhealthy", got)
			}
			for i := 1; i <= threshold; i++ {
				r := checkNow(t, c, 1).Results[0]
				want := registry.StatusUnhealthy
				if i == threshold {
					want = registry.StatusHealthy
				}
				if r.PreviousStatus != registry.StatusUnhealthy || r.Status != want {
					t.Fatalf("passing check %d: %s -> %s, want unhealthy -> %s", i, r.PreviousStatus, r.Status, want)
				}
			}
			all := rec.all()
			if len(all) != 2 || !strings.HasPrefix(all[0].Reason, "passive") ||
				all[1].From != registry.StatusUnhealthy || all[1].To != registry.StatusHealthy {
				t.Errorf("changes %+v, want the passive ejection then unhealthy -> healthy", all)
			}
		})
	}
}

// TestPassiveEjectionExpires: a passively ejected container comes back by
// itself after FailDuration, unless an active check judged it meanwhile.
func TestPassiveEjectionExpires(t *testing.T) {
	t.Run("expires", func(t *testing.T) {
		reg := registry.New(registry.Options{})
		register(t, reg, 1, ctrAt("c", 1, registry.StatusHealthy))
		c, rec, _ := newChecker(t, reg, Config{MaxFails: 1, FailDuration: 50 * time.Millisecond})
		c.PassiveFailure(1, container(t, reg, 1, "c"))
		if got := statusOf(t, reg, 1, "c"); got != registry.StatusUnhealthy {
			t.Fatalf("status %s after a passive failure", got)
		}
		eventually(t, "the ejection to expire", func() bool { return statusOf(t, reg, 1, "c") == registry.StatusHealthy })
		if all := rec.all(); len(all) != 2 || !strings.Contains(all[1].Reason, "ejection of 50ms over") {
			t.Fatalf("changes %+v", all)
		}
	})
	t.Run("a failing active check keeps it out", func(t *testing.T) {
		b := newBackend(t, 500)
		reg := registry.New(registry.Options{})
		register(t, reg, 1, ctrAt("c", b.port(), registry.StatusHealthy))
		c, _, _ := newChecker(t, reg, Config{MaxFails: 1, FailDuration: time.Hour})
		ctr := container(t, reg, 1, "c")
		c.PassiveFailure(1, ctr)
		if ctr.Stats.PassiveEjection.Load() == 0 {
			t.Fatal("no ejection recorded")
		}
		checkNow(t, c, 1)
		if ctr.Stats.PassiveEjection.Load() != 0 || statusOf(t, reg, 1, "c") != registry.StatusUnhealthy {
			t.Fatal("a failing active check must cancel the ejection's expiry and keep the container out")
		}
	})
	t.Run("the orchestrator's status cancels it", func(t *testing.T) {
		reg := registry.New(registry.Options{})
		register(t, reg, 1, ctrAt("c", 1, registry.StatusHealthy))
		c, _, _ := newChecker(t, reg, Config{MaxFails: 1, FailDuration: time.Hour})
		ctr := container(t, reg, 1, "c")
		c.PassiveFailure(1, ctr)
		st := registry.StatusUnhealthy
		if _, err := reg.PatchContainer(1, "c", registry.ContainerPatch{Status: &st}); err != nil {
			t.Fatal(err)
		}
		if ctr.Stats.PassiveEjection.Load() != 0 {
			t.Fatal("a PATCHed status must cancel the ejection's expiry")
		}
	})
}
