package sim

import (
	"context"
	"runtime"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
)

func TestAggDbg(t *testing.T) {
	n := 4096
	topo := aggTopology(t, "default", n)
	var cs []Collective
	for _, elems := range []int{200704, 256, 2560, 10} {
		c := sharedColl(t, "l", allreduce.AlgRing, allreduce.Params{World: n, Elems: elems, Average: true})
		f := sharedColl(t, "flags", allreduce.AlgAllToAll, allreduce.Params{World: n, Elems: n, ElemBytes: 5})
		cs = append(cs, f)
		c.After = len(cs)
		cs = append(cs, c)
	}
	s, _ := NewSimulator(topo)
	res, err := s.Run(context.Background(), cs, &Options{Aggregate: AggregateOn})
	if err != nil {
		t.Fatal(err)
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	a := &s.d.as
	t.Logf("groups %d events %d items %d msgs %d conns %d connIx %d lump %d flows %d heap %d MB, h buckets %d times %d", res.Groups, res.Events, len(a.items), len(a.msgs), len(a.conns), len(a.connIx), len(a.lump), len(a.net.flows), m.HeapAlloc>>20, len(s.d.h.buckets), len(s.d.h.times))
}
