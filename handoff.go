package imagelb

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func init() {
	caddy.RegisterModule(Handoff{})
}

// Handoff is a listener wrapper that keeps config reloads from dropping new
// connections. On a reload Caddy starts the new server beside the old one and
// then shuts the old one down gracefully; Go's http.Server drops, unanswered,
// a connection whose first request it reads after its shutdown began, so
// connections the old server accepted in the last milliseconds are lost.
// This wrapper hands a connection to a server only once the client's first
// bytes have arrived, and to the newest server listening on the address at
// that moment: the old server gets only connections it can answer at once,
// and everything that arrives later goes to the new one.
//
//	servers {
//		listener_wrappers {
//			imagelb_handoff
//		}
//	}
//
// Put it first when other wrappers (tls, proxy_protocol) are listed.
type Handoff struct {
	// How long a new connection may stay silent before it is closed.
	// Default: 10s.
	FirstByteTimeout caddy.Duration `json:"first_byte_timeout,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handoff) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.listeners.imagelb_handoff",
		New: func() caddy.Module { return new(Handoff) },
	}
}

// handoffs maps a listen address to its newest wrapped listener.
var handoffs = struct {
	sync.Mutex
	newest map[string]*handoffListener
}{newest: map[string]*handoffListener{}}

// WrapListener wraps a server's listener.
func (h Handoff) WrapListener(ln net.Listener) net.Listener {
	timeout := time.Duration(h.FirstByteTimeout)
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	l := &handoffListener{Listener: ln, key: ln.Addr().String(), timeout: timeout,
		ready: make(chan net.Conn), closed: make(chan struct{}), failed: make(chan error, 1)}
	handoffs.Lock()
	handoffs.newest[l.key] = l
	handoffs.Unlock()
	go l.acceptLoop()
	return l
}

type handoffListener struct {
	net.Listener
	key       string
	timeout   time.Duration
	ready     chan net.Conn // connections with their first bytes, for this listener's server
	failed    chan error    // the socket's Accept error
	closed    chan struct{}
	closeOnce sync.Once
}

func (l *handoffListener) acceptLoop() {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			l.failed <- err
			return
		}
		go l.await(conn)
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
	pc := &prefixConn{Conn: conn, prefix: buf[:n]}
	for _, target := range []*handoffListener{newestHandoff(l.key), l} {
		if target == nil {
			continue
		}
		select {
		case target.ready <- pc:
			return
		case <-target.closed:
		}
	}
	conn.Close() // nobody serves this address any more
}

// pass gives a connection to a newer listener, or closes it if that one
// closed meanwhile.
func (l *handoffListener) pass(conn net.Conn, to *handoffListener) {
	select {
	case to.ready <- conn:
	case <-to.closed:
		conn.Close()
	}
}

func newestHandoff(key string) *handoffListener {
	handoffs.Lock()
	defer handoffs.Unlock()
	return handoffs.newest[key]
}

// Accept returns the next connection whose first bytes have arrived.
func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case conn := <-l.ready:
		// a newer server may have come up while the connection waited
		if newer := newestHandoff(l.key); newer != nil && newer != l {
			go l.pass(conn, newer)
			return l.Accept()
		}
		return conn, nil
	case err := <-l.failed:
		l.failed <- err // for later calls
		return nil, err
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops this listener; connections still waiting for their first
// bytes go to a newer listener of the address if there is one.
func (l *handoffListener) Close() error {
	l.closeOnce.Do(func() {
		close(l.closed)
		handoffs.Lock()
		if handoffs.newest[l.key] == l {
			delete(handoffs.newest, l.key)
		}
		handoffs.Unlock()
	})
	err := l.Listener.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// prefixConn is a connection whose first bytes were already read.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
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
	_ caddyfile.Unmarshaler = (*Handoff)(nil)
)
