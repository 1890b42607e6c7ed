package imagelb

import (
	"fmt"
	"testing"

	"github.com/imagelb/caddy-imagelb/internal/testkit"
)

// TestDynamicUpstreamsOnOrdinarySite uses the registry from a plain
// reverse_proxy: fixed and placeholder image ids, exact per-image rotation
// across interleaved images, counts settled when each request ends.
func TestDynamicUpstreamsOnOrdinarySite(t *testing.T) {
	apiPort, fixedPort, varPort := freePort(t), freePort(t), freePort(t)
	startCaddy(t, fmt.Sprintf(`{
	admin localhost:2999
}
http://127.0.0.1:%d {
	imagelb
}
http://127.0.0.1:%d {
	reverse_proxy {
		dynamic imagelb 31
		lb_policy imagelb
	}
}
http://127.0.0.1:%d {
	reverse_proxy {
		dynamic imagelb {http.request.uri.query.image}
		lb_policy imagelb
	}
}
`, apiPort, fixedPort, varPort))
	api := fmt.Sprintf("http://127.0.0.1:%d/api/v1", apiPort)
	register(t, api, 31, "", container("a", newBackend(t, "a")), container("b", newBackend(t, "b")))
	register(t, api, 32, "", container("x", newBackend(t, "x")), container("y", newBackend(t, "y")), container("z", newBackend(t, "z")))

	get := func(url string) string {
		t.Helper()
		var e echo
		mustDo(t, "GET", url, nil, 200, &e)
		return e.Backend
	}
	var seq31, seq32 []string
	for i := 0; i < 6; i++ {
		seq31 = append(seq31, get(fmt.Sprintf("http://127.0.0.1:%d/p", fixedPort)))
		seq32 = append(seq32, get(fmt.Sprintf("http://127.0.0.1:%d/p?image=32", varPort)))
		seq31 = append(seq31, get(fmt.Sprintf("http://127.0.0.1:%d/p?image=31", varPort)))
	}
	checkRotation(t, seq31, 2)
	checkRotation(t, seq32, 3)

	eventually(t, "counts settled", func() bool {
		s := getStats(t, 31).Services[0]
		return s.TotalRequests == 12 && s.ActiveConnections == 0
	})
	s := getStats(t, 31).Services[0]
	if s.FailedRequests != 0 || s.Containers[0].TotalRequests != 6 || s.Containers[1].TotalRequests != 6 {
		t.Fatalf("image 31 stats: %+v", s)
	}
	// an unknown image on an ordinary site is reverse_proxy's 503 (no upstreams)
	if status, _ := do(t, "GET", fmt.Sprintf("http://127.0.0.1:%d/p?image=999", varPort), nil); status != 503 {
		t.Fatalf("unknown image through dynamic imagelb: %d, want 503", status)
	}
}

var checkRotation = testkit.CheckRotation
