package optim

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSkipForgetsPrepare: for every optimizer, in both of 1-bit Adam's
// stages, Prepare(bad) then Skip leaves the state as it was: the run that
// skipped a NaN gradient ends bit-identical to the run that never saw it.
func TestSkipForgetsPrepare(t *testing.T) {
	const n, steps = 33, 8
	cfg := DefaultAdamConfig()
	cfg.FreezeStep = 3
	makers := map[string]func() (Optimizer, error){
		"sgd":        func() (Optimizer, error) { return NewSGD(n, 0.1, 1e-4) },
		"momentum":   func() (Optimizer, error) { return NewMomentum(n, 0.1, 0.9, 1e-4, true) },
		"dgcsgd":     func() (Optimizer, error) { return NewDGCSGD(n, 0.1, 0.9, 1e-4, false) },
		"adam":       func() (Optimizer, error) { return NewAdam(n, DefaultAdamConfig()) },
		"onebitadam": func() (Optimizer, error) { return NewOneBitAdam(n, cfg) },
	}
	nan := make([]float32, n)
	for i := range nan {
		nan[i] = float32(math.NaN())
	}
	for name, mk := range makers {
		clean, _ := mk()
		skipped, err := mk()
		if err != nil {
			t.Fatal(err)
		}
		pc, ps := make([]float32, n), make([]float32, n)
		rng := rand.New(rand.NewPCG(1, 1))
		g := make([]float32, n)
		for s := range steps {
			for i := range g {
				g[i] = float32(rng.NormFloat64())
			}
			if s == 1 || s == 5 { // warm-up and, for 1-bit Adam, compression
				if _, _, err := skipped.Prepare(slices.Clone(nan)); err != nil {
					t.Fatal(err)
				}
				skipped.Skip()
			}
			for _, run := range []struct {
				o Optimizer
				p []float32
			}{{clean, pc}, {skipped, ps}} {
				send, _, err := run.o.Prepare(slices.Clone(g))
				if err != nil {
					t.Fatalf("%s step %d: %v", name, s, err)
				}
				if err := run.o.Step(run.p, slices.Clone(send)); err != nil {
					t.Fatalf("%s step %d: %v", name, s, err)
				}
			}
		}
		if !slices.Equal(pc, ps) || clean.Steps() != skipped.Steps() {
			t.Errorf("%s: skipping a NaN gradient changed the run", name)
		}
	}
}
