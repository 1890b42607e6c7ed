package imagelb

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/imagelb/caddy-imagelb/registry"
)

// TestStaticServicesAndReload: static services come from the Caddyfile; a
// reload keeps services registered through the API (and their counters),
// applies static changes, and removes a static service dropped from the file.
func TestStaticServicesAndReload(t *testing.T) {
	port := freePort(t)
	a, b := newBackend(t, "a"), newBackend(t, "b")
	cfg := func(services string) string {
		return fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		%s
	}
}
http://127.0.0.1:%d {
	imagelb
}
`, services, port)
	}
	startCaddy(t, cfg(fmt.Sprintf(`service 70 static-web {
			algorithm least_conn
			container s1 127.0.0.1:%d {
				name first
				weight 2
			}
		}
		service 71 other {
			container o1 127.0.0.1:%d
		}`, a.port, b.port)))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)

	var svc struct {
		ImageName  string `json:"image_name"`
		Algorithm  string `json:"algorithm"`
		Static     bool   `json:"static"`
		Containers []struct {
			Name   string `json:"name"`
			Weight int    `json:"weight"`
		} `json:"containers"`
	}
	mustDo(t, "GET", site+"/api/v1/services/70", nil, 200, &svc)
	if svc.ImageName != "static-web" || svc.Algorithm != "least_connections" || !svc.Static ||
		len(svc.Containers) != 1 || svc.Containers[0].Name != "first" || svc.Containers[0].Weight != 2 {
		t.Fatalf("static service: %+v", svc)
	}
	if e := proxyGet(t, site, 70, "/"); e.Backend != "a" {
		t.Fatalf("static service proxied to %q", e.Backend)
	}

	register(t, site+"/api/v1", 72, "", container("dyn", b))
	proxyGet(t, site, 72, "/")

	// reload without service 71: 70 stays, 71 goes, 72 (API) stays with its counters
	startCaddyNoReset(t, cfg(fmt.Sprintf(`service 70 static-web {
			container s1 127.0.0.1:%d
		}`, a.port)))
	mustDo(t, "GET", site+"/api/v1/services/71", nil, 404, nil)
	mustDo(t, "GET", site+"/api/v1/services/70", nil, 200, &svc)
	if svc.Algorithm != "round_robin" {
		t.Fatalf("static change not applied: %+v", svc)
	}
	if s := getStats(t, 72).Services[0]; s.TotalRequests != 1 || s.Containers[0].TotalRequests != 1 {
		t.Fatalf("reload lost the counters of image 72: %+v", s)
	}
	if s := getStats(t, 70).Services[0]; s.TotalRequests != 1 {
		t.Fatalf("reload lost the counters of static image 70: %+v", s)
	}
}

// TestJSONConfig loads the app and the handler from JSON.
func TestJSONConfig(t *testing.T) {
	port := freePort(t)
	a := newBackend(t, "a")
	tester := caddytest.NewTester(t)
	tester.InitServer(fmt.Sprintf(`{
	"admin": {"listen": "localhost:2999"},
	"apps": {
		"imagelb": {
			"algorithm": "least_connections",
			"max_retries": 0,
			"timeout": "2s",
			"services": [{"image_id": 80, "image_name": "json-web",
				"containers": [{"container_id": "j1", "host": "127.0.0.1", "port": %d, "weight": 3}]}]
		},
		"http": {"servers": {"s": {"listen": ["127.0.0.1:%d"],
			"routes": [{"handle": [{"handler": "imagelb", "api": "read_only"}]}]}}}
	}
}`, a.port, port), "json")
	if t.Failed() {
		t.FailNow()
	}
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	if e := proxyGet(t, site, 80, "/j"); e.Backend != "a" || e.Path != "/j" {
		t.Fatalf("proxy: %+v", e)
	}
	mustDo(t, "DELETE", site+"/api/v1/services/80", nil, 403, nil)
}

// TestEnvironmentFallbacks: HEALTH_CHECK_INTERVAL, MAX_RETRIES and TIMEOUT
// apply when the config is silent ("30" means seconds); the config wins.
func TestEnvironmentFallbacks(t *testing.T) {
	t.Setenv("HEALTH_CHECK_INTERVAL", "12")
	t.Setenv("MAX_RETRIES", "5")
	t.Setenv("TIMEOUT", "1m30s")
	a := new(App)
	if err := a.resolveOptions(); err != nil {
		t.Fatal(err)
	}
	if a.health.Interval != 12*time.Second || a.maxRetries != 5 || a.timeout != 90*time.Second {
		t.Fatalf("from env: interval %s retries %d timeout %s", a.health.Interval, a.maxRetries, a.timeout)
	}
	zero := 0
	a = &App{HealthInterval: caddy.Duration(time.Minute), MaxRetries: &zero, Timeout: caddy.Duration(time.Second)}
	if err := a.resolveOptions(); err != nil {
		t.Fatal(err)
	}
	if a.health.Interval != time.Minute || a.maxRetries != 0 || a.timeout != time.Second {
		t.Fatalf("config should win: interval %s retries %d timeout %s", a.health.Interval, a.maxRetries, a.timeout)
	}
	for env, val := range map[string]string{"TIMEOUT": "soon", "MAX_RETRIES": "-1", "HEALTH_CHECK_INTERVAL": "0"} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(env, val)
			if err := new(App).resolveOptions(); err == nil || !strings.Contains(err.Error(), env) {
				t.Fatalf("%s=%s: %v", env, val, err)
			}
		})
	}
}

// TestParseSeconds covers the duration forms of options and variables.
func TestParseSeconds(t *testing.T) {
	for in, want := range map[string]time.Duration{"30": 30 * time.Second, "1.5": 1500 * time.Millisecond, "2m": 2 * time.Minute, "1d": 24 * time.Hour} {
		if got, err := parseSeconds(in); err != nil || got != want {
			t.Errorf("parseSeconds(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1", "x", "10 s", "1e300", "NaN", "Inf", "99999999999999999999999", "0.0000000001"} {
		if _, err := parseSeconds(in); err == nil {
			t.Errorf("parseSeconds(%q) should fail", in)
		}
	}
}

// TestQuotas: max_services and max_total_containers through the site's
// API: a registration of a new service past max_services, a registration
// and a PUT that would cross max_total_containers are each refused with a
// 422 naming the option, and the registry is as it was.
func TestQuotas(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h\n\t\tmax_services 2\n\t\tmax_total_containers 4"))
	site := fmt.Sprintf("http://127.0.0.1:%d/api/v1", port)
	b := newBackend(t, "b")
	c := func(id string) map[string]any { return container(id, b) }
	register(t, site, 1, "image_name=one", c("a"), c("b"))
	register(t, site, 2, "image_name=two", c("a"))

	before := registrySnapshot(t)
	body := func(cs ...map[string]any) string {
		js, err := json.Marshal(cs)
		if err != nil {
			t.Fatal(err)
		}
		return string(js)
	}
	wantError(t, "POST", site+"/services/3/register?image_name=three", body(c("a")), 422, "max_services")
	wantError(t, "POST", site+"/services/2/register?image_name=two", body(c("a"), c("b"), c("c")), 422, "max_total_containers")
	unchanged := func() {
		t.Helper()
		if after := registrySnapshot(t); !bytes.Equal(before, after) {
			t.Fatalf("a refused change changed the registry:\nbefore %s\nafter  %s", before, after)
		}
	}
	unchanged()
	register(t, site, 2, "image_name=two", c("a"), c("b")) // 4: at the quota
	before = registrySnapshot(t)
	one, _ := json.Marshal(c("c"))
	wantError(t, "PUT", site+"/services/1/containers/c", string(one), 422, "max_total_containers")
	unchanged()
}

// TestStaticMirrorCeilings: a static service's mirror above the ceilings
// of max_body and max_in_flight is refused when the configuration loads,
// as the API refuses it.
func TestStaticMirrorCeilings(t *testing.T) {
	pct := 100.0
	for _, m := range []registry.Mirror{
		{ImageID: 2, Percent: &pct, MaxBody: registry.MaxMirrorBody + 1},
		{ImageID: 2, Percent: &pct, MaxInFlight: registry.MaxMirrorInFlight + 1},
	} {
		a := &App{Services: []StaticService{{ImageID: 1, ImageName: "web",
			ServiceOptions: registry.ServiceOptions{Mirror: &m}}}}
		if _, err := a.staticSpecs(); err == nil || !strings.Contains(err.Error(), "mirror.max_") {
			t.Errorf("mirror %+v: %v", m, err)
		}
	}
}
