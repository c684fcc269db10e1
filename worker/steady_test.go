package worker

import (
	"context"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/nats"
	"github.com/slimgrad/slimgrad/transport/transporttest"
)

// TestSteadyStateGoroutines: 1000 steps of a small (4 KiB) ring all-reduce
// over 4 ranks, on libp2p and on NATS, start no goroutine per step or per
// message (the driver's sends and receives run on the Worker's long-lived
// pool, which does not grow once warm) and leave the number of goroutines
// where it was. The goroutines started meanwhile are counted
// (transporttest.GoroutinesCreated): 24,000 messages go through, and the
// few started are the libraries' timers (the embedded NATS server's ping
// and statistics timers run as goroutines), far fewer than one per step.
func TestSteadyStateGoroutines(t *testing.T) {
	if testing.Short() {
		t.Skip("1000 steps over real transports")
	}
	const n, elems, steps = 4, 1024, 1000
	for _, tr := range []string{"libp2p", "nats"} {
		t.Run("transport="+tr, func(t *testing.T) {
			var conns []transport.Conn
			switch tr {
			case "libp2p":
				conns = libp2pGroup(t, n)
			case "nats":
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				defer cancel()
				g, err := nats.NewGroup(ctx, n)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { g.Close() })
				conns = g.Conns()
			}
			grads := make([][][]float32, n)
			for r := range grads {
				g := make([]float32, elems)
				for i := range g {
					g[i] = float32(i%7 - 3)
				}
				grads[r] = [][]float32{g}
			}
			ws := startWorkers(t, conns, []layerDef{{name: "w", shape: []int{elems}}}, WithAlgorithm("ring"), WithTimeout(20*time.Second))
			s := newStepper(ws, grads)
			defer s.stop()
			// live samples the number of goroutines after each of k steps
			// and returns the least: a library timer's goroutine that
			// happens to run at one sample does not count.
			live := func(k int) int {
				counts := make([]int, k)
				for i := range counts {
					if err := s.step(); err != nil {
						t.Fatal(err)
					}
					counts[i] = runtime.NumGoroutine()
				}
				return slices.Min(counts)
			}
			live(200) // warm: the pool has all the goroutines it needs
			before, created := live(10), transporttest.GoroutinesCreated()
			for range steps {
				if err := s.step(); err != nil {
					t.Fatal(err)
				}
			}
			started := transporttest.GoroutinesCreated() - created
			after := live(10)
			t.Logf("%d steps: goroutines %d -> %d, %d started meanwhile", steps, before, after, started)
			if after > before {
				t.Errorf("goroutines grew from %d to %d over %d steps", before, after, steps)
			}
			if started >= steps/10 {
				t.Errorf("%d goroutines started over %d steps (%d messages)", started, steps, steps*n*2*(n-1))
			}
		})
	}
}
