// Package handoff is the imagelb plugin's listener wrapper,
// caddy.listeners.imagelb_handoff: it keeps a config reload from dropping the
// connections the old server accepted in its last milliseconds, by handing
// each one, with its first bytes, to the newest server listening on the
// address (see Handoff). It owns that module's config, its Caddyfile syntax
// and the per-address list of open wrapped listeners. It imports nothing of
// the root package github.com/imagelb/caddy-imagelb; the root blank-imports
// it, so that building Caddy with the root registers the module.
package handoff

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handoff{})
}

// Handoff is a listener wrapper that keeps config reloads from dropping new
// connections. On a reload Caddy starts the new server beside the old one and
// then shuts the old one down gracefully; Go's http.Server drops, unanswered,
// a connection whose first request it reads after its shutdown began, so
// connections the old server accepted in the last milliseconds are lost.
//
// This wrapper closes that window in three steps:
//
//   - it hands a connection to a server only once the client's first bytes
//     have arrived, and to the newest server listening on the address;
//
//   - when the old server reads a connection's first bytes after a newer
//     server came up, the read returns end-of-file to the old server and
//     the connection, bytes and all, goes to the newer one;
//
//   - a new server's listener is ready only once every connection whose first
//     bytes the old server already read has moved on (its next read once
//     those bytes are used up, a write or a close), that is, past the point
//     where the old server would drop it.
//
//     servers {
//     listener_wrappers {
//     imagelb_handoff
//     }
//     }
//
// On an HTTPS server list it before tls (listener_wrappers { imagelb_handoff
// tls }): Caddy puts wrappers listed without tls after the TLS handshake,
// where the wrapper must not hide the TLS connection from the server; there
// it passes TLS connections through untouched and logs a warning.
//
// The Caddyfile's imagelb directive adds it to the servers of its sites by
// itself, so a server with several imagelb sites may list it more than
// once: on one server and address only the first one wraps, the others
// leave the listener as it is.
type Handoff struct {
	// How long a new connection may stay silent before it is closed.
	// Default: 10s.
	FirstByteTimeout caddy.Duration `json:"first_byte_timeout,omitempty"`

	logger *zap.Logger
	server *caddyhttp.Server // the server whose listeners this wraps, if any
}

// Provision sets up the wrapper's logger and remembers its server.
func (h *Handoff) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		h.server = srv
		covered.Lock()
		covered.n[srv]++
		covered.Unlock()
	}
	return nil
}

// Cleanup forgets the wrapper's server.
func (h *Handoff) Cleanup() error {
	if h.server == nil {
		return nil
	}
	covered.Lock()
	defer covered.Unlock()
	if covered.n[h.server]--; covered.n[h.server] <= 0 {
		delete(covered.n, h.server)
	}
	return nil
}

// covered counts, per server of a loaded config, the imagelb_handoff
// wrappers provisioned for it: the imagelb handler asks Covers to warn
// about a server that serves it without one. Caddy loads a server's
// listener wrappers before its routes, so the count is complete by then.
var covered = struct {
	sync.Mutex
	n map[*caddyhttp.Server]int
}{n: map[*caddyhttp.Server]int{}}

// Covers reports whether srv has an imagelb_handoff listener wrapper.
func Covers(srv *caddyhttp.Server) bool {
	covered.Lock()
	defer covered.Unlock()
	return covered.n[srv] > 0
}

// settleLimit bounds how long a new listener waits for the old server's
// connections to move past their first request: a handler that neither
// reads nor writes for this long is certainly running.
const settleLimit = 250 * time.Millisecond

// CaddyModule returns the Caddy module information.
func (Handoff) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.listeners.imagelb_handoff",
		New: func() caddy.Module { return new(Handoff) },
	}
}

// handoffs maps a listen address to its open wrapped listeners, oldest
// first. A failed reload closes the newest, and the one before it is the
// newest again.
var handoffs = struct {
	sync.Mutex
	open map[string][]*handoffListener
}{open: map[string][]*handoffListener{}}

