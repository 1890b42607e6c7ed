package imagelb

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/imagelb/caddy-imagelb/registry"
)

// rolloutSite loads a site with imagelb whose events app hands the
// rollout events to the tests' recorder, and empties the registry and the
// recorder.
func rolloutSite(t *testing.T) (site string) {
	t.Helper()
	port := freePort(t)
	tester := caddytest.NewTester(t)
	tester.InitServer(fmt.Sprintf(`{
	"admin": {"listen": "localhost:2999"},
	"apps": {
		"imagelb": {},
		"events": {"subscriptions": [{
			"events": ["imagelb.rollout_step", "imagelb.rollout_promoted", "imagelb.rollout_rolled_back"],
			"handlers": [{"handler": "imagelb_test_recorder"}]
		}]},
		"http": {"servers": {"s": {"listen": ["127.0.0.1:%d"], "routes": [{"handle": [{"handler": "imagelb"}]}]}}}
	}
}`, port), "json")
	if t.Failed() {
		t.FailNow()
	}
	resetRegistry(t)
	recorded.reset()
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

// rolloutEvents lists the rollout events recorded, by their short names.
func rolloutEvents() string {
	var names []string
	for _, e := range recorded.list() {
		if name, ok := strings.CutPrefix(strings.Fields(e)[0], "imagelb.rollout_"); ok {
			names = append(names, name)
		}
	}
	return strings.Join(names, " ")
}

// rolloutDoc is GET …/rollout as a client reads it.
type rolloutDoc struct {
	ImageID       int64                      `json:"image_id"`
	CanaryImageID int64                      `json:"canary_image_id"`
	State         string                     `json:"state"`
	Step          int                        `json:"step"`
	Percent       float64                    `json:"percent"`
	Steps         []float64                  `json:"steps"`
	Analysis      []registry.RolloutAnalysis `json:"analysis"`
	Notified      bool                       `json:"notified"`
}

func (d rolloutDoc) decisions() string {
	var parts []string
	for _, a := range d.Analysis {
		parts = append(parts, fmt.Sprintf("%d:%s", a.Step, a.Decision))
	}
	return strings.Join(parts, " ")
}

func getRollout(t testing.TB, base string, id int64) rolloutDoc {
	t.Helper()
	var d rolloutDoc
	mustDo(t, "GET", fmt.Sprintf("%s/services/%d/rollout", base, id), nil, 200, &d)
	return d
}

// waitRollout polls the rollout until cond holds, for up to a minute (the
// machine may be loaded; the steps last a second).
func waitRollout(t testing.TB, base string, id int64, what string, cond func(rolloutDoc) bool) rolloutDoc {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		d := getRollout(t, base, id)
		if cond(d) {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: rollout %s at step %d (%v%%), decisions %s", what, d.State, d.Step, d.Percent, d.decisions())
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a condition, not a wait for time to pass
	}
}

// traffic is clients sending GETs to one URL until stopped, counting the
// answers by backend and status.
type traffic struct {
	mu       sync.Mutex
	byServer map[string]int
	bad      []string // answers other than 200 from a container
	total    atomic.Int64
	stop     chan struct{}
	wg       sync.WaitGroup
}

func startTraffic(url string, clients int) *traffic {
	tr := &traffic{byServer: map[string]int{}, stop: make(chan struct{})}
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	for range clients {
		tr.wg.Go(func() {
			for {
				select {
				case <-tr.stop:
					return
				default:
				}
				resp, err := hc.Get(url)
				tr.mu.Lock()
				if err != nil {
					tr.bad = append(tr.bad, err.Error())
				} else {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					name := resp.Header.Get("X-Backend")
					tr.byServer[name]++
					if resp.StatusCode != 200 || name == "" {
						tr.bad = append(tr.bad, fmt.Sprintf("status %d from %q", resp.StatusCode, name))
					}
				}
				tr.mu.Unlock()
				tr.total.Add(1)
			}
		})
	}
	return tr
}

func (tr *traffic) finish() (byServer map[string]int, bad []string) {
	close(tr.stop)
	tr.wg.Wait()
	return tr.byServer, tr.bad
}

// hook records what is POSTed to it: a promote_url.
type hook struct {
	mu       sync.Mutex
	outcomes []map[string]any
	url      string
}

func newHook(t *testing.T) *hook {
	h := &hook{}
	b := funcBackend(t, "hook", func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		json.NewDecoder(r.Body).Decode(&m)
		h.mu.Lock()
		h.outcomes = append(h.outcomes, m)
		h.mu.Unlock()
	})
	h.url = fmt.Sprintf("http://127.0.0.1:%d/outcome", b.port)
	return h
}

