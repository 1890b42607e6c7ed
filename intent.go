package imagelb

import (
	"fmt"
	"mime"
	"net/http"
	"net/netip"
	"strings"
)

// Writes need intent: a request that changes the registry through a site's
// management API must show that a program meant it, not that a page in a
// browser was made to send it (cross-site request forgery), and must come
// from a network where the platform's orchestrator lives. Caddy's admin
// endpoint has its own Host and Origin checks; the proxy and the system
// services are the containers' business.

// isWrite reports whether the method changes state.
func isWrite(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// refuseWrite returns why a write to the management API is refused, or "".
// It checks, in order: the client's address (writes_from), the browser's
// Fetch Metadata and Origin (OWASP's CSRF defences), and that a body is
// JSON, which a page can only send after a CORS preflight.
func (h *Handler) refuseWrite(r *http.Request) string {
	// clientIP (sticky.go) is Caddy's client address, which takes
	// X-Forwarded-For only from the server's trusted_proxies
	addr := clientIP(r)
	if ip, err := netip.ParseAddr(addr); err != nil || !h.writers.Allows(ip.WithZone("")) {
		from := "loopback and private networks"
		if len(h.WritesFrom) > 0 {
			from = "writes_from " + strings.Join(h.WritesFrom, " ")
		}
		return fmt.Sprintf("writes to the management API on this site are accepted from %s only, "+
			"and the client address %s is not one of them: list the networks the orchestrator writes from with the imagelb "+
			"handler's writes_from option (writes_from 203.0.113.0/24, or writes_from any), or use Caddy's admin endpoint", from, addr)
	}
	origin := r.Header.Get("Origin")
	listed := origin != "" && h.namesOrigin(origin)
	// same-site is refused too: a sibling subdomain (a tenant's page, say)
	// is another origin that shares the site's cookies
	if site := r.Header.Get("Sec-Fetch-Site"); (site == "cross-site" || site == "same-site") && !listed {
		return fmt.Sprintf("a browser sent this write from a page of another origin (Sec-Fetch-Site: %s): "+
			"the management API takes writes from this site's own pages and from origins the imagelb handler's cors option names; "+
			"name the page's origin there (cors %s) if it may manage the load balancer", site, originOrExample(origin))
	}
	if origin != "" && !listed && !sameOrigin(origin, r) {
		return fmt.Sprintf("a write from the page at origin %q was refused: the management API takes writes from this site's "+
			"own pages and from origins the imagelb handler's cors option names; name it there (cors %s) if it may "+
			"manage the load balancer", origin, originOrExample(origin))
	}
	return checkJSONBody(r)
}

// checkJSONBody returns why the request's body is not declared JSON, or
// "". A body must be application/json (parameters such as charset, and
// +json types, pass); a request with no body may have no Content-Type, as
// httpx sends DELETE and an empty POST. text/plain, forms and multipart
// are what a page can send without a CORS preflight, so they are refused
// even when empty.
func checkJSONBody(r *http.Request) string {
	ct := r.Header.Get("Content-Type")
	if ct == "" && r.ContentLength == 0 {
		return ""
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && (mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))) {
		return ""
	}
	got := "none"
	if ct != "" {
		got = fmt.Sprintf("%q", ct)
	}
	return fmt.Sprintf("a write to the management API must send its body as JSON with Content-Type: application/json "+
		"(this request's Content-Type: %s); with curl, add -H 'Content-Type: application/json'", got)
}

// namesOrigin reports whether the cors option names origin; "*" lets any
// page read the API, but names no one who may change it.
func (h *Handler) namesOrigin(origin string) bool {
	for _, o := range h.CORS {
		if o != "*" && strings.EqualFold(o, origin) {
			return true
		}
	}
	return false
}

// sameOrigin reports whether origin is the site the request was sent to: a
// browser's Origin of a same-origin request has the Host header's host and
// port (both leave out the scheme's default port). The scheme is not
// compared, so that a site behind a TLS-terminating proxy still matches.
func sameOrigin(origin string, r *http.Request) bool {
	scheme, host, ok := strings.Cut(origin, "://")
	return ok && (scheme == "http" || scheme == "https") && host != "" && strings.EqualFold(host, r.Host)
}

// originOrExample is origin for a message, or an example when there is none.
func originOrExample(origin string) string {
	if origin == "" || origin == "null" {
		return "https://ui.example.com"
	}
	return origin
}
