package allreduce_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
)

// scaleRef is the scalar reference of FnScale: dst[i] *= s.
func scaleRef(dst []float32, s float32) {
	for i := range dst {
		dst[i] *= s
	}
}

// scaleOp returns an executor over data that runs FnScale as its own pass
// (exactF32: not the raw codec, so no scale is fused into a reduction) and
// a whole-buffer FnScale op by s.
func scaleOp(t testing.TB, data []float32, s float32) (*allreduce.Exec, *allreduce.Op) {
	t.Helper()
	p, err := allreduce.Generate(allreduce.AlgRing, allreduce.Params{World: 2, Rank: 0, Elems: len(data), Average: true})
	if err != nil {
		t.Fatal(err)
	}
	x, err := allreduce.NewExec(p, data, allreduce.WithElementCodec(exactF32{allreduce.F32}))
	if err != nil {
		t.Fatal(err)
	}
	return x, &allreduce.Op{Kind: allreduce.Compute, Fn: allreduce.FnScale, Dst: allreduce.BufData, Chunk: -1, Scale: s}
}

// TestExecScaleBits: the executor's FnScale gives the scalar loop's bits
// for every length (vector body and tail), scale (1/N, 1, 0, -0, huge) and
// value (±0, ±Inf, NaN, subnormals, values that overflow or underflow).
func TestExecScaleBits(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	special := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		math.Float32frombits(1), math.Float32frombits(0x807fffff), math.MaxFloat32, -math.SmallestNonzeroFloat32, 1, -3}
	for _, n := range []int{1, 7, 8, 9, 31, 64, 1000, 200704} {
		for _, s := range []float32{0.25, 1.0 / 3, 1, 0, float32(math.Copysign(0, -1)), 1e30, 1e-30} {
			t.Run(fmt.Sprintf("n=%d/s=%g", n, s), func(t *testing.T) {
				want := make([]float32, n)
				for i := range want {
					if rng.IntN(4) == 0 {
						want[i] = special[rng.IntN(len(special))]
					} else {
						want[i] = float32(rng.NormFloat64() * math.Exp(8*rng.NormFloat64()))
					}
				}
				got := append([]float32(nil), want...)
				x, op := scaleOp(t, got, s)
				if err := x.Run(op); err != nil {
					t.Fatal(err)
				}
				scaleRef(want, s)
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("element %d: got %x, want %x", i, math.Float32bits(got[i]), math.Float32bits(want[i]))
					}
				}
			})
		}
	}
}

// BenchmarkScaleOp: the executor's FnScale (a sparse gather's 1/N after its
// decode-adds, or any scale not fused into a reduction) against the scalar
// loop, on a layer of the MNIST MLP (784×256) and on 4 Mi values.
func BenchmarkScaleOp(b *testing.B) {
	for _, n := range []int{200704, 4 << 20} {
		data := make([]float32, n)
		for i := range data {
			data[i] = float32(i%1000) + 1
		}
		// A scale by 1 keeps the values away from subnormals however many
		// times it runs; its cost is that of any other scale.
		b.Run(fmt.Sprintf("impl=loop/n=%d", n), func(b *testing.B) {
			b.SetBytes(4 * int64(n))
			for b.Loop() {
				scaleRef(data, 1)
			}
		})
		b.Run(fmt.Sprintf("impl=exec/n=%d", n), func(b *testing.B) {
			x, op := scaleOp(b, data, 1)
			b.SetBytes(4 * int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if err := x.Run(op); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
