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
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
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
	// Whether another process may listen on the server's addresses too
	// (a blue-green handover). Otherwise, on Linux, loading a config whose
	// address another process listens on fails, naming the process: two
	// processes on one address split its connections between them.
	AllowOtherListeners bool `json:"allow_other_listeners,omitempty"`

	logger *zap.Logger
	server *caddyhttp.Server // the server whose listeners this wraps, if any
}

// Provision sets up the wrapper's logger and remembers its server, whose
// addresses the imagelb app's Start checks (CheckOtherListeners).
func (h *Handoff) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		h.server = srv
		unchecked.Lock()
		unchecked.list = append(unchecked.list, h)
		unchecked.Unlock()
		covered.Lock()
		covered.n[srv]++
		covered.Unlock()
	}
	return nil
}

// refuseOthers returns an error naming the process when another process
// listens on one of the TCP addresses (the sockets of this process's
// earlier configs are its own and do not count).
func refuseOthers(listen []string) error {
	for _, a := range listen {
		na, err := caddy.ParseNetworkAddress(a)
		if err != nil || na.IsUnixNetwork() || na.IsFdNetwork() || !strings.HasPrefix(na.Network, "tcp") {
			continue // Caddy reports a bad address itself
		}
		for off := range na.PortRangeSize() {
			port := int(na.StartPort + off)
			other, err := otherProcess(na.Host, port)
			if err != nil || other == "" {
				continue
			}
			return fmt.Errorf("%s is already listened on by %s: two processes on one address split its new "+
				"connections between them, each with its own registry; stop the other process, or set "+
				"allow_other_listeners (imagelb global option; JSON: on the imagelb_handoff listener wrapper) "+
				"if the sharing is intended, for a blue-green handover", na.JoinHostPort(off), other)
		}
	}
	return nil
}

// unchecked lists the wrappers provisioned since the last
// CheckOtherListeners: Caddy loads one config at a time, so those of the
// config being started.
var unchecked struct {
	sync.Mutex
	list []*Handoff
}

// CheckOtherListeners fails, naming the address and the process, when
// another process listens on an address of a server whose imagelb_handoff
// wrapper was provisioned since the last call and does not allow it
// (AllowOtherListeners). The imagelb app calls it from Start: the sockets of
// this process's earlier configs, and of this one if the http app started
// first, are its own and do not count.
func CheckOtherListeners() error {
	unchecked.Lock()
	list := unchecked.list
	unchecked.list = nil
	unchecked.Unlock()
	for _, h := range list {
		if h.AllowOtherListeners {
			continue
		}
		if err := refuseOthers(h.server.Listen); err != nil {
			return err
		}
	}
	return nil
}

// Cleanup forgets the wrapper's server.
func (h *Handoff) Cleanup() error {
	if h.server == nil {
		return nil
	}
	unchecked.Lock()
	unchecked.list = slices.DeleteFunc(unchecked.list, func(o *Handoff) bool { return o == h })
	unchecked.Unlock()
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
	open  map[string][]*handoffListener
	socks map[string]*sharedSocket
}{open: map[string][]*handoffListener{}, socks: map[string]*sharedSocket{}}

// WrapListener wraps a server's listener.
//
// Where it can (Linux, the wrapper listed before tls and after no other
// wrapper), every config serves an address from one listening socket, the
// first config's: a later config's own socket for the address, which Caddy
// opens with SO_REUSEPORT beside it, is closed at once and the first one is
// kept open until the last config serving from it closes. A reload then
// never closes the socket connections queue on, and Linux resets nothing
// whatever net.ipv4.tcp_migrate_req says (see sharedSocket).
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
	var duplicate net.Listener
	var opened *sharedSocket
	if s := handoffs.socks[l.key]; s != nil {
		s.refs++
		l.sock, duplicate = s, ln
	} else if s, reason := openShared(l.key, ln); s != nil {
		handoffs.socks[l.key] = s
		l.sock, opened = s, s
	} else {
		l.notHitless = reason
	}
	handoffs.open[l.key] = append(handoffs.open[l.key], l)
	handoffs.Unlock()
	if duplicate != nil {
		// steered: no connection was queued on it, closing it resets none
		_ = duplicate.Close()
	}
	if l.notHitless != "" && h.logger != nil {
		h.logger.Warn("a config reload can reset new connections queued on this address where "+
			"net.ipv4.tcp_migrate_req is not 1: "+l.notHitless, zap.String("address", l.key), zap.String("server", serverName(h.server)))
	}
	if older != nil {
		older.settle(settleLimit)
	}
	switch {
	case opened != nil:
		go opened.acceptLoops(timeout)
	case l.sock == nil:
		go l.acceptLoop()
	}
	return l
}

