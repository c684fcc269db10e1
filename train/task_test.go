package train

import (
	"slices"
	"testing"
)

// TestNewModel: the named models have the documented layers without data,
// and TrainFLOPs uses the model's own count (the CNN's convolutions cost far
// more than 6 FLOP per parameter).
func TestNewModel(t *testing.T) {
	for _, tc := range []struct {
		name   string
		shapes [][]int
	}{
		{"mnist", [][]int{{256, 784}, {256}, {10, 256}, {10}}},
		{"mnist-deep", [][]int{{512, 784}, {512}, {256, 512}, {256}, {128, 256}, {128}, {10, 128}, {10}}},
		{"mnist-mlp:784-32-16-10", [][]int{{32, 784}, {32}, {16, 32}, {16}, {10, 16}, {10}}},
	} {
		m, err := NewModel(tc.name, 1)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		ls := LayersOf(m)
		if len(ls) != len(tc.shapes) {
			t.Fatalf("%s: %d tensors, want %d", tc.name, len(ls), len(tc.shapes))
		}
		for i, l := range ls {
			if !slices.Equal(l.Shape, tc.shapes[i]) {
				t.Errorf("%s tensor %d: shape %v, want %v", tc.name, i, l.Shape, tc.shapes[i])
			}
		}
		if got, want := TrainFLOPs(m), 6*float64(len(m.Flat())); got != want {
			t.Errorf("%s: %g FLOP per sample, want 6 per parameter (%g)", tc.name, got, want)
		}
	}
	cnn, err := NewModel("mnist-cnn", 1)
	if err != nil {
		t.Fatal(err)
	}
	if f, p := TrainFLOPs(cnn), float64(len(cnn.Flat())); f < 20*p {
		t.Errorf("CNN: %g FLOP per sample for %g parameters: the convolutions are not counted", f, p)
	}
	for _, bad := range []string{"mnist-mlp:784-x-10", "mnist-mlp:784-32-11", "mnist-mlp:10", "mnist-mlp:784-0-10", "resnet"} {
		if _, err := NewModel(bad, 1); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
