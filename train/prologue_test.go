package train

import (
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/binding"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/engine"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/sim"
)

// TestCollectivePrologue: the simulated collective charges the error
// feedback work that its program's ops do not count: an element-wise codec
// under feedback the encode and decode of Begin, a gathered codec under
// EF14 the compensation pass e ← e + g over the layer (a reduction; bench's
// encode is the compression alone), a low-rank codec under EF14 its three
// residual passes, and nothing without feedback.
func TestCollectivePrologue(t *testing.T) {
	const rows, cols = 16, 64
	unit := Layer{Name: "w", Shape: []int{rows, cols}, Size: rows * cols}
	pol := engine.Policy{World: 2, Seed: 1, Algorithms: []allreduce.Algorithm{allreduce.AlgRing}}
	for _, c := range []struct {
		codec, ef string
		want      sim.Prologue
	}{
		{"topk:0.01", "ef14", sim.Prologue{Fn: allreduce.FnReduce, Elems: rows * cols}},
		{"topk:0.01", "none", sim.Prologue{}},
		{"fp16", "ef14", sim.Prologue{Fn: allreduce.FnEncode, Elems: rows * cols}},
		{"none", "none", sim.Prologue{}},
		{"powersgd:2", "ef14", sim.Prologue{Fn: allreduce.FnReduce, Elems: 3 * rows * cols}},
		{"powersgd:2", "none", sim.Prologue{}},
	} {
		r, err := compressors.Parse(c.codec)
		if err != nil {
			t.Fatal(err)
		}
		ef, err := errorfeedback.Parse(c.ef)
		if err != nil {
			t.Fatal(err)
		}
		spec, err := pol.SchemeFor(r, ef, unit.Size, rows, cols)
		if err != nil {
			t.Fatal(err)
		}
		l, err := binding.New(spec)
		if err != nil {
			t.Fatal(err)
		}
		if got := collective(unit, l, nil, nil, 0).Prologue; got != c.want {
			t.Errorf("%s with %s: prologue %+v, want %+v", c.codec, c.ef, got, c.want)
		}
	}
}
