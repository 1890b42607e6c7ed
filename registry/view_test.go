package registry

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestServiceViewJSON(t *testing.T) {
	r := newTestRegistry(t, Options{})
	spec := svcSpec(7, ctr("a", 8080), ctr("b", 8081))
	spec.Containers[1].Status = StatusUnhealthy
	svc := mustRegister(t, r, spec)
	a := svc.Container("a")
	a.Stats.Begin()
	a.Stats.Begin()
	a.Stats.Finish(0, true, time.Millisecond)
	svc.State.Begin()

	// No health check yet, no port: nulls.
	got, err := json.Marshal(svc.View())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"image_id":7`, `"image_name":"image-7"`, `"algorithm":"round_robin"`, `"external_port":null`,
		`"healthy_containers":1`, `"total_requests":1`, `"active_connections":1`,
		`{"container_id":"a","name":"","host":"127.0.0.1","port":8080,"image_id":7,"status":"healthy","weight":1,` +
			`"active_connections":1,"total_requests":2,"failed_requests":1,"last_health_check":null,"last_health_error":null,` +
			`"requests_per_second":0.0`, // one attempt over the last minute: about 0.017/s, by the clock
		`"cpu_usage":null,"memory_usage":null,"disk_usage":null}`,
		`"requests_per_second":0,"last_updated":"`,
		`"status":"unhealthy"`,
	} {
		if !strings.Contains(string(got), want) {
			t.Errorf("view %s\nlacks %s", got, want)
		}
	}

	// After health checks: an RFC 3339 time in UTC, and the error only when there is one.
	at := time.Date(2025, 3, 4, 5, 6, 7, 0, time.FixedZone("x", 3600))
	a.Stats.SetHealth(at, "")
	svc.Container("b").Stats.SetHealth(at, "dial tcp: connection refused")
	spec.ExternalPort = 9000
	svc = mustRegister(t, r, spec)
	v := svc.View()
	if v.ExternalPort == nil || *v.ExternalPort != 9000 {
		t.Fatalf("external_port = %v", v.ExternalPort)
	}
	ca, cb := v.Containers[0], v.Containers[1]
	if ca.LastHealthCheck == nil || *ca.LastHealthCheck != "2025-03-04T04:06:07Z" || ca.LastHealthError != nil {
		t.Fatalf("container a health = %v, %v", deref(ca.LastHealthCheck), deref(ca.LastHealthError))
	}
	if _, err := time.Parse(time.RFC3339, *ca.LastHealthCheck); err != nil {
		t.Fatal(err)
	}
	if cb.LastHealthError == nil || *cb.LastHealthError != "dial tcp: connection refused" {
		t.Fatalf("container b error = %v", deref(cb.LastHealthError))
	}
	if empty := mustRegister(t, r, svcSpec(8)).View(); empty.Containers == nil {
		t.Fatal("containers of an empty service must be [] in JSON, not null")
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}
