package imagelb

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// Tests of traffic split through a real Caddy and real backends: what a
// client sees, and what the statistics count.

// splitSite starts Caddy with the imagelb handler and returns the site.
func splitSite(t *testing.T) string {
	t.Helper()
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

// splitService is the Service with the fields of split and mirror.
type splitService struct {
	Warning          string `json:"warning"`
	TotalRequests    int64  `json:"total_requests"`
	SplitRequests    int64  `json:"split_requests"`
	MirroredRequests int64  `json:"mirrored_requests"`
	MirrorFailures   int64  `json:"mirror_failures"`
	MirrorDropped    int64  `json:"mirror_dropped"`
	MirrorTooLarge   int64  `json:"mirror_too_large"`
}

// splitStats fetches the statistics of one image with the counters of
// split and mirror.
func splitStats(t testing.TB, imageID int64) splitService {
	t.Helper()
	var doc struct {
		Services []splitService `json:"services"`
	}
	mustDo(t, "GET", fmt.Sprintf("%s/imagelb/stats?image_id=%d", adminURL, imageID), nil, 200, &doc)
	if len(doc.Services) != 1 {
		t.Fatalf("stats of image %d: %d services", imageID, len(doc.Services))
	}
	return doc.Services[0]
}

// TestSplitSequence: 10% of image 311's requests go to image 312, exactly
// one in every ten at the same places of each window, each side balancing
// by its own algorithm (round robin over a1 a2; weighted 2:1 over b1 b2);
// each request is counted on the image that served it, and the source
// shows split_requests.
func TestSplitSequence(t *testing.T) {
	site := splitSite(t)
	b1, b2 := container("b1", newBackend(t, "b1")), container("b2", newBackend(t, "b2"))
	b1["weight"] = 2
	registerObject(t, site, 312, map[string]any{"algorithm": "weighted_round_robin", "containers": []any{b1, b2}})
	registerObject(t, site, 311, map[string]any{
		"containers": []any{container("a1", newBackend(t, "a1")), container("a2", newBackend(t, "a2"))},
		"split":      []any{map[string]any{"image_id": 312, "percent": 10}},
	})
	var got []string
	for range 30 {
		got = append(got, sendOK(t, site+"/api/v1/proxy/311/", nil))
	}
	want := "a1 a2 a1 a2 a1 b1 a2 a1 a2 a1 " + // the 6th of every ten goes to 312
		"a2 a1 a2 a1 a2 b2 a1 a2 a1 a2 " +
		"a1 a2 a1 a2 a1 b1 a2 a1 a2 a1"
	if strings.Join(got, " ") != want {
		t.Fatalf("30 requests reached\n%s\nwant\n%s", strings.Join(got, " "), want)
	}
	src, dst := splitStats(t, 311), splitStats(t, 312)
	if src.TotalRequests != 27 || src.SplitRequests != 3 || dst.TotalRequests != 3 || dst.SplitRequests != 0 {
		t.Fatalf("image 311 %+v, image 312 %+v; want 27 requests and 3 split on 311, 3 requests on 312", src, dst)
	}
	if got := metricValue(t, `imagelb_split_requests_total{image_id="311"}`); got != 3 {
		t.Fatalf("imagelb_split_requests_total = %v, want 3", got)
	}
}

// TestSplitOverrides: a header or cookie saying always sends the request
// to the target, never keeps it on the image, whatever the rotation; such
// requests take no turn, so the rotation of the others stays exact.
func TestSplitOverrides(t *testing.T) {
	site := splitSite(t)
	registerObject(t, site, 322, map[string]any{"containers": []any{container("b", newBackend(t, "b"))}})
	registerObject(t, site, 321, map[string]any{
		"containers": []any{container("a", newBackend(t, "a"))},
		"split":      []any{map[string]any{"image_id": 322, "percent": 50, "header": "X-Canary", "cookie": "canary"}},
	})
	url := site + "/api/v1/proxy/321/"
	always, never := http.Header{"X-Canary": {"always"}}, http.Header{"X-Canary": {"NEVER"}}
	cookie := func(v string) *http.Cookie { return &http.Cookie{Name: "canary", Value: v} }
	var got []string
	for i := range 6 {
		got = append(got, sendOK(t, url, nil))
		switch i % 3 {
		case 0:
			got = append(got, "always:"+sendOK(t, url, always), "cookie-always:"+sendOK(t, url, nil, cookie("always")))
		case 1:
			got = append(got, "never:"+sendOK(t, url, never), "cookie-never:"+sendOK(t, url, nil, cookie("never")))
		case 2:
			// the header wins over the cookie; another value is no override
			got = append(got, "both:"+sendOK(t, url, never, cookie("always")), "other:"+sendOK(t, url, http.Header{"X-Canary": {"maybe"}}))
		}
	}
	want := "a always:b cookie-always:b b never:a cookie-never:a a both:a other:b " +
		"a always:b cookie-always:b b never:a cookie-never:a a both:a other:b"
	if strings.Join(got, " ") != want {
		t.Fatalf("requests reached\n%s\nwant\n%s", strings.Join(got, " "), want)
	}
}

// TestSplitSticky: with sticky, a client stays on the side it was first sent
// to (a signed cookie per source image); new clients keep the split's
// shares; a forged cookie is ignored; a side that cannot take requests sends
// the client back to the image.
func TestSplitSticky(t *testing.T) {
	site := splitSite(t)
	registerObject(t, site, 332, map[string]any{"containers": []any{container("b", newBackend(t, "b"))}})
	registerObject(t, site, 331, map[string]any{
		"sticky":     true,
		"containers": []any{container("a", newBackend(t, "a"))},
		"split":      []any{map[string]any{"image_id": 332, "percent": 50}},
	})
	url := site + "/api/v1/proxy/331/"
	sides := map[string]int{}
	for c := range 6 {
		first := send(t, url, nil)
		pin := first.cookieNamed("imagelb_split_331")
		if first.status != 200 || pin == nil {
			t.Fatalf("client %d: status %d, cookies %v: want 200 and imagelb_split_331", c, first.status, first.cookies)
		}
		sides[first.backend]++
		for range 4 {
			a := send(t, url, nil, pin)
			if a.backend != first.backend {
				t.Fatalf("client %d was sent to %s, then with its cookie to %s", c, first.backend, a.backend)
			}
			if a.cookieNamed("imagelb_split_331") != nil {
				t.Fatalf("client %d got a new split cookie while it kept its side", c)
			}
		}
	}
	if sides["a"] != 3 || sides["b"] != 3 {
		t.Fatalf("6 new clients went to %v, want 3 to each side (50%%)", sides)
	}
	forged := &http.Cookie{Name: "imagelb_split_331", Value: "332.AAAAAAAAAAAAAAAAAAAAAA"}
	seen := map[string]int{}
	for range 4 {
		seen[sendOK(t, url, nil, forged)]++
	}
	if seen["a"] != 2 || seen["b"] != 2 {
		t.Fatalf("with a forged cookie: %v, want the rotation (2 and 2)", seen)
	}

	// image 332 drained: its clients go back to 331
	var toB *http.Cookie
	for toB == nil {
		if a := send(t, url, nil); a.backend == "b" {
			toB = a.cookieNamed("imagelb_split_331")
		}
	}
	mustDo(t, "PATCH", site+"/api/v1/services/332/containers/b", map[string]any{"status": "draining"}, 200, nil)
	for range 3 {
		if got := sendOK(t, url, nil, toB); got != "a" {
			t.Fatalf("pinned to a drained image, the client reached %s, want a", got)
		}
	}
	mustDo(t, "PATCH", site+"/api/v1/services/332/containers/b", map[string]any{"status": "healthy"}, 200, nil)
	if got := sendOK(t, url, nil, toB); got != "b" {
		t.Fatalf("with 332 healthy again, its pinned client reached %s", got)
	}
}

// TestSplitTargetGone: a target with no available container sends its
// share back to the image; a deleted target makes the split inert and
// leaves a warning on the service.
func TestSplitTargetGone(t *testing.T) {
	site := splitSite(t)
	registerObject(t, site, 342, map[string]any{"containers": []any{container("b", newBackend(t, "b"))}})
	registerObject(t, site, 341, map[string]any{
		"containers": []any{container("a", newBackend(t, "a"))},
		"split":      []any{map[string]any{"image_id": 342, "percent": 100}},
	})
	url := site + "/api/v1/proxy/341/"
	if got := sendOK(t, url, nil); got != "b" {
		t.Fatalf("a 100%% split reached %s", got)
	}
	mustDo(t, "PATCH", site+"/api/v1/services/342/containers/b", map[string]any{"status": "unhealthy"}, 200, nil)
	if got := sendOK(t, url, nil); got != "a" {
		t.Fatalf("with the target unhealthy, the request reached %s, want the image itself", got)
	}
	mustDo(t, "DELETE", site+"/api/v1/services/342", nil, 200, nil)
	for range 3 {
		if got := sendOK(t, url, nil); got != "a" {
			t.Fatalf("with the target deleted, the request reached %s", got)
		}
	}
	var svc splitService
	mustDo(t, "GET", site+"/api/v1/services/341", nil, 200, &svc)
	if !strings.Contains(svc.Warning, "split[0] names image_id 342, which is not registered: its share stays on image_id 341") {
		t.Fatalf("warning %q", svc.Warning)
	}
	if s := splitStats(t, 341); s.TotalRequests != 4 || s.SplitRequests != 1 {
		t.Fatalf("image 341: %+v, want 4 requests of its own and 1 split", s)
	}
}

// TestSplitStaticServices: the Caddyfile's split, between static services.
func TestSplitStaticServices(t *testing.T) {
	port := freePort(t)
	a, b := newBackend(t, "a"), newBackend(t, "b")
	startCaddy(t, siteConfig(port, fmt.Sprintf(`health_interval 1h
		service 351 web {
			split 352 50%% header X-Canary
			container a 127.0.0.1:%d
		}
		service 352 canary {
			container b 127.0.0.1:%d
		}`, a.port, b.port)))
	url := fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy/351/", port)
	var got []string
	for range 4 {
		got = append(got, sendOK(t, url, nil))
	}
	got = append(got, sendOK(t, url, http.Header{"X-Canary": {"always"}}))
	if strings.Join(got, " ") != "a b a b b" {
		t.Fatalf("requests reached %v, want a b a b b", got)
	}
}

// TestSplitRejects: what registration refuses, at the field's location,
// with a detail saying how to fix it; a refused registration changes nothing.
func TestSplitRejects(t *testing.T) {
	site := splitSite(t)
	registerObject(t, site, 362, map[string]any{"containers": []any{}})
	registerObject(t, site, 361, map[string]any{"containers": []any{}, "split": []any{map[string]any{"image_id": 362, "percent": 10}}})
	before := registrySnapshot(t)
	body := func(id int64, opts string) string {
		return fmt.Sprintf(`{"image_name":"img-%d","containers":[],%s}`, id, opts)
	}
	tests := []struct {
		name   string
		id     int64
		opts   string
		detail string
	}{
		{"unknown image", 363, `"split":[{"image_id":999,"percent":10}]`,
			`"loc":["body","split",0,"image_id"],"msg":"split[0].image_id 999 is not registered: register image 999 first, or remove it from split"`},
		{"cycle", 362, `"split":[{"image_id":361,"percent":10}]`,
			`"loc":["body","split",0,"image_id"],"msg":"split[0].image_id 361 makes a cycle: 362 → 361 → 362; remove image 362 from the split of image 361, or this entry"`},
		{"itself", 361, `"split":[{"image_id":361,"percent":10}]`,
			`"loc":["body","split",0,"image_id"],"msg":"split[0].image_id 361 is the image itself`},
		{"percents above 100", 363, `"split":[{"image_id":361,"percent":70},{"image_id":362,"percent":40}]`,
			`"loc":["body","split"],"msg":"the percents of split add up to 110, more than 100`},
		{"percent missing", 363, `"split":[{"image_id":361}]`,
			`"loc":["body","split",0,"percent"],"msg":"split[0].percent is required`},
		{"percent not a number", 363, `"split":[{"image_id":361,"percent":"ten"}]`,
			`"loc":["body","split","percent"],"msg":"split.percent: expected a number, got JSON string"`},
		{"mirror percent missing", 363, `"mirror":{"image_id":361}`,
			`"loc":["body","mirror","percent"],"msg":"mirror.percent is required`},
		{"mirror unknown image", 363, `"mirror":{"image_id":999,"percent":5}`,
			`"loc":["body","mirror","image_id"],"msg":"mirror.image_id 999 is not registered`},
		{"mirror max_body", 363, `"mirror":{"image_id":361,"percent":5,"max_body":"big"}`,
			`"loc":["body","mirror","max_body"],"msg":"mirror.max_body: expected a size such as \"64KiB\" or a number of bytes, got JSON size \"big\""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantError(t, "POST", fmt.Sprintf("%s/api/v1/services/%d/register", site, tt.id), body(tt.id, tt.opts), 422, tt.detail)
		})
	}
	if after := registrySnapshot(t); string(after) != string(before) {
		t.Fatalf("refused registrations changed the registry:\n%s\n%s", before, after)
	}
}
