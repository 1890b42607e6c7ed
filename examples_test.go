package imagelb

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
)

// TestTrafficExample runs examples/traffic/Caddyfile as written, on free
// ports, and checks what its comments promise: a sticky cookie that pins a
// client of image 1, 429s past image 2's rate limit, and image 3 keeping a
// user on one container of this Caddy's zone.
func TestTrafficExample(t *testing.T) {
	raw, err := os.ReadFile("examples/traffic/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(raw), "admin localhost:2019", "admin localhost:2999", 1)
	site := freePort(t)
	cfg = strings.Replace(cfg, ":4000 {", fmt.Sprintf(":%d {", site), 1)
	ports := map[string]int{}
	for _, p := range []string{"9101", "9102", "9103", "9104"} {
		ports[p] = freePort(t)
		cfg = strings.ReplaceAll(cfg, ":"+p, fmt.Sprintf(":%d", ports[p]))
	}
	startCaddy(t, cfg)
	base := fmt.Sprintf("http://127.0.0.1:%d/api/v1/proxy", site)
	get := func(url string, header map[string]string, cookie *http.Cookie) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		for k, v := range header {
			req.Header.Set(k, v)
		}
		if cookie != nil {
			req.AddCookie(cookie)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var out struct {
			Container string `json:"container"`
		}
		_ = json.Unmarshal(body, &out)
		return resp, out.Container
	}

	// image 1: sticky
	resp, first := get(base+"/1/", nil, nil)
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "imagelb_1" {
			cookie = c
		}
	}
	if resp.StatusCode != 200 || cookie == nil || !cookie.HttpOnly {
		t.Fatalf("image 1: status %d, cookies %v; want 200 and an HttpOnly imagelb_1", resp.StatusCode, resp.Cookies())
	}
	for i := 0; i < 8; i++ {
		if _, got := get(base+"/1/", nil, cookie); got != first {
			t.Fatalf("image 1 request %d with the cookie reached %s, want %s", i, got, first)
		}
	}

	// image 2: 5/s, burst 5
	limited := 0
	for i := 0; i < 12; i++ {
		resp, _ := get(base+"/2/", nil, nil)
		switch resp.StatusCode {
		case http.StatusTooManyRequests:
			limited++
			if resp.Header.Get("Retry-After") == "" {
				t.Fatal("a 429 without Retry-After")
			}
		case http.StatusOK:
		default:
			t.Fatalf("image 2: status %d", resp.StatusCode)
		}
	}
	if limited == 0 {
		t.Fatal("image 2: 12 quick requests, none rate limited")
	}

	// image 3: one container per user, in zone eu-west-1a (ports of 9101, 9102)
	local := map[string]bool{fmt.Sprint(ports["9101"]): true, fmt.Sprint(ports["9102"]): true}
	for _, user := range []string{"ada", "grace", "linus", "ken"} {
		_, c0 := get(base+"/3/", map[string]string{"X-User": user}, nil)
		if !local[c0] {
			t.Fatalf("user %s reached %s, not a container of this Caddy's zone", user, c0)
		}
		for i := 0; i < 3; i++ {
			if _, c := get(base+"/3/", map[string]string{"X-User": user}, nil); c != c0 {
				t.Fatalf("user %s moved from %s to %s", user, c0, c)
			}
		}
	}
}
