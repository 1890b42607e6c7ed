package handoff

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/imagelb/caddy-imagelb/internal/testkit"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// TestMain keeps what caddytest writes out of the real XDG directories.
func TestMain(m *testing.M) { testkit.Main(m) }

var (
	freePort   = testkit.FreePort
	eventually = testkit.Eventually
)

// sameAddr is a second socket that claims the first one's address, as
// Caddy's reuseport listeners of one address do across a reload.
type sameAddr struct {
	net.Listener
	addr net.Addr
}

func (s sameAddr) Addr() net.Addr { return s.addr }

func listenHandoff(t *testing.T, addr net.Addr) *handoffListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if addr != nil {
		ln = sameAddr{ln, addr}
	}
	l := Handoff{}.WrapListener(ln).(*handoffListener)
	t.Cleanup(func() { l.Close() })
	return l
}

// TestHandoffMovesUnreadConnection: a connection the old server accepted but
// had not read when a newer server came up is answered by the newer server,
// and the old server reads end-of-file.
func TestHandoffMovesUnreadConnection(t *testing.T) {
	old := listenHandoff(t, nil)
	client, err := net.Dial("tcp", old.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := io.WriteString(client, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	accepted, err := old.Accept()
	if err != nil {
		t.Fatal(err)
	}

	newer := listenHandoff(t, old.Addr())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "newer server got "+r.URL.Path)
	})}
	go srv.Serve(newer)
	defer srv.Close()

	if n, err := accepted.Read(make([]byte, 4096)); n != 0 || err != io.EOF {
		t.Fatalf("old server's first read = %d, %v; want end-of-file", n, err)
	}
	accepted.Close() // what the old server does next; must not close the socket
	resp, err := http.ReadResponse(bufio.NewReader(client), nil)
	if err != nil {
		t.Fatal("client:", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "newer server got /x" {
		t.Fatalf("client got %q", body)
	}
}

// TestHandoffPendingUntilMovedOn: a connection whose first bytes the server
// read counts as pending (a newer listener waits for it) until the server's
// next step; a failed reload (the newer listener closing) makes the old one
// the newest again.
func TestHandoffPendingUntilMovedOn(t *testing.T) {
	old := listenHandoff(t, nil)
	client, err := net.Dial("tcp", old.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	io.WriteString(client, "ping")
	accepted, err := old.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// net/http peeks at a few bytes first: the connection stays pending
	// until the server has used up the client's first bytes and goes on
	buf := make([]byte, 16)
	if n, err := accepted.Read(buf[:2]); err != nil || string(buf[:n]) != "pi" {
		t.Fatalf("first read = %q, %v", buf[:n], err)
	}
	if n, err := accepted.Read(buf); err != nil || string(buf[:n]) != "ng" {
		t.Fatalf("second read = %q, %v", buf[:n], err)
	}
	if got := old.pending.Load(); got != 1 {
		t.Fatalf("pending after the first bytes were read = %d, want 1", got)
	}
	if _, err := io.WriteString(accepted, "pong"); err != nil {
		t.Fatal(err)
	}
	if got := old.pending.Load(); got != 0 {
		t.Fatalf("pending after a write = %d, want 0", got)
	}
	if n, err := io.ReadFull(client, buf[:4]); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("client read %q, %v", buf[:n], err)
	}

	failed := listenHandoff(t, old.Addr())
	if newestHandoff(old.key) != failed {
		t.Fatal("the newer listener is not the newest")
	}
	failed.Close()
	if newestHandoff(old.key) != old {
		t.Fatal("after the newer listener closed, the old one is not the newest again")
	}
}

// TestHandoffWithTLS: on an HTTPS site the wrapper works listed before tls
// (it hands off the raw connection, the TLS handshake and HTTP/2 happen in
// the server that gets it), and listed alone, where Caddy puts it after the
// handshake, it passes TLS connections through so HTTPS and HTTP/2 still work.
func TestHandoffWithTLS(t *testing.T) {
	for _, wrappers := range []string{"imagelb_handoff\n\t\t\ttls", "imagelb_handoff"} {
		t.Run(strings.ReplaceAll(wrappers, "\n\t\t\t", "+"), func(t *testing.T) {
			port := freePort(t)
			tester := caddytest.NewTester(t) // Caddy in this process, admin on localhost:2999
			tester.InitServer(fmt.Sprintf(`{
	admin localhost:2999
	skip_install_trust
	auto_https disable_redirects
	servers {
		listener_wrappers {
			%s
		}
	}
}
https://localhost:%d {
	tls internal
	respond "served over {http.request.scheme} {http.request.proto}"
}
`, wrappers, port), "caddyfile")
			if t.Failed() {
				t.FailNow()
			}
			hc := &http.Client{Transport: &http.Transport{
				TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // Caddy's internal CA; the test checks the wrapper, not the chain
				ForceAttemptHTTP2: true,
			}}
			defer hc.CloseIdleConnections()
			url := fmt.Sprintf("https://localhost:%d/", port)
			// the first issue of the internal CA's certificate takes well
			// over eventually's 10 s on a loaded machine under -race (55 s
			// seen at load 31, on main too): wait up to 2 minutes
			for deadline := time.Now().Add(2 * time.Minute); ; {
				resp, err := hc.Get(url)
				if err == nil {
					resp.Body.Close()
				}
				hc.CloseIdleConnections()
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the internal certificate was not issued within 2 minutes: %v", err)
				}
				time.Sleep(50 * time.Millisecond) // polling interval of a condition
			}
			for i := 0; i < 3; i++ {
				resp, err := hc.Get(url)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != "served over https HTTP/2.0" || resp.TLS == nil {
					t.Fatalf("status %d, body %q, TLS %v", resp.StatusCode, body, resp.TLS != nil)
				}
				hc.CloseIdleConnections() // a fresh connection each time
			}
		})
	}
}

