package train

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/worker"
	"github.com/slimgrad/slimgrad/workload"
)

func memConns(t *testing.T, n int) []transport.Conn {
	t.Helper()
	g, err := mem.NewGroup(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	conns := make([]transport.Conn, n)
	for r := range n {
		conns[r] = g.Conn(r)
	}
	return conns
}

// TestWorkersMatchSim: real workers over transport/mem and the simulator
// exchanger compute the same bits, step after step (error-feedback state
// included), and count the same message bytes.
func TestWorkersMatchSim(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name  string
		plan  Plan
		codec string
		how   optim.Exchange
	}{
		{"dense", Plan{}, "", optim.Mean},
		{"topk-ef14", Plan{Compress: "topk:0.05", EF: "ef14", Seed: 3}, "", optim.Mean},
		{"econtrol", Plan{Compress: "topk:0.1", EF: "econtrol:0.1", Seed: 3}, "", optim.Mean},
		{"twophase", Plan{}, "sign", optim.TwoPhaseSign},
		{"powersgd-ef14", Plan{Compress: "powersgd:2", EF: "ef14", Seed: 3}, "", optim.Mean},
		{"densemean", Plan{}, "sign", optim.DenseMean},
	}
	for _, tc := range cases {
		n := 3
		rng := rand.New(rand.NewPCG(5, 5))
		wx, err := NewWorkers(ctx, memConns(t, n), testUnits, tc.plan, tc.codec, WorkerOptions(3, nil)...)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		defer wx.Close()
		sx, err := NewSim(ctx, n, testUnits, tc.plan, SimConfig{Topology: sim.Homogeneous(n, sim.Gbps, time.Microsecond)})
		if err != nil {
			t.Fatal(err)
		}
		for step := range 4 {
			in, outW := vectors(rng, n, testUnits)
			outS := clone3(outW)
			h := hows(tc.how, len(testUnits))
			stW, err := wx.Exchange(ctx, step, h, clone3(in), outW)
			if err != nil {
				t.Fatalf("%s step %d: workers: %v", tc.name, step, err)
			}
			stS, err := sx.Exchange(ctx, step, h, clone3(in), outS)
			if err != nil {
				t.Fatalf("%s step %d: sim: %v", tc.name, step, err)
			}
			for w := range n {
				for u := range testUnits {
					for j, v := range outW[w][u] {
						if math.Float32bits(v) != math.Float32bits(outS[w][u][j]) {
							t.Fatalf("%s step %d: worker %d %s[%d]: real %g, sim %g", tc.name, step, w, testUnits[u].Name, j, v, outS[w][u][j])
						}
					}
				}
			}
			if stW.WireBytes != stS.WireBytes || stW.DenseBytes != stS.DenseBytes {
				t.Errorf("%s step %d: wire %d/%d dense %d/%d (real/sim)", tc.name, step, stW.WireBytes, stS.WireBytes, stW.DenseBytes, stS.DenseBytes)
			}
		}
	}
}

// TestRunRankMatchesRun: N RunRank replicas over real workers follow Run's
// replicas over the simulator exactly (same losses, same final accuracy).
func TestRunRankMatchesRun(t *testing.T) {
	ctx := context.Background()
	task, err := LoadTask("logistic", "", 2)
	if err != nil {
		t.Fatal(err)
	}
	n := 3
	cfg := Config{Workers: n, Batch: 8, Steps: 25, Seed: 2, Split: workload.NonIID, EvalEvery: 10}
	plan := Plan{Compress: "topk:0.1", EF: "ef14", CompressVectors: true, Seed: 2}
	opt := OptimSpec{Name: "momentum", New: func(n int) (optim.Optimizer, error) { return optim.NewMomentum(n, 0.1, 0.9, 0, false) }}
	sx, err := NewSim(ctx, n, Units(task.Model, false), plan, SimConfig{Topology: sim.Homogeneous(n, sim.Gbps, time.Microsecond)})
	if err != nil {
		t.Fatal(err)
	}
	want, err := Run(ctx, cfg, task, sx, opt, nil)
	if err != nil {
		t.Fatal(err)
	}
	conns := memConns(t, n)
	results := make([]*Result, n)
	errs := make(chan error, n)
	for r := range n {
		go func() {
			w, err := worker.New(ctx, conns[r], WorkerOptions(cfg.Seed, nil)...)
			if err != nil {
				errs <- err
				return
			}
			defer w.Close()
			results[r], err = RunRank(ctx, RankConfig{Config: cfg, Rank: r, World: n}, task, w, plan, opt, "", nil)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for s := range cfg.Steps {
		var mean float64
		for r := range n {
			mean += results[r].Records[s].Loss
		}
		mean /= float64(n)
		if math.Abs(mean-want.Records[s].Loss) > 1e-12 {
			t.Fatalf("step %d: mean loss over ranks %g, Run %g", s, mean, want.Records[s].Loss)
		}
		if got := results[0].Records[s]; got.WireBytes != want.Records[s].WireBytes {
			t.Errorf("step %d: wire %d, Run %d", s, got.WireBytes, want.Records[s].WireBytes)
		}
	}
	for r := range n {
		if results[r].Final != want.Final {
			t.Errorf("rank %d: final %+v, Run %+v", r, results[r].Final, want.Final)
		}
	}
}

func TestRegisterRejectsWarmup(t *testing.T) {
	_, err := NewWorkers(context.Background(), memConns(t, 2), testUnits, Plan{Compress: "dgc:0.01", EF: "dgc:0.9", Warmup: optim.PaperWarmup, WarmupSteps: 8}, "")
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("warm-up over workers: err %v, want ErrUnsupported", err)
	}
}
