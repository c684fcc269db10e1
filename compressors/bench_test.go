package compressors

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"
)

// benchN is the gradient size of the targets: 25,000,000 float32
// (100 MB). The input is generated once and shared by all benchmarks.
const benchN = 25_000_000

var (
	benchOnce sync.Once
	benchX    []float32
	benchY    []float32 // shared decode target
)

func benchInput() []float32 {
	benchOnce.Do(func() {
		r := rand.New(rand.NewPCG(1, 2))
		benchX = make([]float32, benchN)
		for i := range benchX {
			benchX[i] = float32(r.NormFloat64())
		}
		benchY = make([]float32, benchN)
	})
	return benchX
}

// loop runs f in the benchmark loop on a locked OS thread and reports, next
// to the wall time, the thread's CPU time per operation (cpu-ns/op): on a
// machine shared with other jobs the wall time includes waiting for a core.
func loop(b *testing.B, f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	c0, ok := threadCPU()
	n := 0
	for b.Loop() {
		f()
		n++
	}
	// The kernel accounts CPU time in scheduler ticks: report it only when
	// the total is large enough to mean something.
	if c1, _ := threadCPU(); ok && n > 0 && c1-c0 >= 50*time.Millisecond {
		b.ReportMetric(float64(c1-c0)/float64(n), "cpu-ns/op")
	}
}

func benchCompress(b *testing.B, recipe string, opts ...Option) {
	x := benchInput()
	c, err := New(recipe, len(x), opts...)
	if err != nil {
		b.Fatal(err)
	}
	buf, err := c.Compress(nil, x)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(4 * len(x)))
	b.ResetTimer()
	loop(b, func() {
		if buf, err = c.Compress(buf, x); err != nil {
			b.Fatal(err)
		}
	})
	b.ReportMetric(float64(len(buf)), "wire-bytes")
}

func BenchmarkTopK(b *testing.B) {
	b.Run("exact/density=0.001/n=25M", func(b *testing.B) { benchCompress(b, "topk:0.001") })
	b.Run("dgc/density=0.001/n=25M", func(b *testing.B) { benchCompress(b, "dgc:0.001") })
}

func BenchmarkSign(b *testing.B) {
	x := benchInput()
	b.Run("pack/n=25M", func(b *testing.B) {
		bits := make([]byte, 0, (len(x)+7)/8)
		b.SetBytes(int64(4 * len(x)))
		loop(b, func() { bits = PackSigns(bits[:0], x) })
	})
	b.Run("compress/n=25M", func(b *testing.B) { benchCompress(b, "sign") })
}

func benchElems(b *testing.B, ec ElementCodec) {
	x := benchInput()
	chunk := ec.EncodeElems(nil, x)
	b.Run("encode/n=25M", func(b *testing.B) {
		b.SetBytes(int64(4 * len(x)))
		loop(b, func() { chunk = ec.EncodeElems(chunk[:0], x) })
	})
	y := benchY
	if err := ec.DecodeElems(y, chunk); err != nil { // fault the pages in before timing
		b.Fatal(err)
	}
	b.Run("decode/n=25M", func(b *testing.B) {
		b.SetBytes(int64(4 * len(x)))
		loop(b, func() {
			if err := ec.DecodeElems(y, chunk); err != nil {
				b.Fatal(err)
			}
		})
	})
}

func BenchmarkFP16(b *testing.B) {
	benchElems(b, FP16)
	b.Run("compress/n=25M", func(b *testing.B) { benchCompress(b, "fp16") }) // with frame and CRC-32C
}

func BenchmarkBF16(b *testing.B) {
	benchElems(b, BF16)
	b.Run("compress/n=25M", func(b *testing.B) { benchCompress(b, "bf16") })
}

func BenchmarkQSGD(b *testing.B) {
	b.Run("levels=4/n=25M", func(b *testing.B) { benchCompress(b, "qsgd:4") })
}

func BenchmarkPowerSGD(b *testing.B) {
	b.Run("rank=4/shape=25000x1000", func(b *testing.B) { benchCompress(b, "powersgd:4", WithShape(25_000, 1000)) })
}