func (h *hook) states() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, m := range h.outcomes {
		out = append(out, fmt.Sprint(m["state"]))
	}
	return out
}

func waitHook(t *testing.T, h *hook, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if got := h.states(); len(got) > 0 {
			if len(got) != 1 || got[0] != want {
				t.Fatalf("promote_url was told %v, want once %s", got, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("promote_url was not told %s", want)
		}
		time.Sleep(20 * time.Millisecond) // polling interval of a condition, not a wait for time to pass
	}
}

// TestRolloutPromotesAHealthyCanary: a canary within its bounds goes
// through every step to 100% and is promoted; no client sees an error on
// the way; each step's analysis holds both sides' requests; promote_url
// is told once; the metric shows the percent.
func TestRolloutPromotesAHealthyCanary(t *testing.T) {
	site := rolloutSite(t)
	api := site + "/api/v1"
	stable, canary := newBackend(t, "stable"), newBackend(t, "canary")
	register(t, api, 1, "", container("s1", stable))
	register(t, api, 2, "", container("c1", canary))
	h := newHook(t)

	tr := startTraffic(site+"/api/v1/proxy/1/", 4)
	var started rolloutDoc
	mustDo(t, "POST", api+"/services/1/rollout", map[string]any{"canary_image_id": 2, "steps": []float64{10, 50, 100},
		"interval": "1s", "min_requests": 20, "max_p99_ratio": 0, "promote_url": h.url}, 201, &started)
	if started.State != "progressing" || started.Step != 1 || started.Percent != 10 {
		t.Fatalf("started as %+v", started)
	}
	if v := metricValue(t, `imagelb_rollout_percent{canary_image_id="2",image_id="1"}`); v != 10 {
		t.Fatalf("imagelb_rollout_percent %v, want 10", v)
	}
	done := waitRollout(t, api, 1, "the promotion", func(d rolloutDoc) bool { return d.State != "progressing" })
	byServer, bad := tr.finish()
	if done.State != "promoted" || done.Percent != 100 {
		t.Fatalf("rollout ended %s at %v%%: %s", done.State, done.Percent, done.decisions())
	}
	if len(bad) > 0 {
		t.Fatalf("clients saw %d errors, e.g. %s", len(bad), bad[0])
	}
	if got := done.decisions(); got != "1:advance 2:advance 3:promote" {
		t.Fatalf("decisions %s, want every step advanced, then promoted", got)
	}
	for _, a := range done.Analysis {
		if a.Canary == nil || a.Canary.Requests < 20 || a.Canary.ErrorRate != 0 || a.Stable == nil {
			t.Fatalf("step %d judged on %+v / %+v, want at least min_requests canary requests, none failed", a.Step, a.Canary, a.Stable)
		}
		if a.Percent < 100 && a.Stable.Requests == 0 {
			t.Fatalf("step %d at %v%%: the stable image served nothing", a.Step, a.Percent)
		}
	}
	if byServer["canary"] == 0 || byServer["stable"] == 0 {
		t.Fatalf("answers by server %v: both should have served", byServer)
	}
	waitHook(t, h, "promoted")
	if got := rolloutEvents(); got != "step step step promoted" {
		t.Fatalf("events %q, want each step's start, then promoted", got)
	}
	for range 20 {
		if got := proxyGet(t, site, 1, "/").Backend; got != "canary" {
			t.Fatalf("promoted, yet image 1's request went to %s", got)
		}
	}
	if v := metricValue(t, `imagelb_rollout_percent{canary_image_id="2",image_id="1"}`); v != 100 {
		t.Fatalf("imagelb_rollout_percent %v, want 100", v)
	}
	// the orchestrator moves image 1 to the new version: the rollout is done
	register(t, api, 1, "", container("s2", canary))
	mustDo(t, "GET", api+"/services/1/rollout", nil, 404, nil)
}

// failingBackend passes its health checks and answers 500 to everything else.
func failingBackend(t *testing.T, name string) *backend {
	return funcBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	})
}

