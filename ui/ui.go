// Package ui serves the imagelb plugin's two browser pages from files
// embedded at build time: the dashboard (index.html, style.css, app.js),
// which polls the stats API of the mount it is served from, and the API docs
// page (docs.html, docs.js, docs.css), which renders the OpenAPI document.
// Neither loads anything from outside, so both work on a machine without
// internet access. The OpenAPI document itself (docs/openapi.json) is
// embedded by the root package, which go:embed here cannot reach.
package ui

import (
	"embed"
	"net/http"
)

// dashboardFiles is the dashboard: a page, a stylesheet and a script that
// poll the stats API of the mount they are served from.
//
//go:embed index.html style.css app.js
var dashboardFiles embed.FS

// Dashboard serves the dashboard's files below prefix.
func Dashboard(prefix string) http.Handler {
	return http.StripPrefix(prefix, http.FileServerFS(dashboardFiles))
}

// The docs page: it renders the OpenAPI document in the browser with no
// request to anywhere else, like the dashboard.
var (
	//go:embed docs.html
	docsHTML []byte
	//go:embed docs.js
	docsJS []byte
	//go:embed docs.css
	docsCSS []byte
)

// Docs serves GET /docs and its two files.
func Docs(w http.ResponseWriter, r *http.Request) {
	var body []byte
	switch r.URL.Path {
	case "/docs", "/docs/":
		body = docsHTML
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
	case "/docs/docs.js":
		body = docsJS
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	case "/docs/docs.css":
		body = docsCSS
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
	}
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
