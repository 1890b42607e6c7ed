package imagelb

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/imagelb/caddy-imagelb/registry"
)

// linkNext is the Link header of a page that has a next one (RFC 8288).
var linkNext = regexp.MustCompile(`^<([^<>]+)>; rel="next"$`)

// getPage GETs a page of a list, checks the answer against the OpenAPI
// document and returns its body and the next page's URL ("" on the last).
func getPage(t *testing.T, pageURL string) ([]byte, string) {
	t.Helper()
	req, err := http.NewRequest("GET", pageURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", pageURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", pageURL, err)
	}
	checkOpenAPI(t, req, nil, resp, body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", pageURL, resp.StatusCode, body)
	}
	link := resp.Header.Get("Link")
	if link == "" {
		return body, ""
	}
	m := linkNext.FindStringSubmatch(link)
	if m == nil {
		t.Fatalf("GET %s: Link %q is not <URL>; rel=\"next\"", pageURL, link)
	}
	next, err := url.Parse(m[1])
	if err != nil || next.IsAbs() || !strings.HasPrefix(next.Path, "/") {
		t.Fatalf("GET %s: Link %q: want a path on this server", pageURL, link)
	}
	base, _ := url.Parse(pageURL)
	if next.Path != base.Path {
		t.Fatalf("GET %s: the next page %q is not on the same path", pageURL, m[1])
	}
	for k, vs := range base.Query() { // the request's other parameters are kept
		if k != "after" && !slices.Equal(next.Query()[k], vs) {
			t.Fatalf("GET %s: the next page %q lost %s=%v", pageURL, m[1], k, vs)
		}
	}
	return body, base.ResolveReference(next).String()
}

// pagedStats is the part of a paged /stats the tests read.
type pagedStats struct {
	TotalRequests int64 `json:"total_requests"`
	UserServices  struct {
		TotalServices   int `json:"total_services"`
		TotalContainers int `json:"total_containers"`
	} `json:"user_services"`
	ContainersByStatus map[string]int `json:"containers_by_status"`
	Services           []struct {
		ImageID       int64 `json:"image_id"`
		TotalRequests int64 `json:"total_requests"`
	} `json:"services"`
}

// walkPages follows the Link headers from the first page and returns the
// image_ids of every page, in order; check sees each page's body.
func walkPages(t *testing.T, first string, limit int, check func(body []byte)) []int64 {
	t.Helper()
	var seen []int64
	for u, pages := first, 0; u != ""; pages++ {
		if pages > 200 {
			t.Fatalf("%s: the walk does not end", first)
		}
		body, next := getPage(t, u)
		var ids []int64
		if strings.Contains(u, "/stats") || strings.Contains(u, "/usage") {
			var doc struct {
				Services []struct {
					ImageID int64 `json:"image_id"`
				} `json:"services"`
				Images []struct {
					ImageID int64 `json:"image_id"`
				} `json:"images"`
			}
			mustUnmarshal(t, body, &doc)
			for _, s := range append(doc.Services, doc.Images...) {
				ids = append(ids, s.ImageID)
			}
		} else {
			var list []struct { // a bare array, paged or not
				ImageID int64 `json:"image_id"`
			}
			mustUnmarshal(t, body, &list)
			for _, s := range list {
				ids = append(ids, s.ImageID)
			}
		}
		if limit > 0 && len(ids) > limit {
			t.Fatalf("%s: %d images in a page of %d", u, len(ids), limit)
		}
		if next != "" && len(ids) == 0 {
			t.Fatalf("%s: an empty page with a next one", u)
		}
		if check != nil {
			check(body)
		}
		seen = append(seen, ids...)
		u = next
	}
	return seen
}

func mustUnmarshal(t *testing.T, body []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("decoding %.300s: %v", body, err)
	}
}

func idRange(from, to int64, keep func(int64) bool) []int64 {
	var out []int64
	for id := from; id <= to; id++ {
		if keep == nil || keep(id) {
			out = append(out, id)
		}
	}
	return out
}

