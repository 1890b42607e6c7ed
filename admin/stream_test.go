package admin

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/imagelb/caddy-imagelb/registry"
)

// bigRegistry has services images of containers containers each, with
// long container ids (the "long fields" of issue 24 row 4).
func bigRegistry(t testing.TB, images, containers int) *registry.Registry {
	t.Helper()
	reg := registry.New(registry.Options{PortLo: 8000, PortHi: 8999})
	for id := 1; id <= images; id++ {
		spec := registry.ServiceSpec{ImageID: int64(id), ImageName: fmt.Sprintf("image-%d", id)}
		for c := range containers {
			spec.Containers = append(spec.Containers, registry.ContainerSpec{
				ContainerID: fmt.Sprintf("%0200d", c), Port: 1 + c, Status: registry.StatusHealthy, Weight: 1})
		}
		if _, err := reg.Register(spec); err != nil {
			t.Fatal(err)
		}
	}
	return reg
}

// uptime is the one figure of the statistics that moves by itself.
var uptime = regexp.MustCompile(`"uptime_seconds":[0-9.e+-]+`)

// TestListsSameBytes: the streamed lists are byte for byte what encoding
// the whole answer at once wrote (the original's bare arrays, the
// statistics document), empty or not.
func TestListsSameBytes(t *testing.T) {
	for _, images := range []int{0, 1, 7} {
		reg := bigRegistry(t, images, 3)
		a := newAPI(reg)
		svcs := reg.Services()
		views := make([]registry.ServiceView, len(svcs))
		for i, s := range svcs {
			views[i] = s.View()
		}
		st := statsAnswer{StatsView: reg.Stats(svcs), PortMappingsCount: len(reg.PortMappings())}
		st.UserServices.TotalServices = len(svcs)
		for _, s := range st.Services {
			st.UserServices.TotalContainers += len(s.Containers)
			st.UserServices.HealthyContainers += s.HealthyContainers
			st.UserServices.TotalRequests += s.TotalRequests
		}
		st.ContainersByStatus = registry.CountByStatus(svcs)
		oneAnswer := func(v any) string {
			w := httptest.NewRecorder()
			WriteJSON(w, http.StatusOK, v)
			return uptime.ReplaceAllString(w.Body.String(), `"uptime_seconds":0`)
		}
		for target, want := range map[string]string{
			"/api/v1/services":      oneAnswer(views),
			"/api/v1/port-mappings": oneAnswer(reg.PortMappings()),
			"/api/v1/stats":         oneAnswer(st),
		} {
			w, _ := serve(t, a, "GET", target, "")
			if got := uptime.ReplaceAllString(w.Body.String(), `"uptime_seconds":0`); w.Code != 200 || got != want {
				t.Fatalf("%d images, GET %s: %d\n got %.600s\nwant %.600s", images, target, w.Code, got, want)
			}
		}
	}
}

// maxWriter records the largest single write, the bytes written and the
// most live heap seen while writing (after a collection at the first write
// and every 20th).
type maxWriter struct {
	header                 http.Header
	largest, total, writes int
	peak                   uint64
}

func (m *maxWriter) Header() http.Header { return m.header }
func (m *maxWriter) WriteHeader(int)     {}
func (m *maxWriter) Write(p []byte) (int, error) {
	m.largest, m.total = max(m.largest, len(p)), m.total+len(p)
	if m.writes%20 == 0 {
		m.peak = max(m.peak, liveHeap())
	}
	m.writes++
	return len(p), nil
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestListsStream (issue 24 row 4): a list answer of tens of megabytes is
// written a service at a time, never built whole: no write is larger than
// one service's entry, and the heap in use while it is written stays far
// below the answer's size.
func TestListsStream(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a registry of 60,000 containers")
	}
	reg := bigRegistry(t, 60, 1000)
	a := newAPI(reg)
	for _, target := range []string{"/api/v1/services", "/api/v1/stats"} {
		base := liveHeap()
		w := &maxWriter{header: http.Header{}}
		a.ServeHTTP(w, httptest.NewRequest("GET", target, strings.NewReader("")))
		grew := int64(w.peak) - int64(base)
		t.Logf("GET %s: %d MiB in writes of at most %d KiB; the heap grew at most %d MiB",
			target, w.total>>20, w.largest>>10, grew>>20)
		if w.total < 15<<20 {
			t.Fatalf("GET %s wrote %d bytes: the registry is not big enough for this test", target, w.total)
		}
		if w.largest > 1<<20 || grew > int64(w.total/4) {
			t.Fatalf("GET %s: %d bytes written in writes of up to %d bytes, the heap grew %d bytes: the answer was built whole",
				target, w.total, w.largest, grew)
		}
	}
	// the answer is still one JSON document
	w := httptest.NewRecorder()
	a.ServeHTTP(w, httptest.NewRequest("GET", "/api/v1/services", nil))
	if !bytes.HasPrefix(w.Body.Bytes(), []byte(`[{"image_id":1,`)) || !bytes.HasSuffix(w.Body.Bytes(), []byte("}]\n")) {
		t.Fatalf("the streamed list is not one array: %.100s ... %.100s", w.Body.String(), w.Body.String()[w.Body.Len()-100:])
	}
}
