package registry

import (
	"fmt"
	"testing"
)

// BenchmarkPage: the registry's side of a paged list at 100,000 images of
// 2 containers: a page in each order, and the registry-wide totals a paged
// /stats carries (which read each image's counters and its containers'
// statuses, never their statistics).
func BenchmarkPage(b *testing.B) {
	r := New(Options{})
	for id := int64(1); id <= 100_000; id++ {
		svc, err := r.Register(ServiceSpec{ImageID: id, ImageName: fmt.Sprintf("image-%d", id), Containers: []ContainerSpec{
			{ContainerID: "a", Host: "10.0.0.1", Port: 8000, Status: StatusHealthy, Weight: 1},
			{ContainerID: "b", Host: "10.0.0.2", Port: 8000, Status: StatusDraining, Weight: 1},
		}})
		if err != nil {
			b.Fatal(err)
		}
		if id%10 == 0 {
			svc.State.Refuse(503, true)
		}
	}
	for _, tc := range []struct {
		name string
		q    ListQuery
	}{
		{"image_id", ListQuery{Limit: 100}},
		{"image_id/after", ListQuery{Limit: 100, After: &Cursor{ImageID: 50_000}}},
		{"requests", ListQuery{Limit: 100, Sort: SortRequests}},
		{"requests_per_second", ListQuery{Limit: 100, Sort: SortRequestsPerSecond}},
		{"q", ListQuery{Limit: 100, Prefix: "image-99"}},
	} {
		b.Run("page/"+tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if svcs, _ := r.Page(tc.q); len(svcs) == 0 {
					b.Fatal("empty page")
				}
			}
		})
	}
	b.Run("totals", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if t := r.Totals(); t.Containers != 200_000 {
				b.Fatalf("totals %+v", t)
			}
		}
	})
}
