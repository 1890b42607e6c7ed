package imagelb

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// hostileConfig is a site like production's: the server times out clients
// that are slow to send their headers, and requests the imagelb handler does
// not own get a recognisable 404 from the next handler.
func hostileConfig(port int) string {
	return fmt.Sprintf(`{
	admin localhost:2999
	servers {
		timeouts {
			read_header 2s
			idle 1m
		}
	}
	imagelb {
		health_interval 1h
	}
}
http://127.0.0.1:%d {
	imagelb
	respond "not proxied" 404
}
`, port)
}

// hostileResponse is one response read off a raw connection.
type hostileResponse struct {
	status int
	body   string
}

// hostileExchange writes payload on a new TCP connection to addr, then reads
// every response until the server closes the connection. end is how the
// connection ended (io.EOF for a clean close).
func hostileExchange(t *testing.T, addr, payload string) (resps []hostileResponse, end error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// a bound on a server that keeps waiting, not a wait: every payload ends
	// in a request with Connection: close or in one the server rejects
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, payload); err != nil {
		t.Fatalf("writing the request: %v", err)
	}
	br := bufio.NewReader(conn)
	for {
		if _, err := br.Peek(1); err != nil {
			return resps, err // http.ReadResponse would turn a clean close into io.ErrUnexpectedEOF
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return resps, err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		resps = append(resps, hostileResponse{resp.StatusCode, string(body)})
		if err != nil {
			return resps, err
		}
	}
}

