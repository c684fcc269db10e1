package optim

import (
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

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

// runSoftmax trains the softmax problem over world ranks and returns the
// final evaluation loss and the bytes rank 0 sent.
func runSoftmax(t testing.TB, p model, world, steps, batch, epochSteps int, lr float64, decay bool, run dgcRun, target float64, seed uint64) (float64, int64) {
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
	for s := 0; s < steps; s++ {
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
	return loss / float64(evals), c.sent[Mean]
}

// TestDGCExplore sweeps settings for the DGC test; run it with
// SLIMGRAD_EXPLORE=1 go test -run DGCExplore -v ./optim.
func TestDGCExplore(t *testing.T) {
	if os.Getenv("SLIMGRAD_EXPLORE") == "" {
		t.Skip("set SLIMGRAD_EXPLORE=1 to run the sweep")
	}
	var p model = newSoftmaxProblem(1, 10, 1000, 500, 0.1)
	if os.Getenv("SLIMGRAD_EXPLORE") == "mlp" {
		p = newMLPProblem(1, 32, 320, 10, 64, 1000)
	}
	runs := []dgcRun{
		{name: "dense", wCodec: "none", wEF: "none", bEF: "none", opt: "momentum"},
		{name: "dgc", wCodec: "dgc:0.001", wEF: "dgc:0.9", bEF: "dgc:0.9", opt: "dgcsgd"},
		{name: "no-mc", wCodec: "dgc:0.001", wEF: "ef14", bEF: "none", opt: "momentum"},
		{name: "no-mask", wCodec: "dgc:0.001", wEF: "dgc:0.9", bEF: "dgc:0.9", opt: "dgcsgd", efOpts: []errorfeedback.Option{errorfeedback.WithoutMasking()}},
	}
	for _, cfg := range []struct {
		lr    float64
		decay bool
	}{{0.1, false}} {
		lr := cfg.lr
		for _, run := range runs {
			for seed := uint64(1); seed <= 2; seed++ {
				l, b := runSoftmax(t, p, 8, 1500, 8, 50, lr, cfg.decay, run, 0.001, seed)
				t.Logf("lr=%v decay=%v %-8s seed %d loss %.4f bytes %d", lr, cfg.decay, run.name, seed, l, b)
			}
		}
	}
}
