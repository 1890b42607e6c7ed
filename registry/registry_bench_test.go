package registry

import (
	"fmt"
	"testing"
)

// benchRegistries caches one registry per size: building 100,000 services
// through Register takes seconds, and b.Run calls a benchmark several times.
var benchRegistries = map[int]*Registry{}

// benchRegistry returns a registry of n services with image_ids 1..n, each of
// two healthy containers, built through the public Register path.
func benchRegistry(b *testing.B, n int) *Registry {
	b.Helper()
	if r, ok := benchRegistries[n]; ok {
		return r
	}
	r := New(Options{})
	for id := int64(1); id <= int64(n); id++ {
		mustRegister(b, r, ServiceSpec{ImageID: id, ImageName: fmt.Sprintf("image-%d", id),
			Containers: []ContainerSpec{ctr("a", 8000), ctr("b", 8001)}})
	}
	benchRegistries[n] = r
	return r
}

var sinkService *Service

func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{1, 10_000, 100_000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			r := benchRegistry(b, n)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				if i > n {
					i = 1
				}
				sinkService = r.Lookup(int64(i))
			}
			if sinkService == nil {
				b.Fatal("lookup missed")
			}
		})
	}
}

func BenchmarkLookupParallel(b *testing.B) {
	r := benchRegistry(b, 10_000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int64(0)
		for pb.Next() {
			i = i%10_000 + 1
			if r.Lookup(i) == nil {
				b.Error("lookup missed")
				return
			}
		}
	})
}

// BenchmarkRegister measures the copy-on-write cost of replacing one
// service's containers in a registry of the given size.
func BenchmarkRegister(b *testing.B) {
	for _, n := range []int{1, 10_000, 100_000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			r := benchRegistry(b, n)
			spec := ServiceSpec{ImageID: 1, ImageName: "image-1",
				Containers: []ContainerSpec{ctr("a", 8000), ctr("b", 8001)}}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Register(spec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
