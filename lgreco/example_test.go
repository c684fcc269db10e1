package lgreco_test

import (
	"fmt"
	"math/rand/v2"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/lgreco"
)

// The life of one adjustment, as every rank runs it (here a single process
// plays rank 0 and stands in for the broadcast).
func Example() {
	layers := []lgreco.Layer{
		{Name: "fc1.weight", Rows: 64, Cols: 128, Default: compressors.MustParse("powersgd:4")},
		{Name: "fc1.bias", Rows: 64, Cols: 1, Default: compressors.MustParse("none")},
		{Name: "fc2.weight", Rows: 32, Cols: 64, Default: compressors.MustParse("powersgd:4")},
	}
	plan, err := lgreco.NewPlan(layers, lgreco.WithSchedule(0, 20, 5, 1), lgreco.WithSeed(42))
	if err != nil {
		panic(err)
	}
	ctrl := lgreco.NewController(plan)
	rng := rand.New(rand.NewPCG(1, 2))
	for step := int64(0); step <= 21; step++ {
		if ctrl.Due(step) {
			d := ctrl.Decide(step)     // rank 0 only
			b, _ := d.MarshalBinary()  // broadcast b from rank 0 ...
			got, err := plan.Decode(b) // ... and on every rank:
			if err == nil {
				err = ctrl.Schedule(got)
			}
			if err != nil {
				panic(err)
			}
			fmt.Printf("step %d: decision %d applies at step %d\n", step, got.Version, got.ApplyAt)
		}
		changed, err := ctrl.Advance(step)
		if err != nil {
			panic(err)
		}
		for _, l := range changed {
			// Rebuild the layer's codec: same shape, Q from the shared seed.
			if _, err := ctrl.NewCompressor(l); err != nil {
				panic(err)
			}
		}
		if changed != nil {
			fmt.Printf("step %d: %v, %d → %d bytes per rank\n", step, ctrl.Recipes(),
				plan.Bytes(plan.Default()), plan.Bytes(ctrl.Active()))
		}
		if ctrl.Collecting(step) { // rank 0: the error-compensated gradients
			for l := range plan.Layers() {
				ly := plan.Layer(l)
				g := make([]float32, ly.Elems())
				for i := range g {
					// Rank-1 structure plus noise; fc2 is noisier.
					g[i] = float32((1+float64(i/ly.Cols%3))*float64(i%ly.Cols%5) + (0.3+float64(l))*rng.NormFloat64())
				}
				ctrl.Observe(l, g, nil)
			}
		}
	}
	// Output:
	// step 20: decision 1 applies at step 21
	// step 21: [powersgd:2 none powersgd:5], 4984 → 3832 bytes per rank
}
