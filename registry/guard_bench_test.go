package registry

import (
	"net/netip"
	"testing"
)

// BenchmarkCheckDial is the cost the dialers' Control hook adds to every
// new connection to a container: the metadata and self rules on its address.
func BenchmarkCheckDial(b *testing.B) {
	g, _ := NewGuard([]string{"10.0.0.0/8"})
	g.SetSelf([]SelfListener{
		{Addr: netip.MustParseAddr("127.0.0.1"), Port: 2019, What: "admin endpoint"},
		{Port: 3000, What: "listener :3000"}, {Port: 443, What: "listener :443"},
	}, []netip.Addr{netip.MustParseAddr("10.0.0.2")}, nil)
	for _, c := range []struct{ name, addr string }{
		{"other port", "10.1.2.3:8080"},
		{"self port, other host", "10.1.2.3:3000"},
		{"refused", "127.0.0.1:2019"},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = g.CheckDial(c.addr)
			}
		})
	}
}
