package sim

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// wanTopology is two racks of n/2 nodes joined by a slower WAN link with a
// high latency, plus one edge node with a slow uplink that computes at half
// speed: the shape of slimgrad sim's default topology.
func wanTopology(t testing.TB, n int) *Topology {
	t.Helper()
	a := (n + 1) / 2
	yaml := fmt.Sprintf(`name: wan
latency: 5us
defaults:
  bandwidth: 10Gbit/s
racks:
  - {name: A, latency: 1us}
  - {name: B, latency: 1us}
nodes:
  - {name: a, count: %d, rack: A}
  - {name: b, count: %d, rack: B}
  - {name: edge, rack: B, uplink: 1Gbit/s, downlink: 10Gbit/s, latency: 20us, speed: 0.5}
wan:
  - between: [A, B]
    bandwidth: 2.5Gbit/s
    latency: 500us
`, a, n-a-1)
	topo, err := ParseTopology("wan", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return topo
}

// TestSharedMatchesPrograms: a collective run from its Shared form gives
// the same Result and the same trace, event for event, as the same
// collective run from its materialized programs, on homogeneous and
// heterogeneous topologies, with compute, jitter, per-message flows and a
// hop codec.
func TestSharedMatchesPrograms(t *testing.T) {
	ctx := context.Background()
	const n = 12
	sizes := make([]int64, n)
	for i := range sizes {
		sizes[i] = int64(1000 + 37*i)
	}
	colls := []struct {
		alg allreduce.Algorithm
		p   allreduce.Params
	}{
		{allreduce.AlgRing, allreduce.Params{World: n, Elems: 100_003, Average: true}},
		{allreduce.AlgRing, allreduce.Params{World: n, Elems: 50_001, Segments: 3, ElemBytes: 2}},
		{allreduce.AlgReduceScatter, allreduce.Params{World: n, Elems: 7_001, Segments: 2, Average: true}},
		{allreduce.AlgAllGather, allreduce.Params{World: n, Elems: 9_000}},
		{allreduce.AlgAllGatherV, allreduce.Params{World: n, Sizes: sizes}},
		{allreduce.AlgSparseGather, allreduce.Params{World: n, Elems: 40_000, Sizes: sizes}},
		{allreduce.AlgSparseGather, allreduce.Params{World: n, Elems: 40_000}}, // SizeHint
		{allreduce.AlgTwoPhaseSign, allreduce.Params{World: n, Elems: 60_001, SignBlock: 1024}},
	}
	topos := map[string]*Topology{
		"homogeneous": Homogeneous(n, 10*Gbps, 5*time.Microsecond),
		"one-slow":    OneSlow(n, 10*Gbps, 4, 5*time.Microsecond),
		"racks":       Racks(3, n/3, 10*Gbps, 2, 5*time.Microsecond, 20*time.Microsecond),
		"wan":         wanTopology(t, n),
	}
	optss := map[string]Options{
		"calibrated": {},
		"free":       {FreeCompute: true},
		"jitter":     {Seed: 7, LatencyJitter: 0.3, ComputeJitter: 0.2},
		"flows":      {PerMessageFlows: true},
		"fp16":       {Recipe: "fp16"},
	}
	hint := func(coll, rank int, op *allreduce.Op) int64 { return 500 + int64(op.Chunk) }
	for tn, topo := range topos {
		for on, opts := range optss {
			for ci, c := range colls {
				mat := Collective{Name: "c", Programs: mustPrograms(t, c.alg, c.p)}
				sh, err := allreduce.NewShared(c.alg, c.p)
				if err != nil {
					t.Fatal(err)
				}
				shared := Collective{Name: "c", Shared: sh}
				// Two concurrent copies, the second starting later, to mix
				// the collectives' events.
				m2, s2 := mat, shared
				m2.Start, s2.Start = 1e-4, 1e-4
				o := opts
				o.SizeHint = hint
				var tr1, tr2 Trace
				o1, o2 := o, o
				o1.Trace, o2.Trace = &tr1, &tr2
				want, err := Run(ctx, topo, []Collective{mat, m2}, &o1)
				if err != nil {
					t.Fatalf("%s/%s/%d: %v", tn, on, ci, err)
				}
				got, err := Run(ctx, topo, []Collective{shared, s2}, &o2)
				if err != nil {
					t.Fatalf("%s/%s/%d shared: %v", tn, on, ci, err)
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s/%s/%v %+v: shared result\n%+v\nwant\n%+v", tn, on, c.alg, c.p, got, want)
				}
				if !reflect.DeepEqual(tr1.Events, tr2.Events) {
					t.Errorf("%s/%s/%v: traces differ (%d and %d events)", tn, on, c.alg, len(tr2.Events), len(tr1.Events))
				}
			}
		}
	}
}

// TestSizeOnlyCollective: algorithms with a shared form get one, the others
// per-rank programs.
func TestSizeOnlyCollective(t *testing.T) {
	c, err := SizeOnlyCollective("r", allreduce.AlgRing, allreduce.Params{World: 4, Elems: 10})
	if err != nil || c.Shared == nil || c.Programs != nil {
		t.Errorf("ring: %+v, %v", c, err)
	}
	c, err = SizeOnlyCollective("t", allreduce.AlgTree, allreduce.Params{World: 4, Elems: 10})
	if err != nil || c.Shared != nil || len(c.Programs) != 4 {
		t.Errorf("tree: %+v, %v", c, err)
	}
	if _, err := SizeOnlyCollective("bad", allreduce.AlgRing, allreduce.Params{World: 0}); err == nil {
		t.Error("world 0: no error")
	}
	sh, _ := allreduce.NewShared(allreduce.AlgRing, allreduce.Params{World: 4, Elems: 10})
	_, err = Run(context.Background(), Homogeneous(4, Gbps, 0), []Collective{{Shared: sh, Programs: mustPrograms(t, allreduce.AlgRing, allreduce.Params{World: 4, Elems: 10})}}, nil)
	if err == nil {
		t.Error("Shared and Programs together: no error")
	}
}
