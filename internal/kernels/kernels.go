// Package kernels holds the float32 hot loops of slimgrad: element-wise
// arithmetic, reductions with float64 accumulation, IEEE half-precision and
// bfloat16 conversion, and MSB-first sign packing.
//
// Every function writes into a caller-provided destination (destination
// first), allocates nothing and is safe for concurrent use on disjoint
// buffers. Length mismatches are programmer errors and panic with a constant
// message. On amd64 with AVX2 (and F16C, FMA) the loops run in assembly; the
// pure-Go versions are the reference and are used elsewhere or with the
// build tag noasm. Both produce bit-identical results: element-wise kernels
// round each element once, and the reductions use the same fixed lane
// structure (16 float64 partial sums, combined in a fixed order) in both.
package kernels

const (
	badLen   = "kernels: slice lengths differ"
	badBytes = "kernels: byte slice length does not match element count"
	badBits  = "kernels: bit slice shorter than (n+7)/8 bytes"
)

// Add sets dst[i] += src[i]. It panics if the lengths differ.
func Add(dst, src []float32) {
	if len(src) != len(dst) {
		panic(badLen)
	}
	add(dst, src)
}

// AddTo sets dst[i] = a[i] + b[i]. It panics if the lengths differ. dst may
// alias a or b exactly.
func AddTo(dst, a, b []float32) {
	if len(a) != len(dst) || len(b) != len(dst) {
		panic(badLen)
	}
	addTo(dst, a, b)
}

// SubTo sets dst[i] = a[i] - b[i]. It panics if the lengths differ. dst may
// alias a or b exactly.
func SubTo(dst, a, b []float32) {
	if len(a) != len(dst) || len(b) != len(dst) {
		panic(badLen)
	}
	subTo(dst, a, b)
}

// Scale sets dst[i] *= s.
func Scale(dst []float32, s float32) { scale(dst, s) }

// ScaleTo sets dst[i] = s * x[i]. It panics if the lengths differ.
func ScaleTo(dst []float32, s float32, x []float32) {
	if len(x) != len(dst) {
		panic(badLen)
	}
	scaleTo(dst, s, x)
}

// Axpy sets dst[i] += a * x[i] (the product is rounded to float32 before the
// addition, as in a separate multiply and add). It panics if the lengths
// differ.
func Axpy(dst []float32, a float32, x []float32) {
	if len(x) != len(dst) {
		panic(badLen)
	}
	axpy(dst, a, x)
}

// AxpyTo sets dst[i] = a*x[i] + y[i] (product rounded to float32 first). It
// panics if the lengths differ. dst may alias x or y exactly.
func AxpyTo(dst []float32, a float32, x, y []float32) {
	if len(x) != len(dst) || len(y) != len(dst) {
		panic(badLen)
	}
	axpyTo(dst, a, x, y)
}

// Dot returns Σ a[i]·b[i] accumulated in float64 (each product is exact in
// float64). It panics if the lengths differ.
func Dot(a, b []float32) float64 {
	if len(a) != len(b) {
		panic(badLen)
	}
	return dot(a, b)
}

// SumSq returns Σ x[i]² accumulated in float64.
func SumSq(x []float32) float64 { return sumSq(x) }

// MaxAbs returns the largest |x[i]| over the non-NaN elements (0 for an empty
// or all-NaN slice).
func MaxAbs(x []float32) float32 {
	var m uint32
	for _, v := range x {
		b := f32bits(v) & 0x7fffffff
		if b > m && b <= 0x7f800000 {
			m = b
		}
	}
	return f32frombits(m)
}

// Float32ToFloat16 converts src to IEEE 754 binary16 with round-to-nearest-
// even. Overflow gives ±Inf, tiny values become subnormals or ±0, NaN stays
// NaN (quiet, sign and top payload bits kept). It panics if the lengths
// differ.
func Float32ToFloat16(dst []uint16, src []float32) {
	if len(src) != len(dst) {
		panic(badLen)
	}
	for i, v := range src {
		dst[i] = F32ToF16(v)
	}
}

// Float16ToFloat32 converts binary16 values to float32 exactly (NaN payloads
// are kept and made quiet). It panics if the lengths differ.
func Float16ToFloat32(dst []float32, src []uint16) {
	if len(src) != len(dst) {
		panic(badLen)
	}
	for i, h := range src {
		dst[i] = F16ToF32(h)
	}
}

// Float32ToBFloat16 converts src to bfloat16 (the top half of a float32)
// with round-to-nearest-even; NaN stays a quiet NaN. It panics if the
// lengths differ.
func Float32ToBFloat16(dst []uint16, src []float32) {
	if len(src) != len(dst) {
		panic(badLen)
	}
	for i, v := range src {
		dst[i] = F32ToBF16(v)
	}
}

// BFloat16ToFloat32 converts bfloat16 values to float32 exactly. It panics if
// the lengths differ.
func BFloat16ToFloat32(dst []float32, src []uint16) {
	if len(src) != len(dst) {
		panic(badLen)
	}
	for i, h := range src {
		dst[i] = BF16ToF32(h)
	}
}

