package sim

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
)

// tinyPair is rank 0 sending messages of the given sizes, in order, to
// rank 1 over one connection.
func tinyPair(sizes ...int64) Collective {
	s := &allreduce.Program{Name: "pair", Rank: 0, World: 2, Layout: allreduce.EvenLayout(1, 1)}
	r := &allreduce.Program{Name: "pair", Rank: 1, World: 2, Layout: allreduce.EvenLayout(1, 1)}
	for i, b := range sizes {
		s.Ops = append(s.Ops, allreduce.Op{Kind: allreduce.Send, Peer: 1, Msg: int32(i), Chunk: -1, Bytes: b, Deps: [2]int32{-1, -1}})
		r.Ops = append(r.Ops, allreduce.Op{Kind: allreduce.Recv, Peer: 0, Msg: int32(i), Chunk: -1, Bytes: b, Deps: [2]int32{-1, -1}})
	}
	return Collective{Programs: []*allreduce.Program{s, r}}
}

// TestTinyMessage: a tiny message takes its latency plus its size at link
// speed, with or without the flow model; one queued behind a large message
// on the same connection leaves after it (first in, first out), and its
// bytes count on its links.
func TestTinyMessage(t *testing.T) {
	const B = 10 * Gbps
	topo := Homogeneous(2, B, 10*time.Microsecond)
	for _, flow := range []bool{false, true} {
		for _, c := range []struct {
			sizes []int64
			want  float64
		}{
			{[]int64{5}, 5/float64(B) + 10e-6},
			{[]int64{TinyMessageBytes}, TinyMessageBytes/float64(B) + 10e-6},
			{[]int64{0}, 10e-6},
			{[]int64{1 << 20, 5}, (1<<20+5)/float64(B) + 10e-6},
		} {
			res, err := Run(context.Background(), topo, []Collective{tinyPair(c.sizes...)}, &Options{FlowTinyMessages: flow})
			if err != nil {
				t.Fatal(err)
			}
			if !near(res.Time, c.want, 1e-12) {
				t.Errorf("flow %v sizes %v: time %.12g, want %.12g", flow, c.sizes, res.Time, c.want)
			}
			var sum int64
			for _, b := range c.sizes {
				sum += b
			}
			if got := res.Links[0].Bytes; got != float64(sum) || res.Links[0].Name != "n0.up" {
				t.Errorf("flow %v sizes %v: n0.up carried %v bytes, want %d", flow, c.sizes, got, sum)
			}
		}
	}
}

// TestTinyExchange: an all-to-all of 5-byte flags, every message ready at
// once, ends when the max-min model's does: on a homogeneous switch each
// link carries N−1 flags either way, processor-shared there and one after
// another here. It costs fewer events (no flow re-rating).
func TestTinyExchange(t *testing.T) {
	for _, n := range []int{2, 8, 64} {
		topo := Homogeneous(n, 10*Gbps, 5*time.Microsecond)
		c := sharedColl(t, "flags", allreduce.AlgAllToAll, allreduce.Params{World: n, Elems: n, ElemBytes: 5})
		tiny, err := Run(context.Background(), topo, []Collective{c}, nil)
		if err != nil {
			t.Fatal(err)
		}
		flow, err := Run(context.Background(), topo, []Collective{c}, &Options{FlowTinyMessages: true})
		if err != nil {
			t.Fatal(err)
		}
		want := float64(5*(n-1))/float64(10*Gbps) + 5e-6
		if !near(tiny.Time, want, 1e-9) || !near(flow.Time, want, 1e-9) {
			t.Errorf("n=%d: tiny %.12g s, flows %.12g s, want %.12g", n, tiny.Time, flow.Time, want)
		}
		if tiny.Messages != flow.Messages || tiny.Bytes != flow.Bytes {
			t.Errorf("n=%d: tiny %d messages %d bytes, flows %d, %d", n, tiny.Messages, tiny.Bytes, flow.Messages, flow.Bytes)
		}
		if n == 64 && tiny.Events >= flow.Events {
			t.Errorf("n=%d: %d events with tiny messages, %d as flows", n, tiny.Events, flow.Events)
		}
	}
}

