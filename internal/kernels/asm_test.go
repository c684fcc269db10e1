package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestF16SweepMatchesScalar converts a stride through all 2^32 float32 bit
// patterns with the slice kernels (assembly where available) and compares
// with the scalar reference.
func TestF16SweepMatchesScalar(t *testing.T) {
	const step = 4093
	src := make([]float32, 0, 1<<20+64)
	for b := uint64(0); b < 1<<32; b += step {
		src = append(src, math.Float32frombits(uint32(b)))
	}
	h := make([]byte, 2*len(src))
	bf := make([]byte, 2*len(src))
	EncodeFloat16(h, src)
	EncodeBFloat16(bf, src)
	back := make([]float32, len(src))
	DecodeFloat16(back, h)
	for i, v := range src {
		got := uint16(h[2*i]) | uint16(h[2*i+1])<<8
		if want := F32ToF16(v); got != want {
			t.Fatalf("fp16(%#08x) = %#04x, scalar %#04x", math.Float32bits(v), got, want)
		}
		if w := F16ToF32(got); math.Float32bits(back[i]) != math.Float32bits(w) {
			t.Fatalf("fp16 decode %#04x = %#08x, scalar %#08x", got, math.Float32bits(back[i]), math.Float32bits(w))
		}
		gotb := uint16(bf[2*i]) | uint16(bf[2*i+1])<<8
		if want := F32ToBF16(v); gotb != want {
			t.Fatalf("bf16(%#08x) = %#04x, scalar %#04x", math.Float32bits(v), gotb, want)
		}
	}
}

func TestNextAbsGE(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	for _, n := range []int{0, 1, 31, 32, 33, 100, 1000} {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		for _, lo := range []uint32{0, 1, math.Float32bits(0.5), math.Float32bits(2), math.Float32bits(3.5), 0x7f800000, 0x7fffffff} {
			for start := 0; start <= n; start += 7 {
				if got, want := NextAbsGE(x[start:], lo), nextAbsGEGeneric(x[start:], lo); got != want {
					t.Fatalf("n=%d lo=%#x start=%d: got %d want %d", n, lo, start, got, want)
				}
			}
		}
	}
}

// TestGuardBands runs every kernel on a window of a larger buffer and checks
// that nothing outside the window changes.
func TestGuardBands(t *testing.T) {
	const guard = 64
	r := rand.New(rand.NewPCG(33, 34))
	for _, n := range []int{1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 65, 200} {
		fbuf := make([]float32, n+2*guard)
		bbuf := make([]byte, 4*n+2*guard)
		for i := range fbuf {
			fbuf[i] = 777
		}
		for i := range bbuf {
			bbuf[i] = 0xa5
		}
		dst := fbuf[guard : guard+n]
		src := make([]float32, n)
		for i := range src {
			src[i] = float32(r.NormFloat64())
		}
		b2 := bbuf[guard : guard+2*n]
		b4 := bbuf[guard : guard+4*n]
		bits := bbuf[guard : guard+(n+7)/8]
		Add(dst, src)
		AddTo(dst, src, src)
		SubTo(dst, src, dst)
		Scale(dst, 2)
		ScaleTo(dst, 3, src)
		Axpy(dst, 2, src)
		AxpyTo(dst, 2, src, src)
		EncodeFloat16(b2, src)
		DecodeAddFloat16(dst, b2)
		DecodeFloat16(dst, b2)
		EncodeBFloat16(b2, src)
		DecodeAddBFloat16(dst, b2)
		DecodeBFloat16(dst, b2)
		EncodeFloat32(b4, src)
		DecodeAddFloat32(dst, b4)
		PackSigns(bits, src)
		UnpackSigns(dst, bits, 1)
		UnpackSignsAdd(dst, bits, 1)
		for i := range guard {
			if fbuf[i] != 777 || fbuf[guard+n+i] != 777 {
				t.Fatalf("n=%d: float guard band changed", n)
			}
		}
		for i := range guard {
			if bbuf[i] != 0xa5 || bbuf[len(bbuf)-1-i] != 0xa5 {
				t.Fatalf("n=%d: byte guard band changed", n)
			}
		}
	}
}

func TestQSGDNibblesMatchesGeneric(t *testing.T) {
	r := rand.New(rand.NewPCG(35, 36))
	for _, n := range []int{0, 1, 7, 31, 32, 33, 64, 511, 512, 1000} {
		x := make([]float32, n)
		var ss float64
		for i := range x {
			x[i] = float32(r.NormFloat64())
			ss += float64(x[i]) * float64(x[i])
		}
		if n > 3 {
			x[1], x[2] = 0, float32(math.Copysign(0, -1))
		}
		for _, s := range []uint32{1, 4, 7} {
			sc := float32(float64(s) / math.Sqrt(ss+1e-30))
			var g1, g2 Lanes
			g1.Seed(uint64(n) + uint64(s))
			g2 = g1
			got := make([]byte, (n+1)/2)
			want := make([]byte, (n+1)/2)
			QSGDNibbles(got, x, sc, s, &g1)
			qsgdNibblesGeneric(want, x, sc, s, &g2)
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("n=%d s=%d: byte %d = %#02x, generic %#02x", n, s, i, got[i], want[i])
				}
			}
			if g1 != g2 {
				t.Fatalf("n=%d s=%d: generator states differ after the call", n, s)
			}
		}
	}
}