// EncodeFloat32 writes src as little-endian float32 into dst. It panics
// unless len(dst) == 4*len(src).
func EncodeFloat32(dst []byte, src []float32) {
	if len(dst) != 4*len(src) {
		panic(badBytes)
	}
	encodeFloat32(dst, src)
}

// DecodeFloat32 reads little-endian float32 values from src into dst. It
// panics unless len(src) == 4*len(dst).
func DecodeFloat32(dst []float32, src []byte) {
	if len(src) != 4*len(dst) {
		panic(badBytes)
	}
	decodeFloat32(dst, src)
}

// DecodeAddFloat32 adds little-endian float32 values from src to dst. It
// panics unless len(src) == 4*len(dst).
func DecodeAddFloat32(dst []float32, src []byte) {
	if len(src) != 4*len(dst) {
		panic(badBytes)
	}
	decodeAddFloat32(dst, src)
}

// EncodeFloat16 writes src as little-endian binary16 (see Float32ToFloat16)
// into dst. It panics unless len(dst) == 2*len(src).
func EncodeFloat16(dst []byte, src []float32) {
	if len(dst) != 2*len(src) {
		panic(badBytes)
	}
	encodeFloat16(dst, src)
}

// DecodeFloat16 reads little-endian binary16 values from src into dst. It
// panics unless len(src) == 2*len(dst).
func DecodeFloat16(dst []float32, src []byte) {
	if len(src) != 2*len(dst) {
		panic(badBytes)
	}
	decodeFloat16(dst, src)
}

// DecodeAddFloat16 adds little-endian binary16 values from src to dst. It
// panics unless len(src) == 2*len(dst).
func DecodeAddFloat16(dst []float32, src []byte) {
	if len(src) != 2*len(dst) {
		panic(badBytes)
	}
	decodeAddFloat16(dst, src)
}

// EncodeBFloat16 writes src as little-endian bfloat16 (see Float32ToBFloat16)
// into dst. It panics unless len(dst) == 2*len(src).
func EncodeBFloat16(dst []byte, src []float32) {
	if len(dst) != 2*len(src) {
		panic(badBytes)
	}
	encodeBFloat16(dst, src)
}

// DecodeBFloat16 reads little-endian bfloat16 values from src into dst. It
// panics unless len(src) == 2*len(dst).
func DecodeBFloat16(dst []float32, src []byte) {
	if len(src) != 2*len(dst) {
		panic(badBytes)
	}
	decodeBFloat16(dst, src)
}

// DecodeAddBFloat16 adds little-endian bfloat16 values from src to dst. It
// panics unless len(src) == 2*len(dst).
func DecodeAddBFloat16(dst []float32, src []byte) {
	if len(src) != 2*len(dst) {
		panic(badBytes)
	}
	decodeAddBFloat16(dst, src)
}

// PackSigns writes one bit per element of src into dst, MSB-first: element j
// goes to byte j/8, bit 7-(j mod 8), and the bit is 1 iff src[j] >= 0 (so +0
// and -0 give 1, NaN gives 0). Unused low bits of the last byte are 0. It
// panics unless len(dst) == (len(src)+7)/8.
func PackSigns(dst []byte, src []float32) {
	if len(dst) != (len(src)+7)/8 {
		panic(badBits)
	}
	packSigns(dst, src)
}

// UnpackSigns sets dst[j] = +scale where bit j of bits (MSB-first) is 1 and
// -scale where it is 0. It panics if len(bits) < (len(dst)+7)/8.
func UnpackSigns(dst []float32, bits []byte, scale float32) {
	if len(bits) < (len(dst)+7)/8 {
		panic(badBits)
	}
	unpackSigns(dst, bits, scale)
}

// UnpackSignsAdd adds ±scale to dst[j] according to bit j of bits, as in
// UnpackSigns. It panics if len(bits) < (len(dst)+7)/8.
func UnpackSignsAdd(dst []float32, bits []byte, scale float32) {
	if len(bits) < (len(dst)+7)/8 {
		panic(badBits)
	}
	unpackSignsAdd(dst, bits, scale)
}

// NextAbsGE returns the index of the first element of x whose magnitude key
// (float32 bits with the sign cleared; NaN ranks above +Inf) is >= lo, or
// len(x) if there is none. lo must be <= 0x7fffffff.
func NextAbsGE(x []float32, lo uint32) int { return nextAbsGE(x, lo) }

// PackSignsSumSq does PackSigns(dst, src) and returns SumSq(src) (bit for
// bit) in one pass over src: the 1-bit compressor's signs and RMS.
func PackSignsSumSq(dst []byte, src []float32) float64 {
	if len(dst) != (len(src)+7)/8 {
		panic(badBits)
	}
	var acc [16]float64
	done := packSignsSumSq(dst, src, &acc)
	// Finish exactly as sumSqGeneric would: whole 16-groups into the lanes,
	// then combine, then the tail in order.
	packSignsGeneric(dst[done/8:], src[done:])
	return sumSqAcc(&acc, src[done:])
}

// AllFinite reports whether every element of x is finite (no NaN, no ±Inf).
func AllFinite(x []float32) bool { return allFinite(x) }
