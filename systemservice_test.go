package imagelb

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestSystemServicePathAttacks: a system service gets a request only when
// the path, cleaned as Caddy's path matcher cleans it (decoded, dot
// segments resolved, slashes merged), is one of its paths, and it gets the
// path that was matched (issue 24, row 10: /users/../internal/admin was
// forwarded as sent to the service of /users/*, and a backend that
// normalises served /internal/admin).
func TestSystemServicePathAttacks(t *testing.T) {
	port := freePort(t)
	orch, bill := newBackend(t, "orchestrator"), newBackend(t, "billing")
	startCaddy(t, dropinConfig(port, orch, bill, true)) // orchestrator: /auth/* /images/* /containers/*; billing: /users/* /billing/*
	site := fmt.Sprintf("http://127.0.0.1:%d", port)

	// get sends the path as written (Go's client does not clean it).
	get := func(t *testing.T, path string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest("GET", site+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.SplitN(path, "?", 2)[0]; req.URL.EscapedPath() != want {
			t.Fatalf("the client would send %q, not %q", req.URL.EscapedPath(), want)
		}
		return do(t, "GET", site+path, nil)
	}

	t.Run("reached outside the declared paths", func(t *testing.T) {
		for _, p := range []string{
			"/api/v1/users/../internal/admin",
			"/api/v1/users/%2e%2e/internal/admin",
			"/api/v1/users/%2E%2E/internal/admin",
			"/api/v1/users%2F..%2Finternal/admin",
			"/api/v1/users%2f%2e%2e%2finternal/admin",
			"/api/v1/billing/./../internal/admin",
		} {
			status, raw := get(t, p)
			var e echo
			if json.Unmarshal(raw, &e) == nil && e.Backend != "" {
				t.Errorf("%s reached %s as %q (raw %q): outside its paths", p, e.Backend, e.Path, e.RawPath)
			}
			if status != http.StatusNotFound {
				t.Errorf("%s: status %d, want 404 (no service serves /internal/admin): %.200s", p, status, raw)
			}
		}
	})
	t.Run("forwarded as matched", func(t *testing.T) {
		for _, tt := range []struct{ path, backend, got, raw string }{
			{"/api/v1/billing/../users/me", "billing", "/users/me", ""},
			{"/api/v1/users/%2e%2e/auth/login?x=1", "orchestrator", "/auth/login", ""},
			{"/api/v1/auth//login", "orchestrator", "/auth/login", ""},
			{"/api/v1/auth/a%2Fb", "orchestrator", "/auth/a/b", ""},
			{"/api/v1/users/a%40b", "billing", "/users/a@b", "/users/a%40b"}, // a clean path keeps its escapes
			{"/api/v1/users/a%20b/", "billing", "/users/a b/", ""},
		} {
			status, raw := get(t, tt.path)
			var e echo
			if status != 200 || json.Unmarshal(raw, &e) != nil {
				t.Errorf("%s: status %d %.200s, want 200 from %s", tt.path, status, raw, tt.backend)
				continue
			}
			if e.Backend != tt.backend || e.Path != tt.got || e.RawPath != tt.raw {
				t.Errorf("%s reached %s as %q (raw %q), want %s as %q (raw %q)", tt.path, e.Backend, e.Path, e.RawPath,
					tt.backend, tt.got, tt.raw)
			}
		}
	})
	t.Run("resolving elsewhere is a 400", func(t *testing.T) {
		for _, tt := range []struct{ path, detail string }{
			{"/api/v1/auth/../../admin", "outside /api/v1"},
			{"/api/v1/users/../../../config/", "outside /api/v1"},
			{"/api/v1/users/../services", "/api/v1/services"},
			{"/api/v1/users/../proxy/7/", "/api/v1/proxy/7/"},
		} {
			status, raw := get(t, tt.path)
			var e struct{ Detail string }
			if status != http.StatusBadRequest || json.Unmarshal(raw, &e) != nil || !strings.Contains(e.Detail, tt.detail) {
				t.Errorf("%s: %d %.300s, want 400 with a detail mentioning %q", tt.path, status, raw, tt.detail)
			}
		}
	})
}
