package errorfeedback_test

import (
	"context"
	"math"
	"sync"
	"testing"

	"github.com/slimgrad/slimgrad/errorfeedback/eftest"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/worker"
)

// runLSQWorkers trains the T1 problem with p's workers as real
// worker.Workers over transport/mem, one layer with the given codec and
// error feedback: every rank computes its own gradient at its own replica
// of x, Step turns it into the update direction in place, x −= γ·direction.
// It returns rank 0's relative error after every step and checks that the
// replicas stay bit-identical.
func runLSQWorkers(t *testing.T, p *eftest.LSQ, n int, codec, ef string, gamma float64, steps int) []float64 {
	t.Helper()
	ctx := context.Background()
	g, err := mem.NewGroup(n)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	d := p.Dim()
	ws := make([]*worker.Worker, n)
	xs := make([][]float32, n)
	grads := make([][][]float32, n)
	for r := range ws {
		w, err := worker.New(ctx, g.Conn(r), worker.WithSeed(1))
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := w.Register("x", []int{d}, worker.WithCodec(codec), worker.WithErrorFeedback(ef)); err != nil {
			t.Fatal(err)
		}
		ws[r], xs[r], grads[r] = w, make([]float32, d), [][]float32{make([]float32, d)}
	}
	errs := make([]float64, steps)
	stepErrs := make([]error, n)
	g32 := float32(gamma)
	for s := 0; s < steps; s++ {
		for r := range ws {
			p.Grad(r, xs[r], grads[r][0], 0, nil)
		}
		var wg sync.WaitGroup
		for r, w := range ws {
			wg.Go(func() { _, stepErrs[r] = w.Step(ctx, grads[r]) })
		}
		wg.Wait()
		for r, err := range stepErrs {
			if err != nil {
				t.Fatalf("step %d rank %d: %v", s, r, err)
			}
		}
		for r := range ws {
			for j, v := range grads[r][0] {
				xs[r][j] -= g32 * v
			}
		}
		errs[s] = p.RelErr(xs[0])
	}
	for r := 1; r < n; r++ {
		for j := range xs[r] {
			if math.Float32bits(xs[r][j]) != math.Float32bits(xs[0][j]) {
				t.Fatalf("rank %d x[%d] = %v, rank 0 has %v", r, j, xs[r][j], xs[0][j])
			}
		}
	}
	return errs
}

// TestConvergenceT1Workers is TestConvergenceT1 (docs/algorithms.md §3.4 T1: n = 10
// heterogeneous workers, full gradients, top-k at k/d = 0.1) run through
// real worker.Workers over transport/mem (sparse all-gather, rank-order
// decode-add, the worker's error-feedback binding): compressed SGD without
// error feedback stalls; EF21 and EControl reach ≤ 1e-6 relative error.
func TestConvergenceT1Workers(t *testing.T) {
	const n, d, m, steps, gamma = 10, 50, 100, 800, 0.5
	p := eftest.NewLSQ(1, n, d, m, false)
	for _, c := range []struct {
		ef   string
		want func(e float64) bool
		what string
	}{
		{"none", func(e float64) bool { return e > 1e-2 || math.IsNaN(e) }, "stall (> 1e-2) or diverge"},
		{"ef21", func(e float64) bool { return e <= 1e-6 }, "<= 1e-6"},
		{"econtrol:0.1", func(e float64) bool { return e <= 1e-6 }, "<= 1e-6"},
	} {
		errs := runLSQWorkers(t, p, n, "topk:0.1", c.ef, gamma, steps)
		e := errs[steps-1]
		t.Logf("%-13s over %d workers (transport/mem): rel. error after %d steps %.3g (after %d: %.3g)", c.ef, n, steps, e, steps/2, errs[steps/2-1])
		if !c.want(e) {
			t.Errorf("%s: relative error %.3g, want %s", c.ef, e, c.what)
		}
	}
}
