package kernels

import "encoding/binary"

// Exponent / sign+mantissa split of float32, the layout of the lossless
// codec: element i is the exponent byte exp[i] = bits>>23 & 0xff and the
// little-endian 24-bit word words[3i:3i+3] = mantissa | sign<<23. The split
// is exact for every bit pattern (NaN payloads, ±0, subnormals, ±Inf).

// SplitFloat32 writes the exponents of src into exp and the 24-bit
// mantissa|sign words into words. It panics unless len(exp) == len(src) and
// len(words) == 3*len(src).
func SplitFloat32(words, exp []byte, src []float32) {
	if len(exp) != len(src) || len(words) != 3*len(src) {
		panic(badBytes)
	}
	splitFloat32(words, exp, src)
}

// MergeFloat32 rebuilds dst[i] from words[3i:3i+3] and exp[i] (the inverse
// of SplitFloat32, bit for bit). It panics unless len(exp) == len(dst) and
// len(words) == 3*len(dst).
func MergeFloat32(dst []float32, words, exp []byte) {
	if len(exp) != len(dst) || len(words) != 3*len(dst) {
		panic(badBytes)
	}
	mergeFloat32(dst, words, exp, false)
}

// MergeAddFloat32 adds the floats that MergeFloat32 would write to dst.
func MergeAddFloat32(dst []float32, words, exp []byte) {
	if len(exp) != len(dst) || len(words) != 3*len(dst) {
		panic(badBytes)
	}
	mergeFloat32(dst, words, exp, true)
}

func splitFloat32Generic(words, exp []byte, src []float32) {
	n := len(src)
	words, exp = words[:3*n], exp[:n]
	i := 0
	for ; i+8 <= n; i += 8 {
		s := src[i : i+8 : i+8]
		u0, u1, u2, u3 := f32bits(s[0]), f32bits(s[1]), f32bits(s[2]), f32bits(s[3])
		u4, u5, u6, u7 := f32bits(s[4]), f32bits(s[5]), f32bits(s[6]), f32bits(s[7])
		e := uint64(u0>>23&0xff) | uint64(u1>>23&0xff)<<8 | uint64(u2>>23&0xff)<<16 | uint64(u3>>23&0xff)<<24 |
			uint64(u4>>23&0xff)<<32 | uint64(u5>>23&0xff)<<40 | uint64(u6>>23&0xff)<<48 | uint64(u7>>23&0xff)<<56
		binary.LittleEndian.PutUint64(exp[i:], e)
		w0, w1, w2, w3 := word24(u0), word24(u1), word24(u2), word24(u3)
		w4, w5, w6, w7 := word24(u4), word24(u5), word24(u6), word24(u7)
		wb := words[3*i : 3*i+24 : 3*i+24]
		binary.LittleEndian.PutUint64(wb[0:], w0|w1<<24|w2<<48)
		binary.LittleEndian.PutUint64(wb[8:], w2>>16|w3<<8|w4<<32|w5<<56)
		binary.LittleEndian.PutUint64(wb[16:], w5>>8|w6<<16|w7<<40)
	}
	for ; i < n; i++ {
		u := f32bits(src[i])
		exp[i] = byte(u >> 23)
		w := word24(u)
		words[3*i], words[3*i+1], words[3*i+2] = byte(w), byte(w>>8), byte(w>>16)
	}
}

func word24(u uint32) uint64 { return uint64(u&0x7fffff | (u>>8)&0x800000) }

func float24(w uint32, e byte) float32 {
	return f32frombits(w&0x7fffff | (w&0x800000)<<8 | uint32(e)<<23)
}

func mergeFloat32Generic(dst []float32, words, exp []byte, add bool) {
	n := len(dst)
	words, exp = words[:3*n], exp[:n]
	for i := range dst {
		f := float24(uint32(words[3*i])|uint32(words[3*i+1])<<8|uint32(words[3*i+2])<<16, exp[i])
		if add {
			dst[i] += f
		} else {
			dst[i] = f
		}
	}
}

// SplitBF16Words is SplitFloat32 for floats whose low 16 bits are zero
// (bfloat16 values held in float32): words[i] is the byte mantissa>>16 |
// sign<<7 (the low 16 mantissa bits are dropped). It panics unless
// len(exp) == len(words) == len(src).
func SplitBF16Words(words, exp []byte, src []float32) {
	if len(exp) != len(src) || len(words) != len(src) {
		panic(badBytes)
	}
	words, exp = words[:len(src)], exp[:len(src)]
	for i, v := range src {
		u := f32bits(v)
		exp[i] = byte(u >> 23)
		words[i] = byte(u>>16)&0x7f | byte(u>>24)&0x80
	}
}

// MergeBF16Words rebuilds dst[i] from the byte words[i] and exp[i] (the
// inverse of SplitBF16Words, with zero low 16 bits), or adds it if add.
func MergeBF16Words(dst []float32, words, exp []byte, add bool) {
	if len(exp) != len(dst) || len(words) != len(dst) {
		panic(badBytes)
	}
	words, exp = words[:len(dst)], exp[:len(dst)]
	if add {
		for i, w := range words {
			dst[i] += f32frombits(uint32(w&0x7f)<<16 | uint32(w>>7)<<31 | uint32(exp[i])<<23)
		}
		return
	}
	for i, w := range words {
		dst[i] = f32frombits(uint32(w&0x7f)<<16 | uint32(w>>7)<<31 | uint32(exp[i])<<23)
	}
}
