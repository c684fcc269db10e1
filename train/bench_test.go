package train

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
)

// mlpUnits are the MNIST MLP's tensors.
var mlpUnits = []Layer{
	{Name: "fc0.weight", Shape: []int{256, 784}, Size: 256 * 784}, {Name: "fc0.bias", Shape: []int{256}, Size: 256},
	{Name: "fc1.weight", Shape: []int{10, 256}, Size: 2560}, {Name: "fc1.bias", Shape: []int{10}, Size: 10},
}

// BenchmarkExchange times one step's exchange of the MNIST MLP's gradients
// over 8 workers: the simulator in payload mode and the in-process reference.
// Bytes per op are the fp32 gradients of all workers.
func BenchmarkExchange(b *testing.B) {
	const n = 8
	ctx := context.Background()
	topo := sim.Homogeneous(n, 10*sim.Gbps, 5*time.Microsecond)
	for _, tc := range []struct {
		name string
		plan Plan
		how  optim.Exchange
	}{
		{"dense", Plan{}, optim.Mean},
		{"dgc:0.001", Plan{Compress: "dgc:0.001", EF: "dgc:0.9"}, optim.Mean},
		{"topk:0.01+econtrol", Plan{Compress: "topk:0.01", EF: "econtrol:0.01"}, optim.Mean},
		{"twophase-sign", Plan{}, optim.TwoPhaseSign},
	} {
		for _, ex := range []string{"sim", "local"} {
			b.Run(fmt.Sprintf("exchanger=%s/method=%s/n=%d", ex, tc.name, n), func(b *testing.B) {
				var x Exchanger
				var err error
				if ex == "sim" {
					x, err = NewSim(ctx, n, mlpUnits, tc.plan, SimConfig{Topology: topo})
				} else {
					x, err = NewLocal(n, mlpUnits, tc.plan)
				}
				if err != nil {
					b.Fatal(err)
				}
				in, out := vectors(rand.New(rand.NewPCG(1, 1)), n, mlpUnits)
				h := hows(tc.how, len(mlpUnits))
				var elems int64
				for _, u := range mlpUnits {
					elems += int64(u.Size)
				}
				b.SetBytes(4 * n * elems)
				b.ReportAllocs()
				step := 0
				for b.Loop() {
					if _, err := x.Exchange(ctx, step, h, in, out); err != nil {
						b.Fatal(err)
					}
					step++
				}
			})
		}
	}
}
