package sim

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// TestLossPenalty: a flow into a receiver slower than its sender, or into
// a downlink it shares (fan-in), arrives LossPenalty times its transfer
// time later; a paced flow (the sender's uplink is the narrowest link, and
// alone) does not. A negative penalty is an error.
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
		wire  float64 // transfer time
		hit   bool
	}{
		{"slower receiver", slowRecv, fanPrograms(1, S, true), S / float64(2.5*Mbps), true},
		{"slower sender (paced)", slowSend, fanPrograms(1, S, true), S / float64(2.5*Mbps), false},
		{"equal rates (paced)", Homogeneous(2, 10*Mbps, alpha), fanPrograms(1, S, true), S / float64(10*Mbps), false},
		{"fan-in of 2", Homogeneous(3, 10*Mbps, alpha), fanPrograms(2, S, false), 2 * S / float64(10*Mbps), true},
		{"fan-out of 2 (the sender paces)", Homogeneous(3, 10*Mbps, alpha), fanPrograms(2, S, true), 2 * S / float64(10*Mbps), false},
	} {
		want := tc.wire + alpha.Seconds()
		if tc.hit {
			want += pen * tc.wire
		}
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
