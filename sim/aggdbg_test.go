package sim

import (
	"context"
	"sort"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
)

func TestAggDbg(t *testing.T) {
	for _, n := range []int{128} {
		topo := aggTopology(t, "default", n)
		units := []int{200704, 256, 2560, 10}
		var cs []Collective
		for _, elems := range units {
			c := sharedColl(t, "l", allreduce.AlgRing, allreduce.Params{World: n, Elems: elems, Average: true})
			c.Start = 1e-3
			f := sharedColl(t, "flags", allreduce.AlgAllToAll, allreduce.Params{World: n, Elems: n, ElemBytes: 5})
			f.Start = 1e-3
			cs = append(cs, f)
			c.After = len(cs)
			cs = append(cs, c)
		}
		o := Options{FreeCompute: true}
		var tr, tr2 Trace
		o.Trace = &tr
		Run(context.Background(), topo, cs, &o)
		o.Aggregate = AggregateOn
		o.Trace = &tr2
		aggTraceOK = true
		agg, _ := Run(context.Background(), topo, cs, &o)
		aggTraceOK = false
		t.Log(agg.Groups)
		for _, c := range []int32{6, 7} {
			var ts []float64
			m := map[int32]float64{}
			for _, e := range tr.Events {
				if e.Kind == TraceDone && e.Coll == c {
					ts = append(ts, e.T)
					m[e.Rank] = e.T
				}
			}
			sort.Float64s(ts)
			t.Logf("coll %d per-msg done: min %.6g med %.6g max %.6g; r0 %.6g r1 %.6g r32 %.6g r63 %.6g r64 %.6g r100 %.6g r126 %.6g r127 %.6g", c, ts[0], ts[len(ts)/2], ts[len(ts)-1], m[0], m[1], m[32], m[63], m[64], m[100], m[126], m[127])
			for _, e := range tr2.Events {
				if e.Kind == TraceDone && e.Coll == c {
					t.Logf("   agg rep %d done %.6g", e.Rank, e.T)
				}
			}
		}
	}
}
