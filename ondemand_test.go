package imagelb

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

// onDemandConfig is a site with start on demand, its webhooks on the
// orchestrator stand-in, and the recorder of the on-demand events.
func onDemandConfig(port int, o *testkit.Orchestrator, extra string) string {
	return fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		health_interval 1h
		on_demand {
			start_url %s
			stop_url %s
			%s
		}
	}
}
http://127.0.0.1:%d {
	imagelb {
		dashboard
	}
}
`, o.StartURL(), o.StopURL(), extra, port)
}

// startOnDemandCaddy starts the in-process Caddy with the config and
// subscribes the event recorder (a Caddyfile cannot subscribe handlers).
func startOnDemandCaddy(t *testing.T, port int, o *testkit.Orchestrator, extra string) {
	t.Helper()
	startCaddy(t, onDemandConfig(port, o, extra))
	// the events app's subscriptions come from JSON: add ours to the
	// running config through the admin API
	mustDo(t, "POST", adminURL+"/config/apps/events", map[string]any{"subscriptions": []map[string]any{{
		"events":   []string{"imagelb.service_starting", "imagelb.service_started", "imagelb.service_idle"},
		"handlers": []map[string]any{{"handler": "imagelb_test_ondemand"}},
	}}}, 200, nil)
	onDemandEvents.reset()
}

// onDemandService registers an on-demand image without containers.
func onDemandService(t *testing.T, site string, id int64, idle string) {
	t.Helper()
	od := map[string]any{}
	if idle != "" {
		od["idle_timeout"] = idle
	}
	registerObject(t, site, id, map[string]any{"containers": []any{}, "on_demand": od})
}

// waitingOf is the service's waiting count, as the API shows it.
func waitingOf(t *testing.T, id int64) int {
	var svc struct {
		Waiting int `json:"waiting"`
	}
	mustDo(t, "GET", fmt.Sprintf("%s/imagelb/services/%d", adminURL, id), nil, 200, &svc)
	return svc.Waiting
}

// TestOnDemandColdStart: 50 requests for an image with no container wait
// while it starts, with one call of start_url, and are all answered by
// the container the orchestrator started; the waiting requests are shown
// in the API and the metrics while they wait, and the start is announced.
func TestOnDemandColdStart(t *testing.T) {
	port := freePort(t)
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	o := testkit.NewOrchestrator(t, adminURL+"/imagelb")
	release := o.Hold()
	startOnDemandCaddy(t, port, o, "")
	onDemandService(t, site, 171, "")

	const n = 50
	var wg sync.WaitGroup
	answers := make([]answer, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = send(t, fmt.Sprintf("%s/api/v1/proxy/171/hello", site), nil)
		}()
	}
	eventually(t, "50 requests waiting", func() bool { return waitingOf(t, 171) == n })
	if got := metricValue(t, `imagelb_requests_waiting{image_id="171"}`); got != n {
		t.Errorf("imagelb_requests_waiting = %v, want %d", got, n)
	}
	eventually(t, "the start webhook", func() bool { return o.Starts(171) >= 1 })
	if got := o.Starts(171); got != 1 {
		t.Fatalf("start_url called %d times while %d requests wait, want 1", got, n)
	}
	if _, err := exec.LookPath("chromium"); err == nil { // the dashboard shows them (TestDashboardInBrowser needs it too)
		html := string(chromium(t, "--virtual-time-budget=3000", "--dump-dom", site+"/api/v1/ui/"))
		if !strings.Contains(html, `on demand, waiting <b class="service-waiting">50</b>`) {
			t.Errorf("the dashboard does not show the 50 waiting requests:\n%s", html)
		}
	}
	release() // the orchestrator starts the container and registers it as starting
	wg.Wait()
	for i, a := range answers {
		if a.status != http.StatusOK || !strings.HasPrefix(a.backend, "od-171-") {
			t.Fatalf("request %d: %d from %q: %s", i, a.status, a.backend, a.body)
		}
	}
	if got := o.Starts(171); got != 1 {
		t.Errorf("start_url called %d times, want 1", got)
	}
	body := o.Bodies()[0]
	if body["image_id"] != float64(171) || body["action"] != "start" || body["image_name"] != "img-171" {
		t.Errorf("start webhook body %v", body)
	}
	if w := waitingOf(t, 171); w != 0 {
		t.Errorf("waiting = %d after the start", w)
	}
	eventually(t, "the start events", func() bool { return len(onDemandEvents.list()) == 2 })
	evs := onDemandEvents.list()
	if evs[0].name != "imagelb.service_starting" || evs[1].name != "imagelb.service_started" {
		t.Fatalf("events %v", evs)
	}
	if ms, _ := evs[1].data["wait_ms"].(float64); ms <= 0 || evs[1].data["called_start_url"] != true {
		t.Errorf("service_started %v: want a wait_ms and called_start_url true", evs[1].data)
	}
	// a warm image is proxied at once
	if a := send(t, fmt.Sprintf("%s/api/v1/proxy/171/again", site), nil); a.status != 200 {
		t.Fatalf("warm request: %d %s", a.status, a.body)
	}
}

// TestOnDemandBounds: past start_timeout, past max_waiting and when
// start_url fails, waiting requests get 503 with Retry-After and a detail
// that names the cause.
func TestOnDemandBounds(t *testing.T) {
	port := freePort(t)
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	o := testkit.NewOrchestrator(t, adminURL+"/imagelb")
	startOnDemandCaddy(t, port, o, "start_timeout 1s\n\t\t\tmax_waiting 2")
	url := func(id int64) string { return fmt.Sprintf("%s/api/v1/proxy/%d/", site, id) }
	refused := func(a answer, status int, detail string) {
		t.Helper()
		if a.status != status || !strings.Contains(a.detail(), detail) {
			t.Fatalf("got %d %s, want %d with %q", a.status, a.body, status, detail)
		}
		if status == 503 && a.header.Get("Retry-After") == "" && !strings.Contains(detail, "no on_demand") {
			t.Fatalf("503 without Retry-After: %s", a.body)
		}
	}

	t.Run("start_timeout", func(t *testing.T) {
		o.Ignore.Store(true) // the orchestrator accepts and starts nothing
		defer o.Ignore.Store(false)
		onDemandService(t, site, 172, "")
		began := time.Now()
		refused(send(t, url(172), nil), 503, "start_timeout of 1s")
		if d := time.Since(began); d < time.Second {
			t.Errorf("refused after %s, before start_timeout", d)
		}
	})

	t.Run("max_waiting", func(t *testing.T) {
		release := o.Hold()
		defer release()
		onDemandService(t, site, 173, "")
		var wg sync.WaitGroup
		answers := make([]answer, 2)
		for i := range answers {
			wg.Add(1)
			go func() { defer wg.Done(); answers[i] = send(t, url(173), nil) }()
		}
		eventually(t, "2 requests waiting", func() bool { return waitingOf(t, 173) == 2 })
		refused(send(t, url(173), nil), 503, "max_waiting 2")
		release()
		wg.Wait()
		for _, a := range answers {
			if a.status != 200 {
				t.Fatalf("a waiting request got %d %s", a.status, a.body)
			}
		}
	})

	t.Run("failing start_url", func(t *testing.T) {
		o.Fail.Store(true)
		defer o.Fail.Store(false)
		onDemandService(t, site, 174, "")
		refused(send(t, url(174), nil), 503, "answered 500 no capacity left")
		// the orchestrator is not called again per request right away
		refused(send(t, url(174), nil), 503, "could not be started")
		if got := o.Starts(174); got != 1 {
			t.Fatalf("start_url called %d times, want 1", got)
		}
	})

	t.Run("not configured", func(t *testing.T) {
		// an image registered on_demand while the app has no on_demand
		// block: the 503 of an image without containers, and why
		startCaddy(t, siteConfig(port, "health_interval 1h"))
		onDemandService(t, site, 175, "")
		refused(send(t, url(175), nil), 503, "no on_demand start_url")
	})
}

// TestOnDemandIdleStop: an image without requests for its idle_timeout
// gets stop_url once; a WebSocket held open counts as activity, so its
// image keeps running while another image with the same idle_timeout is
// stopped; the next request after a stop starts the image again.
func TestOnDemandIdleStop(t *testing.T) {
	port := freePort(t)
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	o := testkit.NewOrchestrator(t, adminURL+"/imagelb")
	startOnDemandCaddy(t, port, o, "")

	onDemandService(t, site, 176, "1s") // held by a WebSocket
	onDemandService(t, site, 177, "1s") // the control: idle
	for _, id := range []int64{176, 177} {
		if a := send(t, fmt.Sprintf("%s/api/v1/proxy/%d/", site, id), nil); a.status != 200 {
			t.Fatalf("cold start of %d: %d %s", id, a.status, a.body)
		}
	}
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/v1/proxy/176/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	echo := func(msg string) {
		t.Helper()
		fmt.Fprintf(conn, "%s\n", msg)
		if line, err := br.ReadString('\n'); err != nil || line != "echo: "+msg+"\n" {
			t.Fatalf("WebSocket: %q %v", line, err)
		}
	}
	echo("one")
	// the control image, used after the WebSocket opened, is stopped
	// after its idle second: by then 176 went longer without a request
	if a := send(t, fmt.Sprintf("%s/api/v1/proxy/177/", site), nil); a.status != 200 {
		t.Fatalf("request to 177: %d", a.status)
	}
	eventually(t, "stop_url for the idle image", func() bool { return o.Stops(177) == 1 })
	if got := o.Stops(176); got != 0 {
		t.Fatalf("stop_url called for the image with an open WebSocket")
	}
	echo("two") // still connected, still served
	conn.Close()
	eventually(t, "stop_url once the WebSocket closed", func() bool { return o.Stops(176) == 1 })

	// the orchestrator removed the containers; the next request starts 177 again
	eventually(t, "177 without containers", func() bool {
		var svc struct{ Containers []any }
		mustDo(t, "GET", adminURL+"/imagelb/services/177", nil, 200, &svc)
		return len(svc.Containers) == 0
	})
	if a := send(t, fmt.Sprintf("%s/api/v1/proxy/177/", site), nil); a.status != 200 || o.Starts(177) != 2 {
		t.Fatalf("restart: %d (starts %d) %s", a.status, o.Starts(177), a.body)
	}
	idle := 0
	for _, ev := range onDemandEvents.list() {
		if ev.name == "imagelb.service_idle" {
			idle++
			if ev.data["called_stop_url"] != true {
				t.Errorf("service_idle %v", ev.data)
			}
		}
	}
	if idle != 2 {
		t.Errorf("%d service_idle events, want 2: %v", idle, onDemandEvents.list())
	}
	if o.Stops(177) != 1 {
		t.Errorf("stop_url called %d times for 177, want 1", o.Stops(177))
	}
	// the stop body says how long the image was idle in whole seconds
	// (an integer, as the docs show: "idle_seconds": 600), not 1.000000981
	stops := 0
	for _, body := range o.Bodies() {
		if body["action"] != "stop" {
			continue
		}
		stops++
		secs, ok := body["idle_seconds"].(float64)
		if !ok || secs < 1 || secs != math.Trunc(secs) {
			t.Errorf("stop webhook body %v: want idle_seconds a whole number of seconds, at least the idle_timeout 1", body)
		}
	}
	if stops < 2 {
		t.Errorf("%d stop webhook bodies, want 2", stops)
	}
}

// odRecorder records the on-demand events, with their data.
type odRecorder struct{}

func (odRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.imagelb_test_ondemand", New: func() caddy.Module { return new(odRecorder) }}
}

func (odRecorder) Handle(_ context.Context, e caddy.Event) error {
	onDemandEvents.add(odEvent{e.Name(), e.Data})
	return nil
}

type odEvent struct {
	name string
	data map[string]any
}

var onDemandEvents eventLog[odEvent] // eventLog: health_test.go

func init() { caddy.RegisterModule(odRecorder{}) }
