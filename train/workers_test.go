package train

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
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
		// DGC's density warm-up: codec schedules on the workers, SetCodec
		// in Sim, switching at steps 1, 2 and 3 (4 stages in 4 steps) and
		// to the plan's density at step 4.
		{"dgc-warmup", Plan{Compress: "dgc:0.01", EF: "dgc:0.9", CompressVectors: true, Warmup: optim.PaperWarmup, WarmupSteps: 4, Seed: 3}, "", optim.Mean},
		{"topk-warmup-ef14", Plan{Compress: "topk:0.05", EF: "ef14", Warmup: []float64{0.5, 0.2}, WarmupSteps: 3, Seed: 3}, "", optim.Mean},
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
		for step := range 6 {
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
			if !slices.Equal(stW.Recipes, stS.Recipes) {
				t.Errorf("%s step %d: recipes %v, sim %v", tc.name, step, stW.Recipes, stS.Recipes)
			}
			if stW.WireBytes != stS.WireBytes || stW.DenseBytes != stS.DenseBytes {
				t.Errorf("%s step %d: wire %d/%d dense %d/%d (real/sim)", tc.name, step, stW.WireBytes, stS.WireBytes, stW.DenseBytes, stS.DenseBytes)
			}
		}
	}
}

// TestRunRankMatchesRun: N RunRank replicas over real workers follow Run's
// replicas over the simulator exactly (same losses, same final accuracy),
// DGC's density warm-up included.
func TestRunRankMatchesRun(t *testing.T) {
	ctx := context.Background()
	task, err := LoadTask("logistic", "", 2)
	if err != nil {
		t.Fatal(err)
	}
	n := 3
	cfg := Config{Workers: n, Batch: 8, Steps: 25, Seed: 2, Split: workload.NonIID, EvalEvery: 10}
	opt := OptimSpec{Name: "momentum", New: func(n int) (optim.Optimizer, error) { return optim.NewMomentum(n, 0.1, 0.9, 0, false) }}
	for _, plan := range []Plan{
		{Compress: "topk:0.1", EF: "ef14", CompressVectors: true, Seed: 2},
		{Compress: "dgc:0.01", EF: "dgc:0.9", CompressVectors: true, Warmup: optim.PaperWarmup, WarmupSteps: 10, Seed: 2},
	} {
		sx, err := NewSim(ctx, n, Units(task.Model, false), plan, SimConfig{Topology: sim.Homogeneous(n, sim.Gbps, time.Microsecond)})
		if err != nil {
			t.Fatal(err)
		}
		want, err := Run(ctx, cfg, task, sx, opt, nil)
		if err != nil {
			t.Fatal(err)
		}
		results := runRanks(t, ctx, n, cfg, task, plan, opt)
		for s := range cfg.Steps {
			var mean float64
			for r := range n {
				mean += results[r].Records[s].Loss
			}
			mean /= float64(n)
			if math.Abs(mean-want.Records[s].Loss) > 1e-12 {
				t.Fatalf("%v step %d: mean loss over ranks %g, Run %g", plan, s, mean, want.Records[s].Loss)
			}
			// Without Combine a rank reports its own bytes × World; DGC's
			// message sizes differ between ranks, so sum the ranks' own.
			var wire int64
			for r := range n {
				wire += results[r].Records[s].WireBytes / int64(n)
			}
			if got, w := results[0].Records[s].World, want.Records[s].World; got != n || w != n {
				t.Fatalf("%v step %d: world %d in RunRank's record, %d in Run's, want %d", plan, s, got, w, n)
			}
			if got := results[0].Records[s]; wire != want.Records[s].WireBytes || !slices.Equal(got.Recipes, want.Records[s].Recipes) {
				t.Errorf("%v step %d: wire %d %v, Run %d %v", plan, s, wire, got.Recipes, want.Records[s].WireBytes, want.Records[s].Recipes)
			}
		}
		for r := range n {
			if results[r].Final != want.Final {
				t.Errorf("%v rank %d: final %+v, Run %+v", plan, r, results[r].Final, want.Final)
			}
		}
	}
}

// TestRunRankCodecTime: the real driver's records carry the worker's
// measured codec time (what `slimgrad worker` writes as sim_codec_s):
// non-zero on every step of a top-k run, within the step's wall time, and
// with the communication time also within it.
func TestRunRankCodecTime(t *testing.T) {
	ctx := context.Background()
	task, err := LoadTask("logistic", "", 2)
	if err != nil {
		t.Fatal(err)
	}
	n := 2
	cfg := Config{Workers: n, Batch: 8, Steps: 5, Seed: 2, EvalEvery: 0}
	opt := OptimSpec{Name: "sgd", New: func(n int) (optim.Optimizer, error) { return optim.NewSGD(n, 0.1, 0) }}
	plan := Plan{Compress: "topk:0.1", EF: "ef14", CompressVectors: true, Seed: 2}
	results := runRanks(t, ctx, n, cfg, task, plan, opt)
	for r := range n {
		var cpu time.Duration
		for _, rec := range results[r].Records {
			if rec.CodecTime <= 0 || rec.CodecTime+rec.CommTime > rec.Wall {
				t.Errorf("rank %d step %d: codec %v, comm %v, step wall %v", r, rec.Step, rec.CodecTime, rec.CommTime, rec.Wall)
			}
			if rec.CPU < 0 {
				t.Errorf("rank %d step %d: CPU %v", r, rec.Step, rec.CPU)
			}
			cpu += rec.CPU
		}
		// The process's CPU over the steps: getrusage counts in
		// microseconds at least, and five steps of two ranks with their
		// codec take more than that.
		if processCPU() > 0 && cpu <= 0 {
			t.Errorf("rank %d: no CPU time in %d steps' records", r, len(results[r].Records))
		}
	}
}

// runWorkerRank runs RunRank of rc over a worker of its own on conn
// (WorkerOptions of rc's seed, then extra), closed when it returns.
func runWorkerRank(ctx context.Context, conn transport.Conn, rc RankConfig, task Task, plan Plan, opt OptimSpec, onStep func(Record), extra ...worker.Option) (*Result, error) {
	w, err := worker.New(ctx, conn, append(WorkerOptions(rc.Seed, nil), extra...)...)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	return RunRank(ctx, rc, task, w, plan, opt, "", onStep)
}

// runRanks runs n RunRank replicas of cfg over in-memory connections, each
// over its own worker, and returns their results in rank order; any rank's
// error fails the test.
func runRanks(t *testing.T, ctx context.Context, n int, cfg Config, task Task, plan Plan, opt OptimSpec) []*Result {
	t.Helper()
	conns := memConns(t, n)
	results := make([]*Result, n)
	errs := make(chan error, n)
	for r := range n {
		go func() {
			var err error
			results[r], err = runWorkerRank(ctx, conns[r], RankConfig{Config: cfg, Rank: r, World: n}, task, plan, opt, nil)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("%v: %v", plan, err)
		}
	}
	return results
}
