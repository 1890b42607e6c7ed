package imagelb

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestReloadsUnderLoad: clients proxy through the handler while the config
// is reloaded three times through the admin /load; no request that reached
// a server fails, and the registry (services, pushed statuses, counters) is
// the same object before and after.
//
// The site uses the imagelb_handoff listener wrapper, without which net/http
// drops fresh connections the old server read after its graceful shutdown
// began. The one failure below the plugin that is excused is a connection
// reset because it was queued on the old SO_REUSEPORT socket when it closed,
// and only where net.ipv4.tcp_migrate_req is not 1 (.ci/run sets it when it
// can; the README says how).
func TestReloadsUnderLoad(t *testing.T) {
	port := freePort(t)
	cfg := func(interval string) string {
		return fmt.Sprintf(`{
	admin localhost:2999
	servers {
		listener_wrappers {
			imagelb_handoff
		}
	}
	imagelb {
		health_interval %s
	}
}
http://127.0.0.1:%d {
	imagelb
}
`, interval, port)
	}
	startCaddy(t, cfg("1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	a, b := newBackend(t, "a"), newBackend(t, "b")
	register(t, site+"/api/v1", 110, "", container("a", a), container("b", b), map[string]any{"container_id": "c", "port": b.port})
	mustDo(t, "PATCH", site+"/api/v1/services/110/containers/c", map[string]any{"status": "draining", "weight": 7}, 200, nil)

	migrate, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	migrating := strings.TrimSpace(string(migrate)) == "1"
	l := startLoad(site+"/api/v1/proxy/110/x", 8, func(err error, reused bool) bool {
		return !migrating && !reused && errors.Is(err, syscall.ECONNRESET)
	})
	for i := 0; i < 3; i++ {
		l.waitServed(t, "requests flowing", 100)
		startCaddyNoReset(t, cfg(fmt.Sprintf("%dh", i+2)))
	}
	l.waitServed(t, "requests flowing after the last reload", 100)
	l.finish(t)
	t.Logf("%d requests served across 3 reloads; %d fresh connections reset by the old socket closing "+
		"(net.ipv4.tcp_migrate_req=%s)", l.served.Load(), l.excused.Load(), strings.TrimSpace(string(migrate)))

	st := getStats(t, 110).Services[0]
	if st.TotalRequests != l.served.Load() || st.FailedRequests != 0 {
		t.Fatalf("counters across reloads: %d requests counted, %d served", st.TotalRequests, l.served.Load())
	}
	var svc struct {
		Containers []struct {
			ContainerID string `json:"container_id"`
			Status      string `json:"status"`
			Weight      int    `json:"weight"`
		} `json:"containers"`
	}
	mustDo(t, "GET", site+"/api/v1/services/110", nil, 200, &svc)
	if len(svc.Containers) != 3 || svc.Containers[2].Status != "draining" || svc.Containers[2].Weight != 7 {
		t.Fatalf("pushed status and weight lost across reloads: %+v", svc)
	}
}
