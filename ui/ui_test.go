package ui

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandlers(t *testing.T) {
	const prefix = "/api/v1/ui/"
	const csp = "default-src 'self'; img-src 'self' data:"
	tests := []struct {
		name        string
		handler     http.Handler
		method      string
		path        string
		contentType string // prefix of the expected Content-Type
		csp         string // expected Content-Security-Policy
		emptyBody   bool
	}{
		{name: "dashboard index under prefix", handler: Dashboard(prefix), method: http.MethodGet, path: prefix,
			contentType: "text/html"},
		{name: "dashboard script under prefix", handler: Dashboard(prefix), method: http.MethodGet, path: prefix + "app.js",
			contentType: "text/javascript"},
		{name: "docs page", handler: http.HandlerFunc(Docs), method: http.MethodGet, path: "/docs",
			contentType: "text/html", csp: csp},
		{name: "docs page with slash", handler: http.HandlerFunc(Docs), method: http.MethodGet, path: "/docs/",
			contentType: "text/html", csp: csp},
		{name: "docs script", handler: http.HandlerFunc(Docs), method: http.MethodGet, path: "/docs/docs.js",
			contentType: "text/javascript", csp: csp},
		{name: "docs stylesheet", handler: http.HandlerFunc(Docs), method: http.MethodGet, path: "/docs/docs.css",
			contentType: "text/css", csp: csp},
		{name: "docs page HEAD has no body", handler: http.HandlerFunc(Docs), method: http.MethodHead, path: "/docs",
			contentType: "text/html", csp: csp, emptyBody: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			tt.handler.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d, want 200", rec.Code)
			}
			if got := rec.Header().Get("Content-Type"); !strings.HasPrefix(got, tt.contentType) {
				t.Errorf("Content-Type %q, want %s", got, tt.contentType)
			}
			if got := rec.Header().Get("Content-Security-Policy"); got != tt.csp {
				t.Errorf("Content-Security-Policy %q, want %q", got, tt.csp)
			}
			if empty := rec.Body.Len() == 0; empty != tt.emptyBody {
				t.Errorf("body of %d bytes, want empty: %v", rec.Body.Len(), tt.emptyBody)
			}
		})
	}
}
