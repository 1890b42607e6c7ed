package imagelb

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"go.uber.org/zap"

	"github.com/imagelb/caddy-imagelb/registry"
)

// selfConfig is a Caddyfile with the imagelb handler on site (any Host, as
// the example's :3000), and on
// target a site of this same Caddy answering 200 "target" on any path
// (a container's /health included).
func selfConfig(site, target int, global string) string {
	return fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		%s
	}
}
http://:%d {
	imagelb
}
http://:%d {
	respond "target" 200
}
`, global, site, target)
}

// rebind makes the guard resolve name to addr at registration; the dialers
// still resolve it with the system resolver ("localhost": loopback), as a
// name whose DNS record changed after its registration.
func rebind(t *testing.T, name, addr string) {
	t.Helper()
	resolve := func(_ context.Context, host string) ([]netip.Addr, error) {
		if host == name {
			return []netip.Addr{netip.MustParseAddr(addr)}, nil
		}
		return nil, fmt.Errorf("no such host %q", host)
	}
	guardResolve.Store(&resolve)
	t.Cleanup(func() { guardResolve.Store(nil) })
}

// adminConfigNow reads Caddy's whole config from the admin endpoint.
func adminConfigNow(t *testing.T) string {
	t.Helper()
	resp, err := client.Get(adminURL + "/config/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || len(raw) < 10 {
		t.Fatalf("GET /config/: %d %s", resp.StatusCode, raw)
	}
	return string(raw)
}

// TestSelfRuleAdmin is the attack of issue 24, row 1: a container at
// Caddy's admin address, then POST /api/v1/proxy/{id}/load with the admin's
// Host, replaced Caddy's whole config. Registration is refused (422, naming
// the rule and the opt-in), for the IP and for a name resolving there, and
// allowed_upstreams 127.0.0.0/8 does not unlock it; a name that pointed
// elsewhere at registration and at the admin endpoint later is refused at
// dial time (502 naming the rule, not the address), and Caddy's config is
// untouched.
func TestSelfRuleAdmin(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Caddy")
	}
	site := freePort(t)
	startCaddy(t, selfConfig(site, freePort(t), "allowed_upstreams 127.0.0.0/8"))
	api := fmt.Sprintf("http://127.0.0.1:%d/api/v1", site)
	before := adminConfigNow(t)

	for _, host := range []string{"127.0.0.1", "localhost", "::1"} {
		t.Run("register "+host, func(t *testing.T) {
			rebind(t, "localhost", "127.0.0.1")
			wantError(t, "POST", api+"/services/66/register?image_name=owned",
				fmt.Sprintf(`[{"container_id": "c1", "host": %q, "port": 2999}]`, host),
				http.StatusUnprocessableEntity, "the proxy never dials itself (the self rule")
		})
	}
	wantError(t, "POST", api+"/services/66/register?image_name=owned", `[{"container_id": "c1", "port": 2999}]`,
		http.StatusUnprocessableEntity, "allowed_self_upstreams") // the default host, 127.0.0.1

	// a name resolving elsewhere at registration (127.0.0.2), to the admin
	// endpoint (loopback) when dialed
	rebind(t, "localhost", "127.0.0.2")
	register(t, api, 66, "", map[string]any{"container_id": "c1", "host": "localhost", "port": 2999})
	newConfig := `{"apps": {"http": {"servers": {"owned": {"listen": [":1"], "routes": [{"handle": [{"handler": "static_response", "body": "owned"}]}]}}}}}`
	req, _ := http.NewRequest("POST", api+"/proxy/66/load", strings.NewReader(newConfig))
	req.Host = "localhost:2999"
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !bytes.Contains(raw, []byte("self rule")) {
		t.Fatalf("proxy to the admin endpoint: %d %s; want 502 naming the self rule", resp.StatusCode, raw)
	}
	for _, leak := range []string{"127.0.0.1", "::1", "2999"} {
		if bytes.Contains(raw, []byte(leak)) {
			t.Fatalf("the 502's detail shows the address (%s): %s", leak, raw)
		}
	}
	if !bytes.Contains(raw, []byte(`container \"c1\"`)) {
		t.Fatalf("the 502's detail does not name the container: %s", raw)
	}
	if after := adminConfigNow(t); after != before {
		t.Fatalf("Caddy's config changed:\nbefore %s\nafter  %s", before, after)
	}
}

// TestSelfRuleLoop: a container at one of this Caddy's own sites (its own
// port: a loop) is refused, the site with the API included; the dialers
// refuse a name that later resolves there (proxy: 502, health check:
// unhealthy, though the site answers 200); allowed_self_upstreams opens
// exactly the address it lists.
func TestSelfRuleLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Caddy")
	}
	site, target := freePort(t), freePort(t)
	startCaddy(t, selfConfig(site, target, ""))
	api := fmt.Sprintf("http://127.0.0.1:%d/api/v1", site)
	for _, port := range []int{site, target} {
		wantError(t, "POST", api+"/services/67/register?image_name=loop",
			fmt.Sprintf(`[{"container_id": "c1", "host": "127.0.0.1", "port": %d}]`, port),
			http.StatusUnprocessableEntity, "the proxy never dials itself")
	}

	// registered while the name pointed elsewhere
	rebind(t, "localhost", "10.255.255.1")
	register(t, api, 67, "", map[string]any{"container_id": "c1", "host": "localhost", "port": target})
	wantError(t, "GET", api+"/proxy/67/", "", http.StatusBadGateway, "self rule")
	mustDo(t, "POST", api+"/health-check?image_id=67", nil, 200, nil)
	if status, lastErr := containerStatus(t, 67, "c1"); status != "unhealthy" || lastErr == nil || *lastErr != "dial refused by the self rule" {
		t.Fatalf("a health check of this Caddy's own site: status %s (error %v), want refused by the self rule", status, lastErr)
	}

	t.Run("opt-in", func(t *testing.T) {
		startCaddy(t, selfConfig(site, target, fmt.Sprintf("allowed_self_upstreams 127.0.0.1:%d", target)))
		register(t, api, 68, "", map[string]any{"container_id": "c1", "host": "127.0.0.1", "port": target})
		status, raw := do(t, "GET", api+"/proxy/68/", nil)
		if status != 200 || string(raw) != "target" {
			t.Fatalf("through the opt-in: %d %s, want 200 target", status, raw)
		}
		// exact: [::1] at the same port, and the API's own site, stay refused
		for _, c := range []string{fmt.Sprintf(`"host": "::1", "port": %d`, target), fmt.Sprintf(`"host": "127.0.0.1", "port": %d`, site)} {
			wantError(t, "POST", api+"/services/69/register?image_name=loop", `[{"container_id": "c1", `+c+`}]`,
				http.StatusUnprocessableEntity, "self rule")
		}
	})
}

