package imagelb

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// portsConfig is a Caddyfile with the API's site, an ordinary
// reverse_proxy site, a site of mapped ports and a one-port port_range
// served by that site.
func portsConfig(api, other, mapped, inRange int) string {
	return fmt.Sprintf(`{
	admin localhost:2999
	imagelb {
		health_interval 1h
		port_range %[4]d-%[4]d
	}
}
http://127.0.0.1:%[1]d {
	imagelb
}
http://127.0.0.1:%[2]d {
	reverse_proxy 127.0.0.1:1
}
http://127.0.0.1:%[3]d, http://127.0.0.1:%[4]d {
	imagelb {
		mapped_ports
	}
}
`, api, other, mapped, inRange)
}

// TestExternalPortRule: external_port maps only ports meant for mapping;
// the API's own port, another site's port and a port outside port_range
// that no mapped-port site serves are refused with a 422 and change
// nothing (issue 24, row 2: the API's site was taken over).
func TestExternalPortRule(t *testing.T) {
	apiPort, otherPort, mappedPort, rangePort, loosePort := freePort(t), freePort(t), freePort(t), freePort(t), freePort(t)
	startCaddy(t, portsConfig(apiPort, otherPort, mappedPort, rangePort))
	site := fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	attacker := newBackend(t, "attacker")
	ctr := `[{"container_id": "x", "host": "127.0.0.1", "port": ` + fmt.Sprint(attacker.port) + `}]`

	for _, tc := range []struct {
		name   string
		port   int
		detail string
	}{
		{"the API's own port", apiPort, "the port of a site this Caddy serves"},
		{"another site's port", otherPort, "the port of a site this Caddy serves"},
		{"a port outside port_range and no mapped-port site", loosePort, "is not a port for mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, base := range []string{site + "/api/v1", adminURL + "/imagelb"} {
				wantError(t, "POST", fmt.Sprintf("%s/services/66/register?image_name=evil&external_port=%d", base, tc.port),
					ctr, 422, tc.detail)
				wantError(t, "POST", base+"/services/66/register", fmt.Sprintf(
					`{"image_name": "evil", "external_port": %d, "containers": %s}`, tc.port, ctr), 422, tc.detail)
			}
			if status, _ := do(t, "GET", site+"/api/v1/services/66", nil); status != 404 {
				t.Fatalf("a refused registration created image 66: %d", status)
			}
			var h map[string]any
			mustDo(t, "GET", site+"/health", nil, 200, &h)
			if h["status"] != "healthy" {
				t.Fatalf("/health on the API's site: %v", h)
			}
		})
	}

	t.Run("port_range and a mapped-port site", func(t *testing.T) {
		a, b := newBackend(t, "a"), newBackend(t, "b")
		register(t, site+"/api/v1", 10, fmt.Sprintf("&external_port=%d", mappedPort), container("a", a))
		register(t, site+"/api/v1", 11, "", container("b", b)) // the range's free port
		var e echo
		mustDo(t, "GET", fmt.Sprintf("http://127.0.0.1:%d/api/v1/services?x=1", mappedPort), nil, 200, &e)
		if e.Backend != "a" || e.Path != "/api/v1/services" || e.Query != "x=1" {
			t.Fatalf("mapped-port site %d: %+v", mappedPort, e)
		}
		mustDo(t, "GET", fmt.Sprintf("http://127.0.0.1:%d/health", rangePort), nil, 200, &e)
		if e.Backend != "b" || e.Path != "/health" {
			t.Fatalf("port_range port %d: %+v", rangePort, e)
		}
		// the range is used up: no port of another site is handed out
		wantError(t, "POST", site+"/api/v1/services/12/register?image_name=x", "[]", 409, "no free external port")
		resetRegistry(t)
		wantError(t, "GET", fmt.Sprintf("http://127.0.0.1:%d/anything", mappedPort), "", 404, "no image is mapped to port")
	})
}

// TestMappingNeverAnswersForTheAPI: a mapping made while a port was a
// mapped-port site is left out when a reload serves the API there, and
// the API answers on it (a record restored or kept from before must not
// take the site over).
func TestMappingNeverAnswersForTheAPI(t *testing.T) {
	apiPort, otherPort, mappedPort, rangePort := freePort(t), freePort(t), freePort(t), freePort(t)
	startCaddy(t, portsConfig(apiPort, otherPort, mappedPort, rangePort))
	site := fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	register(t, site+"/api/v1", 20, fmt.Sprintf("&external_port=%d", mappedPort), container("a", newBackend(t, "a")))

	// the mapped port becomes the API's site
	startCaddyNoReset(t, portsConfig(mappedPort, otherPort, apiPort, rangePort))
	site = fmt.Sprintf("http://127.0.0.1:%d", mappedPort)
	var h map[string]any
	mustDo(t, "GET", site+"/health", nil, 200, &h)
	if h["status"] != "healthy" {
		t.Fatalf("/health on the API's site is not the API's: %v", h)
	}
	if status, body := do(t, "GET", site+"/api/v1/services/20", nil); status != 404 {
		t.Fatalf("the service mapped to the API's port was kept: %d %s", status, body)
	}
}

// TestStaticExternalPortOnASite: a static service mapped to a site's port
// is a config load error that says which ports may be mapped.
func TestStaticExternalPortOnASite(t *testing.T) {
	apiPort, otherPort, mappedPort, rangePort := freePort(t), freePort(t), freePort(t), freePort(t)
	startCaddy(t, portsConfig(apiPort, otherPort, mappedPort, rangePort))
	for _, tc := range []struct {
		name  string
		port  int
		error string
	}{
		{"the API's port", apiPort, "the port of a site this Caddy serves"},
		{"a mapped-port site", mappedPort, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := strings.Replace(portsConfig(apiPort, otherPort, mappedPort, rangePort), "health_interval 1h", fmt.Sprintf(
				"health_interval 1h\n\t\tservice 5 web {\n\t\t\texternal_port %d\n\t\t\tcontainer a 127.0.0.1:1\n\t\t}", tc.port), 1)
			req, _ := http.NewRequest("POST", adminURL+"/load", strings.NewReader(cfg))
			req.Header.Set("Content-Type", "text/caddyfile")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if tc.error == "" {
				if resp.StatusCode != 200 {
					t.Fatalf("load: %d %s", resp.StatusCode, body)
				}
				return
			}
			if resp.StatusCode != 400 || !strings.Contains(string(body), tc.error) ||
				!strings.Contains(string(body), fmt.Sprint(tc.port)) {
				t.Fatalf("load: %d %s, want 400 naming port %d", resp.StatusCode, body, tc.port)
			}
		})
	}
}
