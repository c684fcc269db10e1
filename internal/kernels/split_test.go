package kernels

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSplitMerge: SplitFloat32 and MergeFloat32 round-trip every bit
// pattern, match the pure-Go reference byte for byte, and write nothing
// outside their slices.
func TestSplitMerge(t *testing.T) {
	r := rand.New(rand.NewPCG(81, 82))
	const guard = 16
	for _, n := range []int{0, 1, 7, 8, 9, 10, 11, 16, 17, 18, 33, 100, 1001} {
		src := make([]float32, n)
		for i := range src {
			src[i] = math.Float32frombits(r.Uint32())
		}
		words := make([]byte, 3*n+2*guard)
		exp := make([]byte, n+2*guard)
		for i := range words {
			words[i] = 0xa5
		}
		for i := range exp {
			exp[i] = 0x5a
		}
		SplitFloat32(words[guard:guard+3*n], exp[guard:guard+n], src)
		for i := range guard {
			if words[i] != 0xa5 || words[len(words)-1-i] != 0xa5 || exp[i] != 0x5a || exp[len(exp)-1-i] != 0x5a {
				t.Fatalf("n=%d: SplitFloat32 wrote outside its slices", n)
			}
		}
		w, e := words[guard:guard+3*n], exp[guard:guard+n]
		rw, re := make([]byte, 3*n), make([]byte, n)
		splitFloat32Generic(rw, re, src)
		if !slices.Equal(w, rw) || !slices.Equal(e, re) {
			t.Fatalf("n=%d: split differs from the reference", n)
		}
		for i, v := range src {
			u := math.Float32bits(v)
			if e[i] != byte(u>>23) {
				t.Fatalf("exp[%d] = %#x for %#08x", i, e[i], u)
			}
			if got := uint32(w[3*i]) | uint32(w[3*i+1])<<8 | uint32(w[3*i+2])<<16; got != u&0x7fffff|u>>31<<23 {
				t.Fatalf("word %d = %#06x for %#08x", i, got, u)
			}
		}
		dst := make([]float32, n+2*guard)
		for i := range dst {
			dst[i] = 9
		}
		MergeFloat32(dst[guard:guard+n], w, e)
		for i := range guard {
			if dst[i] != 9 || dst[len(dst)-1-i] != 9 {
				t.Fatalf("n=%d: MergeFloat32 wrote outside dst", n)
			}
		}
		for i, v := range src {
			if math.Float32bits(dst[guard+i]) != math.Float32bits(v) {
				t.Fatalf("n=%d: merged %#08x, want %#08x", n, math.Float32bits(dst[guard+i]), math.Float32bits(v))
			}
		}
		// Add: against the reference on finite values.
		for i := range src {
			src[i] = float32(r.NormFloat64())
		}
		SplitFloat32(w, e, src)
		acc, ref := make([]float32, n), make([]float32, n)
		for i := range acc {
			acc[i] = float32(i)
			ref[i] = float32(i)
		}
		MergeAddFloat32(acc, w, e)
		mergeFloat32Generic(ref, w, e, true)
		for i := range acc {
			if acc[i] != ref[i] || acc[i] != float32(i)+src[i] {
				t.Fatalf("n=%d: MergeAddFloat32[%d] = %v, want %v", n, i, acc[i], ref[i])
			}
		}
	}
}

func TestBF16Words(t *testing.T) {
	r := rand.New(rand.NewPCG(83, 84))
	for _, n := range []int{0, 1, 9, 1000} {
		src := make([]float32, n)
		for i := range src {
			src[i] = math.Float32frombits(r.Uint32() &^ 0xffff)
		}
		w, e := make([]byte, n), make([]byte, n)
		SplitBF16Words(w, e, src)
		dst := make([]float32, n)
		MergeBF16Words(dst, w, e, false)
		for i := range src {
			if math.Float32bits(dst[i]) != math.Float32bits(src[i]) {
				t.Fatalf("n=%d: %#08x back as %#08x", n, math.Float32bits(src[i]), math.Float32bits(dst[i]))
			}
		}
	}
}
