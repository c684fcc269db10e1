package train

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/lgreco"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/worker"
)

// lgUnits have several compressible layers of different sizes, so that
// L-GreCo has levels to trade between them.
var lgUnits = []Layer{
	{Name: "a", Shape: []int{32, 48}, Size: 1536},
	{Name: "b", Shape: []int{24, 40}, Size: 960},
	{Name: "c", Shape: []int{16, 20}, Size: 320},
	{Name: "bias", Shape: []int{16}, Size: 16},
}

// skewed returns vectors whose layers have very different scales (and so
// very different compression errors): what makes L-GreCo move.
func skewed(rng *rand.Rand, n int) (in, out [][][]float32) {
	in, out = vectors(rng, n, lgUnits)
	for w := range n {
		for u := range lgUnits {
			s := float32(math.Pow(4, float64(u)))
			for j := range in[w][u] {
				in[w][u][j] *= s * float32(1+j%7)
			}
		}
	}
	return in, out
}

// TestLGreCoSimMatchesWorkers: L-GreCo in the simulator exchanger and
// L-GreCo on real workers over transport/mem (worker.WithLGreCo) decide the
// same levels at the same steps and compute the same bits, with the byte
// objective and with a cost factory (the link-aware objective of the
// simulated topology); and the levels do change during the run.
func TestLGreCoSimMatchesWorkers(t *testing.T) {
	ctx := context.Background()
	const n, steps = 3, 11
	topo := sim.Homogeneous(n, sim.Gbps, 20*time.Microsecond)
	sched := lgreco.WithSchedule(0, 3, 2, 1)
	for _, tc := range []struct {
		name string
		plan Plan
		link bool
	}{
		{"topk-ef14", Plan{Compress: "topk:0.25", EF: "ef14", Seed: 3}, false},
		{"topk-ef14-link", Plan{Compress: "topk:0.25", EF: "ef14", Seed: 3}, true},
		{"powersgd-ef14", Plan{Compress: "powersgd:2", EF: "ef14", Seed: 3}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := SimConfig{Topology: topo, LGreCo: true, LGreCoOptions: []lgreco.Option{sched}}
			wopts := WorkerOptions(3, nil)
			if tc.link {
				f := LinkCostFactory(topo, nil)
				cfg.LGreCoCost = f
				wopts = append(wopts, worker.WithLGreCoCost(f, sched))
			} else {
				wopts = append(wopts, worker.WithLGreCo(sched))
			}
			sx, err := NewSim(ctx, n, lgUnits, tc.plan, cfg)
			if err != nil {
				t.Fatal(err)
			}
			wx, err := NewWorkers(ctx, memConns(t, n), lgUnits, tc.plan, "", wopts...)
			if err != nil {
				t.Fatal(err)
			}
			defer wx.Close()
			first := sx.Recipes()
			changed := false
			var changedTo []string
			rng := rand.New(rand.NewPCG(7, 7))
			for step := range steps {
				in, outW := skewed(rng, n)
				outS := clone3(outW)
				h := hows(optim.Mean, len(lgUnits))
				stW, err := wx.Exchange(ctx, step, h, clone3(in), outW)
				if err != nil {
					t.Fatalf("step %d: workers: %v", step, err)
				}
				stS, err := sx.Exchange(ctx, step, h, clone3(in), outS)
				if err != nil {
					t.Fatalf("step %d: sim: %v", step, err)
				}
				if !slices.Equal(stW.Recipes, stS.Recipes) {
					t.Fatalf("step %d: recipes real %v, sim %v", step, stW.Recipes, stS.Recipes)
				}
				if !slices.Equal(stS.Recipes, first) {
					changed, changedTo = true, stS.Recipes
				}
				if stW.WireBytes != stS.WireBytes {
					t.Errorf("step %d: wire bytes real %d, sim %d", step, stW.WireBytes, stS.WireBytes)
				}
				for w := range n {
					for u := range lgUnits {
						for j, v := range outW[w][u] {
							if math.Float32bits(v) != math.Float32bits(outS[w][u][j]) {
								t.Fatalf("step %d: worker %d %s[%d]: real %g, sim %g (recipes %v)", step, w, lgUnits[u].Name, j, v, outS[w][u][j], stS.Recipes)
							}
						}
					}
				}
			}
			if !changed {
				t.Errorf("L-GreCo never changed the levels %v in %d steps", first, steps)
			}
			if sx.LGreCo() == nil {
				t.Error("Sim.LGreCo is nil with SimConfig.LGreCo")
			}
			if changedTo != nil && RecipeHash(changedTo) == RecipeHash(first) {
				t.Errorf("recipe hash %s is the same for %v and %v", RecipeHash(first), first, changedTo)
			}
		})
	}
}

