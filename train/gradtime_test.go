package train

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
)

// TestSimMeasuredGradTime: a measured gradient time (SimConfig.GradSeconds,
// what sim --calibration's grad_s gives) replaces the FLOP model, and a
// step's simulated compute and step time follow it while communication does
// not change.
func TestSimMeasuredGradTime(t *testing.T) {
	ctx := context.Background()
	n := 4
	topo := sim.Homogeneous(n, sim.Gbps, 10*time.Microsecond)
	h := hows(optim.Mean, len(testUnits))
	plan := Plan{Compress: "topk:0.05", EF: "ef14", Seed: 1}
	step := func(cfg SimConfig) Stats {
		t.Helper()
		sx, err := NewSim(ctx, n, testUnits, plan, cfg)
		if err != nil {
			t.Fatal(err)
		}
		in, out := vectors(rand.New(rand.NewPCG(1, 2)), n, testUnits)
		st, err := sx.Exchange(ctx, 0, h, in, out)
		if err != nil {
			t.Fatal(err)
		}
		if sx.GradTime() != st.GradTime {
			t.Errorf("GradTime() %v, step's %v", sx.GradTime(), st.GradTime)
		}
		return st
	}
	// The FLOP model alone: 1e6 FLOP at 20 GFLOP/s = 50 µs.
	flop := step(SimConfig{Topology: topo, GradFLOP: 1e6})
	if flop.GradTime != 50*time.Microsecond {
		t.Fatalf("FLOP model: grad %v, want 50µs", flop.GradTime)
	}
	comm := flop.StepTime - flop.GradTime
	for _, g := range []float64{0.032, 0.064} {
		st := step(SimConfig{Topology: topo, GradFLOP: 1e6, GradSeconds: g})
		want := time.Duration(g * 1e9)
		if st.GradTime != want {
			t.Errorf("GradSeconds %g: grad %v, want %v (the measured time, not the FLOP model)", g, st.GradTime, want)
		}
		if d := st.StepTime - st.GradTime - comm; d < -time.Nanosecond || d > time.Nanosecond {
			t.Errorf("GradSeconds %g: step %v − grad %v = %v, want the FLOP run's %v", g, st.StepTime, st.GradTime, st.StepTime-st.GradTime, comm)
		}
		if st.BaselineTime <= want {
			t.Errorf("GradSeconds %g: baseline %v does not include the gradient time", g, st.BaselineTime)
		}
		// Size-only charges the same gradient time.
		est, err := SizeOnly(ctx, n, testUnits, plan, h, SimConfig{Topology: topo, GradFLOP: 1e6, GradSeconds: g})
		if err != nil {
			t.Fatal(err)
		}
		if est.GradTime != want {
			t.Errorf("SizeOnly GradSeconds %g: grad %v, want %v", g, est.GradTime, want)
		}
	}
}

