// The Caddyfile of the imagelb global option's store: local, memory, or etcd
// with its block and tls.

package imagelb

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// parseStore parses the store option: its kind, and for etcd its block.
func parseStore(d *caddyfile.Dispenser) (*StoreConfig, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	sc := &StoreConfig{Kind: d.Val()}
	switch sc.Kind {
	case storeLocal, storeMemory, storeEtcd:
	default:
		return nil, d.Errf("store %q: use local, memory or etcd", sc.Kind)
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if sc.Kind != storeEtcd {
			return nil, d.Errf("store %s takes no options; %s is an option of store etcd", sc.Kind, opt)
		}
		if seen[opt] {
			return nil, d.Errf("store etcd: %s already specified", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "endpoints":
			sc.Endpoints = d.RemainingArgs()
			if len(sc.Endpoints) == 0 {
				return nil, d.ArgErr()
			}
		case "prefix":
			sc.Prefix, err = singleArg(d)
		case "username":
			sc.Username, err = singleArg(d)
		case "password":
			sc.Password, err = singleArg(d)
		case "dial_timeout", "request_timeout":
			var v string
			if v, err = singleArg(d); err != nil {
				return nil, err
			}
			dur, perr := caddy.ParseDuration(v)
			if perr != nil || dur <= 0 {
				return nil, d.Errf("store etcd: %s %q: want a duration such as 5s", opt, v)
			}
			if opt == "dial_timeout" {
				sc.DialTimeout = caddy.Duration(dur)
			} else {
				sc.RequestTimeout = caddy.Duration(dur)
			}
		case "tls":
			sc.TLS, err = parseStoreTLS(d)
		default:
			return nil, d.Errf("unrecognized subdirective '%s'", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	if sc.Kind == storeEtcd && len(sc.Endpoints) == 0 {
		return nil, d.Err("store etcd: endpoints is required, e.g. endpoints http://127.0.0.1:2379")
	}
	return sc, nil
}

// parseStoreTLS parses the tls block of store etcd.
func parseStoreTLS(d *caddyfile.Dispenser) (*StoreTLS, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	t := &StoreTLS{}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("store etcd: tls: %s already specified", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "cert_file":
			t.CertFile, err = singleArg(d)
		case "key_file":
			t.KeyFile, err = singleArg(d)
		case "ca_file":
			t.CAFile, err = singleArg(d)
		case "server_name":
			t.ServerName, err = singleArg(d)
		case "insecure_skip_verify":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			t.InsecureSkipVerify = true
		default:
			return nil, d.Errf("unrecognized subdirective '%s'", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, d.Err("store etcd: tls: cert_file and key_file go together")
	}
	return t, nil
}
