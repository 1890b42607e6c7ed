package imagelb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

// The self rule: the proxy never dials this Caddy itself. A container
// registered at Caddy's admin address would let any client replace Caddy's
// config through /api/v1/proxy/{id}/; one at a site's own port makes a
// loop; one at the etcd endpoints reaches the shared registry. The rule is
// registry.Guard's (SetSelf); this file lists what this Caddy listens on,
// and gives the dialers their check of the address they connect to.

// dialGuard is the guard of the running app, read by the dialers' Control
// hook on every new connection. A package-level pointer, because the
// handler's transport and the health checker outlive a single config; nil
// (before the first start) applies the metadata rule alone.
var dialGuard atomic.Pointer[registry.Guard]

// guardResolve, when set, replaces the guard's resolver at registration:
// the tests' way to give a name an address that changes after it.
var guardResolve atomic.Pointer[func(ctx context.Context, host string) ([]netip.Addr, error)]

// resolveForGuard is the guard's resolver: the system's, or guardResolve.
func resolveForGuard(ctx context.Context, host string) ([]netip.Addr, error) {
	if f := guardResolve.Load(); f != nil {
		return (*f)(ctx, host)
	}
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// dialControl is the Control hook of every dialer that connects to
// containers (the handler's transport, mirror copies through it, and the
// health checker): it runs after name resolution, on the address about to
// be connected to, so a name that points elsewhere after its registration
// cannot get past it.
func dialControl(_, address string, _ syscall.RawConn) error {
	return dialGuard.Load().CheckDial(address)
}

// systemAddrs are the addresses of the configured system services, which
// the health checker may dial although they may be sites of this same
// Caddy (the example's are): the operator declared them, and no request
// reaches them through a container's address.
var systemAddrs atomic.Pointer[map[netip.AddrPort]bool]

// checkerDialControl is the health checker's Control hook: dialControl,
// except for the system services' addresses.
func checkerDialControl(network, address string, rc syscall.RawConn) error {
	if ap, err := netip.ParseAddrPort(address); err == nil {
		if m := systemAddrs.Load(); m != nil && (*m)[netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())] {
			return nil
		}
	}
	return dialControl(network, address, rc)
}

// systemServiceAddrs resolves the system services' addresses.
func (a *App) systemServiceAddrs() *map[netip.AddrPort]bool {
	out := map[netip.AddrPort]bool{}
	for _, s := range a.system {
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(s.host); err == nil {
			ips = []netip.Addr{ip}
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			ips, _ = net.DefaultResolver.LookupNetIP(ctx, "ip", s.host)
			cancel()
		}
		for _, ip := range ips {
			out[netip.AddrPortFrom(ip.Unmap(), uint16(s.port))] = true
		}
	}
	return &out
}

// selfListeners lists the addresses this Caddy listens on: the admin
// endpoint (local and remote), the etcd endpoints of store etcd, and, once
// every app is provisioned (withHTTP, from Start on), every listener of the
// http app's servers. The metrics and pprof endpoints are served on those.
func (a *App) selfListeners(withHTTP bool) ([]registry.SelfListener, error) {
	var out []registry.SelfListener
	add := func(listen, what string) error {
		na, err := caddy.ParseNetworkAddressWithDefaults(listen, "tcp", 0)
		if err != nil {
			return fmt.Errorf("reading the address of the %s %q: %v", what, listen, err)
		}
		if na.IsUnixNetwork() || na.IsFdNetwork() {
			return nil
		}
		var addrs []netip.Addr
		switch host := strings.Trim(na.Host, "[]"); {
		case host == "":
			addrs = []netip.Addr{{}} // a wildcard listener
		case strings.EqualFold(host, "localhost"):
			addrs = []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()}
		default:
			if ip, err := netip.ParseAddr(host); err == nil {
				addrs = []netip.Addr{ip}
				break
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host)
			cancel()
			if err != nil {
				a.logger.Warn("the self rule cannot resolve a listener's host: its ports are refused on every local address",
					zap.String("listener", listen), zap.Error(err))
				addrs = []netip.Addr{{}}
			}
		}
		for port := na.StartPort; port <= na.EndPort; port++ {
			for _, ip := range addrs {
				out = append(out, registry.SelfListener{Addr: ip.Unmap(), Port: uint16(port), What: what})
			}
		}
		return nil
	}
	adminListen, remoteListen, remote, disabled := adminConfig(a.ctx)
	if !disabled {
		if adminListen == "" {
			adminListen = caddy.DefaultAdminListen
		}
		if err := add(caddy.NewReplacer().ReplaceKnown(adminListen, ""), "admin endpoint "+adminListen); err != nil {
			return nil, err
		}
		if remote {
			if remoteListen == "" {
				remoteListen = caddy.DefaultRemoteAdminListen
			}
			if err := add(caddy.NewReplacer().ReplaceKnown(remoteListen, ""), "remote admin endpoint "+remoteListen); err != nil {
				return nil, err
			}
		}
	}
	if a.Store != nil && a.Store.Kind == "etcd" {
		for _, ep := range a.Store.Endpoints {
			hostport := ep
			if _, rest, ok := strings.Cut(ep, "://"); ok {
				hostport = rest
			}
			hostport, _, _ = strings.Cut(hostport, "/")
			if _, _, err := net.SplitHostPort(hostport); err != nil {
				hostport = net.JoinHostPort(strings.Trim(hostport, "[]"), "2379")
			}
			if err := add(hostport, "etcd endpoint "+ep); err != nil {
				return nil, err
			}
		}
	}
	if withHTTP {
		httpApp, err := a.ctx.AppIfConfigured("http")
		if err == nil {
			for name, srv := range httpApp.(*caddyhttp.App).Servers {
				for _, l := range srv.Listen {
					if err := add(l, fmt.Sprintf("listener %s of server %s", l, name)); err != nil {
						return nil, err
					}
				}
			}
		}
	}
	return out, nil
}

