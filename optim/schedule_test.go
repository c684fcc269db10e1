package optim

import (
	"errors"
	"math"
	"testing"
)

// TestCosine: the rate of every step follows base·(1+cos(πt/T))/2, reaching
// 0 at T and staying there, and the updates use it.
func TestCosine(t *testing.T) {
	const n, total, lr = 3, 8, 0.4
	sgd, err := NewSGD(n, lr, 0)
	if err != nil {
		t.Fatal(err)
	}
	o, err := Cosine(sgd, total)
	if err != nil {
		t.Fatal(err)
	}
	params := []float32{0, 0, 0}
	for step := range total + 3 {
		want := lr * (1 + math.Cos(math.Pi*float64(min(step, total))/total)) / 2
		before := params[0]
		send, _, err := o.Prepare([]float32{1, 1, 1})
		if err != nil {
			t.Fatal(err)
		}
		if got := o.LR(); math.Abs(got-want) > 1e-12 {
			t.Fatalf("step %d: lr %v, want %v", step, got, want)
		}
		if err := o.Step(params, send); err != nil {
			t.Fatal(err)
		}
		if d := float64(before - params[0]); math.Abs(d-want) > 1e-6 {
			t.Fatalf("step %d: moved by %v with lr %v", step, d, want)
		}
	}
	if _, err := Cosine(sgd, 0); !errors.Is(err, ErrConfig) {
		t.Errorf("total 0: %v, want ErrConfig", err)
	}
}
