package sim

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// TestLocalModeAccuracy compares local-mode settles with exact ones on
// collectives whose components are large (pipelined trees, racks), where
// both are affordable.
func TestLocalModeAccuracy(t *testing.T) {
	cases := []struct {
		topo *Topology
		alg  allreduce.Algorithm
		p    allreduce.Params
	}{
		{Homogeneous(64, 10*Gbps, 5*time.Microsecond), allreduce.AlgTree, allreduce.Params{World: 64, Elems: 1 << 20, Segments: 16}},
		{OneSlow(64, 10*Gbps, 10, 5*time.Microsecond), allreduce.AlgTree, allreduce.Params{World: 64, Elems: 1 << 20, Segments: 16}},
		{Racks(4, 16, 25*Gbps, 4, 3*time.Microsecond, time.Microsecond), allreduce.AlgTree, allreduce.Params{World: 64, Elems: 1 << 20, Segments: 8}},
		{Racks(4, 16, 25*Gbps, 4, 3*time.Microsecond, time.Microsecond), allreduce.AlgHalvingDoubling, allreduce.Params{World: 64, Elems: 1 << 20}},
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("%d/%v", i, c.alg), func(t *testing.T) {
			progs := mustPrograms(t, c.alg, c.p)
			run := func(budget int) (*Result, int64) {
				s, err := NewSimulator(c.topo)
				if err != nil {
					t.Fatal(err)
				}
				s.d.net.exactBudget = budget
				res, err := s.Run(context.Background(), []Collective{{Programs: progs}}, &Options{FreeCompute: true})
				if err != nil {
					t.Fatal(err)
				}
				return res, s.d.net.localSettles
			}
			exact, nl := run(1 << 30)
			local, nl2 := run(-1 << 30)
			if nl != 0 || nl2 == 0 {
				t.Fatalf("local settles: %d exact, %d local", nl, nl2)
			}
			rel := local.Time/exact.Time - 1
			t.Logf("exact %.6g s, local %.6g s (%+.3f%%)", exact.Time, local.Time, 100*rel)
			if rel > 0.01 || rel < -0.01 {
				t.Errorf("local mode off by %+.2f%%", 100*rel)
			}
		})
	}
}
