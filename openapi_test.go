package imagelb

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	"github.com/imagelb/caddy-imagelb/admin"
	"github.com/imagelb/caddy-imagelb/registry"
)

// The OpenAPI document, loaded and validated once per test binary.
var (
	apiDocOnce sync.Once
	apiDoc     *openapi3.T
	apiDocErr  error
)

func openAPIDoc(t testing.TB) *openapi3.T {
	t.Helper()
	apiDocOnce.Do(func() {
		loader := openapi3.NewLoader()
		apiDoc, apiDocErr = loader.LoadFromData(openAPIDocument)
		if apiDocErr == nil {
			apiDocErr = apiDoc.Validate(loader.Context)
		}
	})
	if apiDocErr != nil {
		t.Fatalf("docs/openapi.json: %v", apiDocErr)
	}
	return apiDoc
}

// TestOpenAPIDocument: the document is valid OpenAPI 3.1 and names every
// route the router has, and the router every path of the document.
func TestOpenAPIDocument(t *testing.T) {
	doc := openAPIDoc(t)
	if !doc.IsOpenAPI31OrLater() {
		t.Fatalf("openapi %q, want 3.1", doc.OpenAPI)
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	// the management routes, as the router lists them, and what the
	// handler serves itself
	served := map[string]bool{}
	for _, rt := range admin.Routes() {
		method, path, _ := strings.Cut(rt, " ")
		served[method+" "+apiPrefix+path] = true
	}
	for _, rt := range []string{"GET /", "GET /health", "GET /docs", "GET /openapi.json"} {
		served[rt] = true
	}
	for _, m := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} {
		served[m+" "+proxyPrefix+"/{image_id}/{path}"] = true
	}
	for rt := range served {
		if !documented[rt] {
			t.Errorf("route %s is not in docs/openapi.json", rt)
		}
	}
	for rt := range documented {
		// system-service forwarding: any method, any path below /api/v1
		if !served[rt] && !strings.HasSuffix(rt, " "+apiPrefix+"/{path}") {
			t.Errorf("docs/openapi.json documents %s, which no route serves", rt)
		}
	}
}

// checkOpenAPI validates one exchange of the end-to-end tests against the
// document: the answer always, the request when it was accepted. Answers
// the API does not write (proxied, forwarded, Caddy's own) are skipped.
func checkOpenAPI(t testing.TB, req *http.Request, reqBody []byte, resp *http.Response, body []byte) {
	t.Helper()
	if resp.Header.Get("Via") != "" {
		return // a proxied answer (reverse_proxy adds Via): the container's, not the API's
	}
	path := req.URL.Path
	if rest, ok := strings.CutPrefix(path, "/imagelb"); ok && req.URL.Port() == "2999" {
		if rest == "" || strings.HasPrefix(rest, "/ui") {
			return
		}
		path = apiPrefix + rest // the admin mount: the same routes
	} else if req.URL.Port() == "2999" {
		return // Caddy's own admin routes
	}
	if strings.HasPrefix(path, proxyPrefix+"/") || strings.HasPrefix(path, apiPrefix+"/ui") ||
		(path != "/" && path != healthPath && path != "/openapi.json" && path != "/docs" && !strings.HasPrefix(path, apiPrefix+"/")) {
		return
	}
	doc := openAPIDoc(t)
	tmpl, params := matchTemplate(doc, path)
	if tmpl == "" || tmpl == apiPrefix+"/{path}" {
		return // forwarded to a system service
	}
	item := doc.Paths.Value(tmpl)
	op := item.GetOperation(req.Method)
	if op == nil && req.Method == http.MethodHead {
		return
	}
	if op == nil {
		if resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusNoContent {
			t.Errorf("openapi: %s %s answered %d, but the document has no %s on %s", req.Method, req.URL, resp.StatusCode, req.Method, tmpl)
		}
		return
	}
	r2 := req.Clone(context.Background())
	r2.URL = &url.URL{Path: path, RawQuery: req.URL.RawQuery}
	r2.Body = io.NopCloser(bytes.NewReader(reqBody))
	in := &openapi3filter.RequestValidationInput{
		Request:    r2,
		PathParams: params,
		Route:      &routers.Route{Spec: doc, Path: tmpl, PathItem: item, Method: req.Method, Operation: op},
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true,
			AuthenticationFunc:      openapi3filter.NoopAuthenticationFunc,
			SchemaValidationOptions: []openapi3.SchemaValidationOption{openapi3.EnableJSONSchema2020()}},
	}
	ctx := context.Background()
	if resp.StatusCode < 300 && !strings.HasPrefix(req.Header.Get("Content-Type"), "text/") {
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			t.Errorf("openapi: request %s %s %.200s does not match the document: %v", req.Method, req.URL, reqBody, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode,
		Header: resp.Header, Body: io.NopCloser(bytes.NewReader(body)), Options: in.Options}
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		t.Errorf("openapi: answer %d to %s %s does not match the document: %v\n%.400s", resp.StatusCode, req.Method, req.URL, err, body)
	}
}

