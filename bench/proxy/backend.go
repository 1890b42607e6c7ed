package main

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"time"
)

// serveBackend is a tiny HTTP server answering a few bytes, and, to an
// Upgrade: websocket request, an upgraded connection that echoes what it
// gets (the handshake is WebSocket's; what follows is not framed, which no
// proxy here looks at).
func serveBackend(addr string) {
	body := []byte("ok\n")
	srv := &http.Server{Addr: addr, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			serveEcho(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})}
	log.Fatal(srv.ListenAndServe())
}

func serveEcho(w http.ResponseWriter, r *http.Request) {
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
		acceptKey(r.Header.Get("Sec-WebSocket-Key")))
	if rw.Flush() != nil {
		return
	}
	buf := make([]byte, 512)
	for {
		n, err := rw.Read(buf)
		if n > 0 {
			if _, werr := conn.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// upgraded is one long-lived connection through a proxy.
type upgraded struct {
	conn net.Conn
	r    *bufio.Reader
}

// openUpgraded opens an upgraded connection to addr (host:port) with the
// request path path, and checks that it echoes.
func openUpgraded(addr, path string) (*upgraded, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	var key [16]byte
	rand.Read(key[:])
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n",
		path, addr, base64.StdEncoding.EncodeToString(key[:]))
	u := &upgraded{conn: conn, r: bufio.NewReader(conn)}
	resp, err := http.ReadResponse(u.r, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return nil, fmt.Errorf("upgrade through %s: %s", addr, resp.Status)
	}
	if !u.alive() {
		conn.Close()
		return nil, fmt.Errorf("upgraded connection through %s does not echo", addr)
	}
	return u, nil
}

// alive sends a line and reads it back within 3 s.
func (u *upgraded) alive() bool {
	u.conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(u.conn, "ping\n"); err != nil {
		return false
	}
	line, err := u.r.ReadString('\n')
	return err == nil && line == "ping\n"
}
