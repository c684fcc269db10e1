package train

import (
	"context"
	"errors"
	"math"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/worker"
)

// poisoned wraps an optimizer so that its Prepare hands out a NaN on the
// given steps (a bad batch on one worker).
type poisoned struct {
	optim.Optimizer
	at    []int
	calls int
}

func (p *poisoned) Prepare(g []float32) ([]float32, optim.Exchange, error) {
	send, how, err := p.Optimizer.Prepare(g)
	if slices.Contains(p.at, p.calls) {
		send[len(send)/2] = float32(math.NaN())
	}
	p.calls++
	return send, how, err
}

// poisonSpec is momentum SGD in which the instance number victim (in
// creation order: worker by worker, unit by unit) sends NaN at steps at.
func poisonSpec(victim int, at ...int) OptimSpec {
	var made atomic.Int32
	return OptimSpec{Name: "momentum", New: func(n int) (optim.Optimizer, error) {
		o, err := optim.NewMomentum(n, 0.1, 0.9, 0, false)
		if err != nil || int(made.Add(1)-1) != victim {
			return o, err
		}
		return &poisoned{Optimizer: o, at: at}, nil
	}}
}

// TestNaNPolicy: a NaN in one worker's gradient stops Run with a
// *worker.NonFiniteError naming the step, layer and worker under NaNError;
// under NaNSkip every worker skips that step only (no update anywhere, the
// step counted), and Run ends with the same parameters as real workers
// (RunRank over transport/mem, which agree on the skip over the wire).
func TestNaNPolicy(t *testing.T) {
	ctx := context.Background()
	task, err := LoadTask("logistic", "", 2)
	if err != nil {
		t.Fatal(err)
	}
	n, units := 3, Units(task.Model, false)
	victim := 1*len(units) + 0 // worker 1, first unit
	cfg := Config{Workers: n, Batch: 8, Steps: 8, Seed: 2}
	ex, err := NewLocal(n, units, Plan{})
	if err != nil {
		t.Fatal(err)
	}

	_, err = Run(ctx, cfg, task, ex, poisonSpec(victim, 3), nil)
	var nf *worker.NonFiniteError
	if !errors.As(err, &nf) || nf.Step != 3 || nf.Layer != units[0].Name || !slices.Equal(nf.Ranks, []int{1}) {
		t.Fatalf("NaNError: err %v, want a NonFiniteError at step 3, layer %s, worker 1", err, units[0].Name)
	}

	// Under NaNSkip, in-process workers (the worker's ring, so that the
	// sums are bit-identical to RunRank's below).
	cfg.NaNPolicy = worker.NaNSkip
	wx, err := NewWorkers(ctx, memConns(t, n), units, Plan{}, "", WorkerOptions(cfg.Seed, nil)...)
	if err != nil {
		t.Fatal(err)
	}
	defer wx.Close()
	got, err := Run(ctx, cfg, task, wx, poisonSpec(victim, 3, 5), nil)
	if err != nil {
		t.Fatalf("NaNSkip: %v", err)
	}
	for _, r := range got.Records {
		if want := r.Step == 3 || r.Step == 5; r.Skipped != want {
			t.Errorf("NaNSkip: step %d skipped %v, want %v", r.Step, r.Skipped, want)
		}
	}
	flat := got.Model.Flat()
	if !finiteAll(flat) {
		t.Fatal("NaNSkip: the NaN reached the parameters")
	}

	// The same run on real workers, whose ranks agree on the skip over
	// the wire.
	conns := memConns(t, n)
	results := make([]*Result, n)
	errs := make(chan error, n)
	for r := range n {
		spec := poisonSpec(-1)
		if r == 1 {
			spec = poisonSpec(0, 3, 5)
		}
		go func() {
			var err error
			results[r], err = runWorkerRank(ctx, conns[r], RankConfig{Config: cfg, Rank: r, World: n}, task, Plan{}, spec, nil, worker.WithNaNPolicy(worker.NaNSkip))
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for r := range n {
		if !slices.Equal(results[r].Model.Flat(), flat) {
			t.Errorf("rank %d: parameters differ from Run's under NaNSkip", r)
		}
		for _, rec := range results[r].Records {
			if want := rec.Step == 3 || rec.Step == 5; rec.Skipped != want {
				t.Errorf("rank %d: step %d skipped %v, want %v", r, rec.Step, rec.Skipped, want)
			}
		}
	}

	// A worker whose every gradient is NaN does not skip forever.
	cfg.Steps = MaxSkipRun + 5
	every := make([]int, cfg.Steps)
	for i := range every {
		every[i] = i
	}
	if _, err := Run(ctx, cfg, task, ex, poisonSpec(victim, every...), nil); !errors.Is(err, ErrDiverged) {
		t.Errorf("every step NaN under NaNSkip: err %v, want ErrDiverged after %d skips", err, MaxSkipRun)
	}
}

func finiteAll(x []float32) bool {
	for _, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return false
		}
	}
	return true
}
