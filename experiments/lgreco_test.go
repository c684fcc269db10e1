//go:build experiments

package experiments

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/experiments/internal/testenv"
	"github.com/slimgrad/slimgrad/internal/kernels"
	"github.com/slimgrad/slimgrad/lgreco"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/train"
	"github.com/slimgrad/slimgrad/workload"
)

// lgExchanger is an in-process exchanger for the experiment (a test double:
// package train's Local has no low-rank scheme). Every compressed layer runs
// EF14 on every worker: M = g + e; top-k layers average the decoded payloads
// in rank order (the sparse gather); PowerSGD layers run the low-rank
// all-reduce (P = mean M·Q, orthogonalize, Q = mean Mᵀ·P̂, Ĝ = P̂·Qᵀ); then
// e = M − (what this worker's message decoded to). Dense layers are the exact
// mean. With a Controller, worker 0's M of the last AccIter steps drives
// L-GreCo; decisions travel as bytes and every worker switches at ApplyAt.
type lgExchanger struct {
	n       int
	units   []train.Layer
	plan    *lgreco.Plan
	ctrl    *lgreco.Controller // nil: uniform default
	comps   [][]compressors.Compressor
	resid   [][][]float32
	m       [][]float32 // scratch: one worker's M
	avg     []float32
	warm    int   // dense steps before compression starts (the plan's Start)
	bytes   int64 // compressed layers' payload bytes, all workers and steps
	wire    int64 // the same as wire traffic of the scheme (gather: N−1 hops; ring: 2(N−1)/N)
	switch_ []string
	debug   bool
}

// lgProtocol is the experiment's protocol, the same for both arms.
type lgProtocol struct {
	warm, adjust int64   // dense warm-up steps (= L-GreCo's Start); steps between decisions
	oneShot      bool    // measure errors one-shot instead of replaying EF
	unsquared    bool    // the reference's budget on Σ err instead of Σ err²
	raw          bool    // replay PowerSGD on worker 0's raw gradients (Config.Ranks 1)
	alpha        float64 // error budget multiple (0: lgreco's default, 1)
}