// TestSlowHeaderClients holds 200 connections that never finish their
// request headers (slowloris): normal requests are still served, and the
// server's read_header timeout closes every slow connection.
func TestSlowHeaderClients(t *testing.T) {
	port := freePort(t)
	startCaddy(t, hostileConfig(port))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	site := "http://" + addr
	b := newBackend(t, "a")
	register(t, site+"/api/v1", 1, "", container("a", b))

	partial := func(i int) string {
		return fmt.Sprintf("GET /api/v1/proxy/1/held-%d/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", i)
	}
	// The partial request is the start of a valid one: finished, it is
	// proxied. So the slow connections below are closed for being slow, not
	// for what they sent.
	ctl := dialPartial(t, addr, partial(0)+"1\r\nConnection: close\r\n\r\n")
	_ = ctl.SetReadDeadline(time.Now().Add(10 * time.Second)) // a bound, not a wait
	resp, err := http.ReadResponse(bufio.NewReader(ctl), nil)
	if err != nil {
		t.Fatalf("completed request: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "a" {
		t.Fatalf("completed request: status %d, X-Backend %q", resp.StatusCode, resp.Header.Get("X-Backend"))
	}

	// the slow clients: each connection sends part of its headers, then
	// only reads; a reader per connection reports how it ended
	const slow = 200
	type ending struct {
		got []byte
		err error
		at  time.Time
	}
	endings := make([]chan ending, slow)
	for i := range slow {
		conn := dialPartial(t, addr, partial(i+1))
		endings[i] = make(chan ending, 1)
		go func(ch chan<- ending) {
			// a bound for a server that never closes; eventually below
			// gives up long before it
			_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			got, err := io.ReadAll(conn)
			if err == nil {
				err = io.EOF // ReadAll reports a clean close as no error
			}
			ch <- ending{got, err, time.Now()}
		}(endings[i])
	}
	// one more slow client, finished after the normal traffic: its answer
	// shows that the server was still holding the slow connections open
	// (a server that dropped them at once would pass the rest vacuously)
	probe := dialPartial(t, addr, partial(slow+1))
	openedAt := time.Now()

	// normal traffic while the slow connections are held
	fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	t.Cleanup(fresh.CloseIdleConnections)
	for i := range 50 {
		resp, err := fresh.Get(fmt.Sprintf("%s/api/v1/proxy/1/normal-%d", site, i))
		if err != nil {
			t.Fatalf("normal request %d while %d slow connections are held: %v", i, slow, err)
		}
		var e echo
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 200 || err != nil || e.Path != fmt.Sprintf("/normal-%d", i) {
			t.Fatalf("normal request %d: status %d, %+v, %v", i, resp.StatusCode, e, err)
		}
	}
	normalDone := time.Now()

	// This relies on the 50 requests taking less than read_header (2s);
	// they take about 0.1s under -race.
	if _, err := io.WriteString(probe, "1\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatalf("finishing a held request: %v", err)
	}
	_ = probe.SetReadDeadline(time.Now().Add(10 * time.Second)) // a bound, not a wait
	resp, err = http.ReadResponse(bufio.NewReader(probe), nil)
	if err != nil {
		t.Fatalf("a held request, finished after the normal traffic (%v after the slow connections opened): %v",
			normalDone.Sub(openedAt), err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "a" {
		t.Fatalf("a held request, finished: status %d, X-Backend %q", resp.StatusCode, resp.Header.Get("X-Backend"))
	}

	// every slow connection is closed by the server: a clean close or a
	// reset, possibly after a 408 (Go 1.26 sends none: it hangs up on a
	// header read timeout without answering); never our own deadline,
	// never another answer (a 400 would mean the partial request was
	// refused for its content, not for being slow)
	results := make([]ending, slow)
	got := 0
	eventually(t, "every slow connection closed by the server", func() bool {
		for got < slow {
			select {
			case results[got] = <-endings[got]:
				got++
			default:
				return false
			}
		}
		return true
	})
	closedEarly, with408 := 0, 0
	for i, r := range results {
		if !errors.Is(r.err, io.EOF) && !errors.Is(r.err, syscall.ECONNRESET) {
			t.Errorf("slow connection %d ended with %v, want the server closing it", i, r.err)
		}
		if len(r.got) > 0 {
			if !bytes.HasPrefix(r.got, []byte("HTTP/1.1 408 ")) {
				t.Errorf("slow connection %d got %q, want nothing or a 408", i, r.got)
			}
			with408++
		}
		if r.at.Before(normalDone) {
			closedEarly++
		}
	}
	t.Logf("%d slow connections held during %v of normal traffic; %d closed before it ended; %d answered 408 before closing",
		slow, normalDone.Sub(openedAt).Round(time.Millisecond), closedEarly, with408)
}

// dialPartial opens a connection and sends the start of a request.
func dialPartial(t *testing.T, addr, partial string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, partial); err != nil {
		t.Fatal(err)
	}
	return conn
}

// pathRecorder is a backend on 127.0.0.1 that records every request it gets
// and answers with its method and path.
type pathRecorder struct {
	port int
	mu   sync.Mutex
	reqs []seenRequest
}

// seenRequest is what a pathRecorder saw of one request.
type seenRequest struct {
	method, path, body string
}

func newPathRecorder(t *testing.T) *pathRecorder {
	t.Helper()
	rec := &pathRecorder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, seenRequest{r.Method, r.URL.Path, string(body)})
		rec.mu.Unlock()
		fmt.Fprintf(w, "backend saw %s %s", r.Method, r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	rec.port = srv.Listener.Addr().(*net.TCPAddr).Port
	return rec
}

// matching returns the requests whose path contains s, in arrival order.
func (rec *pathRecorder) matching(s string) []seenRequest {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var out []seenRequest
	for _, r := range rec.reqs {
		if strings.Contains(r.path, s) {
			out = append(out, r)
		}
	}
	return out
}

// TestRequestSmuggling sends classic request smuggling payloads to the site,
// each on its own connection, and checks, byte for byte, what Caddy (Go's
// HTTP/1.1 server) answers and what the container receives: every request
// Caddy parses reaches the container once, re-framed, and no request hidden
// in a body ever does.
//
// What Go 1.26 does, observed: Transfer-Encoding: chunked wins over
// Content-Length (the Content-Length is dropped, RFC 9112 section 6.3); two
// different Content-Lengths are a 400; a Transfer-Encoding other than exactly
// one "chunked" (case-insensitive) is a 501; whitespace before the colon, a
// header line starting with whitespace (as the first header), and bare CR or
// vertical tab are a 400; a bare LF ends a line, and an obs-fold continuation
// line is joined to its header.
func TestRequestSmuggling(t *testing.T) {
	port := freePort(t)
	startCaddy(t, hostileConfig(port))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	rec := newPathRecorder(t)
	register(t, "http://"+addr+"/api/v1", 5, "", map[string]any{"container_id": "rec", "host": "127.0.0.1", "port": rec.port})

	const proxy = "/api/v1/proxy/5"
	const host = "Host: 127.0.0.1\r\n" // the site's host: others get Caddy's empty 200
	// inner is a complete request to the proxy: it reaches the container
	// if Caddy ever parses it as a request of its own
	inner := func(name string) string {
		return "GET " + proxy + "/smuggled-" + name + " HTTP/1.1\r\n" + host + "\r\n"
	}
	// chunk wraps data in one chunk and the last chunk. "NN\r\n" is exactly
	// 4 bytes for 16 <= len(data) < 256, so a parser that honours
	// Content-Length: 4 instead of the chunking takes data for the next
	// request.
	chunk := func(data string) string {
		if len(data) < 16 || len(data) > 255 {
			t.Fatalf("chunk: %d bytes of data, want 16-255", len(data))
		}
		return fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(data), data)
	}
	// teCL is a request framed by Content-Length: 4 and the given
	// Transfer-Encoding header line(s), whose chunked body carries inner.
	teCL := func(name, teLines string) string {
		return "POST " + proxy + "/" + name + "/x HTTP/1.1\r\n" + host + "Content-Length: 4\r\n" + teLines + "\r\n" + chunk(inner(name))
	}
	// closer ends every payload: the next handler answers it and the
	// server hangs up, so reading ends once the server has answered all it
	// parsed
	const closer = "GET /end HTTP/1.1\r\n" + host + "Connection: close\r\n\r\n"
	const notProxied = "404 not proxied" // the next handler's answer

	type answer = string // "status body"
	cases := []struct {
		name    string
		payload string
		// want is every answer on the connection, in order
		want []answer
		// body is what the container gets as the body of the attack request
		body string
		// clte: the request has both Content-Length and chunked
		// Transfer-Encoding and is served by the chunked framing. RFC 9112
		// section 6.1 says the server MUST then close the connection after
		// answering; Go 1.26 does not (golang/go#80942) and goes on with
		// the next request. A Go that does stops after want[0].
		clte bool
	}{{
		// CL.TE: a Content-Length parser would take the trailing request
		// as body (and wait for 10 more bytes). Go uses the chunking: the
		// body is empty and GET /smuggled is the client's next request,
		// answered by the next handler, never proxied.
		name:    "cl-te",
		payload: "POST " + proxy + "/cl-te/x HTTP/1.1\r\n" + host + "Content-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + host + "\r\n",
		want:    []answer{"200 backend saw POST /cl-te/x", notProxied, notProxied},
		clte:    true,
	}, {
		// CL.TE with an exact Content-Length and the trailing request aimed
		// at the proxy: by the chunked framing that is the client's second
		// request, and it is proxied as such, once, in its own right.
		name: "cl-te-pipelined",
		payload: func() string {
			body := "0\r\n\r\nGET " + proxy + "/cl-te-pipelined/second HTTP/1.1\r\n" + host + "\r\n"
			return fmt.Sprintf("POST %s/cl-te-pipelined/x HTTP/1.1\r\n%sContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%s", proxy, host, len(body), body)
		}(),
		want: []answer{"200 backend saw POST /cl-te-pipelined/x", "200 backend saw GET /cl-te-pipelined/second", notProxied},
		clte: true,
	}, {
		// TE.CL: the chunk holds a request that a Content-Length parser
		// would see; Go forwards it as the body
		name: "te-cl", payload: teCL("te-cl", "Transfer-Encoding: chunked\r\n"),
		want: []answer{"200 backend saw POST /te-cl/x", notProxied}, body: inner("te-cl"), clte: true,
	}, {
		// two different Content-Lengths: the first would end the body
		// before the smuggled request
		name:    "dup-cl",
		payload: fmt.Sprintf("POST %s/dup-cl/x HTTP/1.1\r\n%sContent-Length: 0\r\nContent-Length: %d\r\n\r\n%s", proxy, host, len(inner("dup-cl")), inner("dup-cl")),
		want:    []answer{"400 400 Bad Request"},
	}, {
		// Transfer-Encoding obfuscations, each with Content-Length: 4: a
		// parser that ignores the obfuscated header would smuggle inner
		name: "te-space-before-colon", payload: teCL("te-space-before-colon", "Transfer-Encoding : chunked\r\n"),
		want: []answer{"400 400 Bad Request: invalid header name"},
	}, {
		name: "te-xchunked", payload: teCL("te-xchunked", "Transfer-Encoding: xchunked\r\n"),
		want: []answer{"501 Unsupported transfer encoding"},
	}, {
		name: "te-list", payload: teCL("te-list", "Transfer-Encoding: chunked, identity\r\n"),
		want: []answer{"501 Unsupported transfer encoding"},
	}, {
		name: "te-two-headers", payload: teCL("te-two-headers", "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"),
		want: []answer{"501 Unsupported transfer encoding"},
	}, {
		name: "te-vertical-tab", payload: teCL("te-vertical-tab", "Transfer-Encoding:\x0bchunked\r\n"),
		want: []answer{"400 400 Bad Request"},
	}, {
		// a header line starting with a space right after the request
		// line (Host comes after it here)
		name:    "te-leading-space",
		payload: "POST " + proxy + "/te-leading-space/x HTTP/1.1\r\n Transfer-Encoding: chunked\r\n" + host + "Content-Length: 4\r\n\r\n" + chunk(inner("te-leading-space")),
		want:    []answer{"400 400 Bad Request"},
	}, {
		// variants Go reads as chunked, consistently: the chunk is the body
		name: "te-tab", payload: teCL("te-tab", "Transfer-Encoding:\tchunked\r\n"),
		want: []answer{"200 backend saw POST /te-tab/x", notProxied}, body: inner("te-tab"), clte: true,
	}, {
		name: "te-upper-case", payload: teCL("te-upper-case", "Transfer-Encoding: CHUNKED\r\n"),
		want: []answer{"200 backend saw POST /te-upper-case/x", notProxied}, body: inner("te-upper-case"), clte: true,
	}, {
		name: "te-obs-fold", payload: teCL("te-obs-fold", "Transfer-Encoding:\r\n chunked\r\n"),
		want: []answer{"200 backend saw POST /te-obs-fold/x", notProxied}, body: inner("te-obs-fold"), clte: true,
	}, {
		// bare LF line endings: accepted as line ends
		name:    "bare-lf",
		payload: "GET " + proxy + "/bare-lf/x HTTP/1.1\nHost: 127.0.0.1\n\n",
		want:    []answer{"200 backend saw GET /bare-lf/x", notProxied},
	}, {
		// a bare LF that separates Transfer-Encoding from the header
		// before it only for parsers that take it as a line end, as Go does
		name:    "bare-lf-te",
		payload: "POST " + proxy + "/bare-lf-te/x HTTP/1.1\r\n" + host + "Content-Length: 4\r\nX-Note: y\nTransfer-Encoding: chunked\r\n\r\n" + chunk(inner("bare-lf-te")),
		want:    []answer{"200 backend saw POST /bare-lf-te/x", notProxied}, body: inner("bare-lf-te"), clte: true,
	}, {
		// a bare CR likewise: refused
		name:    "bare-cr-te",
		payload: "POST " + proxy + "/bare-cr-te/x HTTP/1.1\r\n" + host + "Content-Length: 4\r\nX-Note: y\rTransfer-Encoding: chunked\r\n\r\n" + chunk(inner("bare-cr-te")),
		want:    []answer{"400 400 Bad Request"},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resps, end := hostileExchange(t, addr, tc.payload+closer)
			var got []answer
			for _, r := range resps {
				got = append(got, fmt.Sprintf("%d %s", r.status, r.body))
			}
			want := tc.want
			if tc.clte && len(got) == 1 {
				want = want[:1] // a Go that closes after CL+TE (golang/go#80942)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("answers %q, want %q", got, want)
			}
			// the server, not our deadline, ended the connection
			if !errors.Is(end, io.EOF) {
				t.Fatalf("connection ended with %v, want the server closing it", end)
			}
			// the container got exactly the requests Caddy proxied: one per
			// proxied answer, in order, nothing more
			var wantSeen []string
			for _, a := range got {
				if m, ok := strings.CutPrefix(a, "200 backend saw "); ok {
					wantSeen = append(wantSeen, m)
				}
			}
			seen := rec.matching("/" + tc.name + "/")
			var gotSeen []string
			for _, r := range seen {
				gotSeen = append(gotSeen, r.method+" "+r.path)
			}
			if !slices.Equal(gotSeen, wantSeen) {
				t.Fatalf("the container got %q, want %q", gotSeen, wantSeen)
			}
			if len(seen) > 0 && seen[0].body != tc.body {
				t.Fatalf("the container got the body %q, want %q", seen[0].body, tc.body)
			}
		})
	}
	if got := rec.matching("smuggled"); len(got) != 0 {
		t.Fatalf("the container received smuggled requests: %+v", got)
	}
}

