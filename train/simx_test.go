package train

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/worker"
)

// vectors returns n workers' random vectors for units, and zeroed outputs.
func vectors(rng *rand.Rand, n int, units []Layer) (in, out [][][]float32) {
	in = make([][][]float32, n)
	out = make([][][]float32, n)
	for w := range n {
		for _, u := range units {
			v := make([]float32, u.Size)
			for j := range v {
				v[j] = float32(rng.NormFloat64())
			}
			in[w] = append(in[w], v)
			out[w] = append(out[w], make([]float32, u.Size))
		}
	}
	return in, out
}

func clone3(x [][][]float32) [][][]float32 {
	out := make([][][]float32, len(x))
	for i := range x {
		for _, v := range x[i] {
			out[i] = append(out[i], append([]float32(nil), v...))
		}
	}
	return out
}

var testUnits = []Layer{{Name: "w", Shape: []int{16, 24}, Size: 384}, {Name: "b", Shape: []int{16}, Size: 16}, {Name: "odd", Shape: []int{7, 11}, Size: 77}}

func hows(h optim.Exchange, n int) []optim.Exchange {
	out := make([]optim.Exchange, n)
	for i := range out {
		out[i] = h
	}
	return out
}

// TestSimMatchesLocal runs the same steps through the simulator's real
// collectives and through the in-process reference: gathered codecs and the
// two-phase scheme must agree bit for bit (same rank-order arithmetic), dense
// ring means to float rounding, and every worker must get the same bits.
func TestSimMatchesLocal(t *testing.T) {
	cases := []struct {
		name  string
		plan  Plan
		how   optim.Exchange
		exact bool
	}{
		{"topk-ef14", Plan{Compress: "topk:0.05", EF: "ef14", CompressVectors: true, Seed: 3}, optim.Mean, true},
		{"dgc-warmup", Plan{Compress: "dgc:0.01", EF: "dgc:0.9", CompressVectors: true, Warmup: optim.PaperWarmup, WarmupSteps: 4, Seed: 3}, optim.Mean, true},
		{"econtrol", Plan{Compress: "topk:0.1", EF: "econtrol:0.1", CompressVectors: true, Seed: 3}, optim.Mean, true},
		{"dgc-dense-bias", Plan{Compress: "dgc:0.01", EF: "dgc:0.9", Seed: 3}, optim.Mean, false},
		{"twophase", Plan{}, optim.TwoPhaseSign, true},
		{"dense", Plan{}, optim.DenseMean, false},
		{"fp32", Plan{}, optim.Mean, false},
	}
	for _, tc := range cases {
		for _, n := range []int{1, 3, 4} {
			rng := rand.New(rand.NewPCG(uint64(n), 9))
			topo := sim.Homogeneous(n, 10*sim.Gbps, 5*time.Microsecond)
			sx, err := NewSim(context.Background(), n, testUnits, tc.plan, SimConfig{Topology: topo, GradFLOP: 1e6})
			if err != nil {
				t.Fatal(err)
			}
			lx, err := NewLocal(n, testUnits, tc.plan)
			if err != nil {
				t.Fatal(err)
			}
			for step := range 6 {
				in, outS := vectors(rng, n, testUnits)
				outL := clone3(outS)
				h := hows(tc.how, len(testUnits))
				stS, err := sx.Exchange(context.Background(), step, h, clone3(in), outS)
				if err != nil {
					t.Fatalf("%s n=%d: sim: %v", tc.name, n, err)
				}
				stL, err := lx.Exchange(context.Background(), step, h, clone3(in), outL)
				if err != nil {
					t.Fatalf("%s n=%d: local: %v", tc.name, n, err)
				}
				for u := range testUnits {
					for w := range n {
						for j, v := range outS[w][u] {
							if math.Float32bits(v) != math.Float32bits(outS[0][u][j]) {
								t.Fatalf("%s n=%d step %d: worker %d differs from worker 0 at %s[%d]", tc.name, n, step, w, testUnits[u].Name, j)
							}
							l := outL[w][u][j]
							if tc.exact && math.Float32bits(v) != math.Float32bits(l) {
								t.Fatalf("%s n=%d step %d: %s[%d] sim %g, local %g", tc.name, n, step, testUnits[u].Name, j, v, l)
							}
							if !tc.exact && math.Abs(float64(v-l)) > 1e-5*(1+math.Abs(float64(l))) {
								t.Fatalf("%s n=%d step %d: %s[%d] sim %g, local %g", tc.name, n, step, testUnits[u].Name, j, v, l)
							}
						}
					}
				}
				if stS.DenseBytes != stL.DenseBytes || stS.PayloadBytes != stL.PayloadBytes {
					t.Errorf("%s n=%d: dense %d/%d payload %d/%d (sim/local)", tc.name, n, stS.DenseBytes, stL.DenseBytes, stS.PayloadBytes, stL.PayloadBytes)
				}
				if n > 1 && (stS.WireBytes <= 0 || stS.StepTime <= stS.GradTime || stS.BaselineTime <= 0) {
					t.Errorf("%s n=%d: wire %d, step %v, grad %v, baseline %v", tc.name, n, stS.WireBytes, stS.StepTime, stS.GradTime, stS.BaselineTime)
				}
			}
		}
	}
}

