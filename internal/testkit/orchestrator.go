package testkit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/internal/orchestrate"
)

// Orchestrator is a stand-in for the platform's orchestrator in the start
// on demand tests: its start webhook starts a real backend (after its
// start time, and once a Hold is released) and registers it through the imagelb
// API at API, as the platform's orchestrator does; its stop webhook
// removes the image's containers through the API and stops them.
//
// Its webhooks are URL+"/api/images/{image_id}/start" and ".../stop".
type Orchestrator struct {
	URL string
	// Fail makes the start webhook answer 500; Ignore makes it answer 202
	// and start nothing.
	Fail, Ignore atomic.Bool

	t  testing.TB
	mu sync.Mutex // guards the fields below
	// the base of the imagelb API it registers through, the status
	// containers are registered with, the backend's start time, and what
	// holds the starts (nil: nothing)
	api      string
	status   string
	delay    time.Duration
	hold     chan struct{}
	starts   map[int64]int
	stops    map[int64]int
	bodies   []map[string]any
	running  map[int64][]started
	counter  int
	timeline map[int64]Timeline // of each image's last start
}

// Timeline is when the steps of a start happened: the start webhook
// arrived, the backend listened, and its registration was answered.
type Timeline struct {
	Called, Listening, Registered time.Time
}

// NewOrchestrator starts the stand-in; it registers through api, the base
// of the imagelb API (http://localhost:2999/imagelb, a site's .../api/v1).
func NewOrchestrator(t testing.TB, api string) *Orchestrator {
	o := &Orchestrator{api: api, status: "starting", t: t, starts: map[int64]int{}, stops: map[int64]int{},
		running: map[int64][]started{}, timeline: map[int64]Timeline{}}
	srv := httptest.NewServer(http.HandlerFunc(o.serve))
	o.URL = srv.URL
	t.Cleanup(func() {
		srv.Close()
		o.mu.Lock()
		defer o.mu.Unlock()
		for _, list := range o.running {
			for _, s := range list {
				s.srv.Close()
			}
		}
	})
	return o
}

// SetAPI sets the base of the imagelb API it registers through.
func (o *Orchestrator) SetAPI(api string) {
	o.mu.Lock()
	o.api = api
	o.mu.Unlock()
}

// SetStart sets the status containers are registered with (starting by
// default, so that a health check must pass them) and the backend's start
// time.
func (o *Orchestrator) SetStart(status string, delay time.Duration) {
	o.mu.Lock()
	o.status, o.delay = status, delay
	o.mu.Unlock()
}

// Hold holds the starts that begin from now on until release is called.
func (o *Orchestrator) Hold() (release func()) {
	ch := make(chan struct{})
	o.mu.Lock()
	o.hold = ch
	o.mu.Unlock()
	return sync.OnceFunc(func() {
		o.mu.Lock()
		if o.hold == ch {
			o.hold = nil
		}
		o.mu.Unlock()
		close(ch)
	})
}

// StartURL and StopURL are the webhooks, with the {image_id} placeholder.
func (o *Orchestrator) StartURL() string {
	return o.URL + orchestrate.WebhookPrefix + "{image_id}/start"
}
func (o *Orchestrator) StopURL() string { return o.URL + orchestrate.WebhookPrefix + "{image_id}/stop" }

// Starts and Stops count the webhook calls for the image.
func (o *Orchestrator) Starts(id int64) int { o.mu.Lock(); defer o.mu.Unlock(); return o.starts[id] }
func (o *Orchestrator) Stops(id int64) int  { o.mu.Lock(); defer o.mu.Unlock(); return o.stops[id] }

// Bodies returns the JSON bodies of every webhook call so far.
func (o *Orchestrator) Bodies() []map[string]any {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]map[string]any(nil), o.bodies...)
}

// Timeline returns the steps of the image's last start.
func (o *Orchestrator) Timeline(id int64) Timeline {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.timeline[id]
}

func (o *Orchestrator) serve(w http.ResponseWriter, r *http.Request) {
	id, action, ok := orchestrate.ParseWebhook(r)
	if !ok {
		http.Error(w, "not a webhook", http.StatusNotFound)
		return
	}
	var body map[string]any
	_ = json.NewDecoder(r.Body).Decode(&body)
	o.mu.Lock()
	o.bodies = append(o.bodies, body)
	if action == orchestrate.Start {
		o.starts[id]++
	} else {
		o.stops[id]++
	}
	o.mu.Unlock()
	switch {
	case action == orchestrate.Stop:
		o.stop(id)
		w.WriteHeader(http.StatusOK)
	case o.Fail.Load():
		http.Error(w, "no capacity left", http.StatusInternalServerError)
	case o.Ignore.Load():
		w.WriteHeader(http.StatusAccepted)
	default:
		o.mu.Lock()
		o.timeline[id] = Timeline{Called: time.Now()}
		o.mu.Unlock()
		w.WriteHeader(http.StatusAccepted) // the start goes on after the answer
		go o.start(id)
	}
}

// start starts a backend for the image and registers it.
func (o *Orchestrator) start(id int64) {
	o.mu.Lock()
	hold, delay, status, api := o.hold, o.delay, o.status, o.api
	o.mu.Unlock()
	if hold != nil {
		<-hold
	}
	time.Sleep(delay) // the container's own start time, simulated
	o.mu.Lock()
	o.counter++
	name := fmt.Sprintf("od-%d-%d", id, o.counter)
	o.mu.Unlock()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "echo" {
			serveEcho(w)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Backend", name)
		_ = json.NewEncoder(w).Encode(map[string]string{"backend": name, "path": r.URL.Path})
	}))
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	o.mu.Lock()
	o.running[id] = append(o.running[id], started{name, srv})
	tl := o.timeline[id]
	tl.Listening = time.Now()
	o.timeline[id] = tl
	o.mu.Unlock()
	if err := (orchestrate.API{Base: api}).Register(context.Background(), id, name, "127.0.0.1", port, status); err != nil {
		o.t.Errorf("orchestrator: %v", err)
		return
	}
	o.mu.Lock()
	tl = o.timeline[id]
	tl.Registered = time.Now()
	o.timeline[id] = tl
	o.mu.Unlock()
}

// started is a backend the orchestrator started, by container id.
type started struct {
	name string
	srv  *httptest.Server
}

// stop removes the image's containers through the API and stops them.
func (o *Orchestrator) stop(id int64) {
	o.mu.Lock()
	list, api := o.running[id], o.api
	delete(o.running, id)
	o.mu.Unlock()
	for _, s := range list {
		_ = (orchestrate.API{Base: api}).Remove(context.Background(), id, s.name)
		s.srv.Close()
	}
}

// serveEcho switches the connection to the "echo" protocol (as a WebSocket
// upgrade does) and answers each line with "echo: " and the line.
func serveEcho(w http.ResponseWriter) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	_ = brw.Flush()
	r := bufio.NewReader(brw)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		_, _ = brw.WriteString("echo: " + line)
		_ = brw.Flush()
	}
}
