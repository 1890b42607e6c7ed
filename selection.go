package imagelb

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(Selection{})
}

// Selection is the reverse_proxy selection policy "imagelb": it balances the
// upstreams of "dynamic imagelb" by the service's own algorithm, with state
// kept per image in the registry (so round robin is exact per image even when
// many images share one handler, and survives reloads).
//
// With any other upstream source it picks the first available upstream.
type Selection struct{}

// CaddyModule returns the Caddy module information.
func (Selection) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.imagelb",
		New: func() caddy.Module { return new(Selection) },
	}
}

// Select chooses the upstream of the next attempt. See proxy.go.
func (Selection) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	return selectFromPool(pool, r, w)
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy imagelb
func (s *Selection) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume policy name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("unrecognized subdirective '%s': lb_policy imagelb takes no options", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ reverseproxy.Selector = (*Selection)(nil)
	_ caddyfile.Unmarshaler = (*Selection)(nil)
)