// TestHandoffWrapsOncePerServer: the imagelb directive may list the wrapper
// more than once on one server (several imagelb sites); only the first one
// wraps an address, while the next server on the address (a reload) wraps
// it again.
func TestHandoffWrapsOncePerServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	old, reloaded := new(caddyhttp.Server), new(caddyhttp.Server)
	first := Handoff{server: old}.WrapListener(ln)
	t.Cleanup(func() { first.Close() })
	if again := (Handoff{server: old}).WrapListener(first); again != first {
		t.Fatalf("a second wrapper of the same server wrapped the listener again: %T", again)
	}
	next := Handoff{server: reloaded}.WrapListener(sameAddr{first, first.Addr()})
	t.Cleanup(func() { next.Close() })
	if _, ok := next.(*handoffListener); !ok || next == first {
		t.Fatalf("the next server's wrapper did not wrap: %T", next)
	}
}

// selfSigned is a certificate for 127.0.0.1, for a TLS server in a test.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestHandoffTLSPendingUntilResponse: a TLS connection stays pending (a
// newer listener waits for it before the old server is shut down) through
// the handshake and the read of its first request, until the server
// answers: Go's server drops a connection whose first request it reads
// after its shutdown began, and over TLS that read comes a round trip after
// the client's first bytes.
func TestHandoffTLSPendingUntilResponse(t *testing.T) {
	old := listenHandoff(t, nil)
	answered := make(chan error, 1)
	go func() {
		conn, err := tls.Dial("tcp", old.Addr().String(), &tls.Config{InsecureSkipVerify: true}) // a test certificate
		if err != nil {
			answered <- err
			return
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")); err != nil {
			answered <- err
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err == nil {
			resp.Body.Close()
		}
		answered <- err
	}()
	accepted, err := old.Accept()
	if err != nil {
		t.Fatal(err)
	}
	srv := tls.Server(accepted, &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}})
	defer srv.Close()
	if err := srv.Handshake(); err != nil {
		t.Fatal(err)
	}
	if got := old.pending.Load(); got != 1 {
		t.Fatalf("pending after the TLS handshake = %d, want 1 (the first request is not read yet)", got)
	}
	req, err := http.ReadRequest(bufio.NewReader(srv))
	if err != nil {
		t.Fatal(err)
	}
	if got := old.pending.Load(); got != 1 {
		t.Fatalf("pending after the first request was read = %d, want 1 until the answer", got)
	}
	resp := &http.Response{StatusCode: 200, ProtoMajor: 1, ProtoMinor: 1, Request: req, Close: true}
	if err := resp.Write(srv); err != nil {
		t.Fatal(err)
	}
	if got := old.pending.Load(); got != 0 {
		t.Fatalf("pending after the answer = %d, want 0", got)
	}
	if err := <-answered; err != nil {
		t.Fatalf("client: %v", err)
	}
}

// TestTLSRecords: the record reader finds application data records
// however the stream is cut.
func TestTLSRecords(t *testing.T) {
	stream := []byte{0x16, 3, 1, 0, 2, 'h', 'i', 0x14, 3, 3, 0, 1, 1, 0x17, 3, 3, 0, 3, 'a', 'b', 'c'}
	for cut := 1; cut < len(stream); cut++ {
		var r tlsRecords
		first, second := r.feed(stream[:cut]), r.feed(stream[cut:])
		// the record's header is bytes 13 to 17
		if wantFirst := cut >= 18; first != wantFirst || second == wantFirst {
			t.Errorf("cut at %d: application data in the first part %v, the second %v", cut, first, second)
		}
	}
}
