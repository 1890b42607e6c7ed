package imagelb

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// uploadBackend is a container that tells when a request has reached it
// (before it reads the body), then reads the body and answers, or closes
// the connection when the body is broken; /hold answers only when the
// client's request ends.
func uploadBackend(t *testing.T, name string, arrived chan<- string) *backend {
	t.Helper()
	return funcBackend(t, name, func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- name:
		default:
		}
		if r.URL.Path == "/hold" {
			<-r.Context().Done()
			return
		}
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			panic(http.ErrAbortHandler) // the harshest answer: the connection closes, no response
		}
		w.WriteHeader(http.StatusOK)
	})
}

// rawRequest writes payload on a new connection to addr; with halfClose it
// then closes its writing side, as a client whose body ended early does.
// It returns the status of the answer, 0 when there is none.
func rawRequest(t *testing.T, addr, payload string, halfClose bool) int {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second)) // a bound, not a wait
	if _, err := io.WriteString(conn, payload); err != nil {
		t.Fatalf("writing the request: %v", err)
	}
	if halfClose {
		_ = conn.(*net.TCPConn).CloseWrite()
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// abandon sends the start of a request on a new connection, waits until the
// request reached a container, and closes the connection.
func abandon(t *testing.T, addr, payload string, arrived <-chan string) {
	t.Helper()
	for len(arrived) > 0 {
		<-arrived // earlier requests
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, payload); err != nil {
		t.Fatalf("writing the request: %v", err)
	}
	select {
	case <-arrived:
	case <-time.After(10 * time.Second): // a bound, not a wait
		t.Fatal("the request never reached a container")
	}
	conn.Close()
}

// TestClientErrorsAreNotContainerFailures sends each kind of broken client
// request to an image whose passive checks and outlier ejection are as eager
// as they can be (one failure ejects): the client's fault ejects nothing,
// counts no failure, and every normal request meanwhile is served.
func TestClientErrorsAreNotContainerFailures(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tmax_fails 1\n\t\tmax_retries 3"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	arrived := make(chan string, 1)
	a, b := uploadBackend(t, "a", arrived), uploadBackend(t, "b", arrived)
	registerObject(t, site, 120, map[string]any{
		"containers": []map[string]any{container("a", a), container("b", b)},
		"outlier":    map[string]any{"consecutive_failures": 1, "max_ejected_percent": 100},
	})
	post := func(path, headers, body string) string {
		return fmt.Sprintf("POST /api/v1/proxy/120%s HTTP/1.1\r\nHost: %s\r\n%s\r\n%s", path, addr, headers, body)
	}
	tests := []struct {
		name string
		send func(t *testing.T) int // the status the client got, 0: none
		want int
		or   int // another status the client may get
	}{
		{name: "bad chunk size", want: http.StatusBadRequest, send: func(t *testing.T) int {
			return rawRequest(t, addr, post("/x", "Transfer-Encoding: chunked\r\n", "zz\r\n"), false)
		}},
		// the half-closed connection looks like a client that went away,
		// which reverse_proxy may notice first: 499
		{name: "body shorter than its Content-Length", want: http.StatusBadRequest, or: 499, send: func(t *testing.T) int {
			return rawRequest(t, addr, post("/x", "Content-Length: 100\r\n", "0123456789"), true)
		}},
		{name: "client closes mid-upload", want: 0, send: func(t *testing.T) int {
			abandon(t, addr, post("/x", "Content-Length: 100000\r\n", "0123456789"), arrived)
			return 0
		}},
		{name: "client closes while waiting for the answer", want: 0, send: func(t *testing.T) int {
			abandon(t, addr, "GET /api/v1/proxy/120/hold HTTP/1.1\r\nHost: "+addr+"\r\n\r\n", arrived)
			return 0
		}},
		{name: "oversized header", want: http.StatusRequestHeaderFieldsTooLarge, send: func(t *testing.T) int {
			return rawRequest(t, addr, "GET /api/v1/proxy/120/x HTTP/1.1\r\nHost: "+addr+"\r\nX-Big: "+strings.Repeat("a", 2<<20)+"\r\n\r\n", false)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := serviceStats(t, 120)
			for i := 0; i < 4; i++ { // round robin: each container gets it twice
				if got := tt.send(t); got != tt.want && (tt.or == 0 || got != tt.or) {
					t.Fatalf("attempt %d: the client got %d, want %d", i, got, tt.want)
				}
				// a normal request meanwhile is served
				mustDo(t, "POST", site+"/api/v1/proxy/120/ok", "fine", 200, nil)
			}
			eventually(t, "the broken requests settled", func() bool { return serviceStats(t, 120).ActiveConnections == 0 })
			after := serviceStats(t, 120)
			if after.FailedRequests != before.FailedRequests {
				t.Errorf("failed requests went from %d to %d", before.FailedRequests, after.FailedRequests)
			}
			for _, id := range []string{"a", "b"} {
				if s, _ := containerStatus(t, 120, id); s != "healthy" {
					t.Errorf("container %s is %s", id, s)
				}
				if c := after.container(t, id); c.Ejected || c.FailedRequests != before.container(t, id).FailedRequests {
					t.Errorf("container %s: ejected %v, failed requests %d (were %d)", id, c.Ejected, c.FailedRequests, before.container(t, id).FailedRequests)
				}
			}
		})
	}
}

// TestContainerFailuresStillCount: against the client errors above, a
// container that refuses connections and one that hangs past timeout are
// still ejected by the passive check.
func TestContainerFailuresStillCount(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tmax_fails 1\n\t\tmax_retries 0\n\t\ttimeout 1s"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	t.Run("refused connection", func(t *testing.T) {
		register(t, site+"/api/v1", 121, "", map[string]any{"container_id": "dead", "port": freePort(t)})
		wantError(t, "GET", site+"/api/v1/proxy/121/x", "", http.StatusBadGateway, "every attempt")
		if s, _ := containerStatus(t, 121, "dead"); s != "unhealthy" {
			t.Fatalf("a container that refuses connections is %s", s)
		}
	})
	t.Run("hangs past timeout", func(t *testing.T) {
		hung, release := holdBackend(t, "hung")
		defer release()
		register(t, site+"/api/v1", 122, "", container("hung", hung))
		wantError(t, "GET", site+"/api/v1/proxy/122/slow", "", http.StatusGatewayTimeout, "did not answer within")
		if s, _ := containerStatus(t, 122, "hung"); s != "unhealthy" {
			t.Fatalf("a container that hangs past timeout is %s", s)
		}
	})
}