// TestRolloutRollsBackAFailingCanary: a canary that answers 500 while its
// health checks pass is rolled back within the step (not at its end), the
// reason names the figure and the bound, the split goes back to 0 and
// promote_url is told.
func TestRolloutRollsBackAFailingCanary(t *testing.T) {
	site := rolloutSite(t)
	api := site + "/api/v1"
	stable := newBackend(t, "stable")
	register(t, api, 1, "", container("s1", stable))
	register(t, api, 2, "", container("c1", failingBackend(t, "canary")))
	h := newHook(t)

	tr := startTraffic(site+"/api/v1/proxy/1/", 4)
	mustDo(t, "POST", adminURL+"/imagelb/services/1/rollout", map[string]any{"canary_image_id": 2, "steps": []float64{20, 100},
		"interval": "1h", "min_requests": 20, "promote_url": h.url}, 201, nil)
	done := waitRollout(t, api, 1, "the rollback", func(d rolloutDoc) bool { return d.State != "progressing" })
	byServer, _ := tr.finish()
	if done.State != "rolled_back" || done.Percent != 0 {
		t.Fatalf("rollout ended %s at %v%%: %s", done.State, done.Percent, done.decisions())
	}
	last := done.Analysis[len(done.Analysis)-1]
	if last.Decision != "rollback" || !strings.Contains(last.Reason, "max_error_rate 0.01") || !strings.Contains(last.Reason, "error rate") {
		t.Fatalf("last decision %s: %q; want a rollback naming the error rate and max_error_rate 0.01", last.Decision, last.Reason)
	}
	if last.Step != 1 || last.Canary == nil || last.Canary.Errors == 0 {
		t.Fatalf("rolled back at step %d on %+v; want during step 1 (its interval of 1h never ended), on the canary's failures", last.Step, last.Canary)
	}
	t.Logf("the canary served %d requests (%d by the clients' count) before the rollback", last.Canary.Requests, byServer["canary"])
	waitHook(t, h, "rolled_back")
	if got := rolloutEvents(); got != "step rolled_back" {
		t.Fatalf("events %q, want step, rolled_back", got)
	}
	for range 20 {
		if got := proxyGet(t, site, 1, "/").Backend; got != "stable" {
			t.Fatalf("rolled back, yet image 1's request went to %s", got)
		}
	}
	var svc struct {
		Split []any `json:"split"`
	}
	mustDo(t, "GET", api+"/services/1", nil, 200, &svc)
	if len(svc.Split) != 0 {
		t.Fatalf("split %v after the rollback, want none", svc.Split)
	}
}

// TestRolloutRollsBackASlowCanary: a canary whose p99 is many times the
// stable image's is rolled back, the reason naming max_p99_ratio.
func TestRolloutRollsBackASlowCanary(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	api := site + "/api/v1"
	slow := funcBackend(t, "canary", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(60 * time.Millisecond) // the backend's own behaviour under test, not a test wait
	})
	register(t, api, 1, "", container("s1", newBackend(t, "stable")))
	register(t, api, 2, "", container("c1", slow))
	tr := startTraffic(site+"/api/v1/proxy/1/", 4)
	mustDo(t, "POST", api+"/services/1/rollout", map[string]any{"canary_image_id": 2, "steps": []float64{50, 100},
		"interval": "1h", "min_requests": 20}, 201, nil)
	done := waitRollout(t, api, 1, "the rollback", func(d rolloutDoc) bool { return d.State != "progressing" })
	tr.finish()
	last := done.Analysis[len(done.Analysis)-1]
	if done.State != "rolled_back" || !strings.Contains(last.Reason, "max_p99_ratio 1.5") {
		t.Fatalf("rollout ended %s: %q; want rolled back over max_p99_ratio 1.5", done.State, last.Reason)
	}
}

