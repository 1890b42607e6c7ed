package imagelb

import (
	"embed"
	"io/fs"
	"net/http"
)

// uiFiles is the dashboard: a page, a stylesheet and a script that poll the
// stats API of the mount they are served from. Nothing is loaded from
// outside, so it works on a machine without internet access.
//
//go:embed ui/index.html ui/style.css ui/app.js
var uiFiles embed.FS

// uiHandler serves the dashboard's files below prefix.
func uiHandler(prefix string) http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return http.StripPrefix(prefix, http.FileServerFS(sub))
}
