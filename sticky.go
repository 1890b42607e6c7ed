package imagelb

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/imagelb/caddy-imagelb/registry"
)

// processStickyKey signs sticky cookies when no sticky_secret is set: it
// lives as long as the process, so cookies survive reloads but not restarts.
var processStickyKey = func() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k) // crypto/rand.Read does not fail (it crashes the program instead)
	return k
}()

// stickyKey returns the key that signs sticky cookies.
func stickyKey(secret string) []byte {
	if secret == "" {
		return processStickyKey
	}
	secret = caddy.NewReplacer().ReplaceKnown(secret, "")
	sum := sha256.Sum256([]byte("imagelb sticky cookie\x00" + secret))
	return sum[:]
}

// stickyCookieName is the cookie that pins a client to a container of an image.
func stickyCookieName(imageID int64) string {
	return "imagelb_" + strconv.FormatInt(imageID, 10)
}

// stickyMAC signs the pair (image, container).
func stickyMAC(key []byte, imageID int64, containerID string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(stickyCookieName(imageID)))
	m.Write([]byte{0})
	m.Write([]byte(containerID))
	return m.Sum(nil)[:16]
}

// signSticky returns the cookie value naming the container: its id and a
// MAC, so a client can keep the value it was given but cannot forge one.
func signSticky(key []byte, imageID int64, containerID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(containerID)) + "." +
		base64.RawURLEncoding.EncodeToString(stickyMAC(key, imageID, containerID))
}

// verifySticky returns the container the request's cookie pins it to, or
// "" when there is no cookie or it is not one we signed.
func verifySticky(key []byte, r *http.Request, imageID int64) string {
	c, err := r.Cookie(stickyCookieName(imageID))
	if err != nil {
		return ""
	}
	idPart, macPart, ok := strings.Cut(c.Value, ".")
	if !ok {
		return ""
	}
	id, err1 := base64.RawURLEncoding.DecodeString(idPart)
	mac, err2 := base64.RawURLEncoding.DecodeString(macPart)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, stickyMAC(key, imageID, string(id))) {
		return ""
	}
	return string(id)
}

// clientIP is the client's address as Caddy determined it (honouring the
// server's trusted_proxies), without the port.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// hashKey is the request's key for ip_hash and consistent_hash: the client
// IP, a header or a cookie ("" when the request has none).
func hashKey(r *http.Request, svc *registry.Service) string {
	if svc.Algorithm == registry.IPHash {
		return clientIP(r)
	}
	switch kind, name := svc.Options.HashKeyKind(); kind {
	case "header":
		return r.Header.Get(name)
	case "cookie":
		if c, err := r.Cookie(name); err == nil {
			return c.Value
		}
		return ""
	}
	return clientIP(r)
}

// stick sets the sticky cookie pinning the client to the container of the
// latest attempt, unless the client's cookie names it already. A retry on
// another container replaces the cookie the request set before.
func (q *request) stick(w http.ResponseWriter, r *http.Request) {
	if !q.service.Options.Sticky || q.last == nil || q.last.ContainerID == q.pick.Pinned {
		return
	}
	id := q.service.ImageID
	c := &http.Cookie{Name: stickyCookieName(id), Value: signSticky(q.app.stickyKey, id, q.last.ContainerID),
		Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: r.TLS != nil}
	h := w.Header()
	if q.cookie > 0 && q.cookie <= len(h["Set-Cookie"]) {
		h["Set-Cookie"][q.cookie-1] = c.String()
		return
	}
	h.Add("Set-Cookie", c.String())
	q.cookie = len(h["Set-Cookie"])
}

// unstick takes back the sticky cookie this request set.
func (q *request) unstick(w http.ResponseWriter) {
	h := w.Header()
	if cookies := h["Set-Cookie"]; q.cookie > 0 && q.cookie <= len(cookies) {
		h["Set-Cookie"] = slices.Delete(cookies, q.cookie-1, q.cookie)
		q.cookie = 0
	}
}
