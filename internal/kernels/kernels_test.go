package kernels

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
)

func randVec(r *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	return x
}

var testLens = []int{0, 1, 7, 8, 15, 16, 17, 31, 33, 64, 100, 1000, 1027}

func TestElementwise(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range testLens {
		a, b := randVec(r, n), randVec(r, n)
		s := float32(r.NormFloat64())
		got := make([]float32, n)
		check := func(name string, want func(i int) float32) {
			t.Helper()
			for i := range got {
				if w := want(i); math.Float32bits(got[i]) != math.Float32bits(w) {
					t.Fatalf("%s n=%d: got[%d]=%v, want %v", name, n, i, got[i], w)
				}
			}
		}
		copy(got, a)
		Add(got, b)
		check("Add", func(i int) float32 { return a[i] + b[i] })
		AddTo(got, a, b)
		check("AddTo", func(i int) float32 { return a[i] + b[i] })
		SubTo(got, a, b)
		check("SubTo", func(i int) float32 { return a[i] - b[i] })
		copy(got, a)
		Scale(got, s)
		check("Scale", func(i int) float32 { return a[i] * s })
		ScaleTo(got, s, b)
		check("ScaleTo", func(i int) float32 { return s * b[i] })
		copy(got, a)
		Axpy(got, s, b)
		check("Axpy", func(i int) float32 { return a[i] + float32(s*b[i]) })
		AxpyTo(got, s, b, a)
		check("AxpyTo", func(i int) float32 { return float32(s*b[i]) + a[i] })
	}
}

func TestReductions(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range testLens {
		a, b := randVec(r, n), randVec(r, n)
		if got, want := Dot(a, b), dotGeneric(a, b); got != want {
			t.Fatalf("Dot n=%d: got %v, want generic %v", n, got, want)
		}
		if got, want := SumSq(a), sumSqGeneric(a); got != want {
			t.Fatalf("SumSq n=%d: got %v, want generic %v", n, got, want)
		}
		var naive float64
		for i := range a {
			naive += float64(a[i]) * float64(b[i])
		}
		if d := math.Abs(Dot(a, b) - naive); d > 1e-9*float64(n+1) {
			t.Fatalf("Dot n=%d: %v far from naive %v", n, Dot(a, b), naive)
		}
	}
	if got := MaxAbs([]float32{1, -3, float32(math.NaN()), 2}); got != 3 {
		t.Fatalf("MaxAbs = %v, want 3", got)
	}
}

