package kernels

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func benchVecs(n int) (a, b []float32) {
	r := rand.New(rand.NewPCG(1, uint64(n)))
	a, b = make([]float32, n), make([]float32, n)
	for i := range a {
		a[i], b[i] = float32(r.NormFloat64()), float32(r.NormFloat64())
	}
	return a, b
}

// The kernels on 1 Mi elements (4 MiB per vector): the sizes of ring chunks.
func BenchmarkKernels(b *testing.B) {
	const n = 1 << 20
	x, y := benchVecs(n)
	h := make([]byte, 2*n)
	f := make([]byte, 4*n)
	bits := make([]byte, n/8)
	var sink float64
	cases := []struct {
		name string
		f    func()
	}{
		{"Add", func() { Add(x, y) }},
		{"Axpy", func() { Axpy(x, 0.5, y) }},
		{"Dot", func() { sink += Dot(x, y) }},
		{"SumSq", func() { sink += SumSq(x) }},
		{"EncodeFloat16", func() { EncodeFloat16(h, x) }},
		{"DecodeAddFloat16", func() { DecodeAddFloat16(x, h) }},
		{"EncodeBFloat16", func() { EncodeBFloat16(h, x) }},
		{"DecodeAddBFloat16", func() { DecodeAddBFloat16(x, h) }},
		{"EncodeFloat32", func() { EncodeFloat32(f, x) }},
		{"DecodeAddFloat32", func() { DecodeAddFloat32(x, f) }},
		{"PackSigns", func() { PackSigns(bits, x) }},
		{"UnpackSignsAdd", func() { UnpackSignsAdd(x, bits, 1e-3) }},
		{"NextAbsGE", func() { sink += float64(NextAbsGE(x, 0x7f000000)) }},
	}
	for _, c := range cases {
		b.Run(fmt.Sprintf("%s/n=1Mi", c.name), func(b *testing.B) {
			b.SetBytes(4 * n)
			b.ReportAllocs()
			for b.Loop() {
				c.f()
			}
		})
	}
	_ = sink
}

// BenchmarkDotShort: Dot on the short vectors of a small layer's rows (the
// MNIST MLP's backward pass takes 10-element dot products, thousands a
// step), against the 16-lane order it used for them (lanes, all zero, then
// combined).
func BenchmarkDotShort(b *testing.B) {
	for _, n := range []int{4, 10} {
		x, y := benchVecs(n)
		var sink float64
		b.Run(fmt.Sprintf("impl=lanes/n=%d", n), func(b *testing.B) {
			for b.Loop() {
				sink += dotLanesRef(x, y)
			}
		})
		b.Run(fmt.Sprintf("impl=Dot/n=%d", n), func(b *testing.B) {
			for b.Loop() {
				sink += Dot(x, y)
			}
		})
		_ = sink
	}
}
