package imagelb

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/imagelb/caddy-imagelb/registry"
)

// sitePorts reads the ports of this Caddy's HTTP servers, for the rule of
// which ports external_port may map (registry.Options.CheckExternalPort).
// A port whose server holds an imagelb handler marked mapped_ports, and no
// other imagelb handler, is a mapping port; every other port a server
// listens on is a served port, never mapped. It runs when the app starts,
// after every app was provisioned.
func sitePorts(ctx caddy.Context) *registry.SitePorts {
	sp := &registry.SitePorts{Served: map[int]bool{}, Mapping: map[int]bool{}}
	app, err := ctx.AppIfConfigured("http")
	if err != nil {
		return sp
	}
	repl := caddy.NewReplacer()
	for _, srv := range app.(*caddyhttp.App).Servers {
		plain, mapping := imagelbHandlers(srv.Routes)
		for _, l := range srv.Listen {
			addr, err := caddy.ParseNetworkAddress(repl.ReplaceAll(l, ""))
			if err != nil || addr.IsUnixNetwork() || addr.IsFdNetwork() {
				continue
			}
			for p := addr.StartPort; p <= addr.EndPort && p != 0; p++ {
				if mapping && !plain {
					sp.Mapping[int(p)] = true
				} else {
					sp.Served[int(p)] = true
				}
			}
		}
	}
	for p := range sp.Served { // two servers on one port (two interfaces): served wins
		delete(sp.Mapping, p)
	}
	return sp
}

// imagelbHandlers reports whether the routes (and their subroutes) hold
// an imagelb handler serving the API (plain) and one marked mapped_ports.
func imagelbHandlers(routes caddyhttp.RouteList) (plain, mapping bool) {
	for _, rt := range routes {
		for _, mh := range rt.Handlers {
			switch h := mh.(type) {
			case *Handler:
				if h.MappedPorts {
					mapping = true
				} else {
					plain = true
				}
			case *caddyhttp.Subroute:
				p, m := imagelbHandlers(h.Routes)
				plain, mapping = plain || p, mapping || m
			}
		}
	}
	return plain, mapping
}