// TestSimGradTimeSpeedAndCores: the slowest worker sets the gradient time:
// a node of speed s takes 1/s as long, and k workers on a node of c < k
// cores take k/c as long, with either compute model.
func TestSimGradTimeSpeedAndCores(t *testing.T) {
	ctx := context.Background()
	grad := func(nodes []sim.Node, place []int, cfg SimConfig) time.Duration {
		t.Helper()
		topo := sim.Homogeneous(len(nodes), sim.Gbps, 0)
		for i, nd := range nodes {
			topo.Nodes[i].Speed, topo.Nodes[i].Cores, topo.Nodes[i].Host = nd.Speed, nd.Cores, nd.Host
		}
		cfg.Topology, cfg.Options = topo, &sim.Options{Placement: place}
		sx, err := NewSim(ctx, len(place), testUnits, Plan{}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return sx.GradTime()
	}
	node := func(speed float64, cores int) sim.Node { return sim.Node{Speed: speed, Cores: cores} }
	onHost := func(host string, cores int) sim.Node { return sim.Node{Speed: 1, Cores: cores, Host: host} }
	measured := SimConfig{GradSeconds: 0.010, GradFLOP: 1e12}
	flops := SimConfig{GradFLOP: 1e7, FLOPS: 1e9}                               // 10 ms
	split := SimConfig{GradSeconds: 0.006, GradFLOP: 1e12, LocalSeconds: 0.004} // 6 ms gradient + 4 ms optimizer and checks
	for _, tc := range []struct {
		name  string
		nodes []sim.Node
		place []int
		want  time.Duration
	}{
		{"one per node", []sim.Node{node(1, 0), node(1, 0)}, []int{0, 1}, 10 * time.Millisecond},
		{"half speed", []sim.Node{node(1, 0), node(0.5, 0)}, []int{0, 1}, 20 * time.Millisecond},
		{"3 on 2 cores", []sim.Node{node(1, 2), node(1, 0)}, []int{0, 0, 0, 1}, 15 * time.Millisecond},
		{"4 on 1 core", []sim.Node{node(1, 1), node(1, 0)}, []int{0, 0, 0, 0, 1}, 40 * time.Millisecond},
		{"3 on 4 cores", []sim.Node{node(1, 4), node(1, 0)}, []int{0, 0, 0, 1}, 10 * time.Millisecond},
		{"cores unset", []sim.Node{node(1, 0), node(1, 0)}, []int{0, 0, 0, 1}, 10 * time.Millisecond},
		{"2 on 1 core at half speed", []sim.Node{node(1, 0), node(0.5, 1)}, []int{0, 1, 1}, 40 * time.Millisecond},
		// Nodes of one host share its cores: 4 workers, each on its own
		// node, on a 2-core machine (the test bed's namespaces).
		{"4 nodes of a 2-core host", []sim.Node{onHost("bed", 2), onHost("bed", 2), onHost("bed", 2), onHost("bed", 2)}, []int{0, 1, 2, 3}, 20 * time.Millisecond},
		{"2 hosts of 2 nodes, 1 core each", []sim.Node{onHost("a", 1), onHost("a", 1), onHost("b", 1), onHost("b", 1)}, []int{0, 1, 2, 3}, 20 * time.Millisecond},
		{"4 nodes of a 4-core host", []sim.Node{onHost("bed", 4), onHost("bed", 4), onHost("bed", 4), onHost("bed", 4)}, []int{0, 1, 2, 3}, 10 * time.Millisecond},
	} {
		for _, cfg := range []SimConfig{measured, flops, split} {
			if got := grad(tc.nodes, tc.place, cfg); got != tc.want {
				t.Errorf("%s (GradSeconds %g): grad %v, want %v", tc.name, cfg.GradSeconds, got, tc.want)
			}
		}
	}
	// sim.Options.CoreShare: an oversubscribed host's cores give f of
	// their time; a host with a core per worker is not slowed.
	bed := []sim.Node{onHost("bed", 2), onHost("bed", 2), onHost("bed", 2), onHost("bed", 2)}
	for _, tc := range []struct {
		cores int
		share float64
		want  time.Duration
	}{
		{2, 0.8, 25 * time.Millisecond},
		{2, 0, 20 * time.Millisecond},
		{4, 0.8, 10 * time.Millisecond},
	} {
		for i := range bed {
			bed[i].Cores = tc.cores
		}
		topo := sim.Homogeneous(4, sim.Gbps, 0)
		for i, nd := range bed {
			topo.Nodes[i].Speed, topo.Nodes[i].Cores, topo.Nodes[i].Host = nd.Speed, nd.Cores, nd.Host
		}
		sx, err := NewSim(ctx, 4, testUnits, Plan{}, SimConfig{Topology: topo, GradSeconds: 0.010, Options: &sim.Options{CoreShare: tc.share}})
		if err != nil {
			t.Fatal(err)
		}
		if got := sx.GradTime(); got != tc.want {
			t.Errorf("4 workers on %d cores, CoreShare %g: grad %v, want %v", tc.cores, tc.share, got, tc.want)
		}
	}
	topo := sim.Homogeneous(2, sim.Gbps, 0)
	for _, g := range []float64{-1, math.NaN(), math.Inf(1)} {
		cfg := SimConfig{Topology: topo, GradSeconds: g}
		if _, err := NewSim(ctx, 2, testUnits, Plan{}, cfg); err == nil {
			t.Errorf("NewSim(GradSeconds %g): no error", g)
		}
		if _, err := SizeOnly(ctx, 2, testUnits, Plan{}, hows(optim.Mean, len(testUnits)), cfg); err == nil {
			t.Errorf("SizeOnly(GradSeconds %g): no error", g)
		}
		if _, err := SizeOnlyBaseline(ctx, 2, testUnits, cfg); err == nil {
			t.Errorf("SizeOnlyBaseline(GradSeconds %g): no error", g)
		}
		if _, err := NewSim(ctx, 2, testUnits, Plan{}, SimConfig{Topology: topo, LocalSeconds: g}); err == nil || !strings.Contains(err.Error(), "LocalSeconds") {
			t.Errorf("NewSim(LocalSeconds %g): %v, want an error naming LocalSeconds", g, err)
		}
	}
	// LocalSeconds alone (no gradient model) is the step's local compute.
	topo1 := sim.Homogeneous(2, sim.Gbps, 0)
	if sx, err := NewSim(ctx, 2, testUnits, Plan{}, SimConfig{Topology: topo1, LocalSeconds: 0.003}); err != nil {
		t.Error(err)
	} else if got := sx.GradTime(); got != 3*time.Millisecond {
		t.Errorf("LocalSeconds 3 ms alone: local compute %v, want 3ms", got)
	}
	if _, err := NewSim(ctx, 3, testUnits, Plan{}, SimConfig{Topology: topo, GradSeconds: 1, Options: &sim.Options{Placement: []int{0, 1}}}); err == nil {
		t.Error("placement shorter than the workers: no error")
	}
}
