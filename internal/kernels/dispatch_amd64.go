//go:build amd64 && !noasm

package kernels

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// useAVX2 is true when the CPU and OS support AVX2, FMA and F16C (x/sys/cpu
// sets HasAVX2 only when the OS saves the YMM registers).
var useAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA && cpu.X86.HasF16C

//go:noescape
func addAVX2(dst, a, b *float32, n int)

//go:noescape
func subAVX2(dst, a, b *float32, n int)

//go:noescape
func axpyAVX2(dst, x, y *float32, a float32, n int)

//go:noescape
func scaleAVX2(dst, x *float32, s float32, n int)

//go:noescape
func dotAVX2(a, b *float32, n int) float64

//go:noescape
func sumSqAVX2(x *float32, n int) float64

//go:noescape
func f32ToF16AVX2(dst *byte, src *float32, n int)

//go:noescape
func f16ToF32AVX2(dst *float32, src *byte, n int, add bool)

//go:noescape
func f32ToBF16AVX2(dst *byte, src *float32, n int)

//go:noescape
func bf16ToF32AVX2(dst *float32, src *byte, n int, add bool)

//go:noescape
func packSignsAVX2(dst *byte, src *float32, n int)

//go:noescape
func unpackSignsAVX2(dst *float32, bits *byte, nbytes int, scale float32, add bool)

//go:noescape
func scanAbsGEAVX2(x *float32, n int, lom1 int32) int

//go:noescape
func allFiniteAVX2(x *float32, n int) bool

func allFinite(x []float32) bool {
	if n := len(x) &^ 7; useAVX2 && n > 0 {
		if !allFiniteAVX2(&x[0], n) {
			return false
		}
		x = x[n:]
	}
	return allFiniteGeneric(x)
}

func add(dst, src []float32) {
	if n := len(dst) &^ 7; useAVX2 && n > 0 {
		addAVX2(&dst[0], &dst[0], &src[0], n)
		dst, src = dst[n:], src[n:]
	}
	addGeneric(dst, src)
}

func addTo(dst, a, b []float32) {
	if n := len(dst) &^ 7; useAVX2 && n > 0 {
		addAVX2(&dst[0], &a[0], &b[0], n)
		dst, a, b = dst[n:], a[n:], b[n:]
	}
	addToGeneric(dst, a, b)
}

func subTo(dst, a, b []float32) {
	if n := len(dst) &^ 7; useAVX2 && n > 0 {
		subAVX2(&dst[0], &a[0], &b[0], n)
		dst, a, b = dst[n:], a[n:], b[n:]
	}
	subToGeneric(dst, a, b)
}

func scale(dst []float32, s float32) {
	if n := len(dst) &^ 7; useAVX2 && n > 0 {
		scaleAVX2(&dst[0], &dst[0], s, n)
		dst = dst[n:]
	}
	scaleGeneric(dst, s)
}

func scaleTo(dst []float32, s float32, x []float32) {
	if n := len(dst) &^ 7; useAVX2 && n > 0 {
		scaleAVX2(&dst[0], &x[0], s, n)
		dst, x = dst[n:], x[n:]
	}
	scaleToGeneric(dst, s, x)
}

func axpy(dst []float32, a float32, x []float32) {
	if n := len(dst) &^ 7; useAVX2 && n > 0 {
		axpyAVX2(&dst[0], &x[0], &dst[0], a, n)
		dst, x = dst[n:], x[n:]
	}
	axpyGeneric(dst, a, x)
}

func axpyTo(dst []float32, a float32, x, y []float32) {
	if n := len(dst) &^ 7; useAVX2 && n > 0 {
		axpyAVX2(&dst[0], &x[0], &y[0], a, n)
		dst, x, y = dst[n:], x[n:], y[n:]
	}
	axpyToGeneric(dst, a, x, y)
}

func dot(a, b []float32) float64 {
	n := len(a) &^ 15
	if !useAVX2 || n == 0 {
		return dotGeneric(a, b)
	}
	s := dotAVX2(&a[0], &b[0], n)
	for i := n; i < len(a); i++ {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

func sumSq(x []float32) float64 {
	n := len(x) &^ 15
	if !useAVX2 || n == 0 {
		return sumSqGeneric(x)
	}
	s := sumSqAVX2(&x[0], n)
	for _, v := range x[n:] {
		s += float64(v) * float64(v)
	}
	return s
}

// On amd64 (little-endian) the float32 wire format is the memory layout.
func encodeFloat32(dst []byte, src []float32) {
	if len(src) > 0 {
		copy(dst, unsafe.Slice((*byte)(unsafe.Pointer(&src[0])), 4*len(src)))
	}
}

func decodeFloat32(dst []float32, src []byte) {
	if len(dst) > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), 4*len(dst)), src)
	}
}

//go:noescape
func addBytesAVX2(dst *float32, a *float32, b *byte, n int)

func decodeAddFloat32(dst []float32, src []byte) {
	if n := len(dst) &^ 7; useAVX2 && n > 0 {
		addBytesAVX2(&dst[0], &dst[0], &src[0], n)
		dst, src = dst[n:], src[4*n:]
	}
	decodeAddFloat32Generic(dst, src)
}

func encodeFloat16(dst []byte, src []float32) {
	if n := len(src) &^ 7; useAVX2 && n > 0 {
		f32ToF16AVX2(&dst[0], &src[0], n)
		dst, src = dst[2*n:], src[n:]
	}
	encodeFloat16Generic(dst, src)
}