// matchTemplate finds the document's path for path: the template whose
// literal segments match, preferring the most literal ones.
func matchTemplate(doc *openapi3.T, path string) (string, map[string]string) {
	segs := strings.Split(strings.TrimSuffix(path, "/"), "/")
	if path == "/" {
		segs = []string{""}
	}
	best, bestLiterals := "", -1
	var bestParams map[string]string
	keys := doc.Paths.InMatchingOrder()
	slices.Sort(keys)
	for _, tmpl := range keys {
		ts := strings.Split(strings.TrimSuffix(tmpl, "/"), "/")
		if tmpl == "/" {
			ts = []string{""}
		}
		if tmpl == apiPrefix+"/{path}" && len(segs) > 3 {
			ts = append(ts, segs[len(ts):]...) // the rest of the path
		}
		if len(ts) != len(segs) {
			continue
		}
		literals, params := 0, map[string]string{}
		ok := true
		for i, s := range ts {
			if name, isParam := strings.CutPrefix(s, "{"); isParam {
				params[strings.TrimSuffix(name, "}")] = segs[i]
				continue
			}
			if s != segs[i] {
				ok = false
				break
			}
			literals++
		}
		if ok && literals > bestLiterals {
			best, bestLiterals, bestParams = tmpl, literals, params
		}
	}
	return best, bestParams
}

// TestOpenAPIAlgorithms: the document's algorithm enums are the registry's
// table (the one list of algorithms the table cannot write itself).
func TestOpenAPIAlgorithms(t *testing.T) {
	doc := openAPIDoc(t)
	// "a, b (alias c), d or e" -> a b c d e
	var names []string
	for _, part := range strings.FieldsFunc(registry.AlgorithmNames, func(r rune) bool { return r == ',' || r == '(' || r == ')' }) {
		part = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(part), "or "))
		part = strings.TrimPrefix(part, "alias ")
		for _, name := range strings.Split(part, " or ") {
			if name = strings.TrimSpace(name); name != "" {
				names = append(names, name)
			}
		}
	}
	enum := func(schema string) []string {
		var out []string
		for _, v := range doc.Components.Schemas[schema].Value.Enum {
			out = append(out, v.(string))
		}
		slices.Sort(out)
		return out
	}
	var canonical []string
	for _, n := range names {
		if alg, ok := registry.ParseAlgorithm(n); !ok {
			t.Fatalf("AlgorithmNames lists %q, which ParseAlgorithm refuses", n)
		} else if string(alg) == n {
			canonical = append(canonical, n)
		}
	}
	slices.Sort(names)
	slices.Sort(canonical)
	if got := enum("AlgorithmIn"); !slices.Equal(got, names) {
		t.Errorf("AlgorithmIn enum %v, the registry accepts %v", got, names)
	}
	if got := enum("Algorithm"); !slices.Equal(got, canonical) {
		t.Errorf("Algorithm enum %v, the registry answers %v", got, canonical)
	}
}
