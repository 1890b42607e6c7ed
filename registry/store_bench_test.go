package registry

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
)

// BenchmarkRegisterPersist measures acknowledged registrations per second
// with store memory and with store local (a BoltStore: every Register
// returns only once its record is committed; concurrent writers share
// commits), from one goroutine and from 16, with 1,000, 10,000 and 100,000
// images already registered. One record per image: the rate must not fall
// with the size of the registry.
func BenchmarkRegisterPersist(b *testing.B) {
	spec := func(id int64) ServiceSpec {
		return ServiceSpec{ImageID: id, ImageName: fmt.Sprintf("image-%d", id),
			Containers: []ContainerSpec{ctr("a", 8000), ctr("b", 8001)}}
	}
	for _, images := range []int{1000, 10000, 100000} {
		for _, store := range []string{"memory", "local"} {
			for _, writers := range []int{1, 16} {
				b.Run(fmt.Sprintf("images=%d/store=%s/writers=%d", images, store, writers), func(b *testing.B) {
					r := New(Options{})
					var counting *countingStore
					if store == "local" {
						counting = newCountingStore(b)
						changes := make([]Change, 0, images)
						for id := int64(1); id <= int64(images); id++ {
							rec := mustRegister(b, r, spec(id)).record()
							changes = append(changes, Change{ImageID: id, Record: &rec})
						}
						if _, err := counting.RecordStore.Commit(context.Background(), changes); err != nil {
							b.Fatal(err)
						}
						r.SetStore(counting)
					} else {
						for id := int64(1); id <= int64(images); id++ {
							mustRegister(b, r, spec(id))
						}
					}
					specs := make([]ServiceSpec, images)
					for i := range specs {
						specs[i] = spec(int64(i + 1))
						specs[i].Containers[1].Port = 9001 // a change to store
					}
					b.ReportAllocs()
					var next atomic.Int64
					b.SetParallelism(max(1, writers/runtime.GOMAXPROCS(0))) // goroutines: GOMAXPROCS × this
					b.ResetTimer()
					if writers == 1 {
						for i := 0; b.Loop(); i++ {
							if _, err := r.Register(specs[i%images]); err != nil {
								b.Fatal(err)
							}
						}
					} else {
						b.RunParallel(func(pb *testing.PB) {
							for pb.Next() {
								if _, err := r.Register(specs[next.Add(1)%int64(images)]); err != nil {
									b.Error(err)
									return
								}
							}
						})
					}
					b.StopTimer()
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "regs/s")
					if counting != nil {
						b.ReportMetric(float64(counting.commits.Load())/float64(b.N), "commits/op")
					}
				})
			}
		}
	}
}