func TestFloat32BytesUnaligned(t *testing.T) {
	r := rand.New(rand.NewPCG(37, 38))
	for _, n := range []int{1, 8, 9, 33, 100} {
		src := make([]float32, n)
		for i := range src {
			src[i] = float32(r.NormFloat64())
		}
		buf := make([]byte, 4*n+3)
		for off := range 4 {
			b := buf[off : off+4*n]
			EncodeFloat32(b, src)
			got := make([]float32, n)
			DecodeFloat32(got, b)
			acc := make([]float32, n)
			for i := range acc {
				acc[i] = 1
			}
			DecodeAddFloat32(acc, b)
			for i := range src {
				if got[i] != src[i] || acc[i] != 1+src[i] {
					t.Fatalf("n=%d off=%d i=%d: %v %v want %v", n, off, i, got[i], acc[i], src[i])
				}
			}
		}
	}
}

func TestQSGDDecodeNibblesMatchesGeneric(t *testing.T) {
	r := rand.New(rand.NewPCG(39, 40))
	levels := [8]float32{0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75}
	for _, n := range []int{0, 1, 15, 16, 17, 33, 512, 1001} {
		codes := make([]byte, (n+1)/2)
		for i := range codes {
			codes[i] = byte(r.Uint32())
		}
		if n%2 == 1 {
			codes[len(codes)-1] &= 15
		}
		for _, add := range []bool{false, true} {
			got, want := make([]float32, n), make([]float32, n)
			for i := range got {
				got[i] = float32(i)
				want[i] = float32(i)
			}
			QSGDDecodeNibbles(got, codes, &levels, add)
			qsgdDecodeNibblesGeneric(want, codes, &levels, add)
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("n=%d add=%v: [%d] = %v, generic %v", n, add, i, got[i], want[i])
				}
			}
		}
	}
}

func TestPackSignsSumSq(t *testing.T) {
	r := rand.New(rand.NewPCG(47, 48))
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 100, 1000, 4099} {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		got := make([]byte, (n+7)/8)
		want := make([]byte, (n+7)/8)
		ss := PackSignsSumSq(got, x)
		PackSigns(want, x)
		if ss != SumSq(x) || ss != sumSqGeneric(x) {
			t.Fatalf("n=%d: sum of squares %v, SumSq %v, generic %v", n, ss, SumSq(x), sumSqGeneric(x))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("n=%d: byte %d = %#02x, PackSigns %#02x", n, i, got[i], want[i])
			}
		}
	}
}

// TestAllFiniteMatchesGeneric: AllFinite (assembly where available)
// agrees with the scalar reference for every length up to 100 and a long
// one, with one special value at every position (each NaN sign and
// payload kind, ±Inf, and the finite extremes that must not count), and
// does not read past the slice: a NaN right after it, in the same
// backing array, is not seen. It also sweeps a stride through all 2^32
// bit patterns against the scalar test x-x != 0.
func TestAllFiniteMatchesGeneric(t *testing.T) {
	specials := []uint32{
		0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff, // NaNs
		0x7f800000, 0xff800000, // ±Inf
		0x7f7fffff, 0xff7fffff, 0x00000001, 0x80000000, 0x00800000, // finite
	}
	r := rand.New(rand.NewPCG(41, 42))
	for _, n := range append(seqTo(100), 200704+5) {
		back := make([]float32, n+1)
		for i := range back {
			back[i] = float32(r.NormFloat64())
		}
		back[n] = float32(math.NaN()) // past the end
		x := back[:n]
		if got := AllFinite(x); !got {
			t.Fatalf("n=%d, all finite: got false", n)
		}
		positions := seqTo(n)
		if n > 100 {
			positions = []int{0, 7, 8, 31, 32, 127, 128, n - 6, n - 5, n - 1}
		}
		for _, p := range positions {
			old := x[p]
			for _, s := range specials {
				x[p] = math.Float32frombits(s)
				if got, want := AllFinite(x), allFiniteGeneric(x); got != want {
					t.Fatalf("n=%d, %#08x at %d: AllFinite %v, reference %v", n, s, p, got, want)
				}
			}
			x[p] = old
		}
	}
	const step = 4093
	xs := make([]float32, 0, 1<<20+64)
	for b := uint64(0); b < 1<<32; b += step {
		xs = append(xs, math.Float32frombits(uint32(b)))
	}
	for i := 0; i+40 <= len(xs); i += 40 {
		if got, want := AllFinite(xs[i:i+40]), allFiniteGeneric(xs[i:i+40]); got != want {
			t.Fatalf("block at %d: AllFinite %v, reference %v", i, got, want)
		}
	}
}

func seqTo(n int) []int {
	s := make([]int, n+1)
	for i := range s {
		s[i] = i
	}
	return s[:n]
}

// BenchmarkAllFinite: the finite check on a layer of the MNIST MLP's first
// weight matrix, against the scalar reference.
func BenchmarkAllFinite(b *testing.B) {
	x := make([]float32, 200704)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	for _, k := range []struct {
		name string
		f    func([]float32) bool
	}{{"kernel", AllFinite}, {"generic", allFiniteGeneric}} {
		b.Run("impl="+k.name, func(b *testing.B) {
			b.SetBytes(4 * int64(len(x)))
			for b.Loop() {
				if !k.f(x) {
					b.Fatal("not finite")
				}
			}
		})
	}
}