// TestRolloutRollsBackWithoutACanaryContainer: the canary's only container
// marked unhealthy rolls the rollout back at once.
func TestRolloutRollsBackWithoutACanaryContainer(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	api := fmt.Sprintf("http://127.0.0.1:%d/api/v1", port)
	register(t, api, 1, "", container("s1", newBackend(t, "stable")))
	register(t, api, 2, "", container("c1", newBackend(t, "canary")))
	mustDo(t, "POST", api+"/services/1/rollout", map[string]any{"canary_image_id": 2, "steps": []float64{50, 100}, "interval": "1h"}, 201, nil)
	mustDo(t, "PATCH", api+"/services/2/containers/c1", map[string]any{"status": "unhealthy"}, 200, nil)
	done := waitRollout(t, api, 1, "the rollback", func(d rolloutDoc) bool { return d.State != "progressing" })
	if last := done.Analysis[len(done.Analysis)-1]; done.State != "rolled_back" || !strings.Contains(last.Reason, "no available container") {
		t.Fatalf("rollout ended %s: %q", done.State, last.Reason)
	}
}

// TestRolloutPauseResumePromoteAbort: the operator's routes on both
// mounts, and what each does to the traffic.
func TestRolloutPauseResumePromoteAbort(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	api, adm := site+"/api/v1", adminURL+"/imagelb"
	register(t, api, 1, "", container("s1", newBackend(t, "stable")))
	register(t, api, 2, "", container("c1", newBackend(t, "canary")))
	ro := fmt.Sprintf("%s/services/1/rollout", api)
	mustDo(t, "GET", ro, nil, 404, nil)
	mustDo(t, "POST", ro+"/pause", nil, 404, nil)
	mustDo(t, "POST", ro, map[string]any{"canary_image_id": 2, "steps": []float64{25, 100}, "interval": "1h"}, 201, nil)

	// a split by hand while it runs is 409, and changes nothing
	wantError(t, "POST", api+"/services/1/register", fmt.Sprintf(`{"image_name": "img-1", "containers": [{"container_id": "s1", "port": 1}], "split": [{"image_id": 2, "percent": 50}]}`),
		409, "driven by its rollout")
	wantError(t, "POST", ro, `{"canary_image_id": 2, "steps": [100], "interval": "1s"}`, 409, "already has a rollout")

	var d rolloutDoc
	mustDo(t, "POST", adm+"/services/1/rollout/pause", nil, 200, &d)
	if d.State != "paused" || d.Percent != 25 {
		t.Fatalf("paused: %+v", d)
	}
	wantError(t, "POST", ro+"/pause", "", 409, "only a progressing rollout")
	var svc struct {
		Rollout struct {
			State   string  `json:"state"`
			Percent float64 `json:"percent"`
		} `json:"rollout"`
	}
	mustDo(t, "GET", api+"/services/1", nil, 200, &svc) // the dashboard's card shows it
	if svc.Rollout.State != "paused" || svc.Rollout.Percent != 25 {
		t.Fatalf("the Service shows the rollout as %+v", svc.Rollout)
	}
	mustDo(t, "POST", ro+"/resume", nil, 200, &d)
	if d.State != "progressing" {
		t.Fatalf("resumed: %+v", d)
	}
	wantError(t, "POST", ro+"/resume", "", 409, "only a paused rollout")
	seen := map[string]int{}
	for range 8 {
		seen[proxyGet(t, site, 1, "/").Backend]++
	}
	if seen["canary"] != 2 || seen["stable"] != 6 {
		t.Fatalf("8 requests at 25%%: %v, want 2 to the canary", seen)
	}
	mustDo(t, "POST", adm+"/services/1/rollout/promote", nil, 200, &d)
	if d.State != "promoted" || d.Percent != 100 || d.Step != 2 {
		t.Fatalf("promoted: %+v", d)
	}
	for range 5 {
		if got := proxyGet(t, site, 1, "/").Backend; got != "canary" {
			t.Fatalf("promoted, yet a request went to %s", got)
		}
	}
	mustDo(t, "DELETE", ro, nil, 200, &d)
	if d.State != "aborted" || d.Percent != 0 {
		t.Fatalf("deleted: %+v", d)
	}
	if got := getRollout(t, api, 1).decisions(); got != "1:pause 1:resume 2:promote 2:abort" {
		t.Fatalf("decisions %s", got)
	}
	for range 5 {
		if got := proxyGet(t, site, 1, "/").Backend; got != "stable" {
			t.Fatalf("aborted, yet a request went to %s", got)
		}
	}
	mustDo(t, "DELETE", adm+"/services/1/rollout", nil, 200, nil) // over: removed
	mustDo(t, "GET", ro, nil, 404, nil)
}