// WrapListener wraps a server's listener.
func (h Handoff) WrapListener(ln net.Listener) net.Listener {
	timeout := time.Duration(h.FirstByteTimeout)
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	l := &handoffListener{Listener: ln, key: ln.Addr().String(), timeout: timeout, logger: h.logger, server: h.server,
		ready: make(chan *handoffConn), direct: make(chan net.Conn), closed: make(chan struct{}), failed: make(chan error, 1)}
	handoffs.Lock()
	var older *handoffListener
	if open := handoffs.open[l.key]; len(open) > 0 {
		older = open[len(open)-1]
	}
	if older != nil && h.server != nil && older.server == h.server {
		// listed again on the same server (several imagelb sites):
		// this address is wrapped already
		handoffs.Unlock()
		return ln
	}
	handoffs.open[l.key] = append(handoffs.open[l.key], l)
	handoffs.Unlock()
	if older != nil {
		older.settle(settleLimit)
	}
	go l.acceptLoop()
	return l
}

type handoffListener struct {
	net.Listener
	key       string
	server    *caddyhttp.Server // nil outside a Caddy server (tests)
	timeout   time.Duration
	ready     chan *handoffConn // connections with their first bytes, for this listener's server
	direct    chan net.Conn     // TLS connections, passed through (see Handoff)
	failed    chan error        // the socket's Accept error
	logger    *zap.Logger
	warnOnce  sync.Once
	closed    chan struct{}
	closeOnce sync.Once
	// connections whose first bytes this listener's server read and that
	// have not been seen to move on since
	pending atomic.Int64
}

func (l *handoffListener) acceptLoop() {
	var backoff time.Duration
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			if !retryAccept(err) {
				l.failed <- err
				return
			}
			// Out of file descriptors, say (the open-file watch logs it):
			// try again after a pause, as net/http's server does, instead of
			// failing the listener for good.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
				continue
			case <-l.closed:
				l.failed <- net.ErrClosed
				return
			}
		}
		backoff = 0
		if _, isTLS := conn.(*tls.Conn); isTLS {
			// behind TLS: the server must see the *tls.Conn itself
			l.warnOnce.Do(func() {
				if l.logger != nil {
					l.logger.Warn("imagelb_handoff is listed after the TLS handshake and passes TLS connections through; "+
						"list it before tls: listener_wrappers { imagelb_handoff; tls }", zap.String("address", l.key))
				}
			})
			go l.passThrough(conn)
			continue
		}
		go l.await(conn)
	}
}

func (l *handoffListener) passThrough(conn net.Conn) {
	select {
	case l.direct <- conn:
	case <-l.closed:
		conn.Close()
	}
}

// await waits for the connection's first bytes, then gives it to the
// newest open listener of the address.
func (l *handoffListener) await(conn net.Conn) {
	buf := make([]byte, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(l.timeout))
	n, err := conn.Read(buf)
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil && n == 0 {
		conn.Close()
		return
	}
	hc := &handoffConn{Conn: conn, prefix: buf[:n]}
	if newest := newestHandoff(l.key); newest != nil {
		pass(hc, newest)
	} else {
		pass(hc, l) // closed: no listener is left
	}
}

// settle waits, at most limit, until no connection of this listener's
// server sits between the read of its first bytes and its next step.
func (l *handoffListener) settle(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for wait := 20 * time.Microsecond; l.pending.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(wait)
		wait = min(2*wait, time.Millisecond)
	}
}

// pass gives a connection to another listener, or to the newest one if that
// one closes meanwhile; it closes the connection when no listener is left.
func pass(conn *handoffConn, to *handoffListener) {
	for to != nil {
		select {
		case to.ready <- conn:
			return
		case <-to.closed:
			to = newestHandoff(to.key)
		}
	}
	conn.Conn.Close() // nobody serves this address any more
}

func newestHandoff(key string) *handoffListener {
	handoffs.Lock()
	defer handoffs.Unlock()
	if open := handoffs.open[key]; len(open) > 0 {
		return open[len(open)-1]
	}
	return nil
}

// Accept returns the next connection whose first bytes have arrived.
func (l *handoffListener) Accept() (net.Conn, error) {
	for {
		select {
		case conn := <-l.ready:
			// a newer server may have come up while the connection waited
			if newer := newestHandoff(l.key); newer != nil && newer != l {
				go pass(conn, newer)
				continue
			}
			conn.l = l
			return conn, nil
		case conn := <-l.direct:
			return conn, nil
		case err := <-l.failed:
			l.failed <- err // for later calls
			return nil, err
		case <-l.closed:
			return nil, net.ErrClosed
		}
	}
}

