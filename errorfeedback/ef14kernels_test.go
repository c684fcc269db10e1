package errorfeedback

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
)

// ef14Ref is EF14 written element by element: Δ = C(e + g), e ← e + g − D(Δ).
type ef14Ref struct {
	c compressors.Compressor
	e []float32
}

func (f *ef14Ref) encode(g []float32) ([]byte, error) {
	for j := range f.e {
		f.e[j] += g[j]
	}
	p, err := f.c.Compress(nil, f.e)
	if err != nil {
		return nil, err
	}
	d := make([]float32, len(f.e))
	if err := f.c.Decompress(d, p); err != nil {
		return nil, err
	}
	for j := range f.e {
		f.e[j] -= d[j]
	}
	return p, nil
}

// TestEF14MatchesRef: EF14's Encode, which runs the compensation and the
// residual on internal/kernels (the sparse codecs' path and the generic
// one), sends the same bytes and keeps the same residual, bit for bit, as
// the element-by-element reference, over steps of random gradients of a
// length that is not a multiple of any vector width, with special values
// (±0, subnormals, huge) among them; and its finite check still names
// a non-finite element.
func TestEF14MatchesRef(t *testing.T) {
	const d, steps = 1003, 8
	for _, codec := range []string{"topk:0.01", "randomk:0.05", "qsgd:4", "none"} {
		for _, hide := range []bool{false, true} {
			mk := func() compressors.Compressor {
				c, err := compressors.New(codec, d, compressors.WithSeed(3))
				if err != nil {
					t.Fatal(err)
				}
				if hide {
					c = hideSparse{c}
				}
				return c
			}
			f, ref := NewEF14(mk()), &ef14Ref{c: mk(), e: make([]float32, d)}
			rng := rand.New(rand.NewPCG(30, 31))
			for s := range steps {
				g := randVec(rng, d, 1)
				g[500], g[501], g[502], g[503] = float32(math.Copysign(0, -1)), math.SmallestNonzeroFloat32, 1e30, -1e-40
				got, err := f.Encode(nil, g)
				if err != nil {
					t.Fatal(err)
				}
				want, err := ref.encode(g)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s (sparse path %v) step %d: payload differs from the reference", codec, !hide, s)
				}
				for j, x := range f.Residual() {
					if math.Float32bits(x) != math.Float32bits(ref.e[j]) {
						t.Fatalf("%s (sparse path %v) step %d: residual[%d] = %v, reference %v", codec, !hide, s, j, x, ref.e[j])
					}
				}
			}
		}
	}
	g := make([]float32, d)
	g[d-1] = float32(math.Inf(-1))
	if err := checkFinite(g); err == nil || !bytes.Contains([]byte(err.Error()), []byte("element 1002")) {
		t.Errorf("checkFinite of an Inf at 1002: %v", err)
	}
}

// BenchmarkEF14Encode: EF14 with top-k 0.1 % on a layer of the MNIST
// MLP's first weight matrix, by the sparse codecs' path and by the generic
// one (the same codec behind an interface that hides Sparse).
func BenchmarkEF14Encode(b *testing.B) {
	const d = 256 * 784
	for _, path := range []string{"sparse", "generic"} {
		b.Run("codec=topk:0.001/path="+path, func(b *testing.B) {
			c, err := compressors.New("topk:0.001", d, compressors.WithSeed(1))
			if err != nil {
				b.Fatal(err)
			}
			if path == "generic" {
				c = hideSparse{c}
			}
			f := NewEF14(c)
			g := randVec(rand.New(rand.NewPCG(1, 2)), d, 1)
			var p []byte
			b.SetBytes(4 * d)
			b.ReportAllocs()
			for b.Loop() {
				if p, err = f.Encode(p[:0], g); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
