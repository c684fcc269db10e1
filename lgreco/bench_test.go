package lgreco

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
)

func mlpLayers(def string) []Layer {
	r := compressors.MustParse(def)
	return []Layer{
		{Name: "fc1.weight", Rows: 512, Cols: 784, Default: r},
		{Name: "fc1.bias", Rows: 512, Cols: 1, Default: compressors.MustParse("none")},
		{Name: "fc2.weight", Rows: 256, Cols: 512, Default: r},
		{Name: "fc3.weight", Rows: 128, Cols: 256, Default: r},
	}
}

// TestObserveAllocs: Observe allocates its state on first use and nothing
// afterwards, one-shot (the window's accumulator) and replayed (PowerSGD's
// EF14 replays of every candidate rank; top-k's: TestReplayObserveAllocs).
func TestObserveAllocs(t *testing.T) {
	for _, oneShot := range []bool{true, false} {
		p, err := NewPlan(mlpLayers("powersgd:4"), WithOneShot(oneShot))
		if err != nil {
			t.Fatal(err)
		}
		c := NewController(p)
		g := make([]float32, 512*784)
		e := make([]float32, 512*784)
		c.Observe(0, g, e) // allocates the accumulator or the replays once
		if n := testing.AllocsPerRun(5, func() { c.Observe(0, g, e) }); n != 0 {
			t.Fatalf("one-shot %v: Observe allocates %v times per call", oneShot, n)
		}
	}
}

// BenchmarkObserve is rank 0's work per observed step of the 512×784 layer
// measured one-shot (adding the error-compensated gradient to the window's
// accumulator).
func BenchmarkObserve(b *testing.B) {
	p, err := NewPlan(mlpLayers("powersgd:4"), WithOneShot(true))
	if err != nil {
		b.Fatal(err)
	}
	c := NewController(p)
	g := make([]float32, 512*784)
	e := make([]float32, 512*784)
	b.Run("size=401408", func(b *testing.B) {
		b.SetBytes(int64(8 * len(g)))
		b.ReportAllocs()
		for b.Loop() {
			c.Observe(0, g, e)
		}
	})
}

// BenchmarkObserveReplay is rank 0's extra work per step for a replayed
// 512×784 layer (EF14 over each candidate: top-k's 9 densities 0.25×–4×,
// PowerSGD's 7 ranks 2–8): the price of measuring errors by replay.
func BenchmarkObserveReplay(b *testing.B) {
	for _, def := range []string{"topk:0.01", "powersgd:4"} {
		p, err := NewPlan(mlpLayers(def))
		if err != nil {
			b.Fatal(err)
		}
		c := NewController(p)
		rng := rand.New(rand.NewPCG(2, 2))
		g := make([]float32, 512*784)
		for i := range g {
			g[i] = float32(rng.NormFloat64())
		}
		e := make([]float32, len(g))
		b.Run(fmt.Sprintf("codec=%s/size=%d/cands=%d", def, len(g), len(p.Candidates(0))), func(b *testing.B) {
			b.SetBytes(int64(4 * len(g)))
			b.ReportAllocs()
			for b.Loop() {
				c.Observe(0, g, e)
			}
		})
	}
}

// BenchmarkDecide is a whole adjustment on rank 0 (error table and DP) for
// the three weight matrices of a 784-512-256-128 MLP.
func BenchmarkDecide(b *testing.B) {
	for _, def := range []string{"powersgd:4", "topk:0.01", "qsgd:4"} {
		p, err := NewPlan(mlpLayers(def))
		if err != nil {
			b.Fatal(err)
		}
		c := NewController(p)
		rng := rand.New(rand.NewPCG(1, 1))
		gs := make([][]float32, p.Layers())
		for l := range gs {
			ly := p.Layer(l)
			gs[l] = make([]float32, ly.Elems())
			for i := range gs[l] {
				gs[l][i] = float32(rng.NormFloat64())
			}
		}
		b.Run("codec="+def, func(b *testing.B) {
			b.ReportAllocs()
			step := int64(0)
			for b.Loop() {
				for l, g := range gs {
					c.Observe(l, g, nil)
				}
				step += 100
				d := c.Decide(step)
				if err := c.Schedule(d); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Advance(d.ApplyAt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
