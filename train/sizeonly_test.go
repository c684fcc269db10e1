package train

import (
	"context"
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
