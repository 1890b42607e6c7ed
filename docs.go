package imagelb

import (
	_ "embed"
	"net/http"
)

// openAPIDocument is the hand-written OpenAPI 3.1 document of the API,
// served at /openapi.json and {prefix}/openapi.json on both mounts.
//
//go:embed docs/openapi.json
var openAPIDocument []byte

// The docs page: it renders the OpenAPI document in the browser with no
// request to anywhere else, like the dashboard.
var (
	//go:embed ui/docs.html
	docsHTML []byte
	//go:embed ui/docs.js
	docsJS []byte
	//go:embed ui/docs.css
	docsCSS []byte
)

// serveDocs serves GET /docs and its two files.
func serveDocs(w http.ResponseWriter, r *http.Request) {
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
