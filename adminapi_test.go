package imagelb

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestBothMounts registers through one mount and reads and changes through
// the other: they serve the same registry with the same code.
func TestBothMounts(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	site := fmt.Sprintf("http://127.0.0.1:%d/api/v1", port)
	adm := adminURL + "/imagelb"
	a, b := newBackend(t, "a"), newBackend(t, "b")

	// object form through admin, query wins over the body
	mustDo(t, "POST", adm+"/services/40/register?algorithm=least_conn", map[string]any{
		"image_name": "web", "algorithm": "round_robin",
		"containers": []any{container("a", a)},
	}, 200, nil)
	var svc struct {
		ImageID    int64  `json:"image_id"`
		ImageName  string `json:"image_name"`
		Algorithm  string `json:"algorithm"`
		Containers []struct {
			ContainerID string `json:"container_id"`
			Status      string `json:"status"`
			Weight      int    `json:"weight"`
		} `json:"containers"`
	}
	mustDo(t, "GET", site+"/services/40", nil, 200, &svc)
	if svc.ImageName != "web" || svc.Algorithm != "least_connections" || len(svc.Containers) != 1 {
		t.Fatalf("site sees %+v", svc)
	}
	// PUT through the site, PATCH through admin, DELETE container through the site
	mustDo(t, "PUT", site+"/services/40/containers/b", map[string]any{"port": b.port, "weight": 5}, 200, nil)
	mustDo(t, "PATCH", adm+"/services/40/containers/a", map[string]any{"status": "draining"}, 200, nil)
	mustDo(t, "GET", adm+"/services/40", nil, 200, &svc)
	if len(svc.Containers) != 2 || svc.Containers[0].Status != "draining" || svc.Containers[1].Weight != 5 {
		t.Fatalf("admin sees %+v", svc)
	}
	for i := 0; i < 3; i++ { // a is draining: only b takes requests
		if got := proxyGet(t, fmt.Sprintf("http://127.0.0.1:%d", port), 40, "/").Backend; got != "b" {
			t.Fatalf("draining container got a request (%s)", got)
		}
	}
	var removed struct {
		ContainerID string `json:"container_id"`
	}
	mustDo(t, "DELETE", site+"/services/40/containers/a", nil, 200, &removed)
	if removed.ContainerID != "a" {
		t.Fatalf("removed %+v", removed)
	}
	var list []json.RawMessage // a bare array, as the original answered
	mustDo(t, "GET", adm+"/services", nil, 200, &list)
	if len(list) != 1 {
		t.Fatalf("list %s", list)
	}
	mustDo(t, "DELETE", site+"/services/40", nil, 200, nil)
	mustDo(t, "GET", adm+"/services/40", nil, 404, nil)
	mustDo(t, "DELETE", adm+"/services/40", nil, 404, nil)
}

// TestRegisterReplaceKeepsCounters: a re-registration replaces the set
// atomically; containers that stay keep their counters.
func TestRegisterReplaceKeepsCounters(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, ""))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	a, b, c := newBackend(t, "a"), newBackend(t, "b"), newBackend(t, "c")
	register(t, site+"/api/v1", 41, "", container("a", a), container("b", b))
	for i := 0; i < 4; i++ {
		proxyGet(t, site, 41, "/")
	}
	register(t, site+"/api/v1", 41, "", container("b", b), container("c", c))
	s := getStats(t, 41).Services[0]
	if s.TotalRequests != 4 || len(s.Containers) != 2 || s.Containers[0].ContainerID != "b" ||
		s.Containers[0].TotalRequests != 2 || s.Containers[1].TotalRequests != 0 {
		t.Fatalf("after replace: %+v", s)
	}
}

