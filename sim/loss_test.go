package sim

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// TestLossPenalty: a flow into a receiver slower than its sender, or onto
// a downlink that already carries a flow (fan-in), carries 1+LossPenalty
// times its bytes; a paced flow (the sender's uplink is the narrowest
// link, and alone) does not. A negative penalty is an error.
func TestLossPenalty(t *testing.T) {
	ctx := context.Background()
	const S, pen, alpha = 1 << 20, 0.2, 10 * time.Microsecond
	run := func(topo *Topology, progs []*allreduce.Program, p float64) (*Result, error) {
		return Run(ctx, topo, []Collective{{Name: "x", Programs: progs}}, &Options{LossPenalty: p})
	}
	slowRecv := Homogeneous(2, 10*Mbps, alpha)
	slowRecv.Nodes[1].Down = 2.5 * Mbps
	slowSend := Homogeneous(2, 10*Mbps, alpha)
	slowSend.Nodes[0].Up = 2.5 * Mbps
	for _, tc := range []struct {
		name  string
		topo  *Topology
		progs []*allreduce.Program
		wire  float64 // transfer time without the penalty
		extra float64 // with it, bytes more on the bottleneck
	}{
		{"slower receiver", slowRecv, fanPrograms(1, S, true), S / float64(2.5*Mbps), pen * S / float64(2.5*Mbps)},
		{"slower sender (paced)", slowSend, fanPrograms(1, S, true), S / float64(2.5*Mbps), 0},
		{"equal rates (paced)", Homogeneous(2, 10*Mbps, alpha), fanPrograms(1, S, true), S / float64(10*Mbps), 0},
		// The second flow onto rank 0's downlink carries S(1+pen).
		{"fan-in of 2", Homogeneous(3, 10*Mbps, alpha), fanPrograms(2, S, false), 2 * S / float64(10*Mbps), pen * S / float64(10*Mbps)},
		{"fan-out of 2 (the sender paces)", Homogeneous(3, 10*Mbps, alpha), fanPrograms(2, S, true), 2 * S / float64(10*Mbps), 0},
	} {
		want := tc.wire + tc.extra + alpha.Seconds()
		res, err := run(tc.topo, tc.progs, pen)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(res.Time-want) > 1e-9*want {
			t.Errorf("%s: %.6g s, want %.6g s", tc.name, res.Time, want)
		}
		plain, err := run(tc.topo, tc.progs, 0)
		if err != nil {
			t.Fatal(err)
		}
		if w := tc.wire + alpha.Seconds(); math.Abs(plain.Time-w) > 1e-9*w {
			t.Errorf("%s without the penalty: %.6g s, want %.6g s", tc.name, plain.Time, w)
		}
	}
	if _, err := run(Homogeneous(2, Gbps, 0), fanPrograms(1, S, true), -0.1); err == nil {
		t.Error("LossPenalty -0.1: no error")
	}
}

// pairPrograms is rank 0 sending messages of sizes to rank 1 on one
// connection, all at once.
func pairPrograms(sizes ...int64) []*allreduce.Program {
	return tinyPair(sizes...).Programs
}

// TestLossPenaltyQueue: with a queue on the receiver's downlink
// (Node.Queue), a flow pays the penalty only when the streams converging
// there can build a backlog beyond it. A sender at 4× the receiver's rate
// builds 3/4 of its stream; two equal senders into one equal downlink, the
// second one's stream; a sender no faster than the receiver, none. The
// stream is the connection's: the later messages to the same peer count.
func TestLossPenaltyQueue(t *testing.T) {
	ctx := context.Background()
	const S, pen, alpha = 1 << 20, 0.2, 10 * time.Microsecond
	C, slow := float64(10*Mbps), float64(2.5*Mbps)
	withQueue := func(topo *Topology, q float64) *Topology {
		for i := range topo.Nodes {
			topo.Nodes[i].Queue = int64(q)
		}
		return topo
	}
	slowRecv := func(q float64) *Topology {
		t := withQueue(Homogeneous(2, 10*Mbps, alpha), q)
		t.Nodes[1].Down = 2.5 * Mbps
		return t
	}
	for _, tc := range []struct {
		name  string
		topo  *Topology
		progs []*allreduce.Program
		want  float64 // transfer time with the penalty where it applies
	}{
		{"slower receiver, queue overflows", slowRecv(0.7 * S), fanPrograms(1, S, true), (1 + pen) * S / slow},
		{"slower receiver, queue holds", slowRecv(0.8 * S), fanPrograms(1, S, true), S / slow},
		// The first half's stream is the whole megabyte: 3/4 MiB of backlog.
		{"two messages, queue overflows", slowRecv(0.7 * S), pairPrograms(S/2, S/2), ((1+pen)*S/2 + S/2) / slow},
		{"two messages, queue holds", slowRecv(0.8 * S), pairPrograms(S/2, S/2), S / slow},
		// The second flow's stream meets the first's: a backlog of S.
		{"fan-in of 2, queue overflows", withQueue(Homogeneous(3, 10*Mbps, alpha), 0.9*S), fanPrograms(2, S, false), (2 + pen) * S / C},
		{"fan-in of 2, queue holds", withQueue(Homogeneous(3, 10*Mbps, alpha), 1.1*S), fanPrograms(2, S, false), 2 * S / C},
		{"equal rates, tiny queue", withQueue(Homogeneous(2, 10*Mbps, alpha), 1), fanPrograms(1, S, true), S / C},
	} {
		res, err := Run(ctx, tc.topo, []Collective{{Name: "x", Programs: tc.progs}}, &Options{LossPenalty: pen})
		if err != nil {
			t.Fatal(err)
		}
		if want := tc.want + alpha.Seconds(); !near(res.Time, want, 1e-9) {
			t.Errorf("%s: %.6g s, want %.6g s", tc.name, res.Time, want)
		}
	}
}

// TestBacklogPeak: the largest backlog of streams into a queue drained at
// c, against the fluid model worked by hand.
func TestBacklogPeak(t *testing.T) {
	for _, tc := range []struct {
		name string
		arr  []arrival
		c    float64
		want float64
	}{
		{"none", nil, 1, 0},
		{"one at the drain rate", []arrival{{1, 5}}, 1, 0},
		{"one slower", []arrival{{0.5, 5}}, 1, 0},
		{"one at twice the rate", []arrival{{2, 5}}, 1, 5},
		{"two at the drain rate, equal", []arrival{{1, 5}, {1, 5}}, 1, 5},
		// Both until 2 (2 a second over), then one at the drain rate.
		{"two at the drain rate, one shorter", []arrival{{1, 5}, {1, 2}}, 1, 2},
		// 3 over until 1, then 2 over until 4: 3 + 6.
		{"three", []arrival{{2, 4}, {1, 1}, {1, 4}}, 1, 9},
		// 1 over until 2, then 0.5 under: the peak is at 2.
		{"ends below the drain rate", []arrival{{1, 2}, {0.5, 10}}, 1, 1},
	} {
		if got := backlogPeak(slices.Clone(tc.arr), tc.c); !near(got, tc.want, 1e-12) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