// nearestF16 is an independent reference: the binary16 value nearest to v
// (ties to even), found with exact rational arithmetic over the candidates.
func nearestF16(v float32) uint16 {
	if math.IsNaN(float64(v)) {
		b := math.Float32bits(v)
		return uint16(b>>16)&0x8000 | 0x7e00 | uint16(b&0x7fffff>>13)
	}
	sign := uint16(0)
	if math.Signbit(float64(v)) {
		sign = 0x8000
	}
	a := math.Abs(float64(v))
	if math.IsInf(a, 0) {
		return sign | 0x7c00
	}
	// Largest finite half is 65504; halfway to the next (65536) is 65520.
	if a >= 65520 {
		return sign | 0x7c00
	}
	x := new(big.Float).SetFloat64(a)
	lo := uint16(0)
	hi := uint16(0x7bff)
	for lo < hi { // largest h with value(h) <= a
		mid := (lo + hi + 1) / 2
		if new(big.Float).SetFloat64(float64(F16ToF32(mid))).Cmp(x) <= 0 {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	if lo == 0x7bff {
		return sign | lo
	}
	dl := new(big.Float).Sub(x, new(big.Float).SetFloat64(float64(F16ToF32(lo))))
	dh := new(big.Float).Sub(new(big.Float).SetFloat64(float64(F16ToF32(lo+1))), x)
	switch dl.Cmp(dh) {
	case -1:
		return sign | lo
	case 1:
		return sign | (lo + 1)
	}
	if lo&1 == 0 {
		return sign | lo
	}
	return sign | (lo + 1)
}

func specialFloats() []float32 {
	inf := float32(math.Inf(1))
	vs := []float32{0, float32(math.Copysign(0, -1)), 1, -1, 65504, 65519.99, 65520, 65536, 1e10, inf, -inf,
		float32(math.NaN()), math.Float32frombits(0x7f800001), math.Float32frombits(0xffc12345),
		5.960464477539063e-08, 2.9802322387695312e-08, 2.98023259e-08, 8.940697e-08, 6.097555e-05, 6.1035156e-05,
		math.SmallestNonzeroFloat32, math.MaxFloat32, 1.00048828125, 1.000732421875, 2049, 2051, 0.1, 1.0 / 3}
	out := vs
	for _, v := range vs {
		out = append(out, -v)
	}
	return out
}

func TestF16AgainstReference(t *testing.T) {
	vals := specialFloats()
	r := rand.New(rand.NewPCG(5, 6))
	for range 3000 {
		vals = append(vals, math.Float32frombits(r.Uint32()))
		// Values in and around the half range, including exact ties.
		e := r.IntN(50) - 30
		vals = append(vals, float32(math.Ldexp(1+float64(r.IntN(4096))/4096, e)))
	}
	for _, v := range vals {
		if got, want := F32ToF16(v), nearestF16(v); got != want {
			t.Fatalf("F32ToF16(%v [%#08x]) = %#04x, want %#04x", v, math.Float32bits(v), got, want)
		}
	}
}

func TestF16RoundTripAllHalves(t *testing.T) {
	for h := range 1 << 16 {
		f := F16ToF32(uint16(h))
		back := F32ToF16(f)
		if uint16(h)&0x7c00 == 0x7c00 && h&0x3ff != 0 { // NaN: quiet bit set
			if back != uint16(h)|0x200 {
				t.Fatalf("NaN %#04x -> %#04x", h, back)
			}
			continue
		}
		if back != uint16(h) {
			t.Fatalf("half %#04x -> %v -> %#04x", h, f, back)
		}
	}
}

func TestBF16(t *testing.T) {
	for h := range 1 << 16 {
		f := BF16ToF32(uint16(h))
		back := F32ToBF16(f)
		if math.IsNaN(float64(f)) {
			if back != uint16(h)|0x40 {
				t.Fatalf("NaN %#04x -> %#04x", h, back)
			}
			continue
		}
		if back != uint16(h) {
			t.Fatalf("bf16 %#04x -> %#04x", h, back)
		}
	}
	// Rounding: halfway cases go to even, others to nearest; subnormals too.
	cases := []struct {
		in   uint32
		want uint16
	}{
		{0x3f808000, 0x3f80}, // tie, even stays
		{0x3f818000, 0x3f82}, // tie, odd rounds up
		{0x3f808001, 0x3f81},
		{0x3f807fff, 0x3f80},
		{0x00008000, 0x0000}, // subnormal tie to even
		{0x00018000, 0x0002},
		{0x7f7fffff, 0x7f80}, // max float rounds to Inf
		{0xff7f7fff, 0xff7f},
		{0x7f800000, 0x7f80},
		{0x7f800001, 0x7fc0}, // signalling NaN made quiet
	}
	for _, c := range cases {
		if got := F32ToBF16(math.Float32frombits(c.in)); got != c.want {
			t.Errorf("F32ToBF16(%#08x) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
}

func TestSliceConversionsMatchScalar(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, n := range append(testLens, 4099) {
		src := make([]float32, n)
		for i := range src {
			switch r.IntN(4) {
			case 0:
				src[i] = math.Float32frombits(r.Uint32())
			default:
				src[i] = float32(r.NormFloat64() * math.Ldexp(1, r.IntN(40)-25))
			}
		}
		specials := specialFloats()
		for i := 0; i < n && i < len(specials); i++ {
			src[r.IntN(n)] = specials[i]
		}
		b := make([]byte, 2*n)
		u := make([]uint16, n)
		f := make([]float32, n)
		acc := make([]float32, n)

		EncodeFloat16(b, src)
		Float32ToFloat16(u, src)
		for i := range src {
			if got := uint16(b[2*i]) | uint16(b[2*i+1])<<8; got != F32ToF16(src[i]) || u[i] != got {
				t.Fatalf("EncodeFloat16 n=%d i=%d: %#04x/%#04x want %#04x", n, i, got, u[i], F32ToF16(src[i]))
			}
		}
		DecodeFloat16(f, b)
		Float16ToFloat32(acc, u)
		for i := range f {
			w := F16ToF32(u[i])
			if math.Float32bits(f[i]) != math.Float32bits(w) || math.Float32bits(acc[i]) != math.Float32bits(w) {
				t.Fatalf("DecodeFloat16 n=%d i=%d: %v want %v", n, i, f[i], w)
			}
		}
		for i := range acc {
			acc[i] = 1
		}
		DecodeAddFloat16(acc, b)
		for i := range acc {
			if w := 1 + F16ToF32(u[i]); math.Float32bits(acc[i]) != math.Float32bits(w) && !(math.IsNaN(float64(w)) && math.IsNaN(float64(acc[i]))) {
				t.Fatalf("DecodeAddFloat16 n=%d i=%d: %v want %v", n, i, acc[i], w)
			}
		}

		EncodeBFloat16(b, src)
		Float32ToBFloat16(u, src)
		for i := range src {
			if got := uint16(b[2*i]) | uint16(b[2*i+1])<<8; got != F32ToBF16(src[i]) || u[i] != got {
				t.Fatalf("EncodeBFloat16 n=%d i=%d: %#04x want %#04x", n, i, got, F32ToBF16(src[i]))
			}
		}
		DecodeBFloat16(f, b)
		BFloat16ToFloat32(acc, u)
		for i := range f {
			if w := BF16ToF32(u[i]); math.Float32bits(f[i]) != math.Float32bits(w) || math.Float32bits(acc[i]) != math.Float32bits(w) {
				t.Fatalf("DecodeBFloat16 n=%d i=%d", n, i)
			}
		}
		for i := range acc {
			acc[i] = 2
		}
		DecodeAddBFloat16(acc, b)
		for i := range acc {
			if w := 2 + BF16ToF32(u[i]); math.Float32bits(acc[i]) != math.Float32bits(w) && !(math.IsNaN(float64(w)) && math.IsNaN(float64(acc[i]))) {
				t.Fatalf("DecodeAddBFloat16 n=%d i=%d", n, i)
			}
		}

		b4 := make([]byte, 4*n)
		EncodeFloat32(b4, src)
		DecodeFloat32(f, b4)
		for i := range f {
			if math.Float32bits(f[i]) != math.Float32bits(src[i]) {
				t.Fatalf("Float32 round trip n=%d i=%d", n, i)
			}
		}
	}
}

func TestSignsKnownPattern(t *testing.T) {
	negz := float32(math.Copysign(0, -1))
	src := []float32{1, -1, 0, negz, -2, 3, float32(math.NaN()), -0.5, // 1 0 1 1 0 1 0 0 = 0xb4
		-1, -1, -1, -1, -1, -1, -1, 5, // 0x01
		7, -7, 7} // 1 0 1 -> 0xa0
	want := []byte{0xb4, 0x01, 0xa0}
	got := make([]byte, 3)
	PackSigns(got, src)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("PackSigns = %x, want %x", got, want)
		}
	}
	dst := make([]float32, len(src))
	UnpackSigns(dst, got, 2)
	for j := range src {
		w := float32(-2)
		if src[j] >= 0 {
			w = 2
		}
		if dst[j] != w {
			t.Fatalf("UnpackSigns[%d] = %v, want %v", j, dst[j], w)
		}
	}
	UnpackSignsAdd(dst, got, 0.5)
	for j := range src {
		w := float32(-2.5)
		if src[j] >= 0 {
			w = 2.5
		}
		if dst[j] != w {
			t.Fatalf("UnpackSignsAdd[%d] = %v, want %v", j, dst[j], w)
		}
	}
}

func TestSignsRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, n := range append(testLens, 4099, 65) {
		src := randVec(r, n)
		got := make([]byte, (n+7)/8)
		want := make([]byte, (n+7)/8)
		PackSigns(got, src)
		packSignsGeneric(want, src)
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("n=%d byte %d: %#02x want %#02x", n, i, got[i], want[i])
			}
		}
		d1, d2 := randVec(r, n), make([]float32, n)
		copy(d2, d1)
		UnpackSignsAdd(d1, got, 0.25)
		unpackSignsAddGeneric(d2, got, 0.25)
		for i := range d1 {
			if d1[i] != d2[i] {
				t.Fatalf("UnpackSignsAdd n=%d i=%d", n, i)
			}
		}
		UnpackSigns(d1, got, 3)
		unpackSignsGeneric(d2, got, 3)
		for i := range d1 {
			if d1[i] != d2[i] {
				t.Fatalf("UnpackSigns n=%d i=%d", n, i)
			}
		}
	}
}

