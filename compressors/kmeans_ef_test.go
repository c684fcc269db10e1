package compressors_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
)

// TestKMeansErrorFeedbackExact: with the k-means stage, error feedback
// (which reads D(Δ) from compressors.Sparse.Selected) keeps the exact
// residual e ← e + g − D(C(e + g)) of the quantised message, bit for bit.
func TestKMeansErrorFeedbackExact(t *testing.T) {
	const n, steps = 5000, 8
	for _, rec := range []string{"topk:0.01+kmeans:16+zstd", "topk:0.05+kmeans:3", "dgc:0.01+kmeans:8+zstd"} {
		c, err := compressors.New(rec, n, compressors.WithSeed(5))
		if err != nil {
			t.Fatal(err)
		}
		rx, err := compressors.New(rec, n, compressors.WithSeed(5)) // the receiver
		if err != nil {
			t.Fatal(err)
		}
		ef := errorfeedback.NewEF14(c)
		r := rand.New(rand.NewPCG(75, 76))
		e := make([]float32, n)
		y := make([]float32, n)
		var buf []byte
		for step := range steps {
			g := make([]float32, n)
			w := make([]float32, n)
			for i := range g {
				g[i] = float32(r.NormFloat64())
				w[i] = e[i] + g[i]
			}
			if buf, err = ef.Encode(buf, g); err != nil {
				t.Fatal(err)
			}
			if err := rx.Decompress(y, buf); err != nil {
				t.Fatal(err)
			}
			res := ef.Residual()
			for i := range w {
				if want := w[i] - y[i]; math.Float32bits(res[i]) != math.Float32bits(want) {
					t.Fatalf("%s step %d: residual[%d] = %v, want e+g−D(Δ) = %v", rec, step, i, res[i], want)
				}
			}
			copy(e, res)
		}
	}
}
