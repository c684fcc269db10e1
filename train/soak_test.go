package train

import (
	"context"
	"runtime"
	"testing"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/worker"
	"github.com/slimgrad/slimgrad/workload"
)

// TestRunRankMemoryFlat: a rank that runs 10^5 steps with a record window
// (as `slimgrad worker` does, streaming its records out) holds no more memory
// at the end than after the first 10^4 steps. Keeping every record grew
// workers by about 0.7 KB per step (60 MB over this run).
func TestRunRankMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("10^5 training steps")
	}
	const steps, early = 100_000, 10_000
	ctx := context.Background()
	task, err := LoadTask("logistic", "", 1)
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(ctx, memConns(t, 1)[0], WorkerOptions(1, nil)...)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cfg := Config{Workers: 1, Batch: 1, Steps: steps, Seed: 1, Split: workload.IID, RecordWindow: 1}
	opt := OptimSpec{Name: "sgd", New: func(n int) (optim.Optimizer, error) { return optim.NewSGD(n, 0.01, 0) }}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	var at uint64
	res, err := RunRank(ctx, RankConfig{Config: cfg, Rank: 0, World: 1}, task, w, Plan{Compress: "topk:0.5", EF: "ef14", CompressVectors: true, Seed: 1}, opt, "", func(r Record) {
		if r.Step == early {
			at = heap()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	end := heap()
	const slack = 1 << 20
	if end > at+slack {
		t.Fatalf("heap grew from %d to %d bytes over %d steps (%.1f bytes per step)", at, end, steps-early, float64(end-at)/float64(steps-early))
	}
	if len(res.Records) != 1 || res.Last.Step != steps-1 {
		t.Fatalf("%d records kept, last step %d", len(res.Records), res.Last.Step)
	}
	t.Logf("heap %d bytes after %d steps, %d after %d", at, early, end, steps)
}

// TestRecordWindow: with RecordWindow w, Result.Records holds the last w
// records in step order, and onStep still sees every step.
func TestRecordWindow(t *testing.T) {
	task, err := LoadTask("logistic", "", 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []int{1, 3, 10, 20} {
		ex, err := NewLocal(2, Units(task.Model, false), Plan{})
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{Workers: 2, Batch: 4, Steps: 10, Seed: 1, Split: workload.IID, RecordWindow: w}
		opt := OptimSpec{Name: "sgd", New: func(n int) (optim.Optimizer, error) { return optim.NewSGD(n, 0.01, 0) }}
		seen := 0
		res, err := Run(context.Background(), cfg, task, ex, opt, func(Record) { seen++ })
		if err != nil {
			t.Fatal(err)
		}
		keep := min(w, 10)
		if seen != 10 || len(res.Records) != keep {
			t.Fatalf("window %d: onStep saw %d, %d records kept, want 10 and %d", w, seen, len(res.Records), keep)
		}
		for i, r := range res.Records {
			if r.Step != 10-keep+i {
				t.Fatalf("window %d: record %d is step %d", w, i, r.Step)
			}
		}
	}
}
