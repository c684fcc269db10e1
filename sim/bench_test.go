package sim

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkRunRingTestDouble times the driver alone (programs generated
// once, outside the loop) on the private ring test double.
func BenchmarkRunRingTestDouble(b *testing.B) {
	for _, p := range []int{64, 1024} {
		const S = 100 << 20
		progs := testRing(p, S/4, 4)
		topo := Homogeneous(p, 10*Gbps, 5*time.Microsecond)
		b.Run(fmt.Sprintf("n=%d/size=100MiB", p), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Run(context.Background(), topo, []Collective{{Programs: progs}}, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSimulatorRingTestDouble reuses one Simulator across runs.
func BenchmarkSimulatorRingTestDouble(b *testing.B) {
	for _, p := range []int{1024} {
		const S = 100 << 20
		progs := testRing(p, S/4, 4)
		topo := Homogeneous(p, 10*Gbps, 5*time.Microsecond)
		s, err := NewSimulator(topo)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("n=%d/size=100MiB", p), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Run(context.Background(), []Collective{{Programs: progs}}, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
