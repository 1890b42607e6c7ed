package imagelb

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/handoff"
)

// What a config reload does to the servers and streams imagelb serves: the
// imagelb_handoff listener wrapper on every server with an imagelb site, so
// that no new connection is dropped (package handoff), and a delay before
// the streams of an unloaded handler are closed, so that no WebSocket is.

// Values of the app's handoff option.
const (
	HandoffOn  = "on"
	HandoffOff = "off"
)

// DefaultStreamCloseDelay is how long WebSockets and other upgraded
// connections outlive the config that proxied them. Reloads are the
// operator's (registry changes never reload), so a client should not notice
// one: a day is longer than nearly every session, and still bounds how long
// an old config's handler stays in memory for a stream left open, one config
// per reload. Caddy's own default is 0: close at the reload.
const DefaultStreamCloseDelay = 24 * time.Hour

// checkReload checks the handoff and stream_close_delay options.
func (a *App) checkReload() error {
	switch a.Handoff {
	case "", HandoffOn, HandoffOff:
	default:
		return fmt.Errorf("handoff %q: use on or off", a.Handoff)
	}
	if a.StreamCloseDelay != nil && *a.StreamCloseDelay < 0 {
		return fmt.Errorf("stream_close_delay must not be negative, got %s", time.Duration(*a.StreamCloseDelay))
	}
	return nil
}

// streamCloseDelay is the stream_close_delay of the proxies the handler
// provisions.
func (a *App) streamCloseDelay() caddy.Duration {
	if a.StreamCloseDelay != nil {
		return *a.StreamCloseDelay
	}
	return caddy.Duration(DefaultStreamCloseDelay)
}

// warnWithoutHandoff logs a warning when the server being provisioned
// serves imagelb without the imagelb_handoff listener wrapper: a reload
// would then drop a request now and then. Caddy provisions a server's
// listener wrappers before its routes, so the answer is known here.
func (a *App) warnWithoutHandoff(ctx caddy.Context, logger *zap.Logger) {
	srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if !ok || !a.served.add(srv) {
		return // once per server and config load
	}
	if servesHTTP3(srv) && a.Handoff != HandoffOff {
		logger.Warn(http3NotCovered, zap.String("server", srv.Name()), zap.Strings("listen", srv.Listen))
	}
	if a.Handoff == HandoffOff || handoff.Covers(srv) {
		return
	}
	logger.Warn("this server serves imagelb without the imagelb_handoff listener wrapper: a config reload "+
		"will drop a request now and then; list it in the server's listener_wrappers (Caddyfile: "+
		"servers { listener_wrappers { imagelb_handoff; tls } }, JSON: \"listener_wrappers\": "+
		"[{\"wrapper\": \"imagelb_handoff\"}, {\"wrapper\": \"tls\"}]), or set handoff off in the imagelb "+
		"options to silence this (README, Durability)",
		zap.String("server", srv.Name()), zap.Strings("listen", srv.Listen))
}

// closeStreamsNow makes the proxy close its streams at once when Caddy is
// exiting: the final stop is no reload, and nothing would serve them after
// it. Call it right before the proxy's Cleanup.
func closeStreamsNow(rp *reverseproxy.Handler) {
	if rp != nil && caddy.Exiting() {
		rp.StreamCloseDelay = 0
	}
}

// parseHandlerDirective is the imagelb directive: the handler's route and,
// in a site block, the imagelb_handoff listener wrapper for the site's
// server (handoffWrappers).
func parseHandlerDirective(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	if !h.Next() {
		return nil, h.ArgErr()
	}
	matcherSet, err := h.ExtractMatcherSet()
	if err != nil {
		return nil, err
	}
	handler, err := parseHandlerCaddyfile(h)
	if err != nil {
		return nil, err
	}
	return append(h.NewRoute(matcherSet, handler), handoffWrappers(h)...), nil
}

// handoffState marks, in the adapter's state, that one imagelb site has
// placed the tls wrapper after imagelb_handoff.
const handoffState = "imagelb.handoff_tls"

// handoffWrappers gives the site's server the imagelb_handoff listener
// wrapper, unless the imagelb global option says handoff off. The first
// imagelb site block also places Caddy's tls wrapper after it, so that on
// an HTTPS server it hands connections off before the TLS handshake (tls
// may be listed once per server, and a directive cannot see which server
// its site joins; later sites' servers get imagelb_handoff alone, after
// the handshake on HTTPS, where it passes TLS connections through). Caddy
// uses these only for directives at the top of a site block, and only when
// no servers global option applies to the server (its listener_wrappers, even
// when left empty, replace them): the handler warns at run time about a
// server left without it.
func handoffWrappers(h httpcaddyfile.Helper) []httpcaddyfile.ConfigValue {
	if handoffOff(h.Option("imagelb")) || !topOfSite(h) {
		return nil
	}
	vals := []httpcaddyfile.ConfigValue{{Class: "listener_wrapper", Value: &handoff.Handoff{AllowOtherListeners: allowOtherListeners(h.Option("imagelb"))}}}
	// tls once per port: sites on different ports are on different
	// servers, each of which needs it (sites on one port may still be on
	// several servers, by bind: later ones go without)
	ports := handoffSitePorts(h)
	if len(ports) == 0 {
		ports = []string{""} // not known: once in all
	}
	for _, port := range ports {
		if h.State[handoffState+":"+port] != nil {
			return vals
		}
	}
	info, err := caddy.GetModule("caddy.listeners.tls")
	if lw, ok := info.New().(caddy.ListenerWrapper); err == nil && ok {
		vals = append(vals, httpcaddyfile.ConfigValue{Class: "listener_wrapper", Value: lw})
		for _, port := range ports {
			h.State[handoffState+":"+port] = true
		}
	}
	return vals
}

