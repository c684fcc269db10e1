package sim

import (
	"context"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// TestHopCodecCost: a size-only fp16/bf16 ring charges every hop's codec
// work on the compute engine, from the recipe-qualified calibration: each
// send first encodes its chunk (and rounds it back: encode + decode), each
// reduce-scatter reduction is a decode-add, and each all-gather receive is
// decoded. With one segment nothing overlaps, so the time is
//
//	(P−1)(E + τ + α) + (P−1)·A + Sc + (P−1)(E + τ + α) + (P−1)·D
//
// for chunks of c elements: E = c(enc + dec), A = c·decadd, D = c·dec,
// Sc = c·scale, τ = 2c/B (2 bytes per element on the wire). An fp32 ring on
// the same calibration pays only its reductions and the scale.
func TestHopCodecCost(t *testing.T) {
	const (
		P     = 8
		c     = 3000
		alpha = 2e-6
		B     = 1e9 // bytes/s
	)
	cal := &Calibration{Throughput: map[string]float64{
		"encode": 2e9, "encode/fp16": 1e9, // the qualified key wins for fp16
		"decode": 4e9, "decode-add": 2e9, "reduce": 8e9, "scale": 16e9,
	}}
	sec := func(thr float64) float64 { return 4 / thr }
	topo := Homogeneous(P, B, time.Duration(alpha*1e9))
	for _, tc := range []struct {
		recipe string
		enc    float64
		bytes  int
	}{
		{"fp16", sec(1e9), 2},
		{"bf16", sec(2e9), 2},
		{"none", 0, 4},
	} {
		pr := allreduce.Params{World: P, Elems: P * c, Average: true, ElemBytes: tc.bytes}
		progs := mustPrograms(t, allreduce.AlgRing, pr)
		res, err := Run(context.Background(), topo, []Collective{{Programs: progs, Recipe: tc.recipe}}, &Options{Calibration: cal})
		if err != nil {
			t.Fatal(err)
		}
		tau := float64(tc.bytes*c) / B
		steps := float64(P - 1)
		var want, compress float64
		sc := c * sec(16e9)
		if tc.enc > 0 {
			E := c * (tc.enc + sec(4e9))
			A := c * sec(2e9)
			D := c * sec(4e9)
			want = 2*steps*(E+tau+alpha) + steps*(A+D) + sc
			compress = 2*steps*E + steps*(A+D)
		} else {
			want = 2*steps*(tau+alpha) + steps*c*sec(8e9) + sc
		}
		if !near(res.Time, want, 1e-9) {
			t.Errorf("%s: time %.9g s, want %.9g s", tc.recipe, res.Time, want)
		}
		if !near(res.Compress+1, compress+1, 1e-9) {
			t.Errorf("%s: compress %.9g s, want %.9g s", tc.recipe, res.Compress, compress)
		}
		// FreeCompute removes the codec work too.
		free, err := Run(context.Background(), topo, []Collective{{Programs: progs, Recipe: tc.recipe}}, &Options{Calibration: cal, FreeCompute: true})
		if err != nil {
			t.Fatal(err)
		}
		if f := 2 * steps * (tau + alpha); !near(free.Time, f, 1e-9) || free.Compress != 0 {
			t.Errorf("%s free: time %.9g s (want %.9g), compress %g", tc.recipe, free.Time, f, free.Compress)
		}
	}
}

// TestHopCodecOptionsRecipe: Options.Recipe selects the hop codec when the
// collective has none, and a non-dense recipe does not.
func TestHopCodecOptionsRecipe(t *testing.T) {
	progs := mustPrograms(t, allreduce.AlgRing, allreduce.Params{World: 4, Elems: 4000, ElemBytes: 2})
	topo := Homogeneous(4, 10*Gbps, time.Microsecond)
	run := func(recipe string) *Result {
		res, err := Run(context.Background(), topo, []Collective{{Programs: progs}}, &Options{Recipe: recipe})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	fp16, plain, topk := run("fp16"), run(""), run("topk:0.01")
	if !(fp16.Time > plain.Time) || !(fp16.Compress > 0) {
		t.Errorf("fp16 %v (compress %v) vs plain %v", fp16.Time, fp16.Compress, plain.Time)
	}
	if topk.Time != plain.Time || topk.Compress != 0 {
		t.Errorf("topk recipe changed a dense ring: %v vs %v", topk.Time, plain.Time)
	}
}
