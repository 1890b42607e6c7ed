package imagelb

// Traffic split on the request path: which image serves a request of an
// image whose service has a split. The shares, their rotation and the rules
// are the registry's (registry/split.go); here are the request's side of it:
// the header and cookie overrides, and the cookie that keeps a client on
// the side it was first sent to when the service is sticky.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"

	"github.com/imagelb/caddy-imagelb/registry"
)

// maxSplitHops bounds how many splits one request follows (image 1 to 2,
// 2 to 3): registration refuses cycles, and this bounds one that two nodes
// of a cluster made at the same time.
const maxSplitHops = 4

// routeSplit returns the version of the image that serves the request:
// svc itself, or the image its split sends the request to, with that
// image's own split applied in turn. Each request sent elsewhere counts in
// the source image's split_requests; the image that serves it counts it.
func (h *Handler) routeSplit(w http.ResponseWriter, r *http.Request, svc *registry.Service) *registry.Service {
	for range maxSplitHops {
		if len(svc.Options.Split) == 0 {
			break
		}
		next := h.splitSide(w, r, svc)
		if next == nil {
			break
		}
		svc.State.CountExtra().SplitRequests.Add(1)
		svc = next
	}
	return svc
}

// splitSide returns the image of svc's split that takes the request, or nil
// when it stays on svc. In order: a header or cookie saying "always" for an
// entry sends it there, "never" takes the entry out; then the sticky cookie
// (a sticky service) keeps the client on its side; then the rotation takes
// a turn. A target that is not registered or has no available container
// sends the request back to svc.
func (h *Handler) splitSide(w http.ResponseWriter, r *http.Request, svc *registry.Service) *registry.Service {
	split := svc.Options.Split
	var skip uint32
	for i, t := range split {
		switch splitOverride(r, t) {
		case registry.SplitAlways:
			return h.splitTarget(t.ImageID)
		case registry.SplitNever:
			skip |= 1 << i
		}
	}
	sticky := svc.Options.Sticky
	if sticky {
		if side, ok := verifySplitSticky(h.app.stickyKey, r, svc); ok {
			if side == svc.ImageID {
				return nil
			}
			for i, t := range split {
				if t.ImageID == side && skip&(1<<i) == 0 {
					if tgt := h.splitTarget(side); tgt != nil {
						return tgt
					}
				}
			}
			// the side is gone, or cannot take requests now: a new turn
		}
	}
	i := svc.SplitTurn(skip)
	side := svc.ImageID
	var tgt *registry.Service
	if i >= 0 {
		if tgt = h.splitTarget(split[i].ImageID); tgt == nil {
			return nil // its share goes back to the image, and the client is not pinned to it
		}
		side = tgt.ImageID
	}
	if sticky {
		setSplitSticky(w, r, h.app.stickyKey, svc, side)
	}
	return tgt
}

// splitTarget returns the current version of a split's target, or nil when
// it is not registered or has no container that can take a request.
func (h *Handler) splitTarget(id int64) *registry.Service {
	tgt := h.reg.Lookup(id)
	if tgt == nil || len(tgt.Available()) == 0 {
		return nil
	}
	return tgt
}

// splitOverride is what the request's header or cookie of the split entry
// says: "always", "never" or "" (nothing, or another value). The header
// wins over the cookie.
func splitOverride(r *http.Request, t registry.SplitTarget) string {
	if t.Header != "" {
		if v := overrideValue(r.Header.Get(t.Header)); v != "" {
			return v
		}
	}
	if t.Cookie != "" {
		if c, err := r.Cookie(t.Cookie); err == nil {
			return overrideValue(c.Value)
		}
	}
	return ""
}

func overrideValue(v string) string {
	v = strings.TrimSpace(v)
	switch {
	case strings.EqualFold(v, registry.SplitAlways):
		return registry.SplitAlways
	case strings.EqualFold(v, registry.SplitNever):
		return registry.SplitNever
	}
	return ""
}

// splitCookieName is the cookie that keeps a client on one side of an
// image's split.
func splitCookieName(imageID int64) string {
	return "imagelb_split_" + strconv.FormatInt(imageID, 10)
}

// splitMAC signs the pair (source image, side), with the sticky cookies'
// key: a client can keep its side but cannot choose one. gen, when not
// empty, is signed too: the stable side of a rollout is kept only within
// the step it names (registry.Rollout.StickyGeneration).
func splitMAC(key []byte, imageID, side int64, gen string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(splitCookieName(imageID)))
	m.Write([]byte{0})
	m.Write([]byte(strconv.FormatInt(side, 10)))
	if gen != "" {
		m.Write([]byte{0})
		m.Write([]byte(gen))
	}
	return m.Sum(nil)[:16]
}

// splitGen is the generation the cookie of side of svc's split is signed
// with: during a rollout, the stable side's step; else none. A client sent
// to the canary stays there across steps (its share only grows); one kept
// on the stable image is drawn again at each step.
func splitGen(svc *registry.Service, side int64) string {
	if side != svc.ImageID {
		return ""
	}
	return svc.Rollout.StickyGeneration()
}

// verifySplitSticky returns the side the request's split cookie names for
// the image, and whether there is one we signed.
func verifySplitSticky(key []byte, r *http.Request, svc *registry.Service) (int64, bool) {
	c, err := r.Cookie(splitCookieName(svc.ImageID))
	if err != nil {
		return 0, false
	}
	idPart, macPart, ok := strings.Cut(c.Value, ".")
	if !ok {
		return 0, false
	}
	side, err1 := strconv.ParseInt(idPart, 10, 64)
	mac, err2 := base64.RawURLEncoding.DecodeString(macPart)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, splitMAC(key, svc.ImageID, side, splitGen(svc, side))) {
		return 0, false
	}
	return side, true
}

// setSplitSticky sets the cookie keeping the client on side of the image's
// split (a session cookie, like the container's sticky cookie).
func setSplitSticky(w http.ResponseWriter, r *http.Request, key []byte, svc *registry.Service, side int64) {
	c := &http.Cookie{Name: splitCookieName(svc.ImageID),
		Value: strconv.FormatInt(side, 10) + "." + base64.RawURLEncoding.EncodeToString(splitMAC(key, svc.ImageID, side, splitGen(svc, side))),
		Path:  "/", HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: r.TLS != nil}
	w.Header().Add("Set-Cookie", c.String())
}