func serverName(srv *caddyhttp.Server) string {
	if srv == nil {
		return ""
	}
	return srv.Name()
}

// sharedSocket is a listening socket that the configs of a process serve an
// address from, one after the other, across reloads.
//
// Caddy opens a socket per address for each config, with SO_REUSEPORT, and
// closes the old config's once the new one runs; Linux resets the
// connections still queued on a closing listening socket, and the half-open
// ones, unless net.ipv4.tcp_migrate_req is 1 (0 by default, in a new network
// namespace and in a container started without --sysctl). So the first
// config's socket is kept: a BPF program on its SO_REUSEPORT group gives it
// every new connection (steer), the later configs' own sockets, which join
// the group after it, are closed unused, and it closes when the last
// handoffListener serving from it does.
type sharedSocket struct {
	key   string
	ln    net.Listener   // the listener of the config that opened it
	extra []net.Listener // per-CPU sockets of its group, when steered by CPU
	refs  int            // handoffListeners serving from it, under handoffs' lock
}

// openShared makes ln the shared socket of its address, or says why it
// cannot be.
func openShared(key string, ln net.Listener) (*sharedSocket, string) {
	if !canShare {
		return nil, "only Linux lets imagelb_handoff keep the listening socket across reloads"
	}
	tcp := rawTCP(ln)
	if tcp == nil {
		return nil, "imagelb_handoff is not the first listener wrapper before tls on this server; " +
			"list it first: listener_wrappers { imagelb_handoff; tls }"
	}
	if !shareEnabled() {
		return nil, "keeping the listening socket across reloads is disabled (IMAGELB_HANDOFF_KEEP_SOCKET=0)"
	}
	addr := tcp.Addr().(*net.TCPAddr)
	if n, err := listenersOn(addr.IP, addr.Port); err != nil || n != 1 {
		return nil, fmt.Sprintf("%d sockets already listen on the address (want this one alone, "+
			"to steer connections to it): another process or an earlier config without imagelb_handoff (%v)", n, err)
	}
	raw, err := tcp.SyscallConn()
	if err == nil {
		cerr := raw.Control(func(fd uintptr) { err = steer(fd) })
		err = errors.Join(cerr, err)
	}
	s := &sharedSocket{key: key, ln: ln, refs: 1}
	if err != nil {
		// no BPF here: steer by SO_INCOMING_CPU (Linux 6.1 and later)
		extra, perr := perCPUSockets(addr)
		if perr != nil {
			return nil, fmt.Sprintf("neither a reuseport BPF program (%v) nor per-CPU sockets (%v) can steer "+
				"new connections away from a reload's new socket", err, perr)
		}
		s.extra = extra
	}
	return s, ""
}

// shareEnabled reports whether IMAGELB_HANDOFF_KEEP_SOCKET lets the
// wrapper keep sockets: 0 turns it off, to measure what it saves.
func shareEnabled() bool {
	return os.Getenv("IMAGELB_HANDOFF_KEEP_SOCKET") != "0"
}

// rawTCP finds the *net.TCPListener under ln when nothing but Caddy's own
// usage counting (its unexported deleteListener) lies between: then the
// wrapper is first on a plain TCP address, before TLS.
func rawTCP(ln net.Listener) *net.TCPListener {
	for range 4 {
		if tcp, ok := ln.(*net.TCPListener); ok {
			return tcp
		}
		v := reflect.ValueOf(ln)
		if v.Kind() != reflect.Struct || v.Type().Name() != "deleteListener" ||
			v.Type().PkgPath() != "github.com/caddyserver/caddy/v2" {
			return nil
		}
		inner, ok := v.FieldByName("Listener").Interface().(net.Listener)
		if !ok {
			return nil
		}
		ln = inner
	}
	return nil
}

// acceptLoops accepts the shared sockets' connections for the newest
// handoffListener of its address, until they close.
func (s *sharedSocket) acceptLoops(timeout time.Duration) {
	for _, ln := range s.extra {
		go s.acceptLoop(ln, timeout)
	}
	s.acceptLoop(s.ln, timeout)
}

// close closes the sockets; the per-CPU ones first, so that the group's
// last socket is Caddy's, as without them.
func (s *sharedSocket) close() {
	for _, ln := range s.extra {
		_ = ln.Close()
	}
	_ = s.ln.Close()
}

func (s *sharedSocket) acceptLoop(ln net.Listener, timeout time.Duration) {
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if !retryAccept(err) {
				if newest := newestHandoff(s.key); newest != nil && newest.sock == s {
					select {
					case newest.failed <- err:
					default:
					}
				}
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff) // out of file descriptors: as net/http does
			continue
		}
		backoff = 0
		go awaitFirstBytes(conn, s.key, timeout, nil)
	}
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
	// the socket it serves from, shared with the address's other
	// listeners; nil when it accepts from its own (notHitless says why)
	sock       *sharedSocket
	notHitless string
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
		go awaitFirstBytes(conn, l.key, l.timeout, l)
	}
}

