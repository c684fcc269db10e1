package allreduce

import (
	"math"
	"testing"
	"unsafe"
)

// TestUnpackSignsLayout: the signs of x packed MSB first, 1 for x >= 0 (so
// +0 and -0 are 1), as errorfeedback's two-phase state packs them, unpack
// to ±scale.
func TestUnpackSignsLayout(t *testing.T) {
	negZero := float32(math.Copysign(0, -1))
	x := []float32{1, -1, 0, negZero, -2, -3, -4, 5, -1, -1, -1, -1, -1, -1, -1, 0.5}
	bits := []byte{0xB1, 0x01} // 1011 0001, 0000 0001
	out := make([]float32, 16)
	unpackSigns(out, bits, 2)
	for j, v := range x {
		want := float32(2)
		if !(v >= 0) {
			want = -2
		}
		if out[j] != want {
			t.Fatalf("unpackSigns[%d] = %v, want %v", j, out[j], want)
		}
	}
}

func TestOpSize(t *testing.T) {
	if s := unsafe.Sizeof(Op{}); s != 40 {
		t.Fatalf("sizeof(Op) = %d, want 40", s)
	}
}

// BenchmarkUnpackSigns: the two-phase decode of near-random signs, through
// the kernel against the per-element branch it replaced.
func BenchmarkUnpackSigns(b *testing.B) {
	const n = 1 << 18
	bits := make([]byte, n/8)
	for i := range bits {
		bits[i] = byte(i*0x9e3779b1>>13) ^ byte(i>>3)
	}
	dst := make([]float32, n)
	branchy := func(dst []float32, bits []byte, s float32) {
		for j := range dst {
			if bits[j>>3]&(0x80>>(j&7)) != 0 {
				dst[j] = s
			} else {
				dst[j] = -s
			}
		}
	}
	for _, c := range []struct {
		name string
		f    func([]float32, []byte, float32)
	}{{"impl=kernel", unpackSigns}, {"impl=branch", branchy}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(4 * n)
			for b.Loop() {
				c.f(dst, bits, 0.5)
			}
		})
	}
}
