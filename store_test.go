package imagelb

import (
	"fmt"
	"testing"
)

// clusterDoc is GET /api/v1/cluster.
type clusterDoc struct {
	NodeID string `json:"node_id"`
	Store  struct {
		Kind     string `json:"kind"`
		Status   string `json:"status"`
		Revision int64  `json:"revision"`
	} `json:"store"`
	Nodes []struct {
		NodeID string `json:"node_id"`
	} `json:"nodes"`
}

// TestClusterOfOne: with a store that is not shared, GET /api/v1/cluster
// (and admin /imagelb/cluster) lists this node alone, and /health says the
// store is ok. (The cluster of several nodes on etcd is TestCluster in
// cmd/caddy.) do checks every answer against the OpenAPI document.
func TestClusterOfOne(t *testing.T) {
	port := freePort(t)
	startCaddy(t, siteConfig(port, "health_interval 1h"))
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	var onSite, onAdmin clusterDoc
	mustDo(t, "GET", site+"/api/v1/cluster", nil, 200, &onSite)
	mustDo(t, "GET", adminURL+"/imagelb/cluster", nil, 200, &onAdmin)
	if onSite.NodeID == "" || len(onSite.Nodes) != 1 || onSite.Nodes[0].NodeID != onSite.NodeID {
		t.Fatalf("cluster %+v: want this node alone", onSite)
	}
	if onSite.Store.Status != "ok" || (onSite.Store.Kind != "local" && onSite.Store.Kind != "memory") {
		t.Fatalf("store %+v: want local or memory, ok", onSite.Store)
	}
	if onAdmin.NodeID != onSite.NodeID || onAdmin.Store != onSite.Store {
		t.Fatalf("admin says %+v, the site %+v", onAdmin, onSite)
	}
	var health struct {
		Store string `json:"store"`
	}
	mustDo(t, "GET", site+"/health", nil, 200, &health)
	if health.Store != "ok" {
		t.Fatalf("/health store %q, want ok", health.Store)
	}
	wantError(t, "POST", site+"/api/v1/cluster", "", 405, "Method Not Allowed")
}
