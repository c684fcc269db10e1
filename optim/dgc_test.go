package optim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/errorfeedback"
)

type dgcRun struct {
	name   string
	wCodec string // codec of W at the target density
	wEF    string
	bEF    string
	efOpts []errorfeedback.Option
	opt    string // "momentum" or "dgcsgd"
}

// dgcResult is the outcome of runSoftmax: the mean evaluation loss over the
// last 20% of the steps, the bytes rank 0 sent in all, and the bytes it sent
// per step after the warm-up epochs.
type dgcResult struct {
	loss         float64
	bytes        int64
	bytesPerStep float64 // after warm-up
	densePerStep float64 // dense fp32 ring all-reduce, for comparison
}

// runSoftmax trains model p over world ranks with one DGC variant.
func runSoftmax(t testing.TB, p model, world, steps, batch, epochSteps int, lr float64, decay bool, run dgcRun, target float64, seed uint64) dgcResult {
	var layers []layerSpec
	for _, l := range p.parts() {
		if l.codec == "w" {
			layers = append(layers, layerSpec{off: l.off, n: l.n, codec: run.wCodec, ef: run.wEF, efOpts: run.efOpts})
		} else {
			layers = append(layers, layerSpec{off: l.off, n: l.n, codec: "none", ef: run.bEF})
		}
	}
	mk := func(l layerSpec) Optimizer {
		var o Optimizer
		var err error
		switch run.opt {
		case "momentum":
			o, err = NewMomentum(l.n, lr, 0.9, 0, false)
		case "dgcsgd":
			o, err = NewDGCSGD(l.n, lr, 0.9, 0, false)
		}
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	c := newCluster(t, world, layers, p.init(), mk)
	rngs := make([]*rand.Rand, world)
	for r := range rngs {
		rngs[r] = rand.New(rand.NewPCG(seed, uint64(r)))
	}
	sparse := run.wCodec != "none"
	cur := -1.0
	var loss float64
	evals := 0
	var warmBytes int64
	for s := 0; s < steps; s++ {
		if s == len(PaperWarmup)*epochSteps {
			warmBytes = c.sent[Mean]
		}
		if sparse {
			if d := DGCDensity(s/epochSteps, target, PaperWarmup); d != cur {
				for li, l := range layers {
					if l.codec != "none" {
						c.setCodec(t, li, fmt.Sprintf("dgc:%v", d))
					}
				}
				cur = d
			}
		}
		if decay {
			for _, rk := range c.ranks {
				for _, o := range rk.opts {
					o.SetLR(lr * (1 - float64(s)/float64(steps)))
				}
			}
		}
		c.step(t, func(r int, params, grad []float32) { p.grad(rngs[r], params, grad, batch) })
		if s >= steps-steps/5 && (steps-1-s)%(steps/50) == 0 { // 10 points over the last 20%
			loss += p.loss(c.ranks[0].params)
			evals++
		}
	}
	c.checkReplicas(t)
	after := steps - len(PaperWarmup)*epochSteps
	return dgcResult{loss: loss / float64(evals), bytes: c.sent[Mean],
		bytesPerStep: float64(c.sent[Mean]-warmBytes) / float64(after),
		densePerStep: float64(c.denseEquiv[Mean]) / float64(steps)}
}

// dgcRuns are the variants of the DGC tests: the dense momentum-SGD
// baseline, DGC (momentum correction + masking, DGC-SGD), and the two
// ablations of docs/algorithms.md §1.8: no momentum correction (accumulate raw gradients
// with EF14, momentum after aggregation) and no momentum-factor masking.
var dgcRuns = []dgcRun{
	{name: "dense", wCodec: "none", wEF: "none", bEF: "none", opt: "momentum"},
	{name: "dgc", wCodec: "dgc:0.001", wEF: "dgc:0.9", bEF: "dgc:0.9", opt: "dgcsgd"},
	{name: "no-mc", wCodec: "dgc:0.001", wEF: "ef14", bEF: "none", opt: "momentum"},
	{name: "no-mask", wCodec: "dgc:0.001", wEF: "dgc:0.9", bEF: "dgc:0.9", opt: "dgcsgd",
		efOpts: []errorfeedback.Option{errorfeedback.WithoutMasking()}},
}

// TestDGC is the DGC experiment of docs/algorithms.md §1.8 on one problem: softmax
// regression over 8 ranks (10 classes × 1000 features: a compressed
// 10,000-element weight layer, k = 10 per rank at density 0.001, plus a dense
// bias layer with momentum after averaging), momentum 0.9, lr 0.01, 1200 steps
// of batch 4 per rank, the paper's warm-up densities for the first 4
// "epochs" of 60 steps. The first 10 features are scaled by 7, so their
// weights have 49× the curvature of the others and large, consistent
// gradients that DGC sends in bursts: that is where momentum correction and
// momentum-factor masking matter (without them, the momentum left behind a
// burst keeps pushing these stiff coordinates past their optimum).
//
//   - DGC's final loss is within seed noise of dense momentum SGD, and after
//     warm-up it sends ≥ 60× fewer bytes;
//   - without momentum correction (raw gradients accumulated with EF14,
//     momentum after aggregation) and without masking, the final loss is
//     measurably worse than DGC's, for every seed.
//
// (On the same problem without the stiff features, masking makes no
// measurable difference; see TestDGCExplore with PROB=softmax.)
func TestDGC(t *testing.T) {
	if testing.Short() {
		t.Skip("trains 12 models (about 15 s on 2 cores)")
	}
	const world, steps, batch, epoch, lr, seeds = 8, 1200, 4, 60, 0.01, 3
	var res [seeds][4]dgcResult
	t.Run("train", func(t *testing.T) {
		for seed := 1; seed <= seeds; seed++ {
			for i, run := range dgcRuns {
				t.Run(fmt.Sprintf("seed=%d/%s", seed, run.name), func(t *testing.T) {
					t.Parallel()
					p := newStrongSoftmaxProblem(1, 10, 1000, 500, 0.1, 10, 7) // scratch buffers: one per run
					res[seed-1][i] = runSoftmax(t, p, world, steps, batch, epoch, lr, false, run, 0.001, uint64(seed))
				})
			}
		}
	})
	var dense, dgc []float64
	var dNoMC, dNoMask []float64
	for s, r := range res {
		t.Logf("seed %d: loss dense %.4f, dgc %.4f, no momentum correction %.4f, no masking %.4f", s+1, r[0].loss, r[1].loss, r[2].loss, r[3].loss)
		g := r[1]
		t.Logf("seed %d: rank 0 sent dense %d B, dgc %d B in all (%.1fx fewer with warm-up); after warm-up %.0f B/step vs dense fp32 ring %.0f B/step (%.0fx)",
			s+1, r[0].bytes, g.bytes, float64(r[0].bytes)/float64(g.bytes), g.bytesPerStep, g.densePerStep, g.densePerStep/g.bytesPerStep)
		// Per step, rank 0 sends its payload (k = 10 pairs of 8 bytes plus
		// the frame) to each of the N−1 others, while a ring all-reduce
		// sends 2(N−1)/N·4d bytes: a ratio of about d/(N·k) = 125 before
		// framing.
		if ratio := g.densePerStep / g.bytesPerStep; ratio < 60 {
			t.Errorf("seed %d: after warm-up DGC saves only %.0fx over dense fp32", s+1, ratio)
		}
		for i := 2; i < 4; i++ {
			if !(r[i].loss > g.loss+0.01) {
				t.Errorf("seed %d: %s loss %.4f is not measurably worse than DGC's %.4f", s+1, dgcRuns[i].name, r[i].loss, g.loss)
			}
		}
		dense, dgc = append(dense, r[0].loss), append(dgc, g.loss)
		dNoMC, dNoMask = append(dNoMC, r[2].loss-g.loss), append(dNoMask, r[3].loss-g.loss)
	}
	md, mg, sd := mean(dense), mean(dgc), stddev(dense)
	t.Logf("mean loss over %d seeds: dense %.4f ± %.4f, dgc %.4f ± %.4f; ablations worse than dgc by: no-mc %.4f, no-mask %.4f",
		seeds, md, sd, mg, stddev(dgc), mean(dNoMC), mean(dNoMask))
	if math.Abs(mg-md) > 2*sd+0.01 {
		t.Errorf("DGC loss %.4f is not within seed noise of dense %.4f (σ = %.4f)", mg, md, sd)
	}
	for _, a := range []struct {
		name string
		d    []float64
	}{{"no-mc", dNoMC}, {"no-mask", dNoMask}} {
		if m := mean(a.d); !(m > 0.025) {
			t.Errorf("%s is only %.4f worse than DGC on average, want > 0.025", a.name, m)
		}
	}
}

// TestDGCAblation: a one-hidden-layer ReLU MLP (32-320-10, 13,770
// parameters; W1 keeps k = 11, W2 k = 4 at density 0.001) on a
// teacher-student task, 8 ranks, 1500 steps. Without momentum correction or
// without masking, DGC ends measurably worse than full DGC, for every seed.
// (On the convex softmax problem of TestDGCMatchesDense the masking ablation
// shows no measurable effect; stale momentum hurts when gradient directions
// change, as in this non-convex model.)
//
// It takes about 20 s on 2 cores; TestDGC shows the ablation and the match
// with dense on one problem, so this one runs only when asked for:
//
//	go test -run DGCAblation -v ./optim -args -explore dgc-mlp
func TestDGCAblation(t *testing.T) {
	if testing.Short() || exploring() != "dgc-mlp" {
		t.Skip("run with -args -explore dgc-mlp to train the 6 MLPs")
	}
	const world, steps, batch, epoch, lr = 8, 1500, 8, 50, 0.1
	const seeds = 2
	var loss [seeds][4]float64
	t.Run("train", func(t *testing.T) {
		for seed := 1; seed <= seeds; seed++ {
			for i := 1; i < 4; i++ {
				t.Run(fmt.Sprintf("seed=%d/%s", seed, dgcRuns[i].name), func(t *testing.T) {
					t.Parallel()
					p := newMLPProblem(1, 32, 320, 10, 64, 1000) // scratch buffers: one per run
					loss[seed-1][i] = runSoftmax(t, p, world, steps, batch, epoch, lr, false, dgcRuns[i], 0.001, uint64(seed)).loss
				})
			}
		}
	})
	for s, l := range loss {
		t.Logf("seed %d: loss dgc %.4f, no momentum correction %.4f, no masking %.4f", s+1, l[1], l[2], l[3])
		for i := 2; i < 4; i++ {
			if !(l[i] > l[1]+0.05) {
				t.Errorf("seed %d: %s loss %.4f is not measurably worse than DGC's %.4f", s+1, dgcRuns[i].name, l[i], l[1])
			}
		}
	}
}

// TestDGCExplore runs the four variants of dgcRuns on one problem, to tune
// the DGC tests:
//
//	go test -run DGCExplore -v ./optim -args \
//	    -explore dgc,PROB=strong,C=7,LR=0.01,STEPS=1200,EPOCH=60,SEEDS=3
//
// PROB: softmax (default), strong (first S features ×C), sparse (S
// informative features per class, mean scale A), mlp (IN, H); BATCH, DECAY
// (linear lr decay to 0 if set).
func TestDGCExplore(t *testing.T) {
	if exploring() != "dgc" {
		t.Skip("run with -args -explore dgc[,KEY=VALUE...]")
	}
	f := func(k string, def float64) float64 {
		if v, err := strconv.ParseFloat(exploreArg(k), 64); err == nil {
			return v
		}
		return def
	}
	lr, steps, batch, epoch := f("LR", 0.01), int(f("STEPS", 600)), int(f("BATCH", 4)), int(f("EPOCH", 30))
	var p model = newSoftmaxProblem(1, 10, 1000, 500, 0.1)
	switch exploreArg("PROB") {
	case "mlp":
		p = newMLPProblem(1, int(f("IN", 32)), int(f("H", 320)), 10, 64, 1000)
	case "sparse":
		p = newSparseSoftmaxProblem(1, 10, int(f("F", 1000)), int(f("S", 20)), 500, f("A", 0.7))
	case "strong":
		p = newStrongSoftmaxProblem(uint64(f("PSEED", 1)), 10, int(f("F", 1000)), 500, f("A", 0.1), int(f("S", 10)), float32(f("C", 10)))
	case "softmax2":
		p = newSoftmaxProblem(1, 10, int(f("F", 1000)), 500, f("A", 0.1))
	}
	for seed := uint64(1); seed <= uint64(f("SEEDS", 2)); seed++ {
		for _, run := range dgcRuns {
			t0 := time.Now()
			r := runSoftmax(t, p, 8, steps, batch, epoch, lr, exploreArg("DECAY") != "", run, 0.001, seed)
			t.Logf("lr=%v seed %d %-8s loss %.4f (%v)", lr, seed, run.name, r.loss, time.Since(t0).Round(time.Millisecond))
		}
	}
}
