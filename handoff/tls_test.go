package handoff

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net/http"
	"testing"
	"time"
)

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