// TestRolloutBadInput: every bad input is 422 at its field (or 409, 404),
// and a refused rollout changes nothing.
func TestRolloutBadInput(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	api := fmt.Sprintf("http://127.0.0.1:%d/api/v1", port)
	register(t, api, 1, "", container("s1", newBackend(t, "stable")))
	register(t, api, 2, "", container("c1", newBackend(t, "canary")))
	down := container("c1", newBackend(t, "down"))
	down["status"] = "unhealthy"
	register(t, api, 3, "", down)
	mustDo(t, "POST", api+"/services/4/register", map[string]any{"image_name": "hand", "containers": []any{container("h", newBackend(t, "h"))},
		"split": []any{map[string]any{"image_id": 2, "percent": 10}}}, 200, nil)
	ok := `"steps": [10, 100], "interval": "1s"`
	tests := []struct {
		name, path, body string
		status           int
		loc              string
	}{
		{"unknown canary", "1", `{"canary_image_id": 9, ` + ok + `}`, 422, `["body","canary_image_id"]`},
		{"the image itself", "1", `{"canary_image_id": 1, ` + ok + `}`, 422, `["body","canary_image_id"]`},
		{"canary without a container", "1", `{"canary_image_id": 3, ` + ok + `}`, 422, `["body","canary_image_id"]`},
		{"steps not rising", "1", `{"canary_image_id": 2, "steps": [50, 20, 100], "interval": "1s"}`, 422, `["body","steps",1]`},
		{"steps not ending at 100", "1", `{"canary_image_id": 2, "steps": [10, 50], "interval": "1s"}`, 422, `["body","steps",1]`},
		{"interval too short", "1", `{"canary_image_id": 2, "steps": [100], "interval": "100ms"}`, 422, `["body","interval"]`},
		{"interval too long", "1", `{"canary_image_id": 2, "steps": [100], "interval": "48h"}`, 422, `["body","interval"]`},
		{"min_requests out of range", "1", `{"canary_image_id": 2, ` + ok + `, "min_requests": -1}`, 422, `["body","min_requests"]`},
		{"max_error_rate out of range", "1", `{"canary_image_id": 2, ` + ok + `, "max_error_rate": 2}`, 422, `["body","max_error_rate"]`},
		{"max_p99_ratio out of range", "1", `{"canary_image_id": 2, ` + ok + `, "max_p99_ratio": 0.5}`, 422, `["body","max_p99_ratio"]`},
		{"promote_url not a URL", "1", `{"canary_image_id": 2, ` + ok + `, "promote_url": "mailto:x"}`, 422, `["body","promote_url"]`},
		{"promote_url at Caddy's admin endpoint", "1", `{"canary_image_id": 2, ` + ok + `, "promote_url": "http://localhost:2999/load"}`, 422, `["body","promote_url"]`},
		{"promote_url at the cloud metadata address", "1", `{"canary_image_id": 2, ` + ok + `, "promote_url": "http://169.254.169.254/latest"}`, 422, `["body","promote_url"]`},
		{"a split set by hand", "4", `{"canary_image_id": 2, ` + ok + `}`, 422, `["path","image_id"]`},
		{"unknown image", "9", `{"canary_image_id": 2, ` + ok + `}`, 404, ""},
		{"not JSON", "1", `{"canary_image_id": `, 422, ""},
	}
	before := func(id string) string {
		_, b := do(t, "GET", api+"/services/"+id, nil)
		var v map[string]any
		json.Unmarshal(b, &v)
		delete(v, "requests_per_second")
		js, _ := json.Marshal(v)
		return string(js)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			was := before(tt.path)
			status, raw := do(t, "POST", api+"/services/"+tt.path+"/rollout", tt.body)
			if status != tt.status {
				t.Fatalf("status %d, want %d: %s", status, tt.status, raw)
			}
			if tt.loc != "" && !strings.Contains(string(raw), `"loc":`+tt.loc) {
				t.Fatalf("answer %s has no error at %s", raw, tt.loc)
			}
			if now := before(tt.path); now != was {
				t.Fatalf("a refused rollout changed the service:\n%s\n%s", was, now)
			}
			if tt.status != 404 {
				mustDo(t, "GET", api+"/services/"+tt.path+"/rollout", nil, 404, nil)
			}
		})
	}
}