// TestPagedLists: through real Caddy, on both mounts, every list walked
// by following its Link headers gets every image it selects exactly once,
// in order; the last page has no Link; a paged /stats keeps the
// registry-wide totals; lists without parameters answer as before.
func TestPagedLists(t *testing.T) {
	port := freePort(t)
	// images 101..125: "api-N" odd, "web-N" even; every third also has a
	// draining container; four have an external port
	mapped := map[int64]int{}
	var mappedSites []string
	for _, id := range []int64{103, 109, 115, 121} {
		mapped[id] = freePort(t)
		mappedSites = append(mappedSites, fmt.Sprintf("http://127.0.0.1:%d", mapped[id]))
	}
	startCaddy(t, siteConfig(port, "health_interval 1h")+strings.Join(mappedSites, ", ")+" {\n\timagelb {\n\t\tmapped_ports\n\t}\n}\n")
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	b := newBackend(t, "b")
	for id := int64(101); id <= 125; id++ {
		name := "web"
		if id%2 == 1 {
			name = "api"
		}
		cs := []map[string]any{container("h", b)}
		if id%3 == 0 {
			d := container("d", b)
			d["status"] = "draining"
			cs = append(cs, d)
		}
		q := ""
		if p, ok := mapped[id]; ok {
			q = fmt.Sprintf("&external_port=%d", p)
		}
		mustDo(t, "POST", fmt.Sprintf("%s/api/v1/services/%d/register?image_name=%s-%d%s", site, id, name, id, q), cs, 200, nil)
	}
	// the usage ledger outlives removals: earlier tests in this process may
	// have left usage under these image ids, which the /usage walks list too
	usedBefore := walkPages(t, site+"/api/v1/usage?limit=1000", 1000, func([]byte) {})
	// traffic: 3 requests to 104 and 110, 1 to 107
	for id, n := range map[int64]int{104: 3, 110: 3, 107: 1} {
		for range n {
			proxyGet(t, site, id, "/")
		}
	}
	draining := func(id int64) bool { return id%3 == 0 }
	for _, mount := range []string{site + "/api/v1", adminURL + "/imagelb"} {
		t.Run(mount, func(t *testing.T) {
			for _, tc := range []struct {
				path  string
				limit int
				want  []int64
			}{
				{"/services?limit=7", 7, idRange(101, 125, nil)},
				{"/services?limit=1&q=web", 1, idRange(101, 125, func(id int64) bool { return id%2 == 0 })},
				{"/services?limit=4&status=draining", 4, idRange(101, 125, draining)},
				{"/services?limit=25", 25, idRange(101, 125, nil)},
				{"/services?limit=3&after=120", 3, idRange(121, 125, nil)},
				{"/services?status=draining&q=api", 0, idRange(101, 125, func(id int64) bool { return draining(id) && id%2 == 1 })},
				{"/port-mappings?limit=3", 3, []int64{103, 109, 115, 121}},
				{"/stats?limit=6", 6, idRange(101, 125, nil)},
				{"/stats?limit=4&sort=requests", 4, append([]int64{104, 110, 107}, idRange(101, 125, func(id int64) bool {
					return id != 104 && id != 110 && id != 107
				})...)},
				{"/stats?limit=2&sort=failed_requests&q=web-11", 2, idRange(110, 119, func(id int64) bool { return id%2 == 0 })},
				{"/stats?limit=1000&sort=image_id&status=draining", 1000, idRange(101, 125, draining)},
				{"/usage?limit=2", 2, []int64{104, 107, 110}},
				{"/usage?limit=1&q=web", 1, []int64{104, 110}},
			} {
				t.Run(tc.path, func(t *testing.T) {
					got := walkPages(t, mount+tc.path, tc.limit, func(body []byte) {
						if !strings.HasPrefix(tc.path, "/stats") {
							return
						}
						var st pagedStats // the totals are the registry's on every page
						mustUnmarshal(t, body, &st)
						want := map[string]int{"healthy": 25, "draining": 8, "unhealthy": 0, "starting": 0, "unknown": 0}
						if st.UserServices.TotalServices != 25 || st.UserServices.TotalContainers != 33 ||
							st.TotalRequests != 7 || !maps.Equal(st.ContainersByStatus, want) {
							t.Fatalf("page totals %+v", st)
						}
					})
					want := tc.want
					if strings.HasPrefix(tc.path, "/usage") {
						got = slices.DeleteFunc(got, func(id int64) bool { return id < 101 || id > 125 })
						want = slices.Clone(want)
						for _, id := range usedBefore {
							if id >= 101 && id <= 125 && (!strings.Contains(tc.path, "q=web") || id%2 == 0) && !slices.Contains(want, id) {
								want = append(want, id)
							}
						}
						slices.Sort(want)
					}
					if !slices.Equal(got, want) {
						t.Fatalf("walk saw %v, want %v", got, want)
					}
				})
			}
		})
	}

	t.Run("without parameters, as before", func(t *testing.T) {
		body, next := getPage(t, site+"/api/v1/services")
		var list []json.RawMessage
		mustUnmarshal(t, body, &list)
		if len(list) != 25 || next != "" {
			t.Fatalf("%d services, next %q", len(list), next)
		}
		body, next = getPage(t, site+"/api/v1/port-mappings")
		var ms []struct {
			ExternalPort int `json:"external_port"`
		}
		mustUnmarshal(t, body, &ms)
		if len(ms) != len(mapped) || next != "" || !slices.IsSortedFunc(ms, func(a, b struct {
			ExternalPort int `json:"external_port"`
		}) int {
			return a.ExternalPort - b.ExternalPort
		}) {
			t.Fatalf("port mappings %+v (sorted by port), next %q", ms, next)
		}
		body, next = getPage(t, site+"/api/v1/stats")
		var st pagedStats
		mustUnmarshal(t, body, &st)
		if len(st.Services) != 25 || next != "" || st.ContainersByStatus["draining"] != 8 {
			t.Fatalf("stats %+v, next %q", st, next)
		}
	})

	t.Run("an image removed between pages", func(t *testing.T) {
		var seen []int64
		u := site + "/api/v1/services?limit=5"
		for pages := 0; u != ""; pages++ {
			body, next := getPage(t, u)
			var list []struct {
				ImageID int64 `json:"image_id"`
			}
			mustUnmarshal(t, body, &list)
			for _, s := range list {
				seen = append(seen, s.ImageID)
			}
			if pages == 0 { // the cursor's own image, and one ahead of it
				mustDo(t, "DELETE", site+"/api/v1/services/105", nil, 200, nil)
				mustDo(t, "DELETE", site+"/api/v1/services/112", nil, 200, nil)
			}
			u = next
		}
		if want := idRange(101, 125, func(id int64) bool { return id != 112 }); !slices.Equal(seen, want) {
			t.Fatalf("walk saw %v, want %v", seen, want)
		}
	})
}

