package optim_test

import (
	"context"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/worker"
)

// adamRun is the outcome of runAdamWorkers.
type adamRun struct {
	loss  float64   // mean evaluation loss over the last 20% of the steps
	curve []float64 // evaluation loss after every tenth of the steps
	// From rank 0's Ledgers over the compression stage (1-bit Adam) or the
	// same steps (Adam): message bytes sent, and what a dense fp32 ring
	// all-reduce would have sent (the Ledger's baseline).
	sent, baseline int64
}

// runAdamWorkers trains p with world real worker.Workers over transport/mem,
// driving the optimizer through the worker as package train does: one flat
// layer (DeepSpeed flattens the model), registered with the "sign" codec for
// 1-bit Adam (the worker runs the two-phase sign all-reduce with its own
// worker and server errors) or "none" for Adam; each step the optimizers'
// Exchange selects the worker's mode (DenseMean → ModeDense for 1-bit Adam's
// warm-up, TwoPhaseSign → ModeCompressed).
func runAdamWorkers(t *testing.T, p *optim.Softmax, world, steps, batch, freeze int, lr float64, onebit bool, seed uint64) adamRun {
	t.Helper()
	ctx := context.Background()
	g, err := mem.NewGroup(world)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	cfg := optim.AdamConfig{LR: lr, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, FreezeStep: freeze}
	codec := "none"
	if onebit {
		codec = "sign"
	}
	d := p.Dim()
	ws := make([]*worker.Worker, world)
	opts := make([]optim.Optimizer, world)
	params := make([][]float32, world)
	grads := make([][]float32, world)
	sends := make([][][]float32, world)
	rngs := make([]*rand.Rand, world)
	for r := range ws {
		w, err := worker.New(ctx, g.Conn(r), worker.WithSeed(seed))
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := w.Register("flat", []int{d}, worker.WithCodec(codec), worker.WithErrorFeedback("none")); err != nil {
			t.Fatal(err)
		}
		if onebit {
			opts[r], err = optim.NewOneBitAdam(d, cfg)
		} else {
			opts[r], err = optim.NewAdam(d, cfg)
		}
		if err != nil {
			t.Fatal(err)
		}
		ws[r], params[r], grads[r], sends[r] = w, make([]float32, d), make([]float32, d), make([][]float32, 1)
		rngs[r] = rand.New(rand.NewPCG(seed, uint64(r)))
	}
	mode := worker.ModeCompressed
	leds := make([]*worker.Ledger, world)
	errs := make([]error, world)
	var res adamRun
	evals := 0
	for s := 0; s < steps; s++ {
		var how optim.Exchange
		for r := range ws {
			p.Grad(rngs[r], params[r], grads[r], batch)
			var err error
			if sends[r][0], how, err = opts[r].Prepare(grads[r]); err != nil {
				t.Fatal(err)
			}
		}
		want := worker.ModeCompressed
		switch how {
		case optim.DenseMean:
			want = worker.ModeDense
		case optim.TwoPhaseSign, optim.Mean:
		default:
			t.Fatalf("step %d: exchange %v", s, how)
		}
		if onebit && (how == optim.DenseMean) != (s < freeze) {
			t.Fatalf("step %d: 1-bit Adam asks for %v (freeze step %d)", s, how, freeze)
		}
		if want != mode {
			for _, w := range ws {
				if err := w.SetMode(want); err != nil {
					t.Fatal(err)
				}
			}
			mode = want
		}
		var wg sync.WaitGroup
		for r, w := range ws {
			wg.Go(func() { leds[r], errs[r] = w.Step(ctx, sends[r]) })
		}
		wg.Wait()
		for r, err := range errs {
			if err != nil {
				t.Fatalf("step %d rank %d: %v", s, r, err)
			}
			if err := opts[r].Step(params[r], sends[r][0]); err != nil {
				t.Fatal(err)
			}
		}
		if s >= freeze {
			res.sent += leds[0].SentBytes()
			res.baseline += leds[0].BaselineBytes()
		}
		eval := s >= steps-steps/5 && (steps-1-s)%(steps/50) == 0
		var l float64
		if eval || (s+1)%(steps/10) == 0 {
			l = p.Loss(params[0])
		}
		if eval {
			res.loss += l
			evals++
		}
		if (s+1)%(steps/10) == 0 {
			res.curve = append(res.curve, l)
		}
	}
	for r := 1; r < world; r++ {
		for j := range params[r] {
			if math.Float32bits(params[r][j]) != math.Float32bits(params[0][j]) {
				t.Fatalf("rank %d param[%d] = %v, rank 0 has %v", r, j, params[r][j], params[0][j])
			}
		}
	}
	res.loss /= float64(evals)
	return res
}

