package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imagelb/caddy-imagelb/internal/testkit"
	"github.com/imagelb/caddy-imagelb/registry"
)

// TestExternalPortCannotTakeTheAPI runs the binary through issue 24's row
// 2: an image registered with external_port set to the API site's own port
// took the whole site over (/health, the API, the dashboard), and kept it
// across restarts. A registration is refused with a 422; a record that
// maps the port and is already in the store is left out and logged, and
// the API answers on its site.
func TestExternalPortCannotTakeTheAPI(t *testing.T) {
	bin, _ := xcaddyBinary(t)
	dir := t.TempDir()
	t.Cleanup(endAll)
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"status": "owned"}`)
	}))
	t.Cleanup(attacker.Close)
	u, _ := url.Parse(attacker.URL)
	var attackerPort int
	fmt.Sscan(u.Port(), &attackerPort)
	adminPort, sitePort, backendPort := freePort(t), freePort(t), freePort(t)
	site := fmt.Sprintf("http://127.0.0.1:%d", sitePort)
	adm := fmt.Sprintf("http://localhost:%d/imagelb", adminPort)

	// the state of an earlier run, in which the site's port was mapped
	ctrs := []registry.ContainerRecord{{ContainerID: "x", Host: "127.0.0.1", Port: attackerPort, Status: registry.StatusHealthy, Weight: 1}}
	seeded := &registry.State{Services: []registry.ServiceRecord{
		{ImageID: 66, ImageName: "evil", Algorithm: registry.RoundRobin, ExternalPort: sitePort, Containers: ctrs},
		{ImageID: 7, ImageName: "fine", Algorithm: registry.RoundRobin, Containers: ctrs}}}
	if err := (&registry.FileStore{Path: filepath.Join(dir, "caddy", "imagelb", "registry.json")}).Commit(seeded); err != nil {
		t.Fatal(err)
	}
	cfg := writeSiteConfig(t, filepath.Join(dir, "Caddyfile"), adminPort, sitePort, backendPort, "")
	p := runCaddy(t, bin, cfg, dir, site+"/health")
	testkit.Eventually(t, "the admin API", func() bool { st, _ := call(t, "GET", adm+"/services", ""); return st == 200 })

	if st, h := call(t, "GET", site+"/health", ""); st != 200 || h["status"] != "healthy" {
		t.Fatalf("/health on the API's site: %d %v, want the API's own answer\n%s", st, h, p.logs.String())
	}
	if st, _ := call(t, "GET", adm+"/services/66", ""); st != 404 {
		t.Fatalf("the stored record mapping the API's port was restored: %d", st)
	}
	if st, _ := call(t, "GET", adm+"/services/7", ""); st != 200 {
		t.Fatalf("the rest of the store was not restored: %d", st)
	}
	if logs := p.logs.String(); !strings.Contains(logs, "service left out of the registry") ||
		!strings.Contains(logs, fmt.Sprintf("external_port %d is the port of a site", sitePort)) {
		t.Fatalf("the left-out record is not logged:\n%s", logs)
	}

	body := fmt.Sprintf(`[{"container_id": "x", "port": %d}]`, attackerPort)
	for _, base := range []string{site + "/api/v1", adm} {
		st, e := call(t, "POST", fmt.Sprintf("%s/services/67/register?image_name=evil&external_port=%d", base, sitePort), body)
		if d, _ := e["detail"].(string); st != 422 || !strings.Contains(d, "mapped_ports") {
			t.Fatalf("POST %s: %d %v, want 422 saying which ports may be mapped", base, st, e)
		}
	}
	if st, h := call(t, "GET", site+"/health", ""); st != 200 || h["status"] != "healthy" {
		t.Fatalf("/health after the refused registrations: %d %v", st, h)
	}
}
