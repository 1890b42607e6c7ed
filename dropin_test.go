package imagelb

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// dropinConfig is a site with the imagelb handler (CORS for one origin) and
// the original's two system services on the given backends; with noDefault,
// no service takes unknown paths.
func dropinConfig(port int, orchestrator, billing *backend, noDefault bool) string {
	def := "default"
	if noDefault {
		def = ""
	}
	return fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		health_interval 1h
		system_service orchestrator 127.0.0.1:%d {
			paths /auth/* /images/* /containers/*
			%s
		}
		system_service billing 127.0.0.1:%d {
			name billing-service
			paths /users/* /billing/*
		}
	}
}
http://127.0.0.1:%d {
	imagelb {
		cors http://ui.example
	}
}
`, orchestrator.port, def, billing.port, port)
}

// object decodes a JSON object answer.
func object(t testing.TB, raw []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("not a JSON object: %s", raw)
	}
	return m
}

// array decodes a JSON array answer of objects.
func array(t testing.TB, raw []byte) []map[string]any {
	t.Helper()
	var a []map[string]any
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatalf("not a bare JSON array of objects: %s", raw)
	}
	return a
}

// hasTypes checks that m has each field with the JSON type named: string,
// number, bool, array, object, null, or "number|null" and the like.
func hasTypes(t testing.TB, what string, m map[string]any, fields map[string]string) {
	t.Helper()
	for field, want := range fields {
		v, ok := m[field]
		if !ok {
			t.Errorf("%s lacks the original's field %q: %v", what, field, m)
			continue
		}
		got := "object"
		switch v.(type) {
		case nil:
			got = "null"
		case string:
			got = "string"
		case float64:
			got = "number"
		case bool:
			got = "bool"
		case []any:
			got = "array"
		}
		if !strings.Contains("|"+want+"|", "|"+got+"|") {
			t.Errorf("%s field %q is %s (%v), want %s", what, field, got, v, want)
		}
	}
}

// TestOriginalClientFlow replays what the original service's clients do,
// step by step, and checks the original's fields and JSON types at each.
func TestOriginalClientFlow(t *testing.T) {
	port := freePort(t)
	orch, bill := newBackend(t, "orchestrator"), newBackend(t, "billing")
	startCaddy(t, dropinConfig(port, orch, bill, false))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	c1, c2 := newHealthBackend(t, "c1"), newHealthBackend(t, "c2")
	c2.failing.Store(true) // not up yet: it stays unknown through the checks registration brings

	_, raw := do(t, "GET", site+"/health", nil)
	health := object(t, raw)
	hasTypes(t, "/health", health, map[string]string{"status": "string", "service": "string", "version": "string"})
	if health["status"] != "healthy" || health["service"] != "load-balancer" {
		t.Fatalf("/health %v", health)
	}

	// register: an array of containers with image_id, status and
	// active_connections, as the original's client sends them
	body := fmt.Sprintf(`[{"container_id": "c1", "name": "web-1", "port": %d, "image_id": 7, "status": "healthy", "active_connections": 0},
		{"container_id": "c2", "name": "web-2", "port": "%d", "image_id": 7, "status": "unknown", "active_connections": 0}]`, c1.port, c2.port)
	status, raw := do(t, "POST", site+"/api/v1/services/7/register?image_name=web", body)
	if status != 200 {
		t.Fatalf("register: %d %s", status, raw)
	}
	reg := object(t, raw)
	if reg["message"] != "Service web registered successfully with 2 containers" {
		t.Fatalf("register message %v", reg["message"])
	}

	_, raw = do(t, "GET", site+"/api/v1/services/7", nil)
	svc := object(t, raw)
	hasTypes(t, "ServiceInfo", svc, map[string]string{"image_id": "number", "image_name": "string", "containers": "array",
		"algorithm": "string", "total_requests": "number", "requests_per_second": "number", "last_updated": "string|null"})
	for _, c := range svc["containers"].([]any) {
		hasTypes(t, "ContainerInfo", c.(map[string]any), map[string]string{"container_id": "string", "name": "string",
			"port": "number", "image_id": "number", "status": "string", "cpu_usage": "number|null", "memory_usage": "number|null",
			"disk_usage": "number|null", "last_health_check": "string|null", "active_connections": "number"})
	}

	_, raw = do(t, "GET", site+"/api/v1/services", nil)
	if list := array(t, raw); len(list) != 1 || list[0]["image_id"] != float64(7) {
		t.Fatalf("services list %s", raw)
	}
	_, raw = do(t, "GET", site+"/api/v1/port-mappings", nil)
	if pm := array(t, raw); len(pm) != 0 {
		t.Fatalf("port mappings %s", raw)
	}
	_, raw = do(t, "GET", site+"/api/v1/system-services", nil)
	sys := array(t, raw)
	if len(sys) != 2 {
		t.Fatalf("system services %s", raw)
	}
	for _, s := range sys {
		hasTypes(t, "SystemServiceInfo", s, map[string]string{"service_type": "string", "name": "string", "host": "string",
			"port": "number", "status": "string", "last_health_check": "string|null", "total_requests": "number"})
	}
	if sys[1]["name"] != "billing-service" || (sys[0]["status"] != "unknown" && sys[0]["status"] != "healthy") {
		t.Fatalf("system services %s", raw) // unknown (the original's default) until checked, then healthy
	}

	// proxy a few paths: only the healthy container; the unknown one waits for a passing check
	for _, p := range []string{"/", "/a/b?x=1", "/c"} {
		if e := proxyGet(t, site, 7, p); e.Backend != "c1" {
			t.Fatalf("GET %s reached %s, want c1 (c2 is unknown)", p, e.Backend)
		}
	}
	// the platform's own routes reach the system services
	var e echo
	mustDo(t, "GET", site+"/api/v1/auth/login?user=a", nil, 200, &e)
	if e.Backend != "orchestrator" || e.Path != "/auth/login" || e.Query != "user=a" {
		t.Fatalf("auth route reached %+v", e)
	}
	mustDo(t, "POST", site+"/api/v1/billing/invoices", "{}", 200, &e)
	if e.Backend != "billing" || e.Path != "/billing/invoices" || e.Method != "POST" {
		t.Fatalf("billing route reached %+v", e)
	}
	mustDo(t, "GET", site+"/api/v1/anything/else", nil, 200, &e)
	if e.Backend != "orchestrator" || e.Path != "/anything/else" {
		t.Fatalf("the default route reached %+v", e)
	}

	c2.failing.Store(false)
	_, raw = do(t, "POST", site+"/api/v1/health-check", nil)
	if hc := object(t, raw); hc["message"] != "Health check completed" {
		t.Fatalf("health-check %s", raw)
	}
	seen := map[string]bool{}
	for i := 0; i < 2; i++ {
		seen[proxyGet(t, site, 7, "/").Backend] = true
	}
	if !seen["c1"] || !seen["c2"] {
		t.Fatalf("after c2 passed its check, two requests reached %v", seen)
	}

	_, raw = do(t, "GET", site+"/api/v1/stats", nil)
	st := object(t, raw)
	hasTypes(t, "stats", st, map[string]string{"user_services": "object", "system_services": "object", "port_mappings_count": "number"})
	hasTypes(t, "stats.user_services", st["user_services"].(map[string]any), map[string]string{
		"total_services": "number", "total_containers": "number", "healthy_containers": "number", "total_requests": "number"})
	hasTypes(t, "stats.system_services", st["system_services"].(map[string]any), map[string]string{
		"total_services": "number", "healthy_services": "number", "total_requests": "number"})
	us, ss := st["user_services"].(map[string]any), st["system_services"].(map[string]any)
	if us["total_services"] != float64(1) || us["total_containers"] != float64(2) || us["healthy_containers"] != float64(2) ||
		us["total_requests"] != float64(5) || ss["total_services"] != float64(2) || ss["total_requests"] != float64(3) {
		t.Fatalf("stats summaries %v %v", us, ss)
	}
}

// TestOriginalFieldByField checks the rows of the original's table that the
// client flow does not: the banner, docs, usage fields, numbers, path
// errors, unknown paths and methods on both mounts, CORS, takeovers.
func TestOriginalFieldByField(t *testing.T) {
	port := freePort(t)
	orch, bill := newBackend(t, "orchestrator"), newBackend(t, "billing")
	startCaddy(t, dropinConfig(port, orch, bill, true))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	b := newBackend(t, "b")

	t.Run("banner", func(t *testing.T) {
		_, raw := do(t, "GET", site+"/", nil)
		if m := object(t, raw); m["message"] != "Load Balancer API is running" || m["docs"] != "/docs" {
			t.Fatalf("GET / %s", raw)
		}
	})
	t.Run("docs and openapi on every mount", func(t *testing.T) {
		for _, u := range []string{site + "/openapi.json", site + "/api/v1/openapi.json", adminURL + "/imagelb/openapi.json"} {
			_, raw := do(t, "GET", u, nil)
			if m := object(t, raw); m["openapi"] != "3.1.0" {
				t.Fatalf("%s: %.100s", u, raw)
			}
		}
		resp, err := client.Get(site + "/docs")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
			!strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
			t.Fatalf("/docs: %d %v", resp.StatusCode, resp.Header)
		}
	})
	t.Run("usage fields accepted, stored and echoed", func(t *testing.T) {
		mustDo(t, "POST", site+"/api/v1/services/8/register?image_name=u",
			fmt.Sprintf(`[{"container_id": "a", "port": %d, "cpu_usage": 12.5, "memory_usage": "40"}]`, b.port), 200, nil)
		mustDo(t, "PATCH", site+"/api/v1/services/8/containers/a", `{"disk_usage": 3, "memory_usage": null}`, 200, nil)
		mustDo(t, "PUT", adminURL+"/imagelb/services/8/containers/z", fmt.Sprintf(`{"port": %d, "cpu_usage": 1}`, b.port), 200, nil)
		_, raw := do(t, "GET", site+"/api/v1/services/8", nil)
		cs := object(t, raw)["containers"].([]any)
		a, z := cs[0].(map[string]any), cs[1].(map[string]any)
		if a["cpu_usage"] != 12.5 || a["memory_usage"] != nil || a["disk_usage"] != float64(3) || z["cpu_usage"] != float64(1) {
			t.Fatalf("usage %v / %v", a, z)
		}
	})
	t.Run("lax numbers", func(t *testing.T) {
		for _, port := range []string{`"` + fmt.Sprint(b.port) + `"`, fmt.Sprintf("%d.0", b.port)} {
			mustDo(t, "PUT", site+"/api/v1/services/8/containers/n", `{"port": `+port+`}`, 200, nil)
		}
		for body, typ := range map[string]string{`{"port": "abc"}`: "int_parsing", `{"port": 4001.5}`: "int_from_float",
			`{"port": true}`: "int_type", `{"port": null}`: "int_type"} {
			status, raw := do(t, "PUT", site+"/api/v1/services/8/containers/n", body)
			if status != 422 || !strings.Contains(string(raw), `"loc":["body","port"]`) || !strings.Contains(string(raw), typ) {
				t.Fatalf("%s: %d %s", body, status, raw)
			}
		}
	})
	t.Run("non-integer image_id in a path", func(t *testing.T) {
		for _, u := range []string{site + "/api/v1/services/x7", site + "/api/v1/services/x7/register?image_name=a",
			site + "/api/v1/proxy/x7/y", adminURL + "/imagelb/services/x7"} {
			method := "GET"
			if strings.Contains(u, "register") {
				method = "POST"
			}
			status, raw := do(t, method, u, "[]")
			if status != 422 || !strings.Contains(string(raw), `"loc":["path","image_id"]`) {
				t.Fatalf("%s: %d %s", u, status, raw)
			}
		}
	})
	t.Run("unknown paths and methods on both mounts", func(t *testing.T) {
		for _, base := range []string{site + "/api/v1", adminURL + "/imagelb"} {
			wantError(t, "GET", base+"/nothing/here", "", 404, "Not Found")
			wantError(t, "POST", base+"/service/1/register", "[]", 404, "Not Found")
			wantError(t, "DELETE", base+"/stats", "", 405, "Method Not Allowed")
		}
		resp, err := client.Post(site+"/health", "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Fatalf("POST /health: %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
		}
	})
	t.Run("cors", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodOptions, site+"/api/v1/services/8/register", nil)
		req.Header.Set("Origin", "http://ui.example")
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "content-type")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h := resp.Header
		if resp.StatusCode != 204 || h.Get("Access-Control-Allow-Origin") != "http://ui.example" ||
			!strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") || h.Get("Access-Control-Allow-Headers") != "content-type" {
			t.Fatalf("preflight: %d %v", resp.StatusCode, h)
		}
		get := func(url, origin string) http.Header {
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			req.Header.Set("Origin", origin)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.Header
		}
		if h := get(site+"/api/v1/services", "http://ui.example"); h.Get("Access-Control-Allow-Origin") != "http://ui.example" || h.Get("Vary") != "Origin" {
			t.Fatalf("API answer to an allowed origin: %v", h)
		}
		// a page's next URL is in its Link header, which a script of another origin may read
		if h := get(site+"/api/v1/services?limit=1", "http://ui.example"); h.Get("Access-Control-Expose-Headers") != "Link" {
			t.Fatalf("API answer to an allowed origin does not expose Link: %v", h)
		}
		if h := get(site+"/api/v1/services", "http://evil.example"); h.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("API answer to another origin: %v", h)
		}
		if h := get(site+"/api/v1/proxy/8/", "http://ui.example"); h.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("a proxied answer got CORS headers: %v", h)
		}
	})
	t.Run("no default system service: 404", func(t *testing.T) {
		wantError(t, "GET", site+"/api/v1/unknown", "", 404, "Not Found")
		var e echo
		mustDo(t, "GET", site+"/api/v1/images/3", nil, 200, &e)
		if e.Backend != "orchestrator" || e.Path != "/images/3" {
			t.Fatalf("images route reached %+v", e)
		}
	})
	t.Run("JSON is not HTML-escaped", func(t *testing.T) {
		_, raw := do(t, "POST", site+"/api/v1/services/9/register?image_name=a%3Cb%3E%26c", "[]")
		if !strings.Contains(string(raw), `"image_name":"a<b>&c"`) {
			t.Fatalf("%s", raw)
		}
	})
}

// TestStaticTakeoverWarns: registering an image the configuration declares
// says so in the answer.
func TestStaticTakeoverWarns(t *testing.T) {
	port := freePort(t)
	b := newBackend(t, "b")
	startCaddy(t, siteConfig(port, fmt.Sprintf("service 60 static-web {\n\t\t\tcontainer s1 127.0.0.1:%d\n\t\t}", b.port)))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	_, raw := do(t, "POST", site+"/api/v1/services/60/register?image_name=taken", fmt.Sprintf(`[{"container_id": "x", "port": %d}]`, b.port))
	if w, _ := object(t, raw)["warning"].(string); !strings.Contains(w, "static service") {
		t.Fatalf("no warning on taking over a static service: %s", raw)
	}
	_, raw = do(t, "POST", site+"/api/v1/services/60/register?image_name=taken", "[]")
	if _, ok := object(t, raw)["warning"]; ok {
		t.Fatalf("a warning on re-registering a service that is no longer static: %s", raw)
	}
}