// TestBadInputChangesNothing sends every kind of bad request to both mounts
// and checks the status, the JSON detail, and that the registry is untouched.
func TestBadInputChangesNothing(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "max_body 4KiB"))
	a := newBackend(t, "a")
	register(t, adminURL+"/imagelb", 50, "", container("a", a))

	big := `[{"container_id":"x","port":1,"name":"` + strings.Repeat("n", 5000) + `"}]`
	cases := []struct {
		name, method, path, body string
		status                   int
		detail                   string
	}{
		{"malformed json", "POST", "/services/50/register?image_name=x", `[{"container_id":`, 422, "malformed JSON"},
		{"not a list or object", "POST", "/services/50/register?image_name=x", `42`, 422, "JSON array"},
		{"port as a non-numeric string", "POST", "/services/50/register?image_name=x", `[{"container_id":"a","port":"eighty"}]`, 422, "port"},
		{"port with a fraction", "POST", "/services/50/register?image_name=x", `[{"container_id":"a","port":80.5}]`, 422, "fractional part"},
		{"port zero", "POST", "/services/50/register?image_name=x", `[{"container_id":"a","port":0}]`, 422, "port must be from 1 to 65535"},
		{"port too big", "POST", "/services/50/register?image_name=x", `[{"container_id":"a","port":70000}]`, 422, "port must be from 1 to 65535"},
		{"missing container_id", "POST", "/services/50/register?image_name=x", `[{"port":80}]`, 422, "container_id is required"},
		{"duplicate container_id", "POST", "/services/50/register?image_name=x", `[{"container_id":"a","port":80},{"container_id":"a","port":81}]`, 422, "duplicate container_id"},
		{"unknown algorithm", "POST", "/services/50/register?image_name=x&algorithm=fastest", `[]`, 422, "unknown algorithm"},
		{"unknown status", "POST", "/services/50/register?image_name=x", `[{"container_id":"a","port":80,"status":"zombie"}]`, 422, "unknown status"},
		{"image_id differs", "POST", "/services/50/register?image_name=x", `[{"container_id":"a","port":80,"image_id":51}]`, 422, "differs from image_id 50"},
		{"missing image_name", "POST", "/services/50/register", `[]`, 422, "image_name is required"},
		{"non-numeric image_id", "POST", "/services/abc/register?image_name=x", `[]`, 422, "positive integer"},
		{"negative image_id", "POST", "/services/-3/register?image_name=x", `[]`, 422, "positive integer"},
		{"image_id beyond int64", "GET", "/services/99999999999999999999", ``, 422, "positive integer"},
		{"host with scheme", "POST", "/services/50/register?image_name=x", `[{"container_id":"a","port":80,"host":"http://evil"}]`, 422, "bare hostname"},
		{"weight too big", "POST", "/services/50/register?image_name=x", `[{"container_id":"a","port":80,"weight":1001}]`, 422, "weight"},
		{"body too large", "POST", "/services/50/register?image_name=x", big, 413, "larger than the limit"},
		{"put unknown image", "PUT", "/services/59/containers/a", `{"port":80}`, 404, "not registered"},
		{"put id mismatch", "PUT", "/services/50/containers/a", `{"container_id":"b","port":80}`, 422, "differs"},
		{"patch unknown container", "PATCH", "/services/50/containers/zz", `{"status":"draining"}`, 404, "not registered"},
		{"patch bad status", "PATCH", "/services/50/containers/a", `{"status":"asleep"}`, 422, "unknown status"},
		{"patch empty", "PATCH", "/services/50/containers/a", `{}`, 422, "nothing to change"},
		{"delete unknown container", "DELETE", "/services/50/containers/zz", ``, 404, "not registered"},
		{"wrong method", "PUT", "/services", ``, 405, "Method Not Allowed"},
		{"unknown route", "GET", "/servics", ``, 404, "Not Found"},
		{"stats bad filter", "GET", "/stats?image_id=x", ``, 422, "positive integer"},
	}
	mounts := map[string]string{
		"admin": adminURL + "/imagelb",
		"site":  fmt.Sprintf("http://127.0.0.1:%d/api/v1", port),
	}
	before := registrySnapshot(t)
	for mount, base := range mounts {
		for _, tc := range cases {
			t.Run(mount+"/"+tc.name, func(t *testing.T) {
				wantError(t, tc.method, base+tc.path, tc.body, tc.status, tc.detail)
				if after := registrySnapshot(t); !bytes.Equal(before, after) {
					t.Fatalf("registry changed:\nbefore %s\nafter  %s", before, after)
				}
			})
		}
	}
}

// TestAdminProtections: the admin mount, /imagelb/metrics included, keeps
// Caddy's Host check, and an unknown imagelb admin path is a JSON 404.
func TestAdminProtections(t *testing.T) {
	startCaddy(t, siteConfig(freePort(t), ""))
	for _, path := range []string{"/imagelb/services", metricsPath} {
		req, _ := http.NewRequest("GET", adminURL+path, nil)
		req.Host = "evil.example"
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("%s from a foreign Host: %d, want 403", path, resp.StatusCode)
		}
	}
	mustDo(t, "GET", adminURL+"/imagelb/nope", nil, 404, nil)
}

// TestSiteAPIModes: read_only refuses writes with 403; off hides the
// management routes but still proxies and answers /health.
func TestSiteAPIModes(t *testing.T) {
	roPort, offPort := freePort(t), freePort(t)
	startCaddy(t, fmt.Sprintf(`{
	admin localhost:2999
}
http://127.0.0.1:%d {
	imagelb {
		api read_only
	}
}
http://127.0.0.1:%d {
	imagelb {
		api off
	}
	respond "next handler" 418
}
`, roPort, offPort))
	a := newBackend(t, "a")
	register(t, adminURL+"/imagelb", 60, "", container("a", a))
	ro := fmt.Sprintf("http://127.0.0.1:%d", roPort)
	off := fmt.Sprintf("http://127.0.0.1:%d", offPort)

	mustDo(t, "GET", ro+"/api/v1/services/60", nil, 200, nil)
	mustDo(t, "POST", ro+"/api/v1/services/61/register?image_name=x", "[]", 403, nil)
	mustDo(t, "GET", off+"/api/v1/services/60", nil, 404, nil)
	mustDo(t, "GET", off+"/health", nil, 200, nil)
	if e := proxyGet(t, off, 60, "/q"); e.Backend != "a" {
		t.Fatalf("proxy with api off: %+v", e)
	}
	// paths the handler does not own go to the next handler
	if status, body := do(t, "GET", off+"/elsewhere", nil); status != 418 || string(body) != "next handler" {
		t.Fatalf("not passed on: %d %s", status, body)
	}
}