// TestRolloutSurvivesReloadsAndRestarts: a reload keeps the rollout
// running; a restart of the app (the registry closed and opened again from
// its local store) finds it at its step, starts that step again and
// finishes it.
func TestRolloutSurvivesReloadsAndRestarts(t *testing.T) {
	port := freePort(t)
	state := filepath.Join(t.TempDir(), "registry.db")
	cfg := siteConfig(port, "state_file "+state)
	startCaddyNoReset(t, `{
	admin localhost:2999
}
`) // no imagelb: the registry of earlier tests is closed
	startCaddy(t, cfg)
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	api := site + "/api/v1"
	register(t, api, 1, "", container("s1", newBackend(t, "stable")))
	register(t, api, 2, "", container("c1", newBackend(t, "canary")))
	mustDo(t, "POST", api+"/services/1/rollout", map[string]any{"canary_image_id": 2, "steps": []float64{10, 50, 100},
		"interval": "1s", "min_requests": 10, "max_p99_ratio": 0}, 201, nil)

	startCaddyNoReset(t, siteConfig(port, "state_file "+state+"\n\t\tmax_retries 2")) // a reload
	if d := getRollout(t, api, 1); d.State != "progressing" || d.Step != 1 {
		t.Fatalf("after a reload: %+v", d)
	}

	startCaddyNoReset(t, `{
	admin localhost:2999
}
`) // the app stops: the registry and the driver are gone
	startCaddyNoReset(t, cfg)
	d := getRollout(t, api, 1)
	if d.State != "progressing" || d.Step != 1 || d.Percent != 10 {
		t.Fatalf("after a restart: %+v", d)
	}
	var svc struct {
		Split []registry.SplitTarget `json:"split"`
	}
	mustDo(t, "GET", api+"/services/1", nil, 200, &svc)
	if len(svc.Split) != 1 || *svc.Split[0].Percent != 10 {
		t.Fatalf("split after a restart %+v, want the rollout's 10%%", svc.Split)
	}
	tr := startTraffic(site+"/api/v1/proxy/1/", 4)
	done := waitRollout(t, api, 1, "the promotion", func(d rolloutDoc) bool { return d.State != "progressing" })
	_, bad := tr.finish()
	if done.State != "promoted" || len(bad) > 0 {
		t.Fatalf("after the restart the rollout ended %s (%s), clients saw %v", done.State, done.decisions(), bad)
	}
}

// TestRolloutStickyClients: on a sticky stable image, clients keep their
// side within a step; at the next step a client sent to the canary stays
// there, and one kept on the stable image is drawn again.
func TestRolloutStickyClients(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	api := site + "/api/v1"
	registerObject(t, site, 2, map[string]any{"containers": []any{container("c1", newBackend(t, "canary"))}})
	registerObject(t, site, 1, map[string]any{"sticky": true, "containers": []any{container("s1", newBackend(t, "stable"))}})
	mustDo(t, "POST", api+"/services/1/rollout", map[string]any{"canary_image_id": 2, "steps": []float64{50, 75, 100}, "interval": "1h"}, 201, nil)
	url := site + "/api/v1/proxy/1/"
	pins := map[string]*http.Cookie{}
	for len(pins) < 2 {
		a := send(t, url, nil)
		if c := a.cookieNamed("imagelb_split_1"); a.status == 200 && c != nil {
			pins[a.backend] = c
		}
	}
	for side, pin := range pins {
		for range 4 {
			if a := send(t, url, nil, pin); a.backend != side || a.cookieNamed("imagelb_split_1") != nil {
				t.Fatalf("a client kept on %s was sent to %s (new cookie: %v) within the step", side, a.backend, a.cookieNamed("imagelb_split_1") != nil)
			}
		}
	}
	// the driver's next step, as it writes it
	if _, err := running.Load().reg.ChangeRollout(1, func(ro *registry.Rollout) error {
		ro.Step, ro.Percent = 2, 75
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if a := send(t, url, nil, pins["canary"]); a.backend != "canary" || a.cookieNamed("imagelb_split_1") != nil {
		t.Fatalf("at the next step the canary's client went to %s (new cookie: %v)", a.backend, a.cookieNamed("imagelb_split_1") != nil)
	}
	if a := send(t, url, nil, pins["stable"]); a.cookieNamed("imagelb_split_1") == nil {
		t.Fatalf("at the next step the stable image's client was not drawn again (answered by %s, no new cookie)", a.backend)
	}
}