// TestTinyAgrees: every case of the aggregated-mode grid on every test
// topology takes the same time with tiny messages as with flows, to 0.01%
// (among the cases a training step: per layer a flag exchange chained
// before its collective, the layers concurrent; measured at 32 and 64
// ranks: at most 0.0024%, 1 µs of 41 ms on mixed-100g-10g at 64 ranks).
// An all-to-all of 256-byte messages, all of them tiny, may differ by the
// time its busiest link takes to carry them (TinyMessageBytes); measured:
// equal to 10⁻¹² except on the default topology at 8 ranks, −1.2 µs of
// 513 µs, where the edge node's 1 Gbit/s uplink carries 1.8 KB (14 µs).
func TestTinyAgrees(t *testing.T) {
	for _, tn := range aggTopologies {
		for _, n := range []int{8, 32} {
			topo := aggTopology(t, tn, n)
			for _, c := range aggCases {
				cs := c.colls(t, n)
				tiny, err := Run(context.Background(), topo, cs, nil)
				if err != nil {
					t.Fatal(err)
				}
				flow, err := Run(context.Background(), topo, cs, &Options{FlowTinyMessages: true})
				if err != nil {
					t.Fatal(err)
				}
				tol := 1e-4 * flow.Time
				if c.name == "all-to-all" {
					for l, ls := range flow.Links {
						if ls.Bytes > 0 {
							tol = max(tol, ls.Bytes/topo.linkCap(l))
						}
					}
				}
				if d := tiny.Time - flow.Time; !(math.Abs(d) <= tol) {
					t.Errorf("%s n=%d %s: tiny %.9g s, flows %.9g s: %+.4g s, bound %.4g s", tn, n, c.name, tiny.Time, flow.Time, d, tol)
				}
			}
		}
	}
}

// TestTinyExchangeBytes: the messages of an exchange (an all-to-all, 1-bit
// Adam's two phases) are tiny up to TinyExchangeBytes, other collectives'
// only up to TinyMessageBytes. An all-to-all of 1 KiB messages ends within
// the tiny model's bound of the flow model's time (on the default topology
// its busiest link's tiny bytes over its capacity; equal on a switch) in
// fewer events; a two-phase sign all-reduce of 400-byte messages (1-bit
// Adam's at 64 ranks) also costs fewer events; a ring of 1 KiB messages
// beside an all-to-all of 64 KiB messages is flows either way, to the
// event.
func TestTinyExchangeBytes(t *testing.T) {
	const n = 64
	a2a := sharedColl(t, "a2a", allreduce.AlgAllToAll, allreduce.Params{World: n, Elems: n, ElemBytes: TinyExchangeBytes})
	tp := sharedColl(t, "tp", allreduce.AlgTwoPhaseSign, allreduce.Params{World: n, Elems: 3136 * n, SignBlock: 16384})
	ring := sharedColl(t, "ring", allreduce.AlgRing, allreduce.Params{World: n, Elems: TinyExchangeBytes / 4 * n})
	big := sharedColl(t, "big", allreduce.AlgAllToAll, allreduce.Params{World: n, Elems: 16 << 10 * n})
	for _, tn := range []string{"homogeneous-8x10g", "default"} {
		topo := aggTopology(t, tn, n)
		for _, c := range []struct {
			name     string
			colls    []Collective
			min, max int64 // the first one's message sizes
			tiny     bool
		}{
			{"all-to-all", []Collective{a2a}, TinyExchangeBytes, TinyExchangeBytes, true},
			{"two-phase", []Collective{tp}, TinyMessageBytes + 1, TinyExchangeBytes, true},
			{"ring", []Collective{ring, big}, TinyExchangeBytes, TinyExchangeBytes, false},
		} {
			tiny, err := Run(context.Background(), topo, c.colls, nil)
			if err != nil {
				t.Fatal(err)
			}
			flow, err := Run(context.Background(), topo, c.colls, &Options{FlowTinyMessages: true})
			if err != nil {
				t.Fatal(err)
			}
			alone, err := Run(context.Background(), topo, c.colls[:1], nil)
			if err != nil {
				t.Fatal(err)
			}
			if avg := alone.Bytes / alone.Messages; avg < c.min || avg > c.max {
				t.Fatalf("%s %s: %d bytes in %d messages, want messages of %d to %d bytes", tn, c.name, alone.Bytes, alone.Messages, c.min, c.max)
			}
			if !c.tiny {
				if tiny.Events != flow.Events || tiny.Collectives[0].Finish != flow.Collectives[0].Finish {
					t.Errorf("%s %s: %d events, done at %.12g s; as flows %d, %.12g s: want the same", tn, c.name, tiny.Events, tiny.Collectives[0].Finish, flow.Events, flow.Collectives[0].Finish)
				}
				continue
			}
			if tiny.Events >= flow.Events {
				t.Errorf("%s %s: %d events with tiny messages, %d as flows", tn, c.name, tiny.Events, flow.Events)
			}
			tol := 1e-9 * flow.Time
			for l, ls := range flow.Links {
				if ls.Bytes > 0 && tn != "homogeneous-8x10g" {
					tol = max(tol, ls.Bytes/topo.linkCap(l))
				}
			}
			if d := tiny.Time - flow.Time; !(math.Abs(d) <= tol) {
				t.Errorf("%s %s: tiny %.9g s, flows %.9g s: %+.4g s, bound %.4g s", tn, c.name, tiny.Time, flow.Time, d, tol)
			}
		}
	}
}
