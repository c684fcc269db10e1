//go:build experiments

package experiments

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/workload"
)

// TestMNISTRatios measures the codec pipelines on real gradients: it trains
// the MNIST MLP (784-256-10, batch 64, SGD lr 0.1) for 60 steps and, on the
// gradients of steps 10..60, compresses every layer with each recipe and
// reports the payload bytes (summed over layers and steps) against raw fp32
// and top-1%, the relative error ‖D(C(g))−g‖/‖g‖, and encode/decode
// throughput on the flat gradient. It fails if none or lossless is not
// exact, if a codec sends no fewer bytes than fp32, or if a stage after
// top-k sends no fewer than top-k alone. It needs the MNIST files (module
// cache) and skips without them:
//
//	go test -tags experiments -run TestMNISTRatios -v ./experiments/
func TestMNISTRatios(t *testing.T) {
	dir, err := workload.MNISTDir("")
	if err != nil {
		t.Skip(err)
	}
	train, _, err := workload.LoadMNIST(dir)
	if err != nil {
		t.Fatal(err)
	}
	model, err := workload.NewMLP([]int{784, 256, 10}, workload.CrossEntropy, 1)
	if err != nil {
		t.Fatal(err)
	}
	const batch, steps, from, lr = 64, 60, 10, 0.1
	ws := model.NewWorkspace(batch)
	all := make([]int, train.N)
	for i := range all {
		all[i] = i
	}
	sampler := workload.NewSampler(all, 1, 0)
	params := model.Params()

	recipes := []string{"none", "topk:0.01", "topk:0.01+zstd", "topk:0.01+kmeans:16", "topk:0.01+kmeans:16+zstd", "topk:0.01+kmeans:4+zstd", "lossless"}
	type stat struct {
		bytes      int64
		err2, nrm2 float64
	}
	stats := make([]stat, len(recipes))
	comps := make([][]compressors.Compressor, len(recipes))
	for ri, r := range recipes {
		for _, p := range params {
			c, err := compressors.New(r, len(p.Data))
			if err != nil {
				t.Fatal(err)
			}
			comps[ri] = append(comps[ri], c)
		}
	}
	// lossless on the gradient rounded to bfloat16 (held in fp32), against
	// the 2 bytes per element of bf16 (DFloat11's comparison).
	llBF16 := make([]compressors.Compressor, len(params))
	for li, p := range params {
		if llBF16[li], err = compressors.New("lossless", len(p.Data)); err != nil {
			t.Fatal(err)
		}
	}
	var bf16Bytes int64
	var gb []float32
	var raw int64
	var buf []byte
	var y []float32
	var loss float64
	for step := 1; step <= steps; step++ {
		if loss, err = ws.Gradient(train, sampler.Next(batch)); err != nil {
			t.Fatal(err)
		}
		grads := ws.Grads()
		if step >= from {
			for li, g := range grads {
				raw += int64(4 * len(g))
				gb = append(gb[:0], g...)
				if err := compressors.BF16.DecodeElems(gb, compressors.BF16.EncodeElems(nil, g)); err != nil {
					t.Fatal(err)
				}
				if buf, err = llBF16[li].Compress(buf, gb); err != nil {
					t.Fatal(err)
				}
				bf16Bytes += int64(len(buf))
				if cap(y) < len(g) {
					y = make([]float32, len(g))
				}
				y = y[:len(g)]
				for ri := range recipes {
					if buf, err = comps[ri][li].Compress(buf, g); err != nil {
						t.Fatal(err)
					}
					if err := comps[ri][li].Decompress(y, buf); err != nil {
						t.Fatal(err)
					}
					stats[ri].bytes += int64(len(buf))
					for i, v := range g {
						d := float64(y[i]) - float64(v)
						stats[ri].err2 += d * d
						stats[ri].nrm2 += float64(v) * float64(v)
					}
				}
			}
		}
		for li, g := range grads {
			p := params[li].Data
			for i := range p {
				p[i] -= lr * g[i]
			}
		}
	}
	t.Logf("MNIST MLP 784-256-10, %d layers, %d params, loss after %d steps %.3f; gradients of steps %d..%d, raw fp32 %d bytes",
		len(params), len(model.Flat()), steps, loss, from, steps, raw)
	var topk int64
	for ri, r := range recipes {
		if r == "topk:0.01" {
			topk = stats[ri].bytes
		}
	}
	for ri, r := range recipes {
		s := stats[ri]
		t.Logf("%-26s %10d bytes  %6.3f of fp32  %7.2fx smaller than topk:0.01  rel.err %.4f",
			r, s.bytes, float64(s.bytes)/float64(raw), float64(topk)/float64(s.bytes), math.Sqrt(s.err2/s.nrm2))
		if (r == "none" || r == "lossless") && s.err2 != 0 {
			t.Errorf("%s is not exact: relative error %.3g", r, math.Sqrt(s.err2/s.nrm2))
		}
		if r != "none" && s.bytes >= raw {
			t.Errorf("%s sent %d bytes, no fewer than fp32's %d", r, s.bytes, raw)
		}
	}
	// A second stage after top-k only ever shrinks its payload.
	for ri, r := range recipes {
		if strings.HasPrefix(r, "topk:0.01+") && stats[ri].bytes >= topk {
			t.Errorf("%s sent %d bytes, no fewer than topk:0.01's %d", r, stats[ri].bytes, topk)
		}
	}

	t.Logf("%-26s %10d bytes  %6.3f of bf16 (gradients rounded to bf16, held in fp32)", "lossless (bf16 input)", bf16Bytes, float64(bf16Bytes)/float64(raw/2))

	// Throughput on the flat gradient of the last step (203,530 floats),
	// best of 5 runs of 200 encodes/decodes.
	g := ws.FlatGrads()
	y = make([]float32, len(g))
	for _, r := range []string{"lossless", "topk:0.01", "topk:0.01+kmeans:16+zstd"} {
		c, err := compressors.New(r, len(g))
		if err != nil {
			t.Fatal(err)
		}
		if buf, err = c.Compress(buf, g); err != nil {
			t.Fatal(err)
		}
		best := func(f func()) time.Duration {
			b := time.Duration(math.MaxInt64)
			for range 5 {
				t0 := time.Now()
				for range 200 {
					f()
				}
				b = min(b, time.Since(t0)/200)
			}
			return b
		}
		enc := best(func() { buf, _ = c.Compress(buf, g) })
		dec := best(func() { _ = c.Decompress(y, buf) })
		mbs := func(d time.Duration) float64 { return float64(4*len(g)) / d.Seconds() / 1e6 }
		t.Logf("%-26s flat gradient: %d -> %d bytes (%.3f), encode %v (%.0f MB/s), decode %v (%.0f MB/s)",
			r, 4*len(g), len(buf), float64(len(buf))/float64(4*len(g)), enc, mbs(enc), dec, mbs(dec))
	}
}