// TestOneBitAdamWorkers: 1-bit Adam through 8 real worker.Workers over
// transport/mem (softmax regression, 10,010 parameters, 300 steps of batch 4
// per rank, freeze at 20% = step 60) follows Adam's loss curve within seed
// noise, and in its compression stage rank 0's Ledgers show ≥ 25× fewer
// message bytes than the dense fp32 ring all-reduce baseline.
func TestOneBitAdamWorkers(t *testing.T) {
	const world, steps, batch, freeze, lr, seeds = 8, 300, 4, 60, 0.001, 3
	p := optim.NewSoftmax(1, 10, 1000, 500, 0.1)
	var adam, onebit []float64
	for seed := uint64(1); seed <= seeds; seed++ {
		a := runAdamWorkers(t, p, world, steps, batch, freeze, lr, false, seed)
		o := runAdamWorkers(t, p, world, steps, batch, freeze, lr, true, seed)
		t.Logf("seed %d: final-window loss adam %.4f, 1-bit adam %.4f; curves (every %d steps):\n adam  %.3f\n 1-bit %.3f", seed, a.loss, o.loss, steps/10, a.curve, o.curve)
		ratio := float64(o.baseline) / float64(o.sent)
		t.Logf("seed %d: compression stage (%d steps), rank 0 Ledger: sent %d B vs dense fp32 ring %d B (%.1fx); Adam over the worker sent %d B for the same steps",
			seed, steps-freeze, o.sent, o.baseline, ratio, a.sent)
		// The two-phase scheme: per step each rank sends its sign chunks and
		// scale to the N−1 others in phase 1 and its server chunk and scale
		// in phase 2, each message with a 4-byte header (version 2, one
		// scale): 2(N−1)·(d′/(8N) + 8) bytes, d′ the padded length.
		if want := int64(steps-freeze) * 2 * (world - 1) * int64(allreduce.TwoPhasePaddedLen(p.Dim(), world)/(8*world)+8); o.sent != want {
			t.Errorf("seed %d: compression stage sent %d bytes by the Ledger, want %d", seed, o.sent, want)
		}
		if ratio < 25 {
			t.Errorf("seed %d: compression stage saves only %.1fx over dense fp32, want >= 25x", seed, ratio)
		}
		for i := 4; i < len(a.curve); i++ { // from 50% on: after the bump at the switch
			if math.Abs(o.curve[i]-a.curve[i]) > 0.1*a.curve[i] {
				t.Errorf("seed %d, step %d: 1-bit Adam loss %.4f vs Adam %.4f (> 10%%)", seed, (i+1)*steps/10, o.curve[i], a.curve[i])
			}
		}
		adam, onebit = append(adam, a.loss), append(onebit, o.loss)
	}
	ma, m1, noise := optim.SampleMean(adam), optim.SampleMean(onebit), optim.SampleStddev(adam)
	t.Logf("final-window loss over %d seeds: adam %.4f ± %.4f, 1-bit adam %.4f ± %.4f", seeds, ma, noise, m1, optim.SampleStddev(onebit))
	if math.Abs(m1-ma) > 2*noise+0.005 {
		t.Errorf("1-bit Adam mean loss %.4f differs from Adam's %.4f by more than 2σ_seeds + 0.005 (σ = %.4f)", m1, ma, noise)
	}
}
