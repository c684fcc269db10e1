package errorfeedback_test

import (
	"fmt"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
)

// Two ranks exchange one layer with EF21 around top-k: each encodes its
// gradient, every rank decodes all payloads in rank order, averages, and
// Finish turns the mean into the update direction (the replicated h).
func Example() {
	const n, world = 8, 2
	r, err := errorfeedback.Parse("ef21")
	if err != nil {
		panic(err)
	}
	fbs := make([]errorfeedback.Feedback, world)
	for i := range fbs {
		c, err := compressors.New("topk:0.25", n) // k = 2
		if err != nil {
			panic(err)
		}
		if fbs[i], err = r.New(c, errorfeedback.WithWorld(world)); err != nil {
			panic(err)
		}
	}
	grads := [][]float32{{4, 0, 0, 1, 0, 0, 0, -2}, {0, 3, 0, 1, 0, 0, 0, -2}}
	for step := 0; step < 2; step++ {
		payloads := make([][]byte, world)
		for i, fb := range fbs {
			if payloads[i], err = fb.Encode(nil, grads[i]); err != nil {
				panic(err)
			}
		}
		dirs := make([][]float32, world)
		for i, fb := range fbs { // every rank does the same, in rank order
			avg := make([]float32, n)
			for _, p := range payloads {
				if err := fb.Compressor().DecompressAdd(avg, p); err != nil {
					panic(err)
				}
			}
			for j := range avg {
				avg[j] /= world
			}
			fb.Finish(avg)
			dirs[i] = avg
		}
		fmt.Println(dirs[0])
	}
	// Output:
	// [2 1.5 0 0 0 0 0 -2]
	// [2 1.5 0 1 0 0 0 -2]
}

func ExampleParse() {
	for _, s := range []string{"econtrol:0.1", "dgc:0.9", "dgc:1"} {
		r, err := errorfeedback.Parse(s)
		fmt.Println(r, err)
	}
	// Output:
	// econtrol:0.1 <nil>
	// dgc:0.9 <nil>
	// none errorfeedback: bad recipe: "dgc:1": momentum must be in [0, 1)
}
