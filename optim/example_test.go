package optim_test

import (
	"fmt"

	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/optim"
)

// One rank's view of 1-bit Adam: dense warm-up for FreezeStep steps, then the
// local momentum goes through the two-phase sign all-reduce. Here a single
// rank (world 1) runs the two-phase scheme in-process with errorfeedback's
// worker and server errors.
func Example_oneBitAdam() {
	const n, world = 16, 1
	cfg := optim.DefaultAdamConfig()
	cfg.LR, cfg.FreezeStep = 0.1, 2
	opt, err := optim.NewOneBitAdam(n, cfg)
	if err != nil {
		panic(err)
	}
	we := errorfeedback.NewWorkerError(n, world)
	se := errorfeedback.NewServerError(n, world)
	params := make([]float32, n)
	grad := make([]float32, n)
	for step := 1; step <= 4; step++ {
		for j := range grad {
			grad[j] = params[j] - 1 // minimize ½‖p − 1‖²
		}
		send, how, err := opt.Prepare(grad)
		if err != nil {
			panic(err)
		}
		switch how {
		case optim.DenseMean: // a dense all-reduce mean; with one rank, send itself
		case optim.TwoPhaseSign:
			bits, scale := we.Compress(nil, send)                                // phase 1 (worker)
			sbits, sscale, err := se.Step(nil, [][]byte{bits}, []float32{scale}) // server chunk
			if err != nil {
				panic(err)
			}
			if err := errorfeedback.DecodeSigns(send, [][]byte{sbits}, []float32{sscale}); err != nil { // phase 2
				panic(err)
			}
		}
		if err := opt.Step(params, send); err != nil {
			panic(err)
		}
		fmt.Printf("step %d: %-14v p[0] = %.3f\n", step, how, params[0])
	}
	// Output:
	// step 1: dense-mean     p[0] = 0.316
	// step 2: dense-mean     p[0] = 0.730
	// step 3: two-phase-sign p[0] = 1.173
	// step 4: two-phase-sign p[0] = 1.526
}
