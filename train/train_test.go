package train

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/workload"
)

func newSGD(lr float64) OptimSpec {
	return OptimSpec{Name: "sgd", New: func(n int) (optim.Optimizer, error) { return optim.NewSGD(n, lr, 0) }}
}

func means(n int) []optim.Exchange { return make([]optim.Exchange, n) }

func TestLocalMatchesNaiveMean(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	layers := []Layer{{Name: "a", Size: 7}, {Name: "b", Size: 1}}
	for _, n := range []int{1, 2, 5} {
		ex, err := NewLocal(n, layers, Plan{})
		if err != nil {
			t.Fatal(err)
		}
		in := make([][][]float32, n)
		out := make([][][]float32, n)
		for w := range n {
			for _, l := range layers {
				v := make([]float32, l.Size)
				for j := range v {
					v[j] = float32(rng.NormFloat64())
				}
				in[w] = append(in[w], v)
				out[w] = append(out[w], make([]float32, l.Size))
			}
		}
		st, err := ex.Exchange(context.Background(), 0, means(len(layers)), in, out)
		if err != nil {
			t.Fatal(err)
		}
		for l, ly := range layers {
			for j := range ly.Size {
				var sum float32
				for w := range n {
					sum += in[w][l][j]
				}
				want := sum * (1 / float32(n))
				for w := range n {
					if out[w][l][j] != want {
						t.Fatalf("n=%d worker %d layer %d [%d]: %g, want %g", n, w, l, j, out[w][l][j], want)
					}
				}
			}
		}
		if want := DenseRingBytes(n, 8); st.WireBytes != want || st.DenseBytes != want {
			t.Errorf("n=%d: wire %d dense %d, want %d", n, st.WireBytes, st.DenseBytes, want)
		}
	}
	ex, _ := NewLocal(2, layers, Plan{})
	if _, err := ex.Exchange(context.Background(), 0, means(len(layers)), make([][][]float32, 3), make([][][]float32, 3)); err == nil {
		t.Error("wrong worker count: no error")
	}
}

func TestRunTrainsAndKeepsReplicasIdentical(t *testing.T) {
	task, err := LoadTask("logistic", "", 3)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Workers: 4, Batch: 16, Steps: 150, Seed: 3, Split: workload.NonIID, EvalEvery: 50, CheckReplicas: true}
	ex, _ := NewLocal(cfg.Workers, LayersOf(task.Model), Plan{})
	before, _ := task.Model.Evaluate(task.Test, nil)
	var n int
	res, err := Run(context.Background(), cfg, task, ex, newSGD(0.1), func(r Record) {
		if r.Step != n {
			t.Fatalf("record %d has step %d", n, r.Step)
		}
		n++
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Records) != cfg.Steps || n != cfg.Steps {
		t.Fatalf("%d records, %d callbacks", len(res.Records), n)
	}
	if res.Final.Loss >= 0.8*before.Loss || res.Final.Accuracy < 0.7 {
		t.Errorf("test loss %g -> %g, accuracy %g", before.Loss, res.Final.Loss, res.Final.Accuracy)
	}
	if got, _ := task.Model.Evaluate(task.Test, nil); got != before {
		t.Error("Run modified the task's model")
	}
	last := res.Last
	if last.TotalDenseBytes != int64(cfg.Steps)*last.DenseBytes || last.Saved() != 1 {
		t.Errorf("totals: dense %d, saved %g", last.TotalDenseBytes, last.Saved())
	}
}

func TestRunDivergesAndCancels(t *testing.T) {
	task, _ := LoadTask("leastsquares", "", 1)
	cfg := Config{Workers: 2, Batch: 8, Steps: 200, Seed: 1}
	ex, _ := NewLocal(2, LayersOf(task.Model), Plan{})
	if _, err := Run(context.Background(), cfg, task, ex, newSGD(1e3), nil); !errors.Is(err, ErrDiverged) {
		t.Errorf("lr 1e3: err %v, want ErrDiverged", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, cfg, task, ex, newSGD(0.01), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err %v", err)
	}
}

// mismatched gives worker 1 a different result: Run must notice.
type mismatched struct{ *Local }

func (m mismatched) Exchange(ctx context.Context, step int, how []optim.Exchange, in, out [][][]float32) (Stats, error) {
	st, err := m.Local.Exchange(ctx, step, how, in, out)
	out[1][0][0] += 1e-3
	return st, err
}

func TestRunDetectsReplicaMismatch(t *testing.T) {
	task, _ := LoadTask("logistic", "", 1)
	cfg := Config{Workers: 2, Batch: 8, Steps: 3, Seed: 1, CheckReplicas: true}
	l, _ := NewLocal(2, LayersOf(task.Model), Plan{})
	if _, err := Run(context.Background(), cfg, task, mismatched{l}, newSGD(0.1), nil); !errors.Is(err, ErrReplicaMismatch) {
		t.Errorf("err %v, want ErrReplicaMismatch", err)
	}
}
