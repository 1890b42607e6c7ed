package handoff

import (
	"os"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// AddressStatus says whether a config reload can reset new connections
// on one address of a server.
type AddressStatus struct {
	Address string `json:"address"`
	Hitless bool   `json:"hitless"`
	// Why not, and the fix; empty when hitless.
	Reason string `json:"reason,omitempty"`
}

// Addresses reports, for each address of srv that an imagelb_handoff
// wrapper wraps, whether a reload leaves its new connections alone: it
// serves from a listening socket kept across reloads, or the kernel moves
// the connections queued on a closing socket to the next one
// (net.ipv4.tcp_migrate_req 1).
func Addresses(srv *caddyhttp.Server) []AddressStatus {
	var out []AddressStatus
	migrate := MigrateReq()
	handoffs.Lock()
	for key, open := range handoffs.open {
		for _, l := range open {
			if l.server != srv {
				continue
			}
			st := AddressStatus{Address: key, Hitless: l.sock != nil || migrate}
			if !st.Hitless {
				st.Reason = l.notHitless
			}
			out = append(out, st)
		}
	}
	handoffs.Unlock()
	slices.SortFunc(out, func(a, b AddressStatus) int { return strings.Compare(a.Address, b.Address) })
	return out
}

// MigrateReq reports whether net.ipv4.tcp_migrate_req is 1 in this
// network namespace: then Linux moves the connections queued on a closing
// listening socket to another socket of its SO_REUSEPORT group instead of
// resetting them.
func MigrateReq() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
