package worker

import (
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/engine"
)

// TestDefaultCostModelSegments checks that the default cost model, with its
// per-message overhead, splits a 64 MiB dense bucket into segments of a MiB
// or more, and that WithCostModel still overrides it.
func TestDefaultCostModelSegments(t *testing.T) {
	const elems = 16 << 20 // 64 MiB of fp32
	for _, world := range []int{2, 4} {
		g := newGroup(t, world)
		for _, alg := range []string{"tree", "ring", ""} {
			check := func(name string, want func(seg int64) bool, opts ...Option) {
				t.Helper()
				opts = append(opts, WithAlgorithm(alg))
				w, err := New(t.Context(), g.Conns()[0], opts...)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				if _, err := w.Register("big", []int{elems}); err != nil {
					t.Fatal(err)
				}
				plan, err := w.Plan()
				if err != nil {
					t.Fatal(err)
				}
				a, segs := plan[0].Spec.Algorithm, plan[0].Spec.Segments
				per := int64(elems*4) / int64(world)
				if a == allreduce.AlgTree {
					per = elems * 4 / 2
				}
				if seg := per / int64(segs); !want(seg) {
					t.Errorf("world %d algorithm %q, %s: %v in %d segments of %d B", world, alg, name, a, segs, seg)
				}
			}
			check("default model", func(seg int64) bool { return seg >= 1<<20 })
			if alg == "tree" {
				noOverhead := allreduce.DefaultModel()
				noOverhead.Overhead = 0
				check("overhead 0", func(seg int64) bool { return seg == engine.MinSegmentBytes }, WithCostModel(noOverhead))
			}
		}
	}
}
