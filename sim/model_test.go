package sim

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// TestAgainstCostModel compares the simulator with package allreduce's
// closed-form alpha-beta-gamma model (Model.Cost) on homogeneous links, with
// and without reduction cost (the calibration's reduce throughput is set to
// 4 bytes per Gamma seconds). Ring and halving-doubling without pipelining
// must agree within 0.5%. The other cases are logged: the model charges α
// for every pipelined segment, while over a FIFO stream the segments'
// latencies overlap with the transfer of the ones queued behind them (the
// simulated pipelined ring approaches the pure bandwidth term); and for the
// double binary tree the model counts 2·log₂p levels of S/B where the root's
// single child edge carries S/(2B) (see treeFormula).
func TestAgainstCostModel(t *testing.T) {
	const alpha, B = 5e-6, 10 * Gbps
	for _, gamma := range []float64{0, 0.5e-9} {
		m := allreduce.Model{Alpha: alpha, Beta: 1 / float64(B), Gamma: gamma}
		opts := &Options{FreeCompute: gamma == 0}
		if gamma > 0 {
			opts.Calibration = &Calibration{Throughput: map[string]float64{"reduce": 4 / gamma, "scale": 1e30, "copy": 1e30}}
		}
		for _, alg := range []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgTree, allreduce.AlgHalvingDoubling} {
			for _, p := range []int{4, 32, 128} {
				for _, segs := range []int{1, 8} {
					if segs > 1 && alg == allreduce.AlgHalvingDoubling {
						continue
					}
					name := fmt.Sprintf("gamma=%g/%v/n=%d/segs=%d", gamma, alg, p, segs)
					pr := allreduce.Params{World: p, Elems: 1 << 20, Segments: segs}
					progs := mustPrograms(t, alg, pr)
					res, err := Run(context.Background(), Homogeneous(p, B, time.Duration(alpha*1e9)), []Collective{{Programs: progs}}, opts)
					if err != nil {
						t.Fatal(err)
					}
					want := m.Cost(alg, pr)
					rel := res.Time/want - 1
					t.Logf("%s: sim %.6g s, model %.6g s (%+.2f%%)", name, res.Time, want, 100*rel)
					if segs == 1 && alg != allreduce.AlgTree && (rel > 0.005 || rel < -0.005) {
						t.Errorf("%s: sim %.6g s, model %.6g s (%+.2f%%)", name, res.Time, want, 100*rel)
					}
				}
			}
		}
	}
}
