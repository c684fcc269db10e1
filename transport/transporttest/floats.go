package transporttest

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"unsafe"
)

// FloatBytes returns n little-endian float32 (4n bytes) drawn from a
// normal distribution by rng: the payload of a placed add.
func FloatBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, 4*n)
	for i := range n {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(float32(rng.NormFloat64())))
	}
	return b
}

// Added returns dst + msg (little-endian float32), times scale if scaled,
// computed one element at a time: what the executor's reduce gives, and so
// what a placed add (transport.Placement with Add) must leave in its
// memory, bit for bit.
func Added(dst, msg []byte, scaled bool, scale float32) []byte {
	out := make([]byte, len(dst))
	for i := 0; i+4 <= len(dst); i += 4 {
		v := math.Float32frombits(binary.LittleEndian.Uint32(dst[i:])) + math.Float32frombits(binary.LittleEndian.Uint32(msg[i:]))
		if scaled {
			v = float32(v) * scale
		}
		binary.LittleEndian.PutUint32(out[i:], math.Float32bits(v))
	}
	return out
}

// Aligned returns a copy of b in float32-aligned memory, as a Placement's
// Dst for an add must be.
func Aligned(b []byte) []byte {
	f := make([]float32, (len(b)+3)/4)
	out := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), 4*len(f))[:len(b)]
	copy(out, b)
	return out
}