func newLGExchanger(t *testing.T, n int, units []train.Layer, def string, tune bool, seed uint64, pr lgProtocol) *lgExchanger {
	var layers []lgreco.Layer
	defs := strings.Split(def, "/") // per weight matrix, the last one repeated
	for _, u := range units {
		r := compressors.MustParse("none")
		if len(u.Shape) >= 2 {
			r = compressors.MustParse(defs[0])
			if len(defs) > 1 {
				defs = defs[1:]
			}
		}
		layers = append(layers, lgreco.LayerOf(u.Name, u.Shape, r))
	}
	opts := []lgreco.Option{lgreco.WithSeed(seed), lgreco.WithSchedule(pr.warm, pr.adjust, 10, 1), lgreco.WithOneShot(pr.oneShot), lgreco.WithSquared(!pr.unsquared), lgreco.WithRanks(n)}
	if pr.raw {
		opts = append(opts, lgreco.WithRanks(1))
	}
	if pr.alpha > 0 {
		opts = append(opts, lgreco.WithAlpha(pr.alpha))
	}
	plan, err := lgreco.NewPlan(layers, opts...)
	if err != nil {
		t.Fatal(err)
	}
	x := &lgExchanger{n: n, units: units, plan: plan, warm: int(pr.warm), debug: os.Getenv("LGDEBUG") != ""}
	if tune {
		x.ctrl = lgreco.NewController(plan)
	}
	x.comps = make([][]compressors.Compressor, n)
	x.resid = make([][][]float32, n)
	for w := range n {
		x.comps[w] = make([]compressors.Compressor, len(units))
		x.resid[w] = make([][]float32, len(units))
		for l, u := range units {
			x.resid[w][l] = make([]float32, u.Size)
		}
	}
	c := lgreco.NewController(plan) // the default, seeded as without L-GreCo
	for l := range units {
		for w := range n {
			if x.comps[w][l], err = c.NewCompressor(l, compressors.WithRank(w)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return x
}

func (x *lgExchanger) Name() string { return "lgreco-test" }

func (x *lgExchanger) adjust(step int64, in [][][]float32) error {
	c := x.ctrl
	if c == nil {
		return nil
	}
	if c.Due(step) {
		d := c.Decide(step)
		if x.debug {
			sol := c.LastSolution()
			fmt.Printf("decide %d: kept=%v choice=%v cost %.0f/%.0f err %.4g/%.4g\n", step, d.Kept, d.Choice, sol.Cost, sol.DefaultCost, sol.Err, sol.DefaultErr)
			for _, e := range c.LastTable().Err {
				fmt.Printf("   %.3g\n", e)
			}
		}
		b, err := d.MarshalBinary() // what rank 0 broadcasts
		if err != nil {
			return err
		}
		got, err := x.plan.Decode(b)
		if err != nil {
			return err
		}
		if err := c.Schedule(got); err != nil {
			return err
		}
	}
	changed, err := c.Advance(step)
	if err != nil {
		return err
	}
	for _, l := range changed {
		for w := range x.n {
			// PowerSGD P/Q resized, Q from the shared seed and the step; the
			// EF residual (full size) is kept.
			prev := x.comps[w][l]
			if x.comps[w][l], err = c.NewCompressor(l, compressors.WithRank(w)); err != nil {
				return err
			}
			// As package adapt does: the new rank keeps the warm start.
			if o, ok := prev.(*compressors.PowerSGD); ok {
				if err := x.comps[w][l].(*compressors.PowerSGD).WarmStartFrom(o); err != nil {
					return err
				}
			}
		}
	}
	if changed != nil {
		x.switch_ = append(x.switch_, fmt.Sprintf("step %d: %v", step, c.Recipes()))
	}
	if c.Collecting(step) {
		for l := range x.units {
			if x.plan.Tuned(l) {
				// Worker 0's gradient and its EF residual before this
				// step's compression: every tuned layer is replayed.
				c.Observe(l, in[0][l], x.resid[0][l])
			}
		}
	}
	return nil
}

func (x *lgExchanger) Exchange(ctx context.Context, step int, how []optim.Exchange, in, out [][][]float32) (train.Stats, error) {
	if err := x.adjust(int64(step), in); err != nil {
		return train.Stats{}, err
	}
	var st train.Stats
	for l, u := range x.units {
		if how[l] != optim.Mean {
			return st, errors.New("only Mean")
		}
		d := u.Size
		if cap(x.avg) < d {
			x.avg = make([]float32, d)
		}
		avg := x.avg[:d]
		clear(avg)
		r := x.comps[0][l]
		st.DenseBytes += train.DenseRingBytes(x.n, d)
		agg := r.Aggregation()
		if step < x.warm {
			agg = compressors.Reduce // the dense warm-up, the same in both arms
		}
		switch agg {
		case compressors.Reduce:
			for w := range x.n {
				kernels.Add(avg, in[w][l])
			}
			kernels.Scale(avg, 1/float32(x.n))
			st.WireBytes += train.DenseRingBytes(x.n, d)
		case compressors.Gather:
			dec := make([]float32, d)
			for w := range x.n {
				m := x.resid[w][l]
				kernels.Add(m, in[w][l]) // e ← M = g + e
				frame, err := x.comps[w][l].Compress(nil, m)
				if err != nil {
					return st, err
				}
				if err := x.comps[w][l].Decompress(dec, frame); err != nil {
					return st, err
				}
				kernels.Add(avg, dec)
				for i := range m {
					m[i] -= dec[i] // e = M − D(C(M))
				}
				x.bytes += int64(len(frame))
				x.wire += int64(x.n-1) * int64(len(frame))
			}
			kernels.Scale(avg, 1/float32(x.n))
		case compressors.LowRank:
			ps0 := x.comps[0][l].(*compressors.PowerSGD)
			rk, rows, cols := ps0.Rank(), ps0.Rows(), ps0.Cols()
			p, pw := make([]float32, rows*rk), make([]float32, rows*rk)
			q, qw := make([]float32, cols*rk), make([]float32, cols*rk)
			for w := range x.n {
				m := x.resid[w][l]
				kernels.Add(m, in[w][l])
				x.comps[w][l].(*compressors.PowerSGD).ComputeP(pw, m)
				kernels.Add(p, pw)
			}
			kernels.Scale(p, 1/float32(x.n))
			ps0.Orthogonalize(p)
			for w := range x.n {
				x.comps[w][l].(*compressors.PowerSGD).ComputeQ(qw, x.resid[w][l], p)
				kernels.Add(q, qw)
			}
			kernels.Scale(q, 1/float32(x.n))
			ps0.Reconstruct(avg, p, q)
			for w := range x.n {
				x.comps[w][l].(*compressors.PowerSGD).SetQ(q)
				m := x.resid[w][l]
				for i := range m {
					m[i] -= avg[i]
				}
				b := int64(4 * rk * (rows + cols))
				x.bytes += b
				x.wire += 2 * int64(x.n-1) * b / int64(x.n)
			}
		default:
			return st, errors.New("unsupported aggregation")
		}
		for w := range x.n {
			copy(out[w][l], avg)
		}
	}
	st.PayloadBytes = x.bytes
	return st, nil
}

// meanSE returns the mean and its standard error.
func meanSE(x []float64) (mean, se float64) {
	for _, v := range x {
		mean += v
	}
	mean /= float64(len(x))
	if len(x) < 2 {
		return mean, math.Inf(1)
	}
	var ss float64
	for _, v := range x {
		ss += (v - mean) * (v - mean)
	}
	return mean, math.Sqrt(ss / float64(len(x)-1) / float64(len(x)))
}

// TestMNISTLGreCo is the paired multi-seed experiment of issue 8.
//
// MNIST MLP 784-512-256-128-10 (SLIMGRAD_LGRECO_MLP), 8 in-process workers
// (lgExchanger), batch 32 per worker, momentum SGD lr 0.05 (0.9)
// cosine-decayed to 0, weight matrices compressed with EF14, biases dense.
// The protocol, fixed before measuring and identical in both arms:
// SLIMGRAD_LGRECO_WARM dense steps (default 100; L-GreCo's Start), then
// compression; L-GreCo decides every SLIMGRAD_LGRECO_ADJUST steps (default
// 100) on worker 0's gradients (errors by replayed error feedback, window:
// the last 10 steps), α = 1 on the squared errors (lgreco's defaults), the
// default grids (top-k 0.25×–4× the density, PowerSGD ranks r0/2–2·r0);
// SLIMGRAD_LGRECO_STEPS steps in all (default 600, 2.6 epochs). For every
// seed 1..SLIMGRAD_LGRECO_SEEDS (default 5) the uniform default and L-GreCo
// run with the same initial model, data order and codec seeds; bytes are the
// compressed layers' payloads after the warm-up; the loss is the final test
// loss (whole test set). It asserts, for powersgd:4 and topk:0.01
// (SLIMGRAD_LGRECO_CODECS), that L-GreCo sent fewer bytes on every seed and
// that the paired mean difference of the final test loss (L-GreCo −
// uniform) is at most one standard error of that mean.
//
// Variants: SLIMGRAD_LGRECO_ALPHA sets α; SLIMGRAD_LGRECO_SQUARED=0 puts the
// budget on Σ err as the reference does; SLIMGRAD_LGRECO_ONESHOT=1 measures
// errors one-shot (the spec's ‖G − C(G)‖ on the accumulated
// error-compensated gradient) instead of replaying error feedback;
// SLIMGRAD_LGRECO_MATCHED=RECIPE adds a uniform run at RECIPE per seed,
// where RECIPE may list one recipe per weight matrix, separated by "/"
// (e.g. powersgd:5/powersgd:2/powersgd:2/powersgd:3);
// SLIMGRAD_LGRECO_UNTUNED=1 skips the L-GreCo arm (for MATCHED studies);
// SLIMGRAD_LGRECO_LR sets the learning rate (default 0.05);
// SLIMGRAD_LGRECO_CONSTANT=1 keeps it constant (no cosine);
// SLIMGRAD_LGRECO_FIRST_SEED moves the seeds to FIRST..FIRST+SEEDS−1.
//
// It takes about 5 minutes per codec on a loaded 2-core machine:
//
//	go test -tags experiments -count=1 -timeout 30m -run 'TestMNISTLGreCo$' -v ./experiments/
//
// Measured with the defaults (5 seeds; paired mean ± standard error):
//
//	topk:0.01   L-GreCo 1.015× fewer bytes (1.008–1.023 per seed); test
//	            loss −0.0001 ± 0.0000                              -> holds
//	powersgd:4  L-GreCo 1.096× fewer bytes (1.086–1.107; last layout
//	            5/2/2/2, on two seeds 5/2/2/3); test loss −0.00000 ±
//	            0.00004                                           -> holds
//
// PowerSGD replayed on worker 0's raw gradients (SLIMGRAD_LGRECO_RAW=1,
// Config.Ranks 1): 1.045× fewer bytes (1.039–1.052; ranks 5/3/2/2 at 15 of
// the 20 decisions), test loss −0.0002 ± 0.0000 (better on 5/5 seeds).
//
// How it got there (same protocol, 5 seeds unless noted):
//
//	the spec's measure (one-shot, Σ err):
//	  topk:0.01   1.418× at +0.0045 ± 0.0017 (3 seeds)
//	  powersgd:4  1.005× at +0.0002 ± 0.0000
//	replayed errors, Σ err (the previous default):
//	  topk:0.01   1.139× at +0.0004 ± 0.0001 (worse on 5/5 seeds)
//	  topk:0.01, α = 0.9: 1.027× at −0.0008 ± 0.0001
//	  powersgd:4  1.000× (seed 1: the DP kept rank 4 everywhere)
//	powersgd:4, one-shot on the workers' MEAN error-compensated gradient
//	  (an oracle rank 0 does not have): 1.060× at +0.0004 ± 0.0001, with
//	  the ranks flipping between unrelated choices at every decision
//	powersgd:4, one-shot, the warm start kept over rank changes
//	  (WarmStartFrom, now the default) instead of re-drawn: 1.005× at
//	  +0.0002 ± 0.0001, the same: the losses did not come from the switches
//
// The protocol varied one thing at a time (powersgd:4, 5 seeds):
//
//	no dense warm-up (SLIMGRAD_LGRECO_WARM=0)    1.085× at −0.00031 ± 0.00006
//	constant rate (SLIMGRAD_LGRECO_CONSTANT=1)   1.105× at +0.00176 ± 0.00120
//	  seeds 6–10 (…_FIRST_SEED=6)                1.101× at −0.00175 ± 0.00142
//	  all 10 seeds                               +0.00001 ± 0.00105 (worse on 6)
//	  raw replay (…_RAW=1), 10 seeds             1.044× at +0.00003 ± 0.00058
//	  lr 0.1 (SLIMGRAD_LGRECO_LR=0.1), 10 seeds  1.065× at −0.00128 ± 0.00182
//	sim's protocol (WARM=0 ADJUST=50 STEPS=300
//	  LR=0.1 CONSTANT=1), 10 seeds               1.075× at +0.0061 ± 0.0032
//	  topk:0.01, constant rate                   1.011× at +0.0014 ± 0.0031
//
// With a constant rate the final loss is about 25× noisier (the paired
// differences spread ±0.004) and five seeds cannot tell; ten show no cost.
// sim's whole protocol (a 300-step run) does cost loss, and starting
// L-GreCo at step 100 there does not change that (slimgrad sim
// --lgreco-start 100, seeds 1–6: +0.0048 ± 0.0029); 600 steps at the same
// rate show no cost.
//
// Why squared: the loss cost of single-layer changes (rank 4 with one
// matrix at rank 2, MATCHED, seeds 1–2: +0.0028 on the 512×784 layer,
// +0.0003 on 256×512, +0.0001 on 128×256, +0.0000 on 10×128) per unit of
// the replayed error they add is 7.7× larger on the first layer than on the
// third in Σ err, and 1.6× in Σ err² (noisy: two seeds, and small deltas).
// Σ err² is also what error feedback's convergence bounds charge (the
// squared norm of the model's residual).
// Why replay for PowerSGD: one-shot errors on an error-compensated gradient
// are dominated by the accumulated residual. On the workers' mean they fall
// only from 0.82 to 0.75 between ranks 2 and 8 on the first layer, and
// worker 0's own grow from decision to decision (their sum at the default
// 11.9 at step 200, 30.7 at step 500: the random walk of its gradient noise
// that cancels across workers), so the DP's choice follows noise. Rank 0's
// replayed residuals fall 5–10× between ranks 2 and 8, and the choices
// above were stable.
//
// Why smoothed: rank 0's replay on its raw gradients sees N× the gradient
// noise of the mean that the real residual follows, which overstates the
// low ranks' errors; uniform powersgd:5/2/2/3 from the start (MATCHED) sent
// 1.125× fewer bytes at −0.0003 ± 0.0002, more than the raw replay found.
// Smoothed to the mean's noise level (Config.Ranks = 8) it finds 5/2/2/2.
func TestMNISTLGreCo(t *testing.T) {
	steps := testenv.Int(t, "SLIMGRAD_LGRECO_STEPS", 600, 0)
	seeds := testenv.Int(t, "SLIMGRAD_LGRECO_SEEDS", 5, 0)
	first := uint64(testenv.Int(t, "SLIMGRAD_LGRECO_FIRST_SEED", 1, 1))
	constant := os.Getenv("SLIMGRAD_LGRECO_CONSTANT") != ""
	lr := 0.05
	if v := os.Getenv("SLIMGRAD_LGRECO_LR"); v != "" {
		var err error
		if lr, err = strconv.ParseFloat(v, 64); err != nil || !(lr > 0) {
			t.Fatalf("SLIMGRAD_LGRECO_LR=%q: want a positive number", v)
		}
	}
	schedule := "cosine-decayed to 0"
	if constant {
		schedule = "constant"
	}
	pr := lgProtocol{
		warm:      int64(testenv.Int(t, "SLIMGRAD_LGRECO_WARM", 100, 0)),
		adjust:    int64(testenv.Int(t, "SLIMGRAD_LGRECO_ADJUST", 100, 0)),
		oneShot:   os.Getenv("SLIMGRAD_LGRECO_ONESHOT") != "",
		unsquared: os.Getenv("SLIMGRAD_LGRECO_SQUARED") == "0",
		raw:       os.Getenv("SLIMGRAD_LGRECO_RAW") != "",
	}
	if s := os.Getenv("SLIMGRAD_LGRECO_ALPHA"); s != "" {
		var err error
		if pr.alpha, err = strconv.ParseFloat(s, 64); err != nil || !(pr.alpha > 0) {
			t.Fatalf("SLIMGRAD_LGRECO_ALPHA=%q: want a positive number", s)
		}
	}
	codecs := []string{"powersgd:4", "topk:0.01"}
	if s := os.Getenv("SLIMGRAD_LGRECO_CODECS"); s != "" {
		codecs = strings.Split(s, ",")
	}
	sizes := []int{784, 512, 256, 128, 10}
	if s := os.Getenv("SLIMGRAD_LGRECO_MLP"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			v, err := strconv.Atoi(f)
			if err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, v)
		}
	}
	const workers = 8
	tr, te, err := workload.LoadMNIST("")
	if errors.Is(err, workload.ErrNoMNIST) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MLP %v, %d workers, %d steps (%d dense), batch 32 per worker, momentum SGD lr %v %s, L-GreCo every %d steps (acc_iter 10, α %v (0: 1), squared %v, one-shot %v), seeds %d..%d",
		sizes, workers, steps, pr.warm, lr, schedule, pr.adjust, pr.alpha, !pr.unsquared, pr.oneShot, first, first+uint64(seeds)-1)
	opt := train.OptimSpec{Name: "momentum-cosine", New: func(n int) (optim.Optimizer, error) {
		o, err := optim.NewMomentum(n, lr, 0.9, 0, false)
		if err != nil {
			return nil, err
		}
		if constant {
			return o, nil
		}
		return optim.Cosine(o, steps)
	}}
	type result struct {
		bytes    int64
		test     workload.Metrics
		switches []string
	}
	run := func(seed uint64, def string, tune bool) result {
		mlp, err := workload.NewMLP(sizes, workload.CrossEntropy, seed)
		if err != nil {
			t.Fatal(err)
		}
		task := train.Task{Name: "mnist-mlp", Model: mlp, Train: tr, Test: te}
		units := train.Units(task.Model, false)
		cfg := train.Config{Workers: workers, Batch: 32, Steps: steps, Seed: seed}
		x := newLGExchanger(t, workers, units, def, tune, seed, pr)
		res, err := train.Run(context.Background(), cfg, task, x, opt, nil)
		if err != nil {
			t.Fatal(err)
		}
		return result{x.bytes, res.Final, x.switch_}
	}
	// SLIMGRAD_LGRECO_MATCHED=RECIPE also runs the uniform RECIPE (e.g. the
	// default's density divided by L-GreCo's byte ratio) on every seed and
	// reports its paired loss difference to the uniform default: whether
	// L-GreCo's per-layer allocation beats lowering the level uniformly.
	matched := os.Getenv("SLIMGRAD_LGRECO_MATCHED")
	untuned := os.Getenv("SLIMGRAD_LGRECO_UNTUNED") != ""
	if untuned && matched == "" {
		t.Fatal("SLIMGRAD_LGRECO_UNTUNED without SLIMGRAD_LGRECO_MATCHED: nothing to compare")
	}
	for _, def := range codecs {
		var diff, ratio, mdiff []float64
		var ub, gb int64
		for seed := first; seed < first+uint64(seeds); seed++ {
			u := run(seed, def, false)
			if matched != "" {
				m := run(seed, matched, false)
				mdiff = append(mdiff, m.test.Loss-u.test.Loss)
				t.Logf("%-10s seed %d: uniform %s %10d B loss %.4f acc %.4f (%.3f× fewer bytes than %s)", def, seed, matched, m.bytes, m.test.Loss, m.test.Accuracy, float64(u.bytes)/float64(m.bytes), def)
			}
			if untuned {
				continue
			}
			g := run(seed, def, true)
			ub += u.bytes
			gb += g.bytes
			diff = append(diff, g.test.Loss-u.test.Loss)
			ratio = append(ratio, float64(u.bytes)/float64(g.bytes))
			t.Logf("%-10s seed %d: uniform %10d B loss %.4f acc %.4f | L-GreCo %10d B loss %.4f acc %.4f | %.3f× fewer bytes, Δloss %+.5f; last %v",
				def, seed, u.bytes, u.test.Loss, u.test.Accuracy, g.bytes, g.test.Loss, g.test.Accuracy, ratio[len(ratio)-1], diff[len(diff)-1], g.switches[max(0, len(g.switches)-1):])
			if g.bytes >= u.bytes {
				t.Errorf("%s seed %d: L-GreCo sent %d B, uniform %d B: not fewer", def, seed, g.bytes, u.bytes)
			}
		}
		if matched != "" {
			mm, ms := meanSE(mdiff)
			t.Logf("%-10s uniform %s − uniform %s: test loss %+.4f ± %.4f (paired mean ± s.e.)", def, matched, def, mm, ms)
		}
		if untuned {
			continue
		}
		md, se := meanSE(diff)
		mr, _ := meanSE(ratio)
		t.Logf("%-10s %d seeds: bytes uniform/L-GreCo %.3f× (mean per seed %.3f×); test loss L-GreCo − uniform %+.5f ± %.5f (paired mean ± s.e.)",
			def, seeds, float64(ub)/float64(gb), mr, md, se)
		if md > se {
			t.Errorf("%s: L-GreCo's final test loss is worse than uniform's by %.4f, more than one standard error (%.4f)", def, md, se)
		}
	}
}
