package errorfeedback

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSignFeedbackMatchesRef: the branch-free signFeedback writes the
// bits and the error of its plain reference, bit for bit, on random values
// and on the special ones (±0, ±Inf, NaNs of either sign, subnormals), for
// positive and zero scales.
func TestSignFeedbackMatchesRef(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	special := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		math.Float32frombits(0xffc00001), 1e-45, -1e-45, math.MaxFloat32, -math.MaxFloat32, 1, -1}
	for _, n := range []int{8, 64, 1000 * 8} {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64() * math.Exp(3*rng.NormFloat64()))
			if i < len(special) {
				x[i] = special[i]
			}
		}
		for _, s := range []float32{0, 1e-40, 0.37, 3e38} {
			got, want := slices.Clone(x), slices.Clone(x)
			gb, wb := make([]byte, n/8), make([]byte, n/8)
			signFeedback(gb, got, s)
			signFeedbackRef(wb, want, s)
			if !slices.Equal(gb, wb) {
				t.Errorf("n %d s %g: sign bits differ", n, s)
			}
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Errorf("n %d s %g: element %d (x %g): %g (%#x), reference %g (%#x)", n, s, i, x[i], got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
					break
				}
			}
		}
	}
}

// BenchmarkSignFeedback: the branch-free pass against its reference on
// a gradient's error, whose signs are random.
func BenchmarkSignFeedback(b *testing.B) {
	const n = 1 << 18
	rng := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	bits := make([]byte, n/8)
	for _, c := range []struct {
		name string
		f    func([]byte, []float32, float32)
	}{{"impl=branchfree", signFeedback}, {"impl=ref", signFeedbackRef}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(4 * n)
			b.ReportAllocs()
			y := slices.Clone(x)
			for b.Loop() {
				copy(y, x)
				c.f(bits, y, 0.5)
			}
		})
	}
}
