package allreduce_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/allreduce/allreducetest"
)

// exactF32 is F32 behind another type: the executor does not recognise it
// as raw, so it runs every FnScale as its own pass (no fusion).
type exactF32 struct{ allreduce.ElementCodec }

// TestFusedScaleBits checks that averaging algorithms whose executor folds
// the 1/N scale into the last reduction (one pass instead of two) give the
// same bits as the unfused ops, on every rank, for random inputs, world
// sizes, segment counts and delivery orders; and that the fusion happens.
func TestFusedScaleBits(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for _, alg := range []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgTree, allreduce.AlgHalvingDoubling} {
		for _, n := range []int{2, 3, 4, 7} {
			for _, segs := range []int{1, 3} {
				t.Run(fmt.Sprintf("%v/n=%d/segs=%d", alg, n, segs), func(t *testing.T) {
					elems := 5*n*segs + rng.IntN(50)
					in := make([][]float32, n)
					for r := range in {
						in[r] = make([]float32, elems)
						for i := range in[r] {
							in[r][i] = float32(rng.NormFloat64() * math.Exp(4*rng.Float64()))
						}
					}
					run := func(codec allreduce.ElementCodec) ([][]float32, int) {
						progs := make([]*allreduce.Program, n)
						execs := make([]allreduce.Executor, n)
						out := make([][]float32, n)
						fused := 0
						for r := range n {
							p, err := allreduce.Generate(alg, allreduce.Params{World: n, Rank: r, Elems: elems, Segments: segs, Average: true})
							if err != nil {
								t.Fatal(err)
							}
							out[r] = append([]float32(nil), in[r]...)
							x, err := allreduce.NewExec(p, out[r], allreduce.WithElementCodec(codec))
							if err != nil {
								t.Fatal(err)
							}
							fused += allreduce.FusedScales(x)
							progs[r], execs[r] = p, x
						}
						if _, err := allreducetest.Run(progs, execs, allreducetest.Options{Seed: rng.Uint64() | 1}); err != nil {
							t.Fatal(err)
						}
						return out, fused
					}
					got, fused := run(allreduce.F32)
					want, unfused := run(exactF32{allreduce.F32})
					if unfused != 0 {
						t.Fatalf("a non-raw codec fused %d scales", unfused)
					}
					if alg == allreduce.AlgRing && fused != n*segs {
						t.Errorf("ring: %d scales fused over all ranks, want %d (one per segment of each rank's block)", fused, n*segs)
					}
					for r := range n {
						for i := range want[r] {
							if math.Float32bits(got[r][i]) != math.Float32bits(want[r][i]) {
								t.Fatalf("rank %d element %d: fused %g, unfused %g", r, i, got[r][i], want[r][i])
							}
						}
					}
				})
			}
		}
	}
}
