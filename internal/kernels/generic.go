package kernels

import (
	"encoding/binary"
	"math"
)

func f32bits(f float32) uint32     { return math.Float32bits(f) }
func f32frombits(b uint32) float32 { return math.Float32frombits(b) }

// F32ToF16 converts one float32 to IEEE binary16 bits with round-to-nearest-
// even (see Float32ToFloat16).
func F32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00 | uint16(mant>>13)
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// Subnormal half (or zero): drop 14-e bits of the 24-bit significand.
		shift := uint32(14 - e)
		if shift > 24 {
			return sign
		}
		m := mant | 0x800000
		r := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // may carry into the exponent, up to Inf: correct
	}
	return sign | uint16(r)
}

// F16ToF32 converts IEEE binary16 bits to float32 exactly (NaN made quiet).
func F16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		// Subnormal: mant·2^-24, exact in float32.
		v := float32(mant) * (1.0 / (1 << 24))
		return math.Float32frombits(math.Float32bits(v) | sign)
	case exp == 0x1f:
		if mant == 0 {
			return math.Float32frombits(sign | 0x7f800000)
		}
		return math.Float32frombits(sign | 0x7fc00000 | mant<<13)
	}
	return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
}

// F32ToBF16 converts one float32 to bfloat16 bits with round-to-nearest-even
// (NaN made quiet).
func F32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// BF16ToF32 converts bfloat16 bits to float32 exactly.
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

func addGeneric(dst, src []float32) {
	src = src[:len(dst)]
	for i := range dst {
		dst[i] += src[i]
	}
}

func addToGeneric(dst, a, b []float32) {
	a, b = a[:len(dst)], b[:len(dst)]
	for i := range dst {
		dst[i] = a[i] + b[i]
	}
}

func subToGeneric(dst, a, b []float32) {
	a, b = a[:len(dst)], b[:len(dst)]
	for i := range dst {
		dst[i] = a[i] - b[i]
	}
}

func scaleGeneric(dst []float32, s float32) {
	for i := range dst {
		dst[i] *= s
	}
}

func scaleToGeneric(dst []float32, s float32, x []float32) {
	x = x[:len(dst)]
	for i := range dst {
		dst[i] = s * x[i]
	}
}

func axpyGeneric(dst []float32, a float32, x []float32) {
	x = x[:len(dst)]
	for i := range dst {
		p := a * x[i]
		dst[i] += float32(p) // explicit conversion forbids fusing into an FMA
	}
}

func axpyToGeneric(dst []float32, a float32, x, y []float32) {
	x, y = x[:len(dst)], y[:len(dst)]
	for i := range dst {
		p := a * x[i]
		dst[i] = float32(p) + y[i]
	}
}

// dotGeneric uses 16 float64 lanes: lane l sums the products of the elements
// i ≡ l (mod 16) of the 16-aligned prefix; the lanes are combined pairwise
// (l and l+8, then l and l+4, ...), then the tail is added in order. The
// assembly version follows the same order, so results are bit-identical.
// A vector shorter than 16 has no prefix: its lanes would combine to +0,
// so it is the tail alone, added in order to +0.
func dotGeneric(a, b []float32) float64 {
	b = b[:len(a)]
	if len(a) < 16 {
		var s float64
		for i := range a {
			s += float64(a[i]) * float64(b[i])
		}
		return s
	}
	var acc [16]float64
	n := len(a) &^ 15
	for i := 0; i < n; i += 16 {
		aa := a[i : i+16 : i+16]
		bb := b[i : i+16 : i+16]
		for l := range acc {
			acc[l] += float64(aa[l]) * float64(bb[l])
		}
	}
	s := combine16(&acc)
	for i := n; i < len(a); i++ {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

func sumSqGeneric(x []float32) float64 {
	var acc [16]float64
	return sumSqAcc(&acc, x)
}

// sumSqAcc finishes a sum of squares whose 16 lanes hold acc: the whole
// 16-groups of x go into the lanes, then the lanes are combined, then the
// tail is added in order. With acc zero it is the whole of SumSq's order.
func sumSqAcc(acc *[16]float64, x []float32) float64 {
	n := len(x) &^ 15
	for i := 0; i < n; i += 16 {
		xx := x[i : i+16 : i+16]
		for l := range acc {
			v := float64(xx[l])
			acc[l] += v * v
		}
	}
	s := combine16(acc)
	for i := n; i < len(x); i++ {
		v := float64(x[i])
		s += v * v
	}
	return s
}

func combine16(acc *[16]float64) float64 {
	for w := 8; w >= 1; w /= 2 {
		for l := 0; l < w; l++ {
			acc[l] += acc[l+w]
		}
	}
	return acc[0]
}

func encodeFloat32Generic(dst []byte, src []float32) {
	for i, v := range src {
		binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
	}
}

func decodeFloat32Generic(dst []float32, src []byte) {
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
	}
}

func decodeAddFloat32Generic(dst []float32, src []byte) {
	for i := range dst {
		dst[i] += math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
	}
}

func encodeFloat16Generic(dst []byte, src []float32) {
	for i, v := range src {
		binary.LittleEndian.PutUint16(dst[2*i:], F32ToF16(v))
	}
}

func decodeFloat16Generic(dst []float32, src []byte) {
	for i := range dst {
		dst[i] = F16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

func decodeAddFloat16Generic(dst []float32, src []byte) {
	for i := range dst {
		dst[i] += F16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

func encodeBFloat16Generic(dst []byte, src []float32) {
	for i, v := range src {
		binary.LittleEndian.PutUint16(dst[2*i:], F32ToBF16(v))
	}
}

func decodeBFloat16Generic(dst []float32, src []byte) {
	for i := range dst {
		dst[i] = BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

func decodeAddBFloat16Generic(dst []float32, src []byte) {
	for i := range dst {
		dst[i] += BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

func packSignsGeneric(dst []byte, src []float32) {
	n := len(src) &^ 7
	for i := 0; i < n; i += 8 {
		s := src[i : i+8 : i+8]
		var b byte
		for _, v := range s {
			b <<= 1
			if v >= 0 {
				b |= 1
			}
		}
		dst[i>>3] = b
	}
	if n < len(src) {
		var b byte
		for j, v := range src[n:] {
			if v >= 0 {
				b |= 0x80 >> j
			}
		}
		dst[n>>3] = b
	}
}

func unpackSignsGeneric(dst []float32, bits []byte, scale float32) {
	neg := -scale
	for j := range dst {
		if bits[j>>3]&(0x80>>(j&7)) != 0 {
			dst[j] = scale
		} else {
			dst[j] = neg
		}
	}
}

func unpackSignsAddGeneric(dst []float32, bits []byte, scale float32) {
	neg := -scale
	for j := range dst {
		if bits[j>>3]&(0x80>>(j&7)) != 0 {
			dst[j] += scale
		} else {
			dst[j] += neg
		}
	}
}

func nextAbsGEGeneric(x []float32, lo uint32) int {
	for i, v := range x {
		if math.Float32bits(v)&0x7fffffff >= lo {
			return i
		}
	}
	return len(x)
}

func allFiniteGeneric(x []float32) bool {
	for _, v := range x {
		if v-v != 0 { // NaN or ±Inf
			return false
		}
	}
	return true
}
