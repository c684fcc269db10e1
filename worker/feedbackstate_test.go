package worker

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/slimgrad/slimgrad/transport/mem"
)

// TestFeedbackStateRestore checks the contract of FeedbackState: restoring a
// snapshot taken between steps makes the next step repeat bit for bit, and a
// Worker for another world size has state slices of the same shapes.
func TestFeedbackStateRestore(t *testing.T) {
	layers := []layerDef{
		{name: "a", shape: []int{64}, codec: "topk:0.1", ef: "ef14"},
		{name: "b", shape: []int{16, 8}, codec: "powersgd:2", ef: "ef14"},
		{name: "c", shape: []int{40}, codec: "dgc:0.1", ef: "dgc:0.9"},
		{name: "d", shape: []int{32}, codec: "topk:0.2", ef: "ef21"}, // a deterministic codec: QSGD's rounding stream is not state
	}
	g, err := mem.NewGroup(3)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ws := startWorkers(t, g.Conns(), layers, WithSeed(7))
	defer func() {
		for _, w := range ws {
			w.Close()
		}
	}()
	rng := rand.New(rand.NewPCG(1, 2))
	mustStep(t, ws, makeGrads(rng, 3, layers, false)) // non-zero state
	snap := make([][][]float32, len(ws))
	for r, w := range ws {
		st := w.FeedbackState()
		if len(st) < 6 {
			t.Fatalf("rank %d: %d state slices, want at least 6 (ef14, resid+Q, u+v, h_i+h)", r, len(st))
		}
		nonzero := false
		for _, s := range st {
			snap[r] = append(snap[r], slices.Clone(s))
			nonzero = nonzero || slices.ContainsFunc(s, func(x float32) bool { return x != 0 })
		}
		if !nonzero {
			t.Fatalf("rank %d: state all zero after a step", r)
		}
	}
	grads := makeGrads(rng, 3, layers, false)
	first := cloneGrads(grads)
	mustStep(t, ws, first)
	for r, w := range ws {
		for i, s := range w.FeedbackState() {
			copy(s, snap[r][i])
		}
	}
	again := cloneGrads(grads)
	mustStep(t, ws, again)
	for r := range first {
		for l := range first[r] {
			if !slices.Equal(first[r][l], again[r][l]) {
				t.Fatalf("rank %d layer %d: step after restore differs from the step after the snapshot", r, l)
			}
		}
	}

	g2, err := mem.NewGroup(2)
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	ws2 := startWorkers(t, g2.Conns(), layers, WithSeed(7))
	defer func() {
		for _, w := range ws2 {
			w.Close()
		}
	}()
	a, b := ws[0].FeedbackState(), ws2[0].FeedbackState()
	if len(a) != len(b) {
		t.Fatalf("world 3 has %d state slices, world 2 has %d", len(a), len(b))
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			t.Fatalf("slice %d: %d elements in world 3, %d in world 2", i, len(a[i]), len(b[i]))
		}
	}
}