func decodeFloat16(dst []float32, src []byte) {
	if n := len(dst) &^ 7; useAVX2 && n > 0 {
		f16ToF32AVX2(&dst[0], &src[0], n, false)
		dst, src = dst[n:], src[2*n:]
	}
	decodeFloat16Generic(dst, src)
}

func decodeAddFloat16(dst []float32, src []byte) {
	if n := len(dst) &^ 7; useAVX2 && n > 0 {
		f16ToF32AVX2(&dst[0], &src[0], n, true)
		dst, src = dst[n:], src[2*n:]
	}
	decodeAddFloat16Generic(dst, src)
}

func encodeBFloat16(dst []byte, src []float32) {
	if n := len(src) &^ 15; useAVX2 && n > 0 {
		f32ToBF16AVX2(&dst[0], &src[0], n)
		dst, src = dst[2*n:], src[n:]
	}
	encodeBFloat16Generic(dst, src)
}

func decodeBFloat16(dst []float32, src []byte) {
	if n := len(dst) &^ 7; useAVX2 && n > 0 {
		bf16ToF32AVX2(&dst[0], &src[0], n, false)
		dst, src = dst[n:], src[2*n:]
	}
	decodeBFloat16Generic(dst, src)
}

func decodeAddBFloat16(dst []float32, src []byte) {
	if n := len(dst) &^ 7; useAVX2 && n > 0 {
		bf16ToF32AVX2(&dst[0], &src[0], n, true)
		dst, src = dst[n:], src[2*n:]
	}
	decodeAddBFloat16Generic(dst, src)
}

func packSigns(dst []byte, src []float32) {
	if n := len(src) &^ 31; useAVX2 && n > 0 {
		packSignsAVX2(&dst[0], &src[0], n)
		dst, src = dst[n/8:], src[n:]
	}
	packSignsGeneric(dst, src)
}

func unpackSigns(dst []float32, bits []byte, s float32) {
	if nb := len(dst) / 8; useAVX2 && nb > 0 {
		unpackSignsAVX2(&dst[0], &bits[0], nb, s, false)
		dst, bits = dst[8*nb:], bits[nb:]
	}
	unpackSignsGeneric(dst, bits, s)
}

func unpackSignsAdd(dst []float32, bits []byte, s float32) {
	if nb := len(dst) / 8; useAVX2 && nb > 0 {
		unpackSignsAVX2(&dst[0], &bits[0], nb, s, true)
		dst, bits = dst[8*nb:], bits[nb:]
	}
	unpackSignsAddGeneric(dst, bits, s)
}

func nextAbsGE(x []float32, lo uint32) int {
	i := 0
	if n := len(x) &^ 31; useAVX2 && n > 0 && lo > 0 {
		i = scanAbsGEAVX2(&x[0], n, int32(lo)-1)
	}
	return i + nextAbsGEGeneric(x[i:], lo)
}

//go:noescape
func qsgd4AVX2(codes *byte, src *float32, n int, sc float32, s uint32, state *Lanes)

func qsgdNibbles(codes []byte, src []float32, sc float32, s uint32, g *Lanes) {
	if n := len(src) &^ 31; useAVX2 && n > 0 {
		qsgd4AVX2(&codes[0], &src[0], n, sc, s, g)
		codes, src = codes[n/2:], src[n:]
	}
	qsgdNibblesGeneric(codes, src, sc, s, g)
}

//go:noescape
func qsgdDecode4AVX2(dst *float32, codes *byte, n int, levels *[8]float32, add bool)

func qsgdDecodeNibbles(dst []float32, codes []byte, levels *[8]float32, add bool) {
	if n := len(dst) &^ 15; useAVX2 && n > 0 {
		qsgdDecode4AVX2(&dst[0], &codes[0], n, levels, add)
		dst, codes = dst[n:], codes[n/2:]
	}
	qsgdDecodeNibblesGeneric(dst, codes, levels, add)
}

//go:noescape
func packSignsSumSqAVX2(dst *byte, src *float32, n int, acc *[16]float64)

// packSignsSumSq handles the 32-aligned prefix and returns its length.
func packSignsSumSq(dst []byte, src []float32, acc *[16]float64) int {
	n := len(src) &^ 31
	if !useAVX2 || n == 0 {
		return 0
	}
	packSignsSumSqAVX2(&dst[0], &src[0], n, acc)
	return n
}

//go:noescape
func splitF32AVX2(words, exp *byte, src *float32, n int)

//go:noescape
func mergeF32AVX2(dst *float32, words, exp *byte, n int, add bool)

// asm24 is how many of n elements the 24-bit assembly loops may handle: a
// multiple of 8 that leaves the 4 bytes after their last word inside the
// slice (each 8-element step touches 28 bytes of words).
func asm24(n int) int {
	if n < 10 {
		return 0
	}
	return (n - 2) &^ 7
}

func splitFloat32(words, exp []byte, src []float32) {
	if m := asm24(len(src)); useAVX2 && m > 0 {
		splitF32AVX2(&words[0], &exp[0], &src[0], m)
		words, exp, src = words[3*m:], exp[m:], src[m:]
	}
	splitFloat32Generic(words, exp, src)
}

func mergeFloat32(dst []float32, words, exp []byte, add bool) {
	if m := asm24(len(dst)); useAVX2 && m > 0 {
		mergeF32AVX2(&dst[0], &words[0], &exp[0], m, add)
		dst, words, exp = dst[m:], words[3*m:], exp[m:]
	}
	mergeFloat32Generic(dst, words, exp, add)
}