// handoffSitePorts lists the ports of the site block the directive is in (its
// addresses, with the http_port and https_port defaults), or nil when they
// cannot be told. The Helper keeps the site's keys unexported: they are
// read through reflection, as topOfSite reads its state.
func handoffSitePorts(h httpcaddyfile.Helper) []string {
	keys := reflect.ValueOf(h).FieldByName("parentBlock").FieldByName("Keys")
	if !keys.IsValid() || keys.Kind() != reflect.Slice {
		return nil
	}
	var ports []string
	for i := range keys.Len() {
		text := keys.Index(i).FieldByName("Text")
		if !text.IsValid() || text.Kind() != reflect.String {
			return nil
		}
		addr, err := httpcaddyfile.ParseAddress(text.String())
		if err != nil {
			return nil
		}
		port := addr.Port
		if port == "" {
			port = "443"
			if addr.Scheme == "http" {
				port = "80"
				if p, ok := h.Option("http_port").(int); ok {
					port = fmt.Sprint(p)
				}
			} else if p, ok := h.Option("https_port").(int); ok {
				port = fmt.Sprint(p)
			}
		}
		ports = append(ports, port)
	}
	return ports
}

// topOfSite reports whether the directive is at the top of a site block:
// there the adapter gives it the site's state as its block state, and a
// copy inside nested blocks (handle, route), whose listener wrappers Caddy
// drops.
func topOfSite(h httpcaddyfile.Helper) bool {
	return h.State != nil && reflect.ValueOf(h.State).UnsafePointer() == reflect.ValueOf(h.BlockState).UnsafePointer()
}

// handoffOff reports whether the imagelb global option, as the adapter
// holds it, sets handoff off.
func handoffOff(opt any) bool {
	app, ok := opt.(httpcaddyfile.App)
	if !ok {
		return false
	}
	var o struct {
		Handoff string `json:"handoff"`
	}
	_ = json.Unmarshal(app.Value, &o)
	return o.Handoff == HandoffOff
}

// allowOtherListeners reports whether the imagelb global option, as the
// adapter holds it, sets allow_other_listeners.
func allowOtherListeners(opt any) bool {
	app, ok := opt.(httpcaddyfile.App)
	if !ok {
		return false
	}
	var o struct {
		Allow bool `json:"allow_other_listeners"`
	}
	_ = json.Unmarshal(app.Value, &o)
	return o.Allow
}

// http3NotCovered says why HTTP/3 is left out of the handoff, and the fix.
const http3NotCovered = "HTTP/3 (QUIC over UDP) is not covered by imagelb_handoff, which hands off TCP " +
	"connections only: a config reload may drop a QUIC connection the old server accepted last; to serve " +
	"without HTTP/3, set the server's protocols: servers { protocols h1 h2 }"

// servesHTTP3 reports whether Caddy serves HTTP/3 on srv: it does where
// the server has TLS and h3 among its protocols (the default).
func servesHTTP3(srv *caddyhttp.Server) bool {
	return len(srv.TLSConnPolicies) > 0 && slices.Contains(srv.Protocols, "h3")
}

// servedServers are the servers of a config that serve imagelb, in the
// order of their first imagelb handler.
type servedServers struct {
	mu   sync.Mutex
	list []*caddyhttp.Server
}

// add records srv and reports whether it was new.
func (s *servedServers) add(srv *caddyhttp.Server) bool {
	if s == nil {
		return true // an app that was not provisioned
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Contains(s.list, srv) {
		return false
	}
	s.list = append(s.list, srv)
	return true
}

func (s *servedServers) all() []*caddyhttp.Server {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.list)
}

// reloadAddress is an entry of /health's hitless_reloads: whether a config
// reload leaves the new connections of one address of a server that serves
// imagelb alone, and if not why.
type reloadAddress struct {
	Server string `json:"server"`
	handoff.AddressStatus
}

// hitlessReloads lists, for every address of the servers that serve
// imagelb, whether a reload can reset or drop a new connection there.
func (a *App) hitlessReloads() []reloadAddress {
	out := []reloadAddress{}
	for _, srv := range a.served.all() {
		var addrs []handoff.AddressStatus
		switch {
		case handoff.Covers(srv):
			addrs = handoff.Addresses(srv)
		case a.Handoff == HandoffOff:
			addrs = notCovered(srv.Listen, "handoff off in the imagelb options: a reload drops the new "+
				"connections the old server accepted last, and resets those queued on its socket where "+
				"net.ipv4.tcp_migrate_req is not 1")
		default:
			addrs = notCovered(srv.Listen, "the server has no imagelb_handoff listener wrapper (a servers "+
				"global option's listener_wrappers, a nested imagelb, a dynamic imagelb site or a JSON config): "+
				"list it first: listener_wrappers { imagelb_handoff; tls }")
		}
		if servesHTTP3(srv) {
			for _, l := range srv.Listen {
				addrs = append(addrs, handoff.AddressStatus{Address: "udp/" + strings.TrimPrefix(l, "tcp/"), Reason: http3NotCovered})
			}
		}
		for _, ad := range addrs {
			out = append(out, reloadAddress{Server: srv.Name(), AddressStatus: ad})
		}
	}
	return out
}

func notCovered(listen []string, reason string) []handoff.AddressStatus {
	out := make([]handoff.AddressStatus, 0, len(listen))
	for _, l := range listen {
		out = append(out, handoff.AddressStatus{Address: l, Reason: reason})
	}
	return out
}
