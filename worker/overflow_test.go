package worker

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

// TestReducedFormatOverflow: finite fp32 gradients whose sum leaves fp16's
// range (three ranks' 60000, and one rank's 70000, beyond fp16 on its own) come
// out of the fp16 ring as ±Inf. That is not passed on silently: under
// NaNError every rank returns the same *NonFiniteError marked Overflow, under
// NaNSkip every rank skips the step; the workers stay in step, and the count
// is kept.
func TestReducedFormatOverflow(t *testing.T) {
	const n = 3
	layers := []layerDef{{name: "dense", shape: []int{8}}, {name: "half", shape: []int{6}, codec: "fp16"}}
	for _, policy := range []NaNPolicy{NaNError, NaNSkip} {
		for _, tc := range []struct {
			name string
			set  func(in [][][]float32)
		}{
			{"sum", func(in [][][]float32) { in[0][1][2], in[1][1][2], in[2][1][2] = 60000, 60000, 60000 }},
			{"single", func(in [][][]float32) { in[2][1][4] = 70000 }},
		} {
			t.Run(policy.String()+"/"+tc.name, func(t *testing.T) {
				rng := rand.New(rand.NewPCG(7, 8))
				g := newGroup(t, n)
				ws := startWorkers(t, g.Conns(), layers, WithNaNPolicy(policy), WithTimeout(10*time.Second))
				in := makeGrads(rng, n, layers, true)
				tc.set(in)
				leds, errs := stepAll(ws, in)
				for r := range n {
					switch policy {
					case NaNError:
						var ne *NonFiniteError
						if !errors.As(errs[r], &ne) || !ne.Overflow || ne.Layer != "half" || len(ne.Ranks) != 0 {
							t.Fatalf("rank %d: got %v, want an overflow NonFiniteError for layer half", r, errs[r])
						}
					case NaNSkip:
						if errs[r] != nil || !leds[r].Skipped {
							t.Fatalf("rank %d: got %v, skipped=%v; want a skipped step", r, errs[r], leds[r] != nil && leds[r].Skipped)
						}
					}
					if got := ws[r].Overflows(); got != 1 {
						t.Fatalf("rank %d: %d overflows counted, want 1", r, got)
					}
				}
				next := makeGrads(rng, n, layers, true)
				leds = mustStep(t, ws, next)
				checkIdentical(t, next)
				if leds[0].Skipped {
					t.Fatal("the next, finite step was skipped")
				}
			})
		}
	}
}
