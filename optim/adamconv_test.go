package optim

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
)

// runAdam trains p over world ranks with Adam (no bias correction, to match
// 1-bit Adam's warm-up) or 1-bit Adam on one flat vector (as DeepSpeed
// flattens the model). It returns the mean evaluation loss over the last 20%
// of the steps, the bytes rank 0 sent in the compression stage, and what a
// dense fp32 ring all-reduce would have sent for those steps.
// curve holds the evaluation loss after every tenth of the steps.
func runAdam(t testing.TB, p model, world, steps, batch, freeze int, lr float64, onebit bool, seed uint64) (loss float64, curve []float64, sent, dense int64) {
	cfg := AdamConfig{LR: lr, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, FreezeStep: freeze}
	c := newCluster(t, world, []layerSpec{{n: p.dim(), codec: "none", ef: "none"}}, p.init(), adamMaker(t, cfg, onebit))
	rngs := make([]*rand.Rand, world)
	for r := range rngs {
		rngs[r] = rand.New(rand.NewPCG(seed, uint64(r)))
	}
	evals := 0
	for s := 0; s < steps; s++ {
		c.step(t, func(r int, params, grad []float32) { p.grad(rngs[r], params, grad, batch) })
		if s+1 == freeze && onebit && c.ranks[0].opts[0].(*OneBitAdam).Stage() != Compression {
			t.Fatal("1-bit Adam did not switch to the compression stage at the freeze step")
		}
		var l float64
		eval := s >= steps-steps/5 && (steps-1-s)%(steps/50) == 0
		if eval || (s+1)%(steps/10) == 0 {
			l = p.loss(c.ranks[0].params)
		}
		if eval {
			loss += l
			evals++
		}
		if (s+1)%(steps/10) == 0 {
			curve = append(curve, l)
		}
	}
	c.checkReplicas(t)
	return loss / float64(evals), curve, c.sent[TwoPhaseSign], c.denseEquiv[TwoPhaseSign]
}

// TestAdamExplore is a tuning sweep, not a check: it logs Adam's and 1-bit
// Adam's final losses and 1-bit Adam's compression-stage bytes over a small
// grid of lr and seeds, the numbers behind the settings of the convergence
// tests. It asserts nothing, so it is skipped unless asked for:
//
//	go test -run AdamExplore -v ./optim -args -explore adam
func TestAdamExplore(t *testing.T) {
	if exploring() != "adam" {
		t.Skip("run with -args -explore adam")
	}
	p := newSoftmaxProblem(1, 10, 1000, 500, 0.1)
	for _, lr := range []float64{0.001, 0.003} {
		for seed := uint64(1); seed <= 3; seed++ {
			la, _, _, _ := runAdam(t, p, 8, 300, 4, 60, lr, false, seed)
			l1, _, sent, dense := runAdam(t, p, 8, 300, 4, 60, lr, true, seed)
			t.Logf("lr=%v seed %d: adam %.4f  1-bit %.4f  compression-stage bytes %d vs dense %d (%.1fx)", lr, seed, la, l1, sent, dense, float64(dense)/float64(sent))
		}
	}
}

// TestOneBitAdamFollowsAdam: 8 ranks, softmax regression with 10,010
// parameters, 300 steps, freeze at 20% (step 60). 1-bit Adam's loss curve
// stays within seed noise of Adam's (no bias correction in either), and its
// compression stage sends ≥ 25× fewer bytes than a dense fp32 ring
// all-reduce (two-phase: 2(N−1)·(d′/(8N) + 4) bytes per rank and step).
func TestOneBitAdamFollowsAdam(t *testing.T) {
	const world, steps, batch, freeze, lr, seeds = 8, 300, 4, 60, 0.001, 3
	p := newSoftmaxProblem(1, 10, 1000, 500, 0.1)
	var adam, onebit, diffs []float64
	for seed := uint64(1); seed <= seeds; seed++ {
		la, ca, _, _ := runAdam(t, p, world, steps, batch, freeze, lr, false, seed)
		l1, c1, sent, dense := runAdam(t, p, world, steps, batch, freeze, lr, true, seed)
		t.Logf("seed %d: final loss adam %.4f, 1-bit adam %.4f; curves (every 30 steps):\n adam  %.3f\n 1-bit %.3f", seed, la, l1, ca, c1)
		adam, onebit, diffs = append(adam, la), append(onebit, l1), append(diffs, l1-la)
		wantSent := int64(steps-freeze) * 2 * (world - 1) * int64(allreduce.TwoPhasePaddedLen(p.dim(), world)/(8*world)+4)
		if sent != wantSent {
			t.Errorf("compression stage sent %d bytes, want %d", sent, wantSent)
		}
		ratio := float64(dense) / float64(sent)
		t.Logf("seed %d: compression stage %d bytes vs dense fp32 ring %d: %.1fx", seed, sent, dense, ratio)
		if ratio < 25 {
			t.Errorf("compression stage saves only %.1fx, want >= 25x", ratio)
		}
		for i := 4; i < len(ca); i++ { // from 50% on: after the bump at the switch
			if math.Abs(c1[i]-ca[i]) > 0.1*ca[i] {
				t.Errorf("seed %d, step %d: 1-bit Adam loss %.4f vs Adam %.4f (> 10%%)", seed, (i+1)*steps/10, c1[i], ca[i])
			}
		}
	}
	ma, m1 := mean(adam), mean(onebit)
	noise := stddev(adam)
	t.Logf("final-window loss over %d seeds: adam %.4f ± %.4f, 1-bit adam %.4f ± %.4f", seeds, ma, noise, m1, stddev(onebit))
	if math.Abs(m1-ma) > 2*noise+0.005 {
		t.Errorf("1-bit Adam mean loss %.4f differs from Adam's %.4f by more than 2σ_seeds + 0.005 (σ = %.4f)", m1, ma, noise)
	}
}

// adamMaker returns newCluster's optimizer factory: Adam, or 1-bit Adam if
// onebit, with cfg for every layer.
func adamMaker(t testing.TB, cfg AdamConfig, onebit bool) func(layerSpec) Optimizer {
	return func(l layerSpec) Optimizer {
		var o Optimizer
		var err error
		if onebit {
			o, err = NewOneBitAdam(l.n, cfg)
		} else {
			o, err = NewAdam(l.n, cfg)
		}
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
}

func mean(x []float64) float64 {
	var s float64
	for _, v := range x {
		s += v
	}
	return s / float64(len(x))
}

func stddev(x []float64) float64 {
	m := mean(x)
	var s float64
	for _, v := range x {
		s += (v - m) * (v - m)
	}
	return math.Sqrt(s / float64(len(x)-1))
}
