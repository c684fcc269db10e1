package sim

import (
	"context"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// gapPrograms: rank 0 sends a bytes to rank 1, then waits for x bytes from
// rank 2 and sends b bytes to rank 1; so rank 0's uplink and rank 1's
// downlink idle between a's end and x's arrival.
func gapPrograms(a, x, b int64) []*allreduce.Program {
	nodep := [2]int32{allreduce.NoDep, allreduce.NoDep}
	prog := func(r int, ops ...allreduce.Op) *allreduce.Program {
		return &allreduce.Program{Name: "gap", Rank: r, World: 3, Layout: allreduce.EvenLayout(1, 1), Ops: ops}
	}
	return []*allreduce.Program{
		prog(0,
			allreduce.Op{Kind: allreduce.Send, Peer: 1, Msg: 0, Chunk: -1, Bytes: a, Deps: nodep},
			allreduce.Op{Kind: allreduce.Recv, Peer: 2, Msg: 0, Chunk: -1, Bytes: x, Deps: nodep},
			allreduce.Op{Kind: allreduce.Send, Peer: 1, Msg: 1, Chunk: -1, Bytes: b, Deps: [2]int32{1, allreduce.NoDep}}),
		prog(1,
			allreduce.Op{Kind: allreduce.Recv, Peer: 0, Msg: 0, Chunk: -1, Bytes: a, Deps: nodep},
			allreduce.Op{Kind: allreduce.Recv, Peer: 0, Msg: 1, Chunk: -1, Bytes: b, Deps: nodep}),
		prog(2, allreduce.Op{Kind: allreduce.Send, Peer: 0, Msg: 0, Chunk: -1, Bytes: x, Deps: nodep}),
	}
}

// TestTokenBucket: links with a token bucket (Node.Burst) start a run with
// it empty and earn their capacity's worth of credit for every second they
// idle, up to the burst; the next message passes its credit at once and
// the rest at the capacity. A message within the credit, tiny or not, takes
// no time on the wire; without buckets the gap earns nothing.
func TestTokenBucket(t *testing.T) {
	const alpha = 10 * time.Microsecond
	const burst = 64 << 10
	const C = 1.25e6       // 10 Mbit/s
	const A = 125_000      // 0.1 s at C
	const slowX = 12_500.0 // rank 2's uplink: x bytes take x/slowX
	for _, tc := range []struct {
		name   string
		x, b   int64
		burst  int64
		credit float64 // what b passes at once
	}{
		{"short gap", 1500, 200_000, burst, C * (1500/slowX + alpha.Seconds() - A/C)},
		{"long gap: the burst", 2500, 200_000, burst, burst},
		{"no bucket", 2500, 200_000, 0, 0},
		{"message within the credit", 2500, 20_000, burst, 20_000},
		{"tiny message within the credit", 2500, 200, burst, 200},
	} {
		topo := Homogeneous(3, 10*Mbps, alpha)
		topo.Nodes[2].Up = slowX
		for i := range topo.Nodes {
			topo.Nodes[i].Burst = tc.burst
		}
		res, err := Run(context.Background(), topo, []Collective{{Name: "gap", Programs: gapPrograms(A, tc.x, tc.b)}}, &Options{})
		if err != nil {
			t.Fatal(err)
		}
		T := float64(tc.x)/slowX + alpha.Seconds() // x arrives, b leaves
		if want := T + (float64(tc.b)-tc.credit)/C + alpha.Seconds(); !near(res.Time, want, 1e-9) {
			t.Errorf("%s: %.9g s, want %.9g s (credit %v bytes)", tc.name, res.Time, want, tc.credit)
		}
		if got, want := res.Links[0].Bytes, float64(A+tc.b); !near(got, want, 1e-12) {
			t.Errorf("%s: n0.up carried %v bytes, want %v", tc.name, got, want)
		}
	}
}

// TestTokenBucketNotAggregated: links with token buckets are simulated
// rank by rank, and Result says why.
func TestTokenBucketNotAggregated(t *testing.T) {
	topo := Homogeneous(4, 10*Mbps, 0)
	for i := range topo.Nodes {
		topo.Nodes[i].Burst = 64 << 10
	}
	res, err := Run(context.Background(), topo, []Collective{{Name: "ring", Programs: testRing(4, 1<<16, 4)}}, &Options{Aggregate: AggregateOn})
	if err != nil {
		t.Fatal(err)
	}
	if res.NotAggregated == "" {
		t.Error("aggregated with token buckets")
	}
}
