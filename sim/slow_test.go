package sim

import (
	"context"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

func runSizeOnly(t testing.TB, topo *Topology, alg allreduce.Algorithm, p allreduce.Params, placement []int) *Result {
	t.Helper()
	progs := mustPrograms(t, alg, p)
	res, err := Run(context.Background(), topo, []Collective{{Programs: progs}}, &Options{FreeCompute: true, Placement: placement})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestOneSlowNode: one node of 16 at a tenth of the others' bandwidth.
// The ring runs at the pace of its slowest hop: T = 2(p−1)(α + S/(p·B/10)),
// ten times the healthy bandwidth term. A pipelined double binary tree
// whose rank 0 (root of tree 0 with a single child, leaf of tree 1) runs on
// the slow node moves only S through the slow NIC each way instead of the
// ring's 2(p−1)/p·S, so it approaches the bound S/(B/10) and avoids about
// half of the ring's slowdown. Placing the slow node at an interior rank
// (two children) makes the tree no better than the ring.
func TestOneSlowNode(t *testing.T) {
	const p, elems = 16, 4 << 20
	const alpha = 5e-6
	B := float64(10 * Gbps)
	S := float64(4 * elems)
	topo := OneSlow(p, 10*Gbps, 10, time.Duration(alpha*1e9))

	ring := runSizeOnly(t, topo, allreduce.AlgRing, allreduce.Params{World: p, Elems: elems}, nil)
	if want := ringFormula(p, S, alpha, B/10); !near(ring.Time, want, 0.005) {
		t.Errorf("ring with a slow node: %v, formula %v (%+.3f%%)", ring.Time, want, 100*(ring.Time/want-1))
	}
	healthy := runSizeOnly(t, Homogeneous(p, 10*Gbps, time.Duration(alpha*1e9)), allreduce.AlgRing, allreduce.Params{World: p, Elems: elems}, nil)
	slowdown, predicted := ring.Time/healthy.Time, ringFormula(p, S, alpha, B/10)/ringFormula(p, S, alpha, B)
	if !near(slowdown, predicted, 0.005) {
		t.Errorf("ring slowdown %.3fx, formula %.3fx", slowdown, predicted)
	}

	swap := func(rank int) []int {
		pl := make([]int, p)
		for i := range pl {
			pl[i] = i
		}
		pl[rank], pl[p-1] = p-1, rank
		return pl
	}
	tp := allreduce.Params{World: p, Elems: elems, Segments: 16}
	good := runSizeOnly(t, topo, allreduce.AlgTree, tp, swap(0))
	bound := S / (B / 10)
	if !(good.Time >= bound) || good.Time > 1.05*bound || good.Time > 0.6*ring.Time {
		t.Errorf("tree with the slow node at rank 0: %v; bound %v, ring %v", good.Time, bound, ring.Time)
	}
	bad := runSizeOnly(t, topo, allreduce.AlgTree, tp, swap(p/2))
	if bad.Time < ring.Time {
		t.Errorf("tree with the slow node at interior rank %d: %v, ring %v: expected no gain", p/2, bad.Time, ring.Time)
	}
	t.Logf("S/B=%.4gs ring healthy %.4gs, ring one-slow %.4gs (%.2fx), tree slow@root %.4gs (%.2f of ring), tree slow@interior %.4gs",
		S/B, healthy.Time, ring.Time, slowdown, good.Time, good.Time/ring.Time, bad.Time)
}

// TestRackAwareRing: 4 racks of 8 nodes at 25 Gbit/s with 4:1
// oversubscribed rack uplinks (50 Gbit/s). A ring in rack order crosses
// each rack uplink once and runs at node speed; a ring interleaving the
// racks crosses racks at every hop, 8 flows share each rack uplink, and the
// bandwidth term is 4x larger. Both follow the ring formula with the hops'
// bandwidth and their mean latency (the pipelined ring's period is the mean
// over the cycle of hops): the cross-rack latency for the interleaved ring,
// (28·3 µs + 4·5 µs)/32 for the rack-order ring.
func TestRackAwareRing(t *testing.T) {
	const k, per, elems = 4, 8, 1 << 20
	p := k * per
	topo := Racks(k, per, 25*Gbps, 4, 3*time.Microsecond, time.Microsecond)
	S := float64(4 * elems)
	B := float64(25 * Gbps)
	alpha := topo.PairLatency(0, per).Seconds()
	mean := 0.0
	for r := 0; r < p; r++ {
		mean += topo.PairLatency(r, (r+1)%p).Seconds() / float64(p)
	}
	inOrder := runSizeOnly(t, topo, allreduce.AlgRing, allreduce.Params{World: p, Elems: elems}, nil)
	inter := make([]int, p)
	for r := range inter {
		inter[r] = (r%k)*per + r/k
	}
	interleaved := runSizeOnly(t, topo, allreduce.AlgRing, allreduce.Params{World: p, Elems: elems}, inter)
	if want := ringFormula(p, S, mean, B); !near(inOrder.Time, want, 0.005) {
		t.Errorf("rack-order ring %v, formula %v", inOrder.Time, want)
	}
	if want := ringFormula(p, S, alpha, B/4); !near(interleaved.Time, want, 0.005) {
		t.Errorf("interleaved ring %v, formula %v", interleaved.Time, want)
	}
	// Bytes per link: the interleaved ring pushes every message through the
	// rack links.
	rackUp := 2 * p // link id of rack0.up
	if got, want := interleaved.Links[rackUp].Bytes, float64(per)*2*float64(p-1)*S/float64(p); !near(got, want, 1e-9) {
		t.Errorf("interleaved: %s carried %v bytes, want %v", interleaved.Links[rackUp].Name, got, want)
	}
	if got, want := inOrder.Links[rackUp].Bytes, 2*float64(p-1)*S/float64(p); !near(got, want, 1e-9) {
		t.Errorf("rack order: %s carried %v bytes, want %v", inOrder.Links[rackUp].Name, got, want)
	}
}
