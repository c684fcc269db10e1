package worker

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Steps that succeed, skip, fail on a dead peer and get cancelled, then
// Close: no goroutine of the worker or the driver is left behind.
func TestNoGoroutineLeak(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const n = 3
	layers := []layerDef{{name: "a", shape: []int{64}}, {name: "b", shape: []int{40}, codec: "topk:0.1", ef: "ef14"}, {name: "c", shape: []int{50}, codec: "sign"}}
	rng := rand.New(rand.NewPCG(9, 9))
	g := newGroup(t, n)
	ws := startWorkers(t, g.Conns(), layers, WithNaNPolicy(NaNSkip), WithTimeout(10*time.Second))
	for step := 0; step < 5; step++ {
		mustStep(t, ws, makeGrads(rng, n, layers, false))
	}
	bad := makeGrads(rng, n, layers, false)
	bad[0][2][0] = float32(rand.NormFloat64()) / 0 // ±Inf
	stepAll(ws, bad)
	// Cancel on one rank: all fail.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	in := makeGrads(rng, n, layers, false)
	runAll(n, func(r int) error {
		c := context.Background()
		if r == 1 {
			c = ctx
		}
		_, err := ws[r].Step(c, in[r])
		return err
	})
	for _, w := range ws {
		w.Close()
	}
	g.Close()
}
