package registry

import (
	"fmt"
	"testing"
	"time"
)

var sinkContainer *Container

func BenchmarkPick(b *testing.B) {
	tests := []struct {
		alg        Algorithm
		containers int
		tried      int  // containers already tried by the request (a retry)
		parallel   bool // b.RunParallel: picks from every P at once
	}{
		{alg: RoundRobin, containers: 2},
		{alg: RoundRobin, containers: 10},
		{alg: RoundRobin, containers: 100},
		{alg: RoundRobin, containers: 10, tried: 1},
		{alg: RoundRobin, containers: 10, parallel: true},
		{alg: LeastConnections, containers: 2},
		{alg: LeastConnections, containers: 10},
		{alg: LeastConnections, containers: 100},
		{alg: LeastConnections, containers: 10, tried: 1},
		{alg: LeastConnections, containers: 10, parallel: true},
	}
	for _, tt := range tests {
		name := fmt.Sprintf("%s/containers=%d", tt.alg, tt.containers)
		if tt.tried > 0 {
			name += fmt.Sprintf("/tried=%d", tt.tried)
		}
		if tt.parallel {
			name += "/parallel"
		}
		b.Run(name, func(b *testing.B) {
			r := New(Options{})
			svc := serviceWith(b, r, 1, tt.alg, tt.containers)
			for i, c := range svc.Available() {
				c.Stats.InFlight.Store(int64(i % 3)) // uneven load for least connections
			}
			var tried []*ContainerStats
			for _, c := range svc.Available()[:tt.tried] {
				tried = append(tried, c.Stats)
			}
			b.ReportAllocs()
			if tt.parallel {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if svc.Pick(tried) == nil {
							b.Error("nothing picked")
							return
						}
					}
				})
				return
			}
			for b.Loop() {
				sinkContainer = svc.Pick(tried)
			}
			if sinkContainer == nil {
				b.Fatal("nothing picked")
			}
		})
	}
}

var sinkIndex int

// BenchmarkChoose measures one pick of every algorithm (every row of
// algorithmTable) over 2, 10 and 100
// containers (hashing ones with a key), and with the traffic options that
// add work to a pick: slow start, outlier ejection and a client zone.
func BenchmarkChoose(b *testing.B) {
	type variant struct {
		name string
		opts ServiceOptions
		zone string
	}
	plain := variant{}
	full := variant{name: "/slow_start+outlier+zone", zone: "a", opts: ServiceOptions{
		SlowStart: Duration(30 * time.Second),
		Outlier:   &Outlier{ConsecutiveFailures: 5, ErrorRate: 0.5},
	}}
	for _, alg := range allAlgorithms {
		for _, n := range []int{2, 10, 100} {
			for _, v := range []variant{plain, full} {
				if v.name != "" && n != 10 {
					continue
				}
				b.Run(fmt.Sprintf("%s/containers=%d%s", alg, n, v.name), func(b *testing.B) {
					r := New(Options{})
					spec := svcSpec(1)
					spec.Algorithm, spec.Options = alg, v.opts
					for i := range n {
						c := ctr(fmt.Sprintf("c%d", i), 8000+i)
						c.Weight, c.Zone = 1+i%3, []string{"a", "b", "c"}[i%3]
						spec.Containers = append(spec.Containers, c)
					}
					svc := mustRegister(b, r, spec)
					for i, c := range svc.Available() {
						c.Stats.InFlight.Store(int64(i % 3)) // uneven load
						svc.Observe(c, false, time.Duration(1+i%7)*time.Millisecond)
					}
					req := &PickRequest{Zone: v.zone}
					if alg.UsesKey() {
						req.Key = "203.0.113.7"
					}
					b.ReportAllocs()
					for b.Loop() {
						sinkIndex = svc.Choose(req)
					}
					if sinkIndex < 0 {
						b.Fatal("nothing picked")
					}
				})
			}
		}
	}
}
