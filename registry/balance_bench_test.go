package registry

import (
	"fmt"
	"testing"
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
