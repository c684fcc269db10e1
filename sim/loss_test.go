package sim

import (
	"context"
	"math"
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
