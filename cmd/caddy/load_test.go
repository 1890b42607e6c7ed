package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// load is clients requesting URLs in a loop (client i the URL i %
// len(urls)) while a test reloads, restarts or breaks something: every
// answer that is not served (a 200, containing loadOpts.body when set) and
// every transport error is a failure, with the time it happened.
type load struct {
	served atomic.Int64
	fresh  atomic.Int64 // requests sent on a connection of their own
	done   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	failed []string
}

// loadOpts shape a load.
type loadOpts struct {
	clients int // default 8
	// freshOdd makes every other client open a new connection for each
	// request: the connections a reload can drop as it starts.
	freshOdd bool
	body     string // a 200 counts as served only if its body contains it
}

func startLoad(o loadOpts, urls ...string) *load {
	if o.clients == 0 {
		o.clients = 8
	}
	l := &load{done: make(chan struct{})}
	shared := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.clients}, Timeout: 10 * time.Second}
	for i := range o.clients {
		url := urls[i%len(urls)]
		fresh := o.freshOdd && i%2 == 1
		hc := shared
		if fresh {
			hc = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
		}
		l.wg.Go(func() {
			defer hc.CloseIdleConnections()
			for {
				select {
				case <-l.done:
					return
				default:
				}
				if fresh {
					l.fresh.Add(1)
				}
				resp, err := hc.Get(url)
				if err == nil {
					body, rerr := io.ReadAll(resp.Body)
					resp.Body.Close()
					switch {
					case rerr != nil:
						err = fmt.Errorf("%s: status %d, reading the body: %v", url, resp.StatusCode, rerr)
					case resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(o.body)):
						l.served.Add(1)
						continue
					default:
						err = fmt.Errorf("%s: status %d: %s", url, resp.StatusCode, body)
					}
				}
				l.mu.Lock()
				l.failed = append(l.failed, time.Now().Format("15:04:05.000")+" "+err.Error())
				l.mu.Unlock()
			}
		})
	}
	return l
}

// waitServed polls until n more requests were answered.
func (l *load) waitServed(t *testing.T, n int64) {
	t.Helper()
	want := l.served.Load() + n
	waitFor(t, 30*time.Second, fmt.Sprintf("%d more proxied requests", n), func() bool { return l.served.Load() >= want })
}

// stop ends the load and returns what it served and its failures.
func (l *load) stop() (int64, []string) {
	close(l.done)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.served.Load(), l.failed
}