// TestOversizedAndHostileInput sends oversized and hostile input to both
// mounts of the management API and to the proxy: each gets its 4xx with a
// JSON detail (or Go's own 431), nothing reaches the container, and the
// registry is unchanged.
func TestOversizedAndHostileInput(t *testing.T) {
	port := freePort(t)
	startCaddy(t, hostileConfig(port))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	site := "http://" + addr
	rec := newPathRecorder(t)
	register(t, adminURL+"/imagelb", 7, "", map[string]any{"container_id": "rec", "host": "127.0.0.1", "port": rec.port})
	if status, body := do(t, "GET", site+"/api/v1/proxy/7/warm-up", nil); status != 200 {
		t.Fatalf("proxy before the hostile input: %d %s", status, body)
	}
	before := registrySnapshot(t)

	longID := strings.Repeat("c", 256)
	cases := []struct {
		name, method, path, body string
		status                   int
		detail                   string
	}{
		{"2 MiB body", "POST", "/services/7/register?image_name=x",
			`[{"container_id":"big","port":1,"name":"` + strings.Repeat("n", 2<<20) + `"}]`, 413, "larger than the limit of 1048576 bytes"},
		{"arrays nested 100000 deep, unterminated", "POST", "/services/7/register?image_name=x", strings.Repeat("[", 100000), 422, "exceeded max depth"},
		{"arrays nested 100000 deep", "POST", "/services/7/register?image_name=x", strings.Repeat("[", 100000) + strings.Repeat("]", 100000), 422, "exceeded max depth"},
		{"objects nested 100000 deep", "POST", "/services/7/register?image_name=x", strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000), 422, "exceeded max depth"},
		{"container nested 100000 deep", "PUT", "/services/7/containers/rec", strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000), 422, "exceeded max depth"},
		{"container_id of 256 characters", "POST", "/services/7/register?image_name=x", fmt.Sprintf(`[{"container_id":%q,"port":%d}]`, longID, rec.port), 422, "container_id is longer than 255 characters"},
		{"container_id of 256 characters in the path", "PUT", "/services/7/containers/" + longID, fmt.Sprintf(`{"port":%d}`, rec.port), 422, "container_id is longer than 255 characters"},
		{"image_id beyond int64 in register", "POST", "/services/99999999999999999999/register?image_name=x", `[]`, 422, "positive integer"},
		{"image_id beyond int64", "GET", "/services/99999999999999999999", ``, 422, "positive integer"},
	}
	mounts := map[string]string{"admin": adminURL + "/imagelb", "site": site + "/api/v1"}
	for mount, base := range mounts {
		for _, tc := range cases {
			t.Run(mount+"/"+tc.name, func(t *testing.T) {
				wantError(t, tc.method, base+tc.path, tc.body, tc.status, tc.detail)
			})
		}
	}
	t.Run("site/proxy image_id beyond int64", func(t *testing.T) {
		var e struct {
			Detail []struct {
				Loc []any  `json:"loc"`
				Msg string `json:"msg"`
			} `json:"detail"`
		}
		mustDo(t, "GET", site+"/api/v1/proxy/99999999999999999999/x", nil, 422, &e)
		if len(e.Detail) != 1 || !strings.Contains(e.Detail[0].Msg, "positive integer") || fmt.Sprint(e.Detail[0].Loc) != "[path image_id]" {
			t.Fatalf("detail %+v", e.Detail)
		}
	})

	// 2 MB of request headers, as many headers or as one: Go's server
	// answers 431 itself (Caddy caps headers at 16 KiB by default, its admin
	// endpoint at 64 KiB) and the request never reaches a handler
	filler := strings.Repeat("f", 100)
	var many strings.Builder
	for i := 0; many.Len() < 2_000_000; i++ {
		fmt.Fprintf(&many, "X-Filler-%d: %s\r\n", i, filler)
	}
	headerCases := []struct{ name, addr, path, headers string }{
		{"proxy/many headers", addr, "/api/v1/proxy/7/huge-headers-many", many.String()},
		{"proxy/one header", addr, "/api/v1/proxy/7/huge-headers-one", "X-Big: " + strings.Repeat("b", 2_000_000) + "\r\n"},
		{"admin/many headers", "localhost:2999", "/imagelb/services", many.String()},
	}
	for _, tc := range headerCases {
		t.Run(tc.name, func(t *testing.T) {
			host, _, _ := strings.Cut(tc.addr, ":")
			status, body := hugeHeaders(t, tc.addr, "GET "+tc.path+" HTTP/1.1\r\nHost: "+host+"\r\n"+tc.headers+"\r\n")
			if status != http.StatusRequestHeaderFieldsTooLarge || body != "431 Request Header Fields Too Large" {
				t.Fatalf("status %d, want 431: %q", status, body)
			}
		})
	}
	if got := rec.matching("huge-headers"); len(got) != 0 {
		t.Fatalf("the container received the oversized requests: %+v", got)
	}
	if after := registrySnapshot(t); !bytes.Equal(before, after) {
		t.Fatalf("registry changed:\nbefore %s\nafter  %s", before, after)
	}
}

// hugeHeaders sends a request whose header block is too large and returns
// the server's answer. The server answers before it has read everything,
// so the request is written while the answer is read.
func hugeHeaders(t *testing.T, addr, request string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	written := make(chan struct{})
	t.Cleanup(func() {
		conn.Close()
		<-written
	})
	go func() {
		defer close(written)
		_, _ = io.WriteString(conn, request) // fails once the server hangs up
	}()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // a bound, not a wait
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}
