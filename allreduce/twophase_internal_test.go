package allreduce

import (
	"math"
	"testing"
	"unsafe"
)

func TestPackSignsLayout(t *testing.T) {
	negZero := float32(math.Copysign(0, -1))
	x := []float32{1, -1, 0, negZero, -2, -3, -4, 5, -1, -1, -1, -1, -1, -1, -1, 0.5}
	bits := make([]byte, 2)
	packSigns(bits, append([]float32(nil), x...), 1)
	// MSB first, 1 for x >= 0 (so +0 and -0 are 1): 1011 0001, 0000 0001.
	if bits[0] != 0xB1 || bits[1] != 0x01 {
		t.Fatalf("packSigns = %08b %08b, want 10110001 00000001", bits[0], bits[1])
	}
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