// TestSimWarmupThenLGreCo: a DGC warm-up and L-GreCo combine when L-GreCo
// starts after the warm-up, and are refused when it would start inside.
func TestSimWarmupThenLGreCo(t *testing.T) {
	ctx := context.Background()
	const n = 2
	topo := sim.Homogeneous(n, sim.Gbps, time.Microsecond)
	plan := Plan{Compress: "dgc:0.05", EF: "dgc:0.9", Warmup: optim.PaperWarmup, WarmupSteps: 4, Seed: 1}
	if _, err := NewSim(ctx, n, lgUnits, plan, SimConfig{Topology: topo, LGreCo: true,
		LGreCoOptions: []lgreco.Option{lgreco.WithSchedule(2, 3, 2, 1)}}); err == nil {
		t.Error("L-GreCo starting inside the warm-up was accepted")
	}
	sx, err := NewSim(ctx, n, lgUnits, plan, SimConfig{Topology: topo, LGreCo: true,
		LGreCoOptions: []lgreco.Option{lgreco.WithSchedule(4, 3, 2, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var seen []string
	for step := range 12 {
		in, out := skewed(rng, n)
		st, err := sx.Exchange(ctx, step, hows(optim.Mean, len(lgUnits)), in, out)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if step == 0 && st.Recipes[0] != plan.RecipeAt(lgUnits[0], 0) {
			t.Errorf("step 0 runs %s, want the warm-up's %s", st.Recipes[0], plan.RecipeAt(lgUnits[0], 0))
		}
		if step == 4 && st.Recipes[0] != "dgc:0.05" {
			t.Errorf("step 4 (warm-up over) runs %s", st.Recipes[0])
		}
		if h := RecipeHash(st.Recipes); len(seen) == 0 || seen[len(seen)-1] != h {
			seen = append(seen, h)
		}
	}
	if len(seen) < 3 {
		t.Errorf("%d distinct consecutive layouts (warm-up stages, then L-GreCo): %v", len(seen), seen)
	}
}

// TestSimRecipePerCollective: compute costs follow each layer's own recipe:
// a recipe-qualified calibration key slows the layers that run that codec,
// with no Options.Recipe set, and L-GreCo's levels pick their own keys.
func TestSimRecipePerCollective(t *testing.T) {
	ctx := context.Background()
	const n = 2
	topo := sim.Homogeneous(n, sim.Gbps, time.Microsecond)
	plan := Plan{Compress: "topk:0.05", EF: "ef14", Seed: 1}
	codec := func(cal *sim.Calibration) time.Duration {
		sx, err := NewSim(ctx, n, lgUnits, plan, SimConfig{Topology: topo, Options: &sim.Options{Calibration: cal}})
		if err != nil {
			t.Fatal(err)
		}
		in, out := skewed(rand.New(rand.NewPCG(1, 1)), n)
		st, err := sx.Exchange(ctx, 0, hows(optim.Mean, len(lgUnits)), in, out)
		if err != nil {
			t.Fatal(err)
		}
		return st.CodecTime
	}
	slow := sim.DefaultCalibration()
	slow.Throughput["encode/topk:0.05"] = 1e6 // 4 µs per element
	other := sim.DefaultCalibration()
	other.Throughput["encode/topk:0.5"] = 1e6
	base, s, o := codec(sim.DefaultCalibration()), codec(slow), codec(other)
	if s < base+time.Millisecond {
		t.Errorf("encode/topk:0.05 at 1 MB/s: codec time %v, default %v", s, base)
	}
	if o != base {
		t.Errorf("a key of another recipe changed the codec time: %v, default %v", o, base)
	}
}

// TestPlanStages: the warm-up schedule as stages agrees with RecipeAt at
// every step.
func TestPlanStages(t *testing.T) {
	for _, p := range []Plan{
		{Compress: "dgc:0.001", EF: "dgc:0.9", Warmup: optim.PaperWarmup, WarmupSteps: 15},
		{Compress: "topk:0.01", Warmup: []float64{0.5, 0.1}, WarmupSteps: 2},
		{Compress: "topk:0.01"},
		{},
	} {
		for _, l := range lgUnits {
			st := p.Stages(l)
			if st[0].From != 0 {
				t.Fatalf("%v: first stage from %d", p, st[0].From)
			}
			k := 0
			for step := range p.WarmupSteps + 5 {
				if k+1 < len(st) && st[k+1].From == step {
					k++
				}
				if got, want := st[k].Recipe, p.RecipeAt(l, step); got != want {
					t.Errorf("%v %s step %d: stage recipe %s, RecipeAt %s", p, l.Name, step, got, want)
				}
			}
		}
	}
}
