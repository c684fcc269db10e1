package optim

import (
	"fmt"
	"testing"
)

// BenchmarkStep measures Prepare+Step of every optimizer on one vector.
func BenchmarkStep(b *testing.B) {
	for _, n := range []int{1 << 16, 1 << 20} {
		cfg := DefaultAdamConfig()
		cfg.FreezeStep = 1
		mks := []struct {
			name string
			mk   func() (Optimizer, error)
		}{
			{"sgd", func() (Optimizer, error) { return NewSGD(n, 0.1, 1e-4) }},
			{"momentum", func() (Optimizer, error) { return NewMomentum(n, 0.1, 0.9, 1e-4, true) }},
			{"dgcsgd", func() (Optimizer, error) { return NewDGCSGD(n, 0.1, 0.9, 1e-4, false) }},
			{"adam", func() (Optimizer, error) { return NewAdam(n, cfg) }},
			{"onebit-adam", func() (Optimizer, error) { return NewOneBitAdam(n, cfg) }}, // compression stage
		}
		for _, m := range mks {
			b.Run(fmt.Sprintf("opt=%s/size=%dKi", m.name, n>>10), func(b *testing.B) {
				o, err := m.mk()
				if err != nil {
					b.Fatal(err)
				}
				p, g := make([]float32, n), make([]float32, n)
				for i := range g {
					g[i] = float32(i%7) - 3
				}
				b.SetBytes(int64(4 * n))
				b.ReportAllocs()
				for b.Loop() {
					s, _, err := o.Prepare(g)
					if err != nil {
						b.Fatal(err)
					}
					if err := o.Step(p, s); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