func (l *handoffListener) passThrough(conn net.Conn) {
	select {
	case l.direct <- conn:
	case <-l.closed:
		conn.Close()
	}
}

// awaitFirstBytes waits for the connection's first bytes, then gives it to
// the newest open listener of the address (or to from, if it accepted the
// connection and no listener is open any more: it is closed).
func awaitFirstBytes(conn net.Conn, key string, timeout time.Duration, from *handoffListener) {
	buf := make([]byte, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	n, err := conn.Read(buf)
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil && n == 0 {
		conn.Close()
		return
	}
	hc := &handoffConn{Conn: conn, prefix: buf[:n], tls: isTLS(buf[:n])}
	if newest := newestHandoff(key); newest != nil {
		pass(hc, newest)
	} else {
		pass(hc, from) // closed: no listener is left
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
		var last *sharedSocket
		if l.sock != nil {
			if l.sock.refs--; l.sock.refs == 0 {
				last = l.sock
				if handoffs.socks[l.key] == last {
					delete(handoffs.socks, l.key)
				}
			}
		}
		handoffs.Unlock()
		close(l.closed)
		if last != nil {
			last.close()
		}
	})
	if l.sock != nil {
		return nil // its own socket was closed at the start; the shared one above
	}
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
	// TLS (the client's first bytes are a handshake record): the server
	// above it does a handshake before it reads the first request, and
	// drops the connection if its shutdown begins before that read. So a
	// TLS connection stays pending through the handshake, until the server
	// writes application data (the first response, or HTTP/2's settings)
	// after the client sent some (TLS 1.3's encrypted Finished, or the
	// first request): by then the server has read the request, or is
	// serving HTTP/2, which a shutdown ends with a GOAWAY the client retries on.
	tls        bool
	records    tlsRecords  // the client's records, as the server reads them
	clientData atomic.Bool // the client sent an application data record
}

// TLS record content types (RFC 8446 section 5.1).
const (
	recordHandshake       = 0x16
	recordApplicationData = 0x17
)

// isTLS reports whether a client's first bytes begin a TLS handshake.
func isTLS(first []byte) bool {
	return len(first) >= 2 && first[0] == recordHandshake && first[1] == 3
}

// tlsRecords follows the record boundaries of a TLS stream.
type tlsRecords struct {
	header [5]byte
	have   int // bytes of the header read
	body   int // bytes of the current record's body still to come
}

// feed reads b and reports whether an application data record began in it.
func (r *tlsRecords) feed(b []byte) bool {
	data := false
	for len(b) > 0 {
		if r.body > 0 {
			n := min(r.body, len(b))
			r.body -= n
			b = b[n:]
			continue
		}
		n := copy(r.header[r.have:], b)
		r.have += n
		b = b[n:]
		if r.have == len(r.header) {
			r.have = 0
			r.body = int(r.header[3])<<8 | int(r.header[4])
			data = data || r.header[0] == recordApplicationData
		}
	}
	return data
}

// sawRead records, on a TLS connection still pending, what the server read.
func (c *handoffConn) sawRead(b []byte) {
	if c.tls && c.step.Load() == connPending && c.records.feed(b) {
		c.clientData.Store(true)
	}
}

func (c *handoffConn) Read(b []byte) (int, error) {
	switch c.step.Load() {
	case connFresh:
		return c.firstRead(b)
	case connPending:
		if len(c.prefix) == 0 && !c.tls {
			c.moveOn() // the server wants more than the client's first bytes
		}
	case connHanded:
		return 0, io.EOF
	}
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.sawRead(c.prefix[:n])
		c.prefix = c.prefix[n:]
		return n, nil
	}
	n, err := c.Conn.Read(b)
	c.sawRead(b[:n])
	return n, err
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
		go pass(&handoffConn{Conn: c.Conn, prefix: c.prefix, tls: c.tls}, newer)
		return 0, io.EOF
	}
	n := copy(b, c.prefix)
	c.sawRead(c.prefix[:n])
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
			if c.tls && (!c.clientData.Load() || len(b) == 0 || b[0] != recordApplicationData) {
				return c.Conn.Write(b) // still in the handshake
			}
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
//	imagelb_handoff [<first_byte_timeout>] {
//		allow_other_listeners
//	}
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
	for d.NextBlock(0) {
		if d.Val() != "allow_other_listeners" || d.NextArg() {
			return d.Errf("imagelb_handoff: unrecognized option %q (allow_other_listeners)", d.Val())
		}
		h.AllowOtherListeners = true
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
