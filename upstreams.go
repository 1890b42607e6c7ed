package imagelb

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/imagelb/caddy-imagelb/registry"
)

func init() {
	caddy.RegisterModule(UpstreamSource{})
}

// UpstreamSource is a reverse_proxy dynamic upstream source that yields the
// containers of one image that may take new requests:
//
//	reverse_proxy {
//		dynamic imagelb <image_id>
//		lb_policy imagelb
//	}
//
// Combine it with lb_policy imagelb to balance by the service's algorithm
// (exact per image); any other policy also works on the returned list.
type UpstreamSource struct {
	// The image whose containers to use. Placeholders are allowed, e.g.
	// "{http.request.host.labels.2}" or "{http.vars.image}". Required.
	ImageID string `json:"image_id,omitempty"`

	reg     *registry.Registry
	app     *App
	fixedID int64 // ImageID when it has no placeholder
}

// CaddyModule returns the Caddy module information.
func (UpstreamSource) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.imagelb",
		New: func() caddy.Module { return new(UpstreamSource) },
	}
}

// Provision attaches the source to the imagelb registry.
func (u *UpstreamSource) Provision(ctx caddy.Context) error {
	app, err := ctx.App("imagelb")
	if err != nil {
		return fmt.Errorf("loading imagelb app: %v", err)
	}
	u.app = app.(*App)
	u.reg = u.app.reg
	u.app.warnWithoutHandoff(ctx, ctx.Logger())
	return nil
}

// Validate checks the image id when it has no placeholder.
func (u *UpstreamSource) Validate() error {
	if u.ImageID == "" {
		return fmt.Errorf("image_id is required: dynamic imagelb <image_id>")
	}
	if !strings.ContainsRune(u.ImageID, '{') {
		id, err := registry.ParseImageID(u.ImageID)
		if err != nil {
			return fmt.Errorf("image_id %q: must be a positive integer or a placeholder", u.ImageID)
		}
		u.fixedID = id
	}
	return nil
}

// GetUpstreams returns the image's available containers, for lb_policy
// imagelb to pick from. See proxy.go.
func (u *UpstreamSource) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	return u.offerPool(r, requestFrom(r))
}

// UnmarshalCaddyfile sets up the source from Caddyfile tokens. Syntax:
//
//	dynamic imagelb <image_id>
func (u *UpstreamSource) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume source name
	if !d.NextArg() {
		return d.ArgErr()
	}
	u.ImageID = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("unrecognized subdirective '%s': dynamic imagelb takes only an image_id", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*UpstreamSource)(nil)
	_ caddy.Validator             = (*UpstreamSource)(nil)
	_ reverseproxy.UpstreamSource = (*UpstreamSource)(nil)
	_ caddyfile.Unmarshaler       = (*UpstreamSource)(nil)
)
