package sim

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// fanPrograms are the programs of rank 0 sending one size-byte message to
// each of ranks 1..k (out) or receiving one from each (in).
func fanPrograms(k int, size int64, out bool) []*allreduce.Program {
	progs := make([]*allreduce.Program, k+1)
	for r := range progs {
		p := &allreduce.Program{Name: "fan", Rank: r, World: k + 1, Layout: allreduce.EvenLayout(1024, 1)}
		send, recv := allreduce.Send, allreduce.Recv
		if !out {
			send, recv = recv, send
		}
		if r == 0 {
			for q := 1; q <= k; q++ {
				p.Ops = append(p.Ops, allreduce.Op{Kind: send, Peer: int32(q), Chunk: -1, Bytes: size, Deps: [2]int32{-1, -1}})
			}
		} else {
			p.Ops = []allreduce.Op{{Kind: recv, Peer: 0, Chunk: -1, Bytes: size, Deps: [2]int32{-1, -1}}}
		}
		progs[r] = p
	}
	return progs
}

// TestMessageCPU: with Options.MessageCPU a message's software cost is
// compute time, half on each of its ranks. A rank that sends to (or hears
// from) k peers at once pays the k costs one after the other: its last
// message leaves after k halves (is received after k halves), where as
// latency all k overlap. The cost takes the speed of the rank's node. The
// receiver's per-byte half runs while the bytes are on the wire: a lone
// message on a fast link pays the whole cost, as with latency, and on a
// slow link only the sender's half of the per-byte cost adds to the wire
// time; so does a ring's every step.
func TestMessageCPU(t *testing.T) {
	ctx := context.Background()
	const alpha, o, beta, size = 10 * time.Microsecond, 1e-3, 1e-9, 64
	cal := &Calibration{Messages: map[string]MessageCost{"tcp": {Overhead: o, PerByte: beta}}}
	c := o + beta*size // one message's software cost
	const k = 8
	topo := Homogeneous(k+1, 100*Gbps, alpha)
	wire := size / float64(100*Gbps)
	for _, tc := range []struct {
		name  string
		out   bool
		cpu   bool
		speed float64
		want  float64
	}{
		// As latency: the k messages share rank 0's uplink and pay the
		// cost together.
		{"fan-out latency", true, false, 1, alpha.Seconds() + c + k*wire},
		// Rank 0's engine sends one after another: the last leaves at k·c/2
		// (its transfer then has the link to itself) and is received c/2
		// later.
		{"fan-out cpu", true, true, 1, k*c/2 + wire + alpha.Seconds() + c/2},
		// All k arrive together; rank 0's engine receives them in turn.
		{"fan-in cpu", false, true, 1, c/2 + wire + alpha.Seconds() + k*c/2},
		// At half speed every half costs twice as much.
		{"fan-in cpu half speed", false, true, 0.5, 2*c/2 + wire + alpha.Seconds() + 2*k*c/2},
	} {
		tp := Homogeneous(k+1, 100*Gbps, alpha)
		for i := range tp.Nodes {
			tp.Nodes[i].Speed = tc.speed
		}
		res, err := Run(ctx, tp, []Collective{{Name: "fan", Programs: fanPrograms(k, size, tc.out)}},
			&Options{FreeCompute: true, Calibration: cal, Transport: "tcp", MessageCPU: tc.cpu})
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(res.Time-tc.want) > 1e-4*tc.want {
			t.Errorf("%s: %.6g s, want %.6g s", tc.name, res.Time, tc.want)
		}
	}
	// One message of 1 MB (1 ms of per-byte cost): on a 100 Gbit/s link
	// (80 µs) the receiver's copying takes longer than the wire and the
	// message pays o + βS as with latency; on a 1 Gbit/s link (8 ms) the
	// receiver's half hides.
	for _, tc := range []struct {
		bw   Bandwidth
		want float64
	}{{100 * Gbps, o + beta*1e6}, {Gbps, o + beta*1e6/2 + 8e-3 + alpha.Seconds()}} {
		res, err := Run(ctx, Homogeneous(2, tc.bw, alpha), []Collective{{Name: "one", Programs: fanPrograms(1, 1e6, true)}},
			&Options{FreeCompute: true, Calibration: cal, Transport: "tcp", MessageCPU: true})
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(res.Time-tc.want) > 1e-6*tc.want {
			t.Errorf("1 MB at %v: %.6g s, want %.6g s", tc.bw, res.Time, tc.want)
		}
	}
	// A ring: per step the latency model's α + o + S/(pB), and the
	// sender's half of the per-byte cost.
	const S = 4e6
	for _, p := range []int{2, 8} {
		progs, err := Programs(allreduce.AlgRing, allreduce.Params{World: p, Elems: S / 4})
		if err != nil {
			t.Fatal(err)
		}
		res, err := Run(ctx, Homogeneous(p, 10*Gbps, alpha), []Collective{{Name: "ring", Programs: progs}},
			&Options{FreeCompute: true, Calibration: cal, Transport: "tcp", MessageCPU: true})
		if err != nil {
			t.Fatal(err)
		}
		msg := S / float64(p)
		want := 2 * float64(p-1) * (alpha.Seconds() + o + beta*msg/2 + msg/float64(10*Gbps))
		if math.Abs(res.Time-want) > 0.005*want {
			t.Errorf("ring p=%d: %.6g s, want %.6g s", p, res.Time, want)
		}
	}
	// Wait is latency: a fan-out pays it once, not once per message.
	waitCal := &Calibration{Messages: map[string]MessageCost{"tcp": {Overhead: o, PerByte: beta, Wait: 5e-3}}}
	res, err := Run(ctx, topo, []Collective{{Name: "fan", Programs: fanPrograms(k, size, true)}},
		&Options{FreeCompute: true, Calibration: waitCal, Transport: "tcp", MessageCPU: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := k*c/2 + wire + alpha.Seconds() + 5e-3 + c/2; math.Abs(res.Time-want) > 1e-4*want {
		t.Errorf("fan-out with a 5 ms wait: %.6g s, want %.6g s", res.Time, want)
	}
	// MessageCPU without a transport is an error.
	if _, err := Run(ctx, topo, []Collective{{Name: "fan", Programs: fanPrograms(k, size, true)}}, &Options{Calibration: cal, MessageCPU: true}); err == nil || !strings.Contains(err.Error(), "Transport") {
		t.Errorf("MessageCPU without Transport: %v, want an error", err)
	}
}

// busyPrograms are n one-rank-each programs in which the ranks of busy
// run a compute op of elems elements and the others nothing (a barrier).
func busyPrograms(n int, elems int64, busy []bool) []*allreduce.Program {
	progs := make([]*allreduce.Program, n)
	for r := range progs {
		op := allreduce.Op{Kind: allreduce.Compute, Fn: allreduce.FnBarrier, Chunk: -1, Deps: [2]int32{-1, -1}}
		if busy[r] {
			op.Fn, op.Bytes = allreduce.FnReduce, elems
		}
		progs[r] = &allreduce.Program{Name: "busy", Rank: r, World: n, Elems: int(elems), Layout: allreduce.EvenLayout(int(elems), 1), Ops: []allreduce.Op{op}}
	}
	return progs
}

// TestHostSharesCores: nodes that name one host share its cores, with
// processor sharing: of 4 ranks on their own nodes of a 2-core host, one
// or two computing alone take their full-core time, three take 1.5× and
// four 2×; without the host (or with as many cores as ranks) nothing is
// slowed. A job that starts while others run is slowed only while they
// do. Nodes of one host that state different cores are an error.
func TestHostSharesCores(t *testing.T) {
	ctx := context.Background()
	const n, elems = 4, 1 << 20
	cal := &Calibration{Throughput: map[string]float64{"reduce": 4e9}}
	full := 4 * float64(elems) / 4e9
	run := func(host string, cores int, busy []bool, colls ...Collective) *Result {
		topo := Homogeneous(n, 10*Gbps, time.Microsecond)
		for i := range topo.Nodes {
			topo.Nodes[i].Host, topo.Nodes[i].Cores = host, cores
		}
		if colls == nil {
			colls = []Collective{{Name: "busy", Programs: busyPrograms(n, elems, busy)}}
		}
		res, err := Run(ctx, topo, colls, &Options{Calibration: cal})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	for _, tc := range []struct {
		host  string
		cores int
		busy  []bool
		want  float64 // × full
	}{
		{"bed", 2, []bool{true, false, false, false}, 1},
		{"bed", 2, []bool{true, true, false, false}, 1},
		{"bed", 2, []bool{true, true, true, false}, 1.5},
		{"bed", 2, []bool{true, true, true, true}, 2},
		{"bed", 1, []bool{true, true, true, true}, 4},
		{"bed", 4, []bool{true, true, true, true}, 1},
		{"", 2, []bool{true, true, true, true}, 1}, // one node each: cores count per node
	} {
		res := run(tc.host, tc.cores, tc.busy)
		if math.Abs(res.Time-tc.want*full) > 1e-9*full {
			t.Errorf("host %q cores %d busy %v: %.6g s = %.4g× a core's time, want %g×", tc.host, tc.cores, tc.busy, res.Time, res.Time/full, tc.want)
		}
		for r, b := range tc.busy {
			if b && math.Abs(res.Ranks[r].Compute-tc.want*full) > 1e-9*full {
				t.Errorf("host %q cores %d busy %v: rank %d compute %.6g s, want %.6g s", tc.host, tc.cores, tc.busy, r, res.Ranks[r].Compute, tc.want*full)
			}
		}
	}
	// Staggered on a 1-core host: ranks 0 and 1 compute from 0, rank 2
	// from full/2 (a second collective). The shares always sum to the one
	// core, so the last job ends when all the work, 3 × full, is done
	// (without sharing: full/2 + full).
	two := []bool{true, true, false, false}
	res := run("bed", 1, nil, Collective{Name: "a", Programs: busyPrograms(n, elems, two)},
		Collective{Name: "b", Programs: busyPrograms(n, elems, []bool{false, false, true, false}), Start: full / 2})
	if math.Abs(res.Time-3*full) > 1e-9*full {
		t.Errorf("staggered on one core: %.6g s, want 3 × %.6g s (all work on one core)", res.Time, full)
	}
	// Different cores on one host.
	topo := Homogeneous(2, Gbps, 0)
	topo.Nodes[0].Host, topo.Nodes[1].Host, topo.Nodes[0].Cores, topo.Nodes[1].Cores = "m", "m", 2, 4
	if err := topo.Validate(); err == nil || !strings.Contains(err.Error(), `host "m"`) {
		t.Errorf("nodes of one host with 2 and 4 cores: %v, want an error naming the host", err)
	}
	tp, err := ParseTopology("t", []byte("defaults: {bandwidth: 1Gbit/s, cores: 2, host: bed}\nnodes:\n  - {name: a, count: 3}\n  - {name: b, host: other}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"bed", "bed", "bed", "other"} {
		if got := tp.Nodes[i].Host; got != want {
			t.Errorf("node %s: host %q, want %q", tp.Nodes[i].Name, got, want)
		}
	}
}

// TestCoreShare: with Options.CoreShare f, the ranks of an oversubscribed
// host get f of its cores while more of them are busy than it has cores,
// and whole cores otherwise: on a 2-core host, two busy ranks take their
// full-core time, three take 1.5/f× and four 2/f×; f = 0 is 1; a share
// outside [0, 1] is an error.
func TestCoreShare(t *testing.T) {
	ctx := context.Background()
	const n, elems = 4, 1 << 20
	cal := &Calibration{Throughput: map[string]float64{"reduce": 4e9}}
	full := 4 * float64(elems) / 4e9
	run := func(share float64, busy []bool) (*Result, error) {
		topo := Homogeneous(n, 10*Gbps, time.Microsecond)
		for i := range topo.Nodes {
			topo.Nodes[i].Host, topo.Nodes[i].Cores = "bed", 2
		}
		return Run(ctx, topo, []Collective{{Name: "busy", Programs: busyPrograms(n, elems, busy)}}, &Options{Calibration: cal, CoreShare: share})
	}
	for _, tc := range []struct {
		share float64
		busy  []bool
		want  float64 // × full
	}{
		{0.8, []bool{true, false, false, false}, 1},
		{0.8, []bool{true, true, false, false}, 1},
		{0.8, []bool{true, true, true, false}, 1.5 / 0.8},
		{0.8, []bool{true, true, true, true}, 2 / 0.8},
		{0.5, []bool{true, true, true, true}, 4},
		{1, []bool{true, true, true, true}, 2},
		{0, []bool{true, true, true, true}, 2},
	} {
		res, err := run(tc.share, tc.busy)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(res.Time-tc.want*full) > 1e-9*full {
			t.Errorf("CoreShare %g busy %v: %.6g s = %.4g× a core's time, want %.4g×", tc.share, tc.busy, res.Time, res.Time/full, tc.want)
		}
	}
	for _, f := range []float64{-0.1, 1.5, math.NaN()} {
		if _, err := run(f, []bool{true, true, true, true}); err == nil || !strings.Contains(err.Error(), "CoreShare") {
			t.Errorf("CoreShare %g: %v, want an error naming it", f, err)
		}
	}
}