// guardDials gives the provisioned transport a dialer that checks the
// address it connects to against the self and metadata rules (dialControl,
// self.go), with Caddy's dial timeout and TCP keep-alive, the dial address
// of the attempt (reverseproxy.GetDialInfo) and Caddy's DialError, so a
// refused dial is retried on another container like any failed dial.
// Caddy's own dialer does more only for options this transport does not
// set (local_address, resolvers, proxy_protocol, read/write timeouts).
func guardDials(t *reverseproxy.HTTPTransport) {
	d := &net.Dialer{
		Timeout:       time.Duration(t.DialTimeout),
		FallbackDelay: time.Duration(t.FallbackDelay),
		KeepAlive:     time.Duration(t.KeepAlive.ProbeInterval),
		KeepAliveConfig: net.KeepAliveConfig{
			Enable:   t.KeepAlive.ProbeInterval > 0,
			Interval: time.Duration(t.KeepAlive.ProbeInterval),
		},
		Control: dialControl,
	}
	t.Transport.DialContext = func(ctx context.Context, network, address string) (net.Conn, error) {
		// as Caddy's dialer: the attempt's upstream, unless a forward
		// proxy (HTTP_PROXY) is dialed instead
		if info, ok := reverseproxy.GetDialInfo(ctx); ok && caddyhttp.GetVar(ctx, caddyProxyVar) == nil {
			network, address = info.Network, info.Address
		}
		conn, err := d.DialContext(ctx, network, address)
		if err != nil {
			return nil, reverseproxy.NewDialError(dialFailure(err))
		}
		return conn, nil
	}
}

// dialFailure says in fixed words why a dial failed, without the address
// (a 502's detail shows it to clients, and Caddy's DialError cannot be
// unwrapped to classify it later).
func dialFailure(err error) error {
	var refused *registry.DialRefused
	var dnsErr *net.DNSError
	var netErr net.Error
	switch {
	case errors.As(err, &refused):
		return refused
	case errors.Is(err, syscall.ECONNREFUSED):
		return errors.New("the connection was refused")
	case errors.As(err, &netErr) && netErr.Timeout():
		return errors.New("connecting timed out")
	case errors.As(err, &dnsErr):
		return errors.New("its host name could not be resolved")
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return errors.New("there is no route to it")
	case errors.Is(err, context.Canceled):
		return err // the client went away: Caddy answers 499
	}
	return errors.New("connecting failed")
}

// caddyProxyVar is the request variable Caddy's transport sets when a
// forward proxy is used (reverseproxy's proxyVarKey, unexported).
const caddyProxyVar = "reverse_proxy.proxy"

// localAddrs returns this machine's interface addresses, where a wildcard
// listener also answers.
func localAddrs() []netip.Addr {
	ifaddrs, _ := net.InterfaceAddrs()
	out := make([]netip.Addr, 0, len(ifaddrs))
	for _, ia := range ifaddrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}

// adminConfig reads the admin endpoint's configuration of the config being
// loaded. Caddy does not export a module's view of it (caddy.Context keeps
// the config unexported), so it is read by reflection; TestSelfRuleAdmin
// fails if a Caddy version moves it. Reading the fields of unexported
// values is allowed, setting them is not, and nothing is set.
func adminConfig(ctx caddy.Context) (listen, remoteListen string, remote, disabled bool) {
	defer func() {
		if recover() != nil { // a Caddy whose Context differs: the default address
			listen, remoteListen, remote, disabled = "", "", false, false
		}
	}()
	cfg := reflect.ValueOf(ctx).FieldByName("cfg")
	if !cfg.IsValid() || cfg.IsNil() {
		return "", "", false, false
	}
	admin := cfg.Elem().FieldByName("Admin")
	if admin.IsNil() {
		return "", "", false, false
	}
	admin = admin.Elem()
	listen, disabled = admin.FieldByName("Listen").String(), admin.FieldByName("Disabled").Bool()
	if r := admin.FieldByName("Remote"); !r.IsNil() {
		remote, remoteListen = true, r.Elem().FieldByName("Listen").String()
	}
	return listen, remoteListen, remote, disabled
}

// selfAllowed parses allowed_self_upstreams.
func (a *App) selfAllowed() ([]registry.SelfAllow, error) {
	out := make([]registry.SelfAllow, 0, len(a.AllowedSelfUpstreams))
	for _, s := range a.AllowedSelfUpstreams {
		sa, err := registry.ParseSelfAllow(s)
		if err != nil {
			return nil, err
		}
		out = append(out, sa)
	}
	return out, nil
}
