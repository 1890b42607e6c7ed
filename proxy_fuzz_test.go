package imagelb

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseProxyPath checks the split of /api/v1/proxy/{image_id}/{path}:
// whatever the escaped path, the image id is the first segment exactly as
// sent (ASCII digits only, so 1%2F2, %31 or ../2 never name another image)
// and the rest is a path the container can be sent.
//
//	go test -run '^$' -fuzz '^FuzzParseProxyPath$' -fuzztime 60s .
func FuzzParseProxyPath(f *testing.F) {
	for _, s := range []string{
		"/api/v1/proxy/1/x",
		"/api/v1/proxy/1%2F2/x",
		"/api/v1/proxy/../2/x",
		"/api/v1/proxy/1/../2",
		"/api/v1/proxy/%31/x",
		"/api/v1/proxy/01/x",
		"/api/v1/proxy/+1/x",
		"/api/v1/proxy/-1/x",
		"/api/v1/proxy/9223372036854775808/x",
		"/api/v1/proxy",
		"/api/v1/proxy/",
		"/api/v1/proxyX/1",
		"/api/v1/proxy/1/a%zz",
		"/api/v1/proxy/1",
		"/api/v1/proxy/1/",
		"/api/v1/proxy/0/x",
		"/api/v1/proxy//1/x",
		"/api/v1/proxy/1%2f2",
		"/api/v1/proxy/1./x",
		"/api/v1/proxy/1;2/x",
		"/api/v1/proxy/9223372036854775807/a/b%2Fc?q",
		"/api/v1/proxy/1/%2e%2e/2",
		"/api/v1/proxy/1 /x",
		"/api/v1/proxy/\u0661/x", // ARABIC-INDIC DIGIT ONE
		"/API/v1/proxy/1/x",
		"",
	} {
		f.Add(s)
	}
	const prefix = proxyPrefix + "/"
	f.Fuzz(func(t *testing.T, escaped string) {
		id, target, status, detail := parseProxyPath(escaped)

		// The first segment as sent, when escaped is a proxy path at all.
		seg, isProxy := "", false
		if rest, ok := strings.CutPrefix(escaped, prefix); ok {
			seg, _, _ = strings.Cut(rest, "/")
			isProxy = true
		}
		allDigits := seg != ""
		for i := 0; i < len(seg); i++ {
			if seg[i] < '0' || seg[i] > '9' {
				allDigits = false
			}
		}

		if status != 0 {
			switch status {
			case http.StatusBadRequest, http.StatusNotFound, http.StatusUnprocessableEntity:
			default:
				t.Fatalf("parseProxyPath(%q): status %d, want 400, 404 or 422", escaped, status)
			}
			if detail == "" {
				t.Fatalf("parseProxyPath(%q): status %d without a detail", escaped, status)
			}
			if id != 0 || target != "" {
				t.Fatalf("parseProxyPath(%q): status %d with id %d and target %q", escaped, status, id, target)
			}
			return
		}

		if detail != "" {
			t.Fatalf("parseProxyPath(%q): accepted with detail %q", escaped, detail)
		}
		if !isProxy {
			t.Fatalf("parseProxyPath(%q): not under %s, yet accepted as image %d", escaped, prefix, id)
		}
		if !allDigits {
			t.Fatalf("parseProxyPath(%q): first segment %q is not all ASCII digits, yet accepted as image %d", escaped, seg, id)
		}
		if id <= 0 {
			t.Fatalf("parseProxyPath(%q): accepted with image id %d", escaped, id)
		}
		if n, err := strconv.ParseInt(seg, 10, 64); err != nil || n != id {
			t.Fatalf("parseProxyPath(%q): image id %d, but the segment %q is %d (%v)", escaped, id, seg, n, err)
		}
		if !strings.HasPrefix(target, "/") {
			t.Fatalf("parseProxyPath(%q): target %q does not start with /", escaped, target)
		}
		if escaped != prefix+seg+target && (escaped != prefix+seg || target != "/") {
			t.Fatalf("parseProxyPath(%q): id segment %q and target %q are not the path", escaped, seg, target)
		}
		if _, err := url.PathUnescape(target); err != nil {
			t.Fatalf("parseProxyPath(%q): target %q does not unescape: %v", escaped, target, err)
		}
	})
}
