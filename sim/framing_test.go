package sim

import (
	"context"
	"testing"
	"time"
)

// TestFramingWire: the bytes of a message on the wire, by the formula of
// Framing's doc comment, counted by hand.
func TestFramingWire(t *testing.T) {
	tcp := Framing{MessageBytes: 54, SegmentPayload: 1448, SegmentBytes: 66}
	for _, c := range []struct {
		f          Framing
		size, want float64
	}{
		{Framing{}, 1000, 1000},
		{Framing{MessageBytes: 54}, 1000, 1054},
		{tcp, 0, 54 + 66},
		{tcp, 5, 59 + 66},
		{tcp, 1394, 1448 + 66},           // exactly one full packet
		{tcp, 1395, 1449 + 2*66},         // one byte into a second
		{tcp, 1 << 20, 1048630 + 725*66}, // ⌈1048630 / 1448⌉ = 725 packets
	} {
		if got := c.f.Wire(c.size); got != c.want {
			t.Errorf("%+v.Wire(%v) = %v, want %v", c.f, c.size, got, c.want)
		}
	}
	for _, bad := range []Framing{{MessageBytes: -1}, {SegmentBytes: 66}, {SegmentPayload: -1}} {
		if _, err := Run(context.Background(), Homogeneous(2, Gbps, 0), []Collective{tinyPair(5)}, &Options{Framing: bad}); err == nil {
			t.Errorf("Framing %+v: no error", bad)
		}
	}
}

// TestFramingTime: with framing, a message occupies its links for its
// wire bytes, tiny or not, in the flow model or outside it, and the links
// count them; the result's bytes stay the messages' own.
func TestFramingTime(t *testing.T) {
	const B = 10 * Mbps
	const lat = 30 * time.Microsecond
	topo := Homogeneous(2, B, lat)
	f := Framing{MessageBytes: 54, SegmentPayload: 1448, SegmentBytes: 66}
	for _, flow := range []bool{false, true} {
		for _, sizes := range [][]int64{{5}, {520}, {5, 520, 100_000}} {
			var wire float64
			var sum int64
			for _, s := range sizes {
				wire += f.Wire(float64(s))
				sum += s
			}
			res, err := Run(context.Background(), topo, []Collective{tinyPair(sizes...)}, &Options{Framing: f, FlowTinyMessages: flow})
			if err != nil {
				t.Fatal(err)
			}
			if want := wire/float64(B) + lat.Seconds(); !near(res.Time, want, 1e-12) {
				t.Errorf("flow %v sizes %v: time %.12g, want %.12g", flow, sizes, res.Time, want)
			}
			if got := res.Links[0].Bytes; !near(got, wire, 1e-12) {
				t.Errorf("flow %v sizes %v: n0.up carried %v bytes, want %v", flow, sizes, got, wire)
			}
			if res.Bytes != sum {
				t.Errorf("flow %v sizes %v: Result.Bytes %d, want %d", flow, sizes, res.Bytes, sum)
			}
		}
	}
}