func TestPanicsOnBadLengths(t *testing.T) {
	mustPanic := func(name string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s: no panic", name)
			}
		}()
		f()
	}
	mustPanic("Add", func() { Add(make([]float32, 2), make([]float32, 3)) })
	mustPanic("EncodeFloat16", func() { EncodeFloat16(make([]byte, 3), make([]float32, 2)) })
	mustPanic("PackSigns", func() { PackSigns(make([]byte, 1), make([]float32, 9)) })
}

func TestZeroAllocs(t *testing.T) {
	x := make([]float32, 1000)
	y := make([]float32, 1000)
	b := make([]byte, 2000)
	bits := make([]byte, 125)
	if a := testing.AllocsPerRun(10, func() {
		Add(x, y)
		Axpy(x, 2, y)
		_ = Dot(x, y)
		EncodeFloat16(b, x)
		DecodeAddBFloat16(x, b)
		PackSigns(bits, x)
		UnpackSignsAdd(y, bits, 1)
	}); a != 0 {
		t.Fatalf("allocs = %v, want 0", a)
	}
}

// dotLanesRef is dotGeneric's 16-lane order without its short-vector path:
// the lanes (all +0 below 16 elements) combined pairwise, then the tail.
func dotLanesRef(a, b []float32) float64 {
	var acc [16]float64
	n := len(a) &^ 15
	for i := 0; i < n; i++ {
		acc[i%16] += float64(a[i]) * float64(b[i])
	}
	s := combine16(&acc)
	for i := n; i < len(a); i++ {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

// TestDotShort: below 16 elements Dot skips the lanes and gives their bits:
// the products added in order to +0, for random and special values (±0,
// ±Inf, NaN, subnormals, products that overflow float32).
func TestDotShort(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	special := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		math.Float32frombits(1), math.MaxFloat32, -1e-30}
	for n := range 40 {
		for range 200 {
			a, b := randVec(r, n), randVec(r, n)
			for i := range a {
				if r.IntN(8) == 0 {
					a[i] = special[r.IntN(len(special))]
				}
				if r.IntN(8) == 0 {
					b[i] = special[r.IntN(len(special))]
				}
			}
			want := dotLanesRef(a, b)
			for name, got := range map[string]float64{"Dot": Dot(a, b), "dotGeneric": dotGeneric(a, b)} {
				if math.Float64bits(got) != math.Float64bits(want) && !(math.IsNaN(got) && math.IsNaN(want)) {
					t.Fatalf("%s n=%d: got %v (%x), want %v (%x)", name, n, got, math.Float64bits(got), want, math.Float64bits(want))
				}
			}
		}
	}
}
