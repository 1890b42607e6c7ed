package health

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imagelb/caddy-imagelb/registry"
)

// rawServer is a TCP server on 127.0.0.1 that is not an HTTP server: each
// connection is handed to serve. It counts the connections it accepted.
type rawServer struct {
	net.Listener
	accepted atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
}

func newRawServer(t testing.TB, serve func(net.Conn)) *rawServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{Listener: l}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns = append(s.conns, conn)
			s.mu.Unlock()
			wg.Go(func() { serve(conn) })
		}
	})
	t.Cleanup(func() {
		l.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		wg.Wait()
	})
	return s
}

func (s *rawServer) port() int { return s.Addr().(*net.TCPAddr).Port }

// tarpit reads what it is sent and never answers.
func tarpit(conn net.Conn) { _, _ = io.Copy(io.Discard, conn) }

// answer returns a server function that reads the request's first bytes,
// writes reply and, if hang, keeps the connection open without more.
func answer(reply string, hang bool) func(net.Conn) {
	return func(conn net.Conn) {
		buf := make([]byte, 4096)
		_, _ = conn.Read(buf)
		_, _ = io.WriteString(conn, reply)
		if hang {
			_, _ = io.Copy(io.Discard, conn)
			return
		}
		conn.Close()
	}
}

// TestErrorTextIsFixed: last_health_error says what failed in fixed words,
// never the bytes a peer sent nor Go's error text quoting them (issue 24,
// row 6: a port scan read banners through it).
func TestErrorTextIsFixed(t *testing.T) {
	const secret = "internal-db-host"
	tests := []struct {
		name  string
		serve func(net.Conn)
		want  string
	}{
		{name: "a banner", serve: answer(secret+" ready\r\n", false), want: "not HTTP"},
		{name: "a banner, then silence", serve: answer(secret+" ready\r\n", true), want: "not HTTP"},
		{name: "a bad status code", serve: answer("HTTP/1.1 "+secret+" OK\r\n\r\n", false), want: "not HTTP"},
		{name: "a bad header", serve: answer("HTTP/1.1 200 OK\r\n"+secret+"\r\n\r\n", false), want: "not HTTP"},
		{name: "closed without a word", serve: answer("", false), want: "connection closed without an answer"},
		{name: "reset", serve: func(c net.Conn) {
			_ = c.(*net.TCPConn).SetLinger(0)
			buf := make([]byte, 4096)
			_, _ = c.Read(buf)
			c.Close()
		}, want: "connection reset"},
		{name: "accepts and never answers", serve: tarpit, want: "timeout: no answer within 300ms"},
		{name: "headers, then a body that never ends", serve: answer("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"+secret, true),
			want: "timeout: no answer within 300ms"},
		{name: "a 503 with a body", serve: answer("HTTP/1.1 503 "+secret+"\r\nContent-Length: 16\r\n\r\n"+secret, false),
			want: "status 503 from /health (expected 200-299)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newRawServer(t, tt.serve)
			reg := registry.New(registry.Options{})
			register(t, reg, 7, ctrAt("c", srv.port(), registry.StatusHealthy))
			c, _, _ := newChecker(t, reg, Config{Timeout: 300 * time.Millisecond})
			rep := checkNow(t, c, 0)
			if len(rep.Results) != 1 || rep.Results[0].Error == nil {
				t.Fatalf("report %+v, want one failed check", rep)
			}
			got := *rep.Results[0].Error
			if got != tt.want {
				t.Errorf("error %q, want %q", got, tt.want)
			}
			if _, last := container(t, reg, 7, "c").Stats.Health(); last != got {
				t.Errorf("last_health_error %q, want %q", last, got)
			}
			if strings.Contains(got, secret) || strings.Contains(got, "127.0.0.1") {
				t.Errorf("error %q shows what the peer sent or its address", got)
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		reg := registry.New(registry.Options{})
		register(t, reg, 7, ctrAt("c", closedPort(t), registry.StatusHealthy))
		c, _, _ := newChecker(t, reg, Config{})
		rep := checkNow(t, c, 0)
		if got := *rep.Results[0].Error; got != "connection refused" {
			t.Errorf("error %q, want %q", got, "connection refused")
		}
	})
}

// TestTarpitsDoNotStarveHealthyChecks: 1,000 containers on a port that
// accepts connections and never answers take every check slot for the
// whole timeout, round after round; a healthy container is still checked
// at its interval (issue 24, row 8: its checks went from every 30s to
// every 91s). By design a due check of a container that answers quickly
// waits at most one Timeout for a slot, so its checks are at most
// Interval + Timeout apart; the test asks for 5 checks within 10s, where
// the old rounds, waiting for the slowest, managed one in 125s.
func TestTarpitsDoNotStarveHealthyChecks(t *testing.T) {
	const tarpits, slots = 1000, 8
	cfg := Config{Interval: 200 * time.Millisecond, Timeout: time.Second, MaxConcurrent: slots}
	healthy := newBackend(t, 200)
	pit := newRawServer(t, tarpit)
	reg := registry.New(registry.Options{})
	register(t, reg, 1, ctrAt("healthy", healthy.port(), registry.StatusHealthy))
	c, _, _ := newChecker(t, reg, cfg)
	c.Start()
	eventually(t, "the healthy container's first check", func() bool { return healthy.hits.Load() >= 1 })

	for img := range 10 {
		var cs []registry.ContainerSpec
		for i := range tarpits / 10 {
			cs = append(cs, ctrAt(fmt.Sprintf("pit-%d-%d", img, i), pit.port(), registry.StatusHealthy))
		}
		register(t, reg, int64(img+2), cs...)
	}
	c.Wake()
	eventually(t, "the tarpits taking every slot", func() bool { return pit.accepted.Load() >= 2*slots })
	from := healthy.hits.Load()
	eventually(t, "5 more checks of the healthy container", func() bool { return healthy.hits.Load() >= from+5 })
	if got := statusOf(t, reg, 1, "healthy"); got != registry.StatusHealthy {
		t.Errorf("healthy container is %s", got)
	}
	t.Logf("tarpit connections: %d", pit.accepted.Load())
}

// TestTarpitsDoNotStarveStartingContainers: a container registered
// starting (one started for waiting requests) is checked about every
// second until it passes; with every slot held by tarpits it used to find
// none free, round after round, and waited for the next round.
func TestTarpitsDoNotStarveStartingContainers(t *testing.T) {
	const tarpits, slots = 1000, 8
	pit := newRawServer(t, tarpit)
	reg := registry.New(registry.Options{})
	for img := range 10 {
		var cs []registry.ContainerSpec
		for i := range tarpits / 10 {
			cs = append(cs, ctrAt(fmt.Sprintf("pit-%d-%d", img, i), pit.port(), registry.StatusHealthy))
		}
		register(t, reg, int64(img+2), cs...)
	}
	c, _, _ := newChecker(t, reg, Config{Interval: time.Hour, Timeout: time.Second, MaxConcurrent: slots})
	c.Start()
	eventually(t, "the tarpits taking every slot", func() bool { return pit.accepted.Load() >= 2*slots })

	b := newBackend(t, 200)
	began := time.Now()
	register(t, reg, 1, ctrAt("new", b.port(), registry.StatusStarting))
	eventually(t, "the starting container healthy", func() bool {
		return statusOf(t, reg, 1, "new") == registry.StatusHealthy
	})
	t.Logf("healthy after %s", time.Since(began))
}