// TestDefaultMaxFails: by default a container is ejected by its third
// failed attempt within fail_duration, not its first, and retries hide the
// failures from clients.
func TestDefaultMaxFails(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tmax_retries 3"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	live := newBackend(t, "live")
	register(t, site+"/api/v1", 123, "", map[string]any{"container_id": "dead", "port": freePort(t)}, container("live", live))
	attempts := func() int64 { return serviceStats(t, 123).container(t, "dead").TotalRequests }
	for n := int64(1); n <= 3; n++ {
		for attempts() < n {
			if got := proxyGet(t, site, 123, "/").Backend; got != "live" {
				t.Fatalf("answered by %q", got)
			}
		}
		s, _ := containerStatus(t, 123, "dead")
		if want := map[bool]string{true: "unhealthy", false: "healthy"}[n == 3]; s != want {
			t.Fatalf("after %d failed attempts the container is %s, want %s", n, s, want)
		}
	}

	// A lone container gets every retry of a request, but one request
	// counts against it once: it takes three requests to eject it.
	register(t, site+"/api/v1", 126, "", map[string]any{"container_id": "alone", "port": freePort(t)})
	for n := 1; n <= 3; n++ {
		wantError(t, "GET", site+"/api/v1/proxy/126/", "", http.StatusBadGateway, "every attempt")
		s, _ := containerStatus(t, 126, "alone")
		if want := map[bool]string{true: "unhealthy", false: "healthy"}[n == 3]; s != want {
			t.Fatalf("after %d requests, each retried, the container is %s, want %s", n, s, want)
		}
	}
}

// TestClientErrorsOnOrdinarySite: through "dynamic imagelb" on an ordinary
// site, a broken body is not held against the container either.
func TestClientErrorsOnOrdinarySite(t *testing.T) {
	port, rpPort := freePort(t), freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tmax_fails 1")+fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy {
		dynamic imagelb 124
		lb_policy imagelb
	}
}
`, rpPort))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	rpAddr := fmt.Sprintf("127.0.0.1:%d", rpPort)
	arrived := make(chan string, 1)
	a := uploadBackend(t, "a", arrived)
	register(t, site+"/api/v1", 124, "", container("a", a))
	for i := 0; i < 3; i++ {
		rawRequest(t, rpAddr, "POST /x HTTP/1.1\r\nHost: "+rpAddr+"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false)
	}
	eventually(t, "the broken requests settled", func() bool { return serviceStats(t, 124).ActiveConnections == 0 })
	if s, _ := containerStatus(t, 124, "a"); s != "healthy" {
		t.Fatalf("container a is %s", s)
	}
	if st := serviceStats(t, 124); st.FailedRequests != 0 || st.TotalRequests != 3 {
		t.Fatalf("%d requests, %d failed; want 3 and 0", st.TotalRequests, st.FailedRequests)
	}
	mustDo(t, "GET", "http://"+rpAddr+"/ok", nil, 200, nil)
}