// TestSelfRuleStatic: a static service at this Caddy's admin address fails
// the config load, and the running config stays.
func TestSelfRuleStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Caddy")
	}
	site := freePort(t)
	startCaddy(t, selfConfig(site, freePort(t), ""))
	before := adminConfigNow(t)
	bad := fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		service 70 owned {
			container c1 127.0.0.1:2999
		}
	}
}
http://127.0.0.1:%d {
	imagelb
}
`, site)
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(bad), nil)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", adminURL+"/load", bytes.NewReader(adapted))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 || !bytes.Contains(raw, []byte("self rule")) {
		t.Fatalf("loading a static service at the admin address: %d %s, want an error naming the self rule", resp.StatusCode, raw)
	}
	if after := adminConfigNow(t); after != before {
		t.Fatal("a refused config changed the running one")
	}
}

// TestSelfListenersEtcd: the etcd endpoints of store etcd are this Caddy's
// own (the registry is there), whatever their form.
func TestSelfListenersEtcd(t *testing.T) {
	a := &App{logger: zap.NewNop(), Store: &StoreConfig{Kind: "etcd",
		Endpoints: []string{"http://127.0.0.1:23790", "10.0.0.5:2380", "https://[::1]:23791/"}}}
	self, err := a.selfListeners(false)
	if err != nil {
		t.Fatal(err)
	}
	g, _ := registry.NewGuard([]string{"127.0.0.0/8", "10.0.0.0/8", "::1"})
	g.SetSelf(self, nil, nil)
	for _, c := range []struct {
		host string
		port int
	}{{"127.0.0.1", 23790}, {"10.0.0.5", 2380}, {"::1", 23791}, {"127.0.0.1", 2019}} {
		if err := g.Check(c.host, c.port); err == nil || !strings.Contains(err.Error(), "self rule") {
			t.Errorf("Check(%s, %d) = %v, want the self rule", c.host, c.port, err)
		}
	}
	if err := g.Check("127.0.0.1", 2379); err != nil {
		t.Errorf("another port: %v", err)
	}
}

// TestProxyErrorsNameTheContainer is issue 24, row 12: a 502's and a 504's
// detail name the container's id, never its address.
func TestProxyErrorsNameTheContainer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Caddy")
	}
	site := freePort(t)
	startCaddy(t, siteConfig(site, "timeout 1s\n\t\tmax_retries 0"))
	api := fmt.Sprintf("http://127.0.0.1:%d/api/v1", site)
	closed := freePort(t) // nothing listens there
	slow, _ := holdBackend(t, "slow")
	register(t, api, 71, "", map[string]any{"container_id": "gone-1", "host": "127.0.0.1", "port": closed})
	register(t, api, 72, "", container("slow-1", slow))
	for _, c := range []struct {
		path, container string
		status, port    int
		words           string
	}{
		{"/71/x", "gone-1", http.StatusBadGateway, closed, "the connection was refused"},
		{"/72/slow", "slow-1", http.StatusGatewayTimeout, slow.port, "did not answer within 1s"},
	} {
		status, raw := do(t, "GET", api+"/proxy"+c.path, nil)
		if status != c.status || !bytes.Contains(raw, []byte(fmt.Sprintf(`container \"%s\"`, c.container))) ||
			!bytes.Contains(raw, []byte(c.words)) {
			t.Fatalf("GET %s: %d %s; want %d naming container %s and saying %q", c.path, status, raw, c.status, c.container, c.words)
		}
		if bytes.Contains(raw, []byte("127.0.0.1")) || bytes.Contains(raw, []byte(fmt.Sprint(c.port))) {
			t.Fatalf("GET %s: the detail shows the container's address: %s", c.path, raw)
		}
	}
}

// TestSelfRuleSystemServiceHealth: a system service served by this same
// Caddy (as the example's are) passes its health checks: the operator
// declared it, so the checker's dial check lets its address through.
func TestSelfRuleSystemServiceHealth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Caddy")
	}
	site, target := freePort(t), freePort(t)
	startCaddy(t, selfConfig(site, target, fmt.Sprintf("health_interval 1s\n\t\tsystem_service billing 127.0.0.1:%d {\n\t\t\tpaths /billing/*\n\t\t}", target)))
	eventually(t, "the system service served by this Caddy healthy", func() bool {
		_, raw := do(t, "GET", fmt.Sprintf("http://127.0.0.1:%d/api/v1/system-services", site), nil)
		return bytes.Contains(raw, []byte(`"status":"healthy"`))
	})
}
