package registry

import (
	"fmt"
	"sync/atomic"
	"testing"
)

// benchImages is how many distinct image_ids the persistence benchmarks
// register into, cycling. Every commit writes the whole state, so the cost of
// a durable registration grows with the registry: keep it small-ish here and
// read the figures as "registrations per second at 1,000 services".
const benchImages = 1000

// BenchmarkRegisterPersist measures acknowledged registrations per second
// with persistence off (memory only) and with a FileStore (every Register
// returns only once its change is fsynced; concurrent writers share flushes),
// from one goroutine and from many.
func BenchmarkRegisterPersist(b *testing.B) {
	tests := []struct {
		name     string
		persist  bool
		parallel bool
	}{
		{"persist=off/sequential", false, false},
		{"persist=off/parallel", false, true},
		{"persist=file/sequential", true, false},
		{"persist=file/parallel", true, true},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			// Filled in memory first, so every measured registration
			// replaces one of benchImages services and the file keeps its size.
			r := New(Options{})
			spec := func(id int64) ServiceSpec {
				return ServiceSpec{ImageID: id, ImageName: fmt.Sprintf("image-%d", id),
					Containers: []ContainerSpec{ctr("a", 8000), ctr("b", 8001)}}
			}
			for id := int64(1); id <= benchImages; id++ {
				mustRegister(b, r, spec(id))
			}
			var store *countingStore
			if tt.persist {
				store = newCountingStore(b)
				r.SetStore(store)
			}
			specs := make([]ServiceSpec, benchImages)
			for i := range specs {
				specs[i] = spec(int64(i + 1))
			}

			b.ReportAllocs()
			if tt.parallel {
				b.SetParallelism(8)
				var next atomic.Int64
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := r.Register(specs[next.Add(1)%benchImages]); err != nil {
							b.Error(err)
							return
						}
					}
				})
			} else {
				i := 0
				for b.Loop() {
					if _, err := r.Register(specs[i%benchImages]); err != nil {
						b.Fatal(err)
					}
					i++
				}
			}
			b.StopTimer()

			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "regs/s")
			if store != nil {
				b.ReportMetric(float64(store.commits.Load())/float64(b.N), "commits/op")
			}
		})
	}
}