// TestPagedListsBadValues: bad paging parameters are 422 at
// ["query", NAME] with a message that says what is allowed, on both mounts.
func TestPagedListsBadValues(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	for _, mount := range []string{site + "/api/v1", adminURL + "/imagelb"} {
		for _, tc := range []struct{ path, field, says string }{
			{"/services?limit=0", "limit", "from 1 to 1000"},
			{"/services?limit=1001", "limit", "from 1 to 1000"},
			{"/port-mappings?limit=ten", "limit", "from 1 to 1000"},
			{"/usage?limit=-1", "limit", "from 1 to 1000"},
			{"/services?after=abc", "after", "positive integer"},
			{"/stats?after=0", "after", "positive integer"},
			{"/services?status=sick", "status", "healthy, unhealthy, starting, draining or unknown"},
			{"/usage?status=sick", "status", "healthy, unhealthy"},
			{"/stats?sort=name", "sort", "requests, requests_per_second, failed_requests, image_id"},
			{"/services?sort=requests", "sort", "only /stats"},
			{"/stats?sort=requests&after=5", "after", "IMAGE_ID:VALUE"},
			{"/stats?after=5:12", "after", "image_id"},
		} {
			status, body := do(t, "GET", mount+tc.path, nil)
			var e struct {
				Detail []struct {
					Loc []any  `json:"loc"`
					Msg string `json:"msg"`
				} `json:"detail"`
			}
			_ = json.Unmarshal(body, &e)
			if status != 422 || len(e.Detail) != 1 || fmt.Sprint(e.Detail[0].Loc) != fmt.Sprint([]any{"query", tc.field}) ||
				!strings.Contains(e.Detail[0].Msg, tc.says) {
				t.Errorf("GET %s: %d %s; want 422 at [query %s] saying %q", mount+tc.path, status, body, tc.field, tc.says)
			}
		}
	}
}

// TestOpenAPIPagingEnums: the document's status and sort enums are the
// registry's lists.
func TestOpenAPIPagingEnums(t *testing.T) {
	doc := openAPIDoc(t)
	enum := func(schema *openapi3.Schema) []string {
		var out []string
		for _, v := range schema.Enum {
			out = append(out, fmt.Sprint(v))
		}
		return out
	}
	var statuses, sorts []string
	for _, s := range registry.Statuses {
		statuses = append(statuses, string(s))
	}
	for _, s := range registry.Sorts {
		sorts = append(sorts, string(s))
	}
	if got := enum(doc.Components.Schemas["ContainerStatus"].Value); !slices.Equal(got, statuses) {
		t.Errorf("ContainerStatus enum %v, registry.Statuses %v", got, statuses)
	}
	if got := enum(doc.Components.Parameters["sort"].Value.Schema.Value); !slices.Equal(got, sorts) {
		t.Errorf("sort enum %v, registry.Sorts %v", got, sorts)
	}
}