// Close stops this listener; connections still waiting for their first
// bytes go to a newer listener of the address if there is one.
func (l *handoffListener) Close() error {
	l.closeOnce.Do(func() {
		handoffs.Lock()
		open := slices.DeleteFunc(handoffs.open[l.key], func(o *handoffListener) bool { return o == l })
		if len(open) == 0 {
			delete(handoffs.open, l.key)
		} else {
			handoffs.open[l.key] = open
		}
		handoffs.Unlock()
		close(l.closed)
	})
	err := l.Listener.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// A handoffConn's steps, as seen by the server that accepted it.
const (
	connFresh   int32 = iota // the server has not read yet
	connPending              // the server read the first bytes, nothing since
	connMoving               // the server did something after the first read
	connHanded               // the connection went to a newer server
)

// handoffConn is a connection whose first bytes were already read.
type handoffConn struct {
	net.Conn
	l      *handoffListener // set by Accept
	prefix []byte
	step   atomic.Int32
}

func (c *handoffConn) Read(b []byte) (int, error) {
	switch c.step.Load() {
	case connFresh:
		return c.firstRead(b)
	case connPending:
		if len(c.prefix) == 0 {
			c.moveOn() // the server wants more than the client's first bytes
		}
	case connHanded:
		return 0, io.EOF
	}
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// firstRead gives the server the bytes the client sent first (as much as b
// holds: net/http peeks at 14 bytes first to look for HTTP/2's preface), unless a newer
// server came up since the connection was accepted: then the server reads
// end-of-file and the connection goes, unread, to the newer server, which
// will still be serving when it answers.
func (c *handoffConn) firstRead(b []byte) (int, error) {
	// count the connection before looking for a newer listener, so that a
	// newer listener registering meanwhile either is seen here or waits
	// for this connection in settle
	c.l.pending.Add(1)
	if !c.step.CompareAndSwap(connFresh, connPending) {
		c.l.pending.Add(-1)
		return 0, net.ErrClosed
	}
	if newer := newestHandoff(c.l.key); newer != nil && newer != c.l {
		c.step.Store(connHanded)
		c.l.pending.Add(-1)
		go pass(&handoffConn{Conn: c.Conn, prefix: c.prefix}, newer)
		return 0, io.EOF
	}
	n := copy(b, c.prefix)
	c.prefix = c.prefix[n:]
	return n, nil
}

// moveOn records that the server went past the first read.
func (c *handoffConn) moveOn() {
	if c.step.CompareAndSwap(connPending, connMoving) {
		c.l.pending.Add(-1)
	}
}

func (c *handoffConn) Write(b []byte) (int, error) {
	for {
		switch c.step.Load() {
		case connHanded:
			return 0, net.ErrClosed
		case connPending:
			c.moveOn()
		case connFresh:
			c.step.CompareAndSwap(connFresh, connMoving)
		default:
			return c.Conn.Write(b)
		}
	}
}

func (c *handoffConn) Close() error {
	for {
		switch step := c.step.Load(); step {
		case connHanded:
			return nil // the newer server owns the socket now
		case connPending:
			c.moveOn()
		case connFresh:
			if !c.step.CompareAndSwap(connFresh, connMoving) {
				continue
			}
		}
		return c.Conn.Close()
	}
}

// UnmarshalCaddyfile sets up the wrapper from Caddyfile tokens. Syntax:
//
//	imagelb_handoff [<first_byte_timeout>]
func (h *Handoff) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume wrapper name
	if d.NextArg() {
		dur, err := caddy.ParseDuration(d.Val())
		if err != nil || dur <= 0 {
			return d.Errf("imagelb_handoff %q: want a positive duration", d.Val())
		}
		h.FirstByteTimeout = caddy.Duration(dur)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Interface guards
var (
	_ caddy.ListenerWrapper = (*Handoff)(nil)
	_ caddy.Provisioner     = (*Handoff)(nil)
	_ caddy.CleanerUpper    = (*Handoff)(nil)
	_ caddyfile.Unmarshaler = (*Handoff)(nil)
)

// retryAccept reports whether Accept may succeed later: the errors that
// net/http's server retries (running out of file descriptors, a connection
// aborted before it was accepted).
func retryAccept(err error) bool {
	var ne interface{ Temporary() bool }
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || (errors.As(err, &ne) && ne.Temporary())
}