// BenchmarkDecompressAdd is the receive side of the gathered and two-phase
// schemes: one rank's frame scatter-added into the 25M-element sum.
func BenchmarkDecompressAdd(b *testing.B) {
	x := benchInput()
	for _, r := range []string{"topk:0.001", "randomk:0.001", "sign", "qsgd:4", "fp16", "topk:0.01+kmeans:16+zstd", "lossless"} {
		b.Run("codec="+r+"/n=25M", func(b *testing.B) {
			c, err := New(r, len(x))
			if err != nil {
				b.Fatal(err)
			}
			frame, err := c.Compress(nil, x)
			if err != nil {
				b.Fatal(err)
			}
			y := benchY
			if err := c.DecompressAdd(y, frame); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(4 * len(x)))
			loop(b, func() {
				if err := c.DecompressAdd(y, frame); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkLossless: the exact codec on 25M Gaussian floats, and on the
// same with half of the elements zero in runs of 300 (like the first-layer
// gradient of an MLP on images: the zero-elision layout); wire-bytes and
// ratio (frame bytes / 4n) are reported next to the throughput of the raw
// fp32 input.
func BenchmarkLossless(b *testing.B) {
	b.Run("input=gauss", func(b *testing.B) { benchLossless(b, benchInput()) })
	b.Run("input=halfzero", func(b *testing.B) {
		x := benchInput()
		z := make([]float32, len(x))
		for i := range z {
			if (i/300)%2 == 1 {
				z[i] = x[i]
			}
		}
		benchLossless(b, z)
	})
	b.Run("input=bf16", func(b *testing.B) {
		x := benchInput()
		z := make([]float32, len(x))
		BF16.DecodeElems(z, BF16.EncodeElems(nil, x)) // bf16-rounded, held in fp32
		benchLossless(b, z)
	})
}

func benchLossless(b *testing.B, x []float32) {
	c, err := New("lossless", len(x))
	if err != nil {
		b.Fatal(err)
	}
	frame, err := c.Compress(nil, x)
	if err != nil {
		b.Fatal(err)
	}
	ratio := float64(len(frame)) / float64(4*len(x))
	b.Run("encode/n=25M", func(b *testing.B) {
		b.SetBytes(int64(4 * len(x)))
		loop(b, func() {
			if frame, err = c.Compress(frame, x); err != nil {
				b.Fatal(err)
			}
		})
		b.ReportMetric(float64(len(frame)), "wire-bytes")
		b.ReportMetric(ratio, "ratio")
	})
	y := benchY
	for _, add := range []bool{false, true} {
		name := "decode/n=25M"
		if add {
			name = "decodeadd/n=25M"
		}
		b.Run(name, func(b *testing.B) {
			if err := c.Decompress(y, frame); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(4 * len(x)))
			loop(b, func() {
				var err error
				if add {
					err = c.DecompressAdd(y, frame)
				} else {
					err = c.Decompress(y, frame)
				}
				if err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkKMeans: the k-means stage alone on the 250,000 values that
// top-1% keeps of the 25M input (throughput in bytes of kept values), and
// whole frames of topk:0.01 with and without it.
func BenchmarkKMeans(b *testing.B) {
	x := benchInput()
	t, err := New("topk:0.01", len(x))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := t.Compress(nil, x); err != nil {
		b.Fatal(err)
	}
	_, kept := t.(Sparse).Selected()
	val := make([]float32, len(kept))
	for _, k := range []int{4, 16, 256} {
		b.Run(fmt.Sprintf("stage/k=%d/m=250000", k), func(b *testing.B) {
			km := newKMeans(k)
			copy(val, kept)
			if _, err := km.cluster(val); err != nil { // allocate the scratch before timing
				b.Fatal(err)
			}
			b.SetBytes(int64(4 * len(kept)))
			loop(b, func() {
				copy(val, kept)
				if _, err := km.cluster(val); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
	for _, r := range []string{"topk:0.01", "topk:0.01+zstd", "topk:0.01+kmeans:16", "topk:0.01+kmeans:16+zstd"} {
		b.Run("compress/codec="+r+"/n=25M", func(b *testing.B) { benchCompress(b, r) })
	}
}
