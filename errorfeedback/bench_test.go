package errorfeedback

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
)

// BenchmarkEncode measures one step (Encode + Finish) of every algorithm
// around top-k at density 0.001 (DGC: its sampled codec; dense DGC: "none").
func BenchmarkEncode(b *testing.B) {
	for _, n := range []int{1 << 16, 1 << 20} {
		for _, tc := range []struct{ ef, codec string }{
			{"none", "topk:0.001"}, {"ef14", "topk:0.001"}, {"ef21", "topk:0.001"},
			{"econtrol:0.1", "topk:0.001"}, {"dgc:0.9", "dgc:0.001"}, {"dgc:0.9", "none"},
		} {
			b.Run(fmt.Sprintf("ef=%s/codec=%s/size=%dKi", tc.ef, tc.codec, n>>10), func(b *testing.B) {
				c, err := compressors.New(tc.codec, n)
				if err != nil {
					b.Fatal(err)
				}
				r, _ := Parse(tc.ef)
				f, err := r.New(c)
				if err != nil {
					b.Fatal(err)
				}
				rng := rand.New(rand.NewPCG(1, 2))
				g := randVec(rng, n, 1)
				avg := make([]float32, n)
				buf := make([]byte, 0, 4*n+64)
				b.SetBytes(int64(4 * n))
				b.ReportAllocs()
				for b.Loop() {
					p, err := f.Encode(buf, g)
					if err != nil {
						b.Fatal(err)
					}
					buf = p
					f.Finish(avg)
				}
			})
		}
	}
}

// BenchmarkTwoPhase measures the worker and server error steps of the
// two-phase 1-bit all-reduce for one rank.
func BenchmarkTwoPhase(b *testing.B) {
	const world = 8
	for _, n := range []int{1 << 16, 1 << 20} {
		b.Run(fmt.Sprintf("n=%d/size=%dKi", world, n>>10), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(3, 4))
			m := randVec(rng, n, 1)
			w := NewWorkerError(n, world)
			s := NewServerError(n, world)
			recv := make([][]byte, world)
			scales := make([]float32, world)
			var bits, sbits []byte
			b.SetBytes(int64(4 * n))
			b.ReportAllocs()
			for b.Loop() {
				var sc float32
				bits, sc = w.Compress(bits, m)
				cb := w.ChunkBytes()
				for j := range recv {
					recv[j] = bits[:cb]
					scales[j] = sc
				}
				var err error
				if sbits, _, err = s.Step(sbits, recv, scales); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
