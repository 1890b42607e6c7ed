package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/imagelb/caddy-imagelb/registry"
)

func newAPI(reg *registry.Registry) *API {
	return &API{Prefix: "/api/v1", MaxBody: 64, Registry: func() *registry.Registry { return reg }, OpenAPI: []byte(`{"openapi":"3.1.0"}`)}
}

// serve runs one request through the API and decodes the JSON answer.
func serve(t *testing.T, a *API, method, target, body string) (*httptest.ResponseRecorder, map[string]any) {
	t.Helper()
	w := httptest.NewRecorder()
	a.ServeHTTP(w, httptest.NewRequest(method, target, strings.NewReader(body)))
	var m map[string]any
	if !json.Valid(w.Body.Bytes()) {
		t.Fatalf("%s %s: answer is not JSON: %q", method, target, w.Body.String())
	}
	_ = json.Unmarshal(w.Body.Bytes(), &m) // nil for the bare arrays
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: Content-Type %q", method, target, ct)
	}
	return w, m
}

func TestRouting(t *testing.T) {
	a := newAPI(registry.New(registry.Options{}))
	tests := []struct {
		name, method, target, body string
		status                     int
		allow                      string
	}{
		{"list", "GET", "/api/v1/services", "", 200, ""},
		{"trailing slash", "GET", "/api/v1/services/", "", 200, ""},
		{"register", "POST", "/api/v1/services/1/register?image_name=x", "[]", 200, ""},
		{"get", "GET", "/api/v1/services/1", "", 200, ""},
		{"escaped container id", "PUT", "/api/v1/services/1/containers/a%2Fb", `{"port":80}`, 200, ""},
		{"stats", "GET", "/api/v1/stats?image_id=1", "", 200, ""},
		{"port mappings", "GET", "/api/v1/port-mappings", "", 200, ""},
		{"health-check not built yet", "POST", "/api/v1/health-check", "", 501, ""},
		{"unknown route", "GET", "/api/v1/nothing", "", 404, ""},
		{"system services, none", "GET", "/api/v1/system-services", "", 200, ""},
		{"openapi", "GET", "/api/v1/openapi.json", "", 200, ""},
		{"HEAD as GET", "HEAD", "/api/v1/stats", "", 200, ""},
		{"too deep", "GET", "/api/v1/services/1/containers", "", 404, ""},
		{"wrong method", "POST", "/api/v1/services/1", "", 405, "DELETE, GET"},
		{"wrong method on container", "GET", "/api/v1/services/1/containers/a", "", 405, "DELETE, PATCH, PUT"},
		{"body over MaxBody", "POST", "/api/v1/services/1/register?image_name=x", "[" + strings.Repeat(" ", 100) + "]", 413, ""},
		{"stats bad filter", "GET", "/api/v1/stats?image_id=0", "", 422, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, m := serve(t, a, tt.method, tt.target, tt.body)
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d: %v", w.Code, tt.status, m)
			}
			if tt.status >= 400 && m["detail"] == nil {
				t.Fatalf("error without detail: %v", m)
			}
			if want := map[int]string{404: NotFound, 405: MethodNotAllowed}[tt.status]; want != "" && m["detail"] != want {
				t.Fatalf("detail %v, want %q (the original's words)", m["detail"], want)
			}
			if got := w.Header().Get("Allow"); got != tt.allow {
				t.Fatalf("Allow %q, want %q", got, tt.allow)
			}
		})
	}
	if c := a.Registry().Lookup(1).Container("a/b"); c == nil {
		t.Fatal("the escaped container id was not unescaped")
	}
}

func TestOwns(t *testing.T) {
	a := newAPI(nil)
	for target, want := range map[string]bool{
		"/api/v1/services":            true,
		"/api/v1/services/7/register": true,
		"/api/v1/users":               false,
		"/api/v2/services":            false,
		"/health":                     false,
	} {
		if got := a.Owns(httptest.NewRequest("GET", target, nil)); got != want {
			t.Errorf("Owns(%s) = %v, want %v", target, got, want)
		}
	}
}

func TestNoRegistry(t *testing.T) {
	w, m := serve(t, newAPI(nil), "GET", "/api/v1/services", "")
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(m["detail"].(string), "not running") {
		t.Fatalf("%d %v", w.Code, m)
	}
}
