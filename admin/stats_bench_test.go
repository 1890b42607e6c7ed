package admin

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/imagelb/caddy-imagelb/registry"
)

// benchRegistry holds n images of 2 containers each; every tenth image
// has served some requests (counted and in the last minute's window).
func benchRegistry(b *testing.B, n int) *registry.Registry {
	b.Helper()
	r := registry.New(registry.Options{})
	for id := int64(1); id <= int64(n); id++ {
		svc, err := r.Register(registry.ServiceSpec{ImageID: id, ImageName: fmt.Sprintf("image-%d", id), Containers: []registry.ContainerSpec{
			{ContainerID: "a", Host: "10.0.0.1", Port: 8000 + int(id%1000), Status: registry.StatusHealthy, Weight: 1},
			{ContainerID: "b", Host: "10.0.0.2", Port: 8000 + int(id%1000), Status: registry.StatusHealthy, Weight: 1},
		}})
		if err != nil {
			b.Fatal(err)
		}
		if id%10 == 0 {
			for range id % 7 {
				svc.State.Refuse(http.StatusServiceUnavailable, true)
			}
		}
	}
	return r
}

// countingWriter is a ResponseWriter that keeps only the size of the body.
type countingWriter struct {
	h http.Header
	n int
}

func (w *countingWriter) Header() http.Header         { return w.h }
func (w *countingWriter) WriteHeader(int)             {}
func (w *countingWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// BenchmarkStats: a page of /stats against the whole of it, as the
// registry grows. The answer's size is reported as bytes/answer.
func BenchmarkStats(b *testing.B) {
	for _, images := range []int{1_000, 10_000, 100_000} {
		reg := benchRegistry(b, images)
		a := newAPI(reg)
		for _, target := range []string{"/api/v1/stats?limit=100", "/api/v1/stats?limit=100&after=50000",
			"/api/v1/stats?limit=100&sort=requests", "/api/v1/stats?limit=100&sort=requests_per_second",
			"/api/v1/services?limit=100", "/api/v1/stats"} {
			b.Run(fmt.Sprintf("images=%d/%s", images, target[len("/api/v1/"):]), func(b *testing.B) {
				req := httptest.NewRequest("GET", target, nil)
				b.ReportAllocs()
				var size int
				for b.Loop() {
					w := &countingWriter{h: http.Header{}}
					a.ServeHTTP(w, req)
					size = w.n
				}
				b.ReportMetric(float64(size), "bytes/answer")
			})
		}
	}
}
