package sim

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

func ringTime(p int, S, alpha, B float64) float64 {
	return 2 * float64(p-1) * (alpha + S/float64(p)/B)
}

func TestRingFormulaTestDouble(t *testing.T) {
	for _, p := range []int{2, 3, 8, 64} {
		const elems = 1 << 20
		progs := testRing(p, elems, 4)
		topo := Homogeneous(p, 10*Gbps, 5*time.Microsecond)
		res, err := Run(context.Background(), topo, []Collective{{Name: "ring", Programs: progs}}, &Options{FreeCompute: true})
		if err != nil {
			t.Fatal(err)
		}
		want := ringTime(p, 4*elems, 5e-6, float64(10*Gbps))
		if !near(res.Time, want, 0.005) {
			t.Errorf("p=%d: time %v, want %v (%.3f%%)", p, res.Time, want, 100*(res.Time/want-1))
		}
		if res.Compute != 0 || res.Compress != 0 || res.Communicate != res.Time {
			t.Errorf("split %+v", res)
		}
	}
}

func TestRunErrors(t *testing.T) {
	topo := Homogeneous(4, 10*Gbps, 0)
	progs := testRing(4, 1000, 4)
	// A send whose receiver expects a different size.
	bad := *progs[1]
	bad.Ops = append([]allreduce.Op(nil), progs[1].Ops...)
	for i := range bad.Ops {
		if bad.Ops[i].Kind == allreduce.Recv {
			bad.Ops[i].Bytes++
			break
		}
	}
	_, err := Run(context.Background(), topo, []Collective{{Programs: []*allreduce.Program{progs[0], &bad, progs[2], progs[3]}}}, nil)
	if !errors.Is(err, ErrProgram) {
		t.Errorf("size mismatch: %v", err)
	}
	// A rank waiting for a message nobody sends.
	stuck := *progs[2]
	stuck.Ops = append(append([]allreduce.Op(nil), progs[2].Ops...), allreduce.Op{Kind: allreduce.Recv, Peer: 0, Msg: 99, Chunk: 0, Bytes: 4, Deps: [2]int32{-1, -1}})
	_, err = Run(context.Background(), topo, []Collective{{Programs: []*allreduce.Program{progs[0], progs[1], &stuck, progs[3]}}}, nil)
	if !errors.Is(err, ErrDeadlock) {
		t.Errorf("deadlock: %v", err)
	}
	// Too many ranks for the topology.
	_, err = Run(context.Background(), Homogeneous(2, Gbps, 0), []Collective{{Programs: progs}}, nil)
	if err == nil {
		t.Error("4 ranks on 2 nodes: no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err = Run(ctx, topo, []Collective{{Programs: progs}}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

// TestConcurrentRuns shares one topology between concurrent Runs (run
// with -race); results must equal a sequential run's.
func TestConcurrentRuns(t *testing.T) {
	topo, err := LoadTopology("testdata/topologies/wan-2sites.yaml")
	if err != nil {
		t.Fatal(err)
	}
	progs := mustPrograms(t, allreduce.AlgTree, allreduce.Params{World: 8, Elems: 1 << 16, Segments: 4})
	want, err := Run(context.Background(), topo, []Collective{{Programs: progs}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		go func() {
			res, err := Run(context.Background(), topo, []Collective{{Programs: progs}}, nil)
			if err == nil && (res.Time != want.Time || res.Events != want.Events) {
				err = fmt.Errorf("concurrent run: time %v events %d, want %v %d", res.Time, res.Events, want.Time, want.Events)
			}
			errs <- err
		}()
	}
	for g := 0; g < 4; g++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	// The WAN link carries every cross-site message and dominates.
	if want.Links[2*8+2*2].Bytes == 0 {
		t.Errorf("wan link idle: %+v", want.Links[2*8+2*2])
	}
}

// TestSharedNodes places two ranks on each node: messages between them
// cross no link and take no time; only cross-node messages use the NICs.
func TestSharedNodes(t *testing.T) {
	const elems = 1 << 16
	progs := mustPrograms(t, allreduce.AlgRing, allreduce.Params{World: 4, Elems: elems})
	topo := Homogeneous(2, Gbps, 10*time.Microsecond)
	res, err := Run(context.Background(), topo, []Collective{{Programs: progs}}, &Options{FreeCompute: true, Placement: []int{0, 0, 1, 1}})
	if err != nil {
		t.Fatal(err)
	}
	// Each of the 2(p−1) = 6 steps sends one chunk of S/4 across each node
	// boundary (rank 1 → 2 and rank 3 → 0).
	chunk := float64(4 * elems / 4)
	if got, want := res.Links[0].Bytes, 6*chunk; got != want { // n0.up
		t.Errorf("n0.up carried %v bytes, want %v", got, want)
	}
	// The intra-node hops are free, so each NIC streams one chunk per step
	// back to back and only the last message's latency is exposed.
	if want := 6*chunk/float64(Gbps) + 10e-6; !near(res.Time, want, 1e-9) {
		t.Errorf("time %v, want %v", res.Time, want)
	}
}

// TestAfterChains checks Collective.After: a collective chained after
// another starts on each rank when that rank finished the first, as if it
// had been started then, and a chain to a later collective is refused.
func TestAfterChains(t *testing.T) {
	const p = 4
	topo := Homogeneous(p, 10*Gbps, 5*time.Microsecond)
	opts := &Options{FreeCompute: true}
	a := Collective{Name: "a", Programs: testRing(p, 1<<18, 4), Start: 0.001}
	first, err := Run(context.Background(), topo, []Collective{a}, opts)
	if err != nil {
		t.Fatal(err)
	}
	alone, err := Run(context.Background(), topo, []Collective{{Name: "b", Programs: testRing(p, 1<<16, 4), Start: first.Time}}, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, start := range []float64{0, first.Time} {
		b := Collective{Name: "b", Programs: testRing(p, 1<<16, 4), Start: start, After: 1}
		res, err := Run(context.Background(), topo, []Collective{a, b}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if res.Collectives[0].Finish != first.Time || res.Time != alone.Time {
			t.Errorf("b (Start %v) after a: a finishes at %v, the step at %v; want %v and %v", start, res.Collectives[0].Finish, res.Time, first.Time, alone.Time)
		}
	}
	// Without the chain the two overlap and finish sooner.
	b := Collective{Name: "b", Programs: testRing(p, 1<<16, 4), Start: 0.001}
	res, err := Run(context.Background(), topo, []Collective{a, b}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !(res.Time < alone.Time) {
		t.Errorf("unchained: %v, want less than the chained %v", res.Time, alone.Time)
	}
	b.After = 2
	if _, err := Run(context.Background(), topo, []Collective{a, b}, opts); !errors.Is(err, ErrProgram) {
		t.Errorf("a collective chained after itself: %v, want ErrProgram", err)
	}
}
