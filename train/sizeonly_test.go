package train

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
)

// TestSizeOnlyMatchesPayloadMode: the size-only estimate of a step charges
// the same bytes and (up to compute differences) the same time as the payload
// simulation for codecs whose payload size does not depend on the data.
func TestSizeOnlyMatchesPayloadMode(t *testing.T) {
	ctx := context.Background()
	n := 4
	topo := sim.Homogeneous(n, sim.Gbps, 10*time.Microsecond)
	cfg := SimConfig{Topology: topo, Options: &sim.Options{FreeCompute: true}, GradFLOP: 1e6}
	for _, tc := range []struct {
		name string
		plan Plan
		how  optim.Exchange
	}{
		{"dense", Plan{}, optim.Mean},
		{"fp16", Plan{Compress: "fp16"}, optim.Mean},
		{"topk", Plan{Compress: "topk:0.05", EF: "ef14"}, optim.Mean},
		{"twophase", Plan{}, optim.TwoPhaseSign},
		{"powersgd", Plan{Compress: "powersgd:2", EF: "ef14"}, optim.Mean},
	} {
		h := hows(tc.how, len(testUnits))
		est, err := SizeOnly(ctx, n, testUnits, tc.plan, h, cfg)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if est.BaselineTime, err = SizeOnlyBaseline(ctx, n, testUnits, cfg); err != nil {
			t.Fatal(err)
		}
		sx, err := NewSim(ctx, n, testUnits, tc.plan, cfg)
		if err != nil {
			t.Fatal(err)
		}
		in, out := vectors(rand.New(rand.NewPCG(1, 2)), n, testUnits)
		got, err := sx.Exchange(ctx, 0, h, in, out)
		if err != nil {
			t.Fatal(err)
		}
		if est.WireBytes != got.WireBytes || est.DenseBytes != got.DenseBytes || est.PayloadBytes != got.PayloadBytes {
			t.Errorf("%s: size-only wire %d dense %d payload %d, payload mode %d %d %d", tc.name,
				est.WireBytes, est.DenseBytes, est.PayloadBytes, got.WireBytes, got.DenseBytes, got.PayloadBytes)
		}
		if est.StepTime != got.StepTime || est.BaselineTime != got.BaselineTime {
			t.Errorf("%s: size-only step %v baseline %v, payload mode %v %v", tc.name, est.StepTime, est.BaselineTime, got.StepTime, got.BaselineTime)
		}
	}
}

// TestSizeOnlyScales: hundreds of ranks are cheap without data.
func TestSizeOnlyScales(t *testing.T) {
	n := 256
	units := []Layer{{Name: "w", Shape: []int{1024, 1024}, Size: 1 << 20}, {Name: "b", Shape: []int{1024}, Size: 1024}}
	topo := sim.Homogeneous(n, 10*sim.Gbps, 5*time.Microsecond)
	st, err := SizeOnly(context.Background(), n, units, Plan{Compress: "topk:0.001", EF: "ef14"}, hows(optim.Mean, 2), SimConfig{Topology: topo})
	if err != nil {
		t.Fatal(err)
	}
	if st.StepTime <= 0 || st.WireBytes <= 0 {
		t.Errorf("%+v", st)
	}
}

// TestSizeOnlyRunAggregated: SizeOnlyRun and SizeOnlyBaselineRun pass
// Options.Aggregate to the simulator and return its Result: on a
// homogeneous topology every rank is alike, so the aggregated step is one
// group, and a dense step takes the per-message time (to the nanosecond:
// chunks of an uneven layout differ by an element); sparse gathers decode
// in rank order, so their ranks finish apart and delay the ring beside
// them at each rank at another time, which the aggregated mode walks
// beside its representative: within 1% (sim's TestAggregateAgrees,
// docs/simulator.md). A scheme without a shared
// program (PowerSGD's low-rank exchange) is simulated rank by rank and the
// Result says why.
func TestSizeOnlyRunAggregated(t *testing.T) {
	ctx := context.Background()
	n := 16
	topo := sim.Homogeneous(n, 10*sim.Gbps, 5*time.Microsecond)
	for _, tc := range []struct {
		name string
		plan Plan
		agg  bool
		tol  float64
	}{
		{"dense", Plan{}, true, 1e-4},
		{"topk", Plan{Compress: "topk:0.05", EF: "ef14"}, true, 0.01},
		{"powersgd", Plan{Compress: "powersgd:2", EF: "ef14"}, false, 0},
	} {
		h := hows(optim.Mean, len(testUnits))
		per, pres, err := SizeOnlyRun(ctx, n, testUnits, tc.plan, h, SimConfig{Topology: topo, GradFLOP: 1e6})
		if err != nil {
			t.Fatal(err)
		}
		st, res, err := SizeOnlyRun(ctx, n, testUnits, tc.plan, h, SimConfig{Topology: topo, GradFLOP: 1e6, Options: &sim.Options{Aggregate: sim.AggregateOn}})
		if err != nil {
			t.Fatal(err)
		}
		if pres.Groups != 0 || tc.agg && (res.Groups != 1 || res.NotAggregated != "") || !tc.agg && (res.Groups != 0 || res.NotAggregated == "") {
			t.Errorf("%s: per-message %d groups; aggregated %d groups, %q", tc.name, pres.Groups, res.Groups, res.NotAggregated)
		}
		d := st.StepTime.Seconds()/per.StepTime.Seconds() - 1
		if !(math.Abs(d) <= tc.tol) || math.Abs(float64(st.WireBytes)/float64(per.WireBytes)-1) > 0.01 || res.Messages != pres.Messages {
			t.Errorf("%s: aggregated step %v, %d bytes, %d messages; per-message %v, %d, %d", tc.name, st.StepTime, st.WireBytes, res.Messages, per.StepTime, per.WireBytes, pres.Messages)
		}
	}
	base, res, err := SizeOnlyBaselineRun(ctx, n, testUnits, SimConfig{Topology: topo, GradFLOP: 1e6, Options: &sim.Options{Aggregate: sim.AggregateOn}})
	if err != nil || res.Groups != 1 || base <= 0 {
		t.Errorf("baseline: %v, %d groups, %v", base, res.Groups, err)
	}
}