// TestSimDenseRingBytes checks the simulated dense ring against the ledger's
// baseline formula and the compressed scheme against its payloads.
func TestSimBytes(t *testing.T) {
	n := 4
	units := []Layer{{Name: "w", Shape: []int{64, 64}, Size: 4096}}
	topo := sim.Homogeneous(n, 1*sim.Gbps, 10*time.Microsecond)
	dense, _ := NewSim(context.Background(), n, units, Plan{}, SimConfig{Topology: topo})
	rng := rand.New(rand.NewPCG(1, 1))
	in, out := vectors(rng, n, units)
	st, err := dense.Exchange(context.Background(), 0, hows(optim.Mean, 1), in, out)
	if err != nil {
		t.Fatal(err)
	}
	if st.WireBytes != st.DenseBytes || st.DenseBytes != DenseRingBytes(n, 4096) {
		t.Errorf("dense ring: wire %d, dense %d, formula %d", st.WireBytes, st.DenseBytes, DenseRingBytes(n, 4096))
	}
	// The step is the baseline's ring plus the workers' non-finite flag
	// exchange before it: one hop of latency and 5 bytes.
	if d := st.StepTime - st.BaselineTime; d < 10*time.Microsecond || d > 11*time.Microsecond {
		t.Errorf("dense ring step %v, baseline %v: the flag exchange took %v, want one hop of 10µs", st.StepTime, st.BaselineTime, d)
	}
	// Workers that ignore NaN/Inf send no flags: the step is the baseline.
	ignore, _ := NewSim(context.Background(), n, units, Plan{}, SimConfig{Topology: topo, NonFinite: worker.NaNIgnore})
	if st, err = ignore.Exchange(context.Background(), 0, hows(optim.Mean, 1), in, out); err != nil {
		t.Fatal(err)
	}
	if st.StepTime != st.BaselineTime || st.WireBytes != st.DenseBytes {
		t.Errorf("without flags: dense ring step %v, baseline %v, wire %d", st.StepTime, st.BaselineTime, st.WireBytes)
	}
	sparse, _ := NewSim(context.Background(), n, units, Plan{Compress: "topk:0.01"}, SimConfig{Topology: topo})
	st, err = sparse.Exchange(context.Background(), 0, hows(optim.Mean, 1), in, out)
	if err != nil {
		t.Fatal(err)
	}
	// Ring all-gather: every payload crosses n−1 links.
	if st.WireBytes != int64(n-1)*st.PayloadBytes {
		t.Errorf("sparse gather: wire %d, payload %d", st.WireBytes, st.PayloadBytes)
	}
	if st.StepTime >= st.BaselineTime {
		t.Errorf("top-1%% step %v not faster than the dense baseline %v on 1 Gbit/s", st.StepTime, st.BaselineTime)
	}
}

func TestSimRejects(t *testing.T) {
	topo := sim.Homogeneous(2, sim.Gbps, 0)
	if _, err := NewSim(context.Background(), 2, testUnits, Plan{Compress: "powersgd:2", Warmup: optim.PaperWarmup, WarmupSteps: 8}, SimConfig{Topology: topo}); err == nil {
		t.Error("powersgd with a density warm-up: no error")
	}
	if _, err := NewSim(context.Background(), 2, testUnits, Plan{}, SimConfig{}); err == nil {
		t.Error("no topology: no error")
	}
	if _, err := NewSim(context.Background(), 3, testUnits, Plan{}, SimConfig{Topology: topo, GradFLOP: 1}); err == nil {
		t.Error("3 workers on 2 nodes: no error")
	}
	for _, cfg := range []SimConfig{
		{Topology: topo, FLOPS: -1, GradFLOP: 1},
		{Topology: topo, FLOPS: math.NaN(), GradFLOP: 1},
		{Topology: topo, FLOPS: math.Inf(1), GradFLOP: 1},
		{Topology: topo, GradFLOP: -1},
	} {
		if _, err := NewSim(context.Background(), 2, testUnits, Plan{}, cfg); err == nil {
			t.Errorf("NewSim(FLOPS %g, GradFLOP %g): no error", cfg.FLOPS, cfg.GradFLOP)
		}
		if _, err := SizeOnlyBaseline(context.Background(), 2, testUnits, cfg); err == nil {
			t.Errorf("SizeOnlyBaseline(FLOPS %g, GradFLOP %g): no error", cfg.FLOPS, cfg.GradFLOP)
		}
	}
}
