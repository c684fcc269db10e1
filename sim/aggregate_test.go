package sim

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
)

// aggTopology returns topology name of testdata/topologies (or the CLI's
// default, "default") scaled to n nodes: every node class's count grows in
// proportion (the single nodes of the files become classes of n/8 or n/16
// nodes, except the default topology's one edge node and one-slow's one
// slow node). n must be a multiple of 8.
func aggTopology(t testing.TB, name string, n int) *Topology {
	t.Helper()
	var y string
	switch name {
	case "homogeneous-8x10g":
		y = fmt.Sprintf("latency: 5us\ndefaults: {bandwidth: 10Gbit/s}\nnodes:\n  - {name: n, count: %d}\n", n)
	case "mixed-100g-10g":
		y = fmt.Sprintf(`latency: 2us
nodes:
  - {name: fast, count: %d, bandwidth: 100Gbps}
  - {name: mid, count: %d, bandwidth: 10Gbit/s, latency: 3us}
  - {name: edge, count: %d, uplink: 1Gbit/s, downlink: 10Gbit/s, latency: 50us, speed: 0.5}
`, n/2, 3*n/8, n/8)
	case "one-slow-16":
		y = fmt.Sprintf("latency: 5us\ndefaults: {bandwidth: 10Gbit/s}\nnodes:\n  - {name: n, count: %d}\n  - {name: slow, bandwidth: 1Gbit/s}\n", n-1)
	case "racks-4x8-oversub4":
		var b strings.Builder
		b.WriteString("latency: 3us\ndefaults: {bandwidth: 25Gbit/s}\nracks:\n")
		for r := range 4 {
			fmt.Fprintf(&b, "  - {name: r%d, oversubscription: 4, latency: 1us}\n", r)
		}
		b.WriteString("nodes:\n")
		for r := range 4 {
			fmt.Fprintf(&b, "  - {name: r%dn, count: %d, rack: r%d}\n", r, n/4, r)
		}
		y = b.String()
	case "wan-2sites":
		y = fmt.Sprintf(`latency: 10us
defaults: {bandwidth: 10Gbit/s}
racks: [{name: east}, {name: west}]
nodes:
  - {name: e, count: %d, rack: east}
  - {name: w, count: %d, rack: west}
wan:
  - {between: [east, west], bandwidth: 1Gbit/s, latency: 30ms}
`, n/2, n/2)
	case "racks-wan":
		// Two sites of two 4:1 racks each; the cross-site rack pairs are
		// joined by WAN links of two speeds.
		var b strings.Builder
		b.WriteString("latency: 3us\ndefaults: {bandwidth: 25Gbit/s}\nracks:\n")
		for r := range 4 {
			fmt.Fprintf(&b, "  - {name: r%d, oversubscription: 4, latency: 1us}\n", r)
		}
		b.WriteString("nodes:\n")
		for r := range 4 {
			fmt.Fprintf(&b, "  - {name: r%dn, count: %d, rack: r%d}\n", r, n/4, r)
		}
		b.WriteString("wan:\n")
		for a := range 2 {
			for c := 2; c < 4; c++ {
				bw := "10Gbit/s"
				if a == c-2 {
					bw = "2.5Gbit/s"
				}
				fmt.Fprintf(&b, "  - {between: [r%d, r%d], bandwidth: %s, latency: 2ms}\n", a, c, bw)
			}
		}
		y = b.String()
	case "default":
		return wanTopology(t, n)
	default:
		t.Fatalf("no topology %q", name)
	}
	topo, err := ParseTopology(name, []byte("name: "+name+"\n"+y))
	if err != nil {
		t.Fatal(err)
	}
	return topo
}

var aggTopologies = []string{"homogeneous-8x10g", "mixed-100g-10g", "one-slow-16", "racks-4x8-oversub4", "wan-2sites", "racks-wan", "default"}

// aggCase is one run of the agreement grid: collectives built for n ranks.
type aggCase struct {
	name  string
	colls func(t testing.TB, n int) []Collective
}

func sharedColl(t testing.TB, name string, alg allreduce.Algorithm, p allreduce.Params) Collective {
	t.Helper()
	sh, err := allreduce.NewShared(alg, p)
	if err != nil {
		t.Fatal(err)
	}
	return Collective{Name: name, Shared: sh}
}

func uniform(n int, b int64) []int64 {
	s := make([]int64, n)
	for i := range s {
		s[i] = b
	}
	return s
}

var aggCases = []aggCase{
	{"ring", func(t testing.TB, n int) []Collective {
		return []Collective{sharedColl(t, "ring", allreduce.AlgRing, allreduce.Params{World: n, Elems: 1 << 20, Average: true})}
	}},
	{"ring-seg4-fp16", func(t testing.TB, n int) []Collective {
		c := sharedColl(t, "ring", allreduce.AlgRing, allreduce.Params{World: n, Elems: 3 << 20, Segments: 4, ElemBytes: 2, Average: true})
		c.Recipe = "fp16"
		return []Collective{c}
	}},
	{"reduce-scatter+all-gather", func(t testing.TB, n int) []Collective {
		return []Collective{
			sharedColl(t, "rs", allreduce.AlgReduceScatter, allreduce.Params{World: n, Elems: 1 << 19, Segments: 2, Average: true}),
			sharedColl(t, "ag", allreduce.AlgAllGather, allreduce.Params{World: n, Elems: 1 << 19}),
		}
	}},
	{"all-to-all", func(t testing.TB, n int) []Collective {
		return []Collective{sharedColl(t, "a2a", allreduce.AlgAllToAll, allreduce.Params{World: n, Elems: 64 * n})}
	}},
	{"sparse-gather", func(t testing.TB, n int) []Collective {
		return []Collective{sharedColl(t, "sg", allreduce.AlgSparseGather, allreduce.Params{World: n, Elems: 1 << 20, Sizes: uniform(n, 40_000)})}
	}},
	{"two-phase", func(t testing.TB, n int) []Collective {
		return []Collective{sharedColl(t, "tp", allreduce.AlgTwoPhaseSign, allreduce.Params{World: n, Elems: 1 << 20, SignBlock: 1024})}
	}},
	{"step", func(t testing.TB, n int) []Collective {
		// A size-only training step: per layer, a flag exchange (an
		// all-to-all of 5 bytes per pair) chained before the layer's
		// collective, the layers concurrent.
		var cs []Collective
		for i, elems := range []int{200_704, 256, 2560, 10} {
			f := sharedColl(t, "flags", allreduce.AlgAllToAll, allreduce.Params{World: n, Elems: n, ElemBytes: 5})
			f.Start = 1e-3
			c := sharedColl(t, fmt.Sprint("l", i), allreduce.AlgRing, allreduce.Params{World: n, Elems: elems, Average: true})
			c.Start = 1e-3
			if i == 0 {
				c = sharedColl(t, "l0", allreduce.AlgSparseGather, allreduce.Params{World: n, Elems: elems, Sizes: uniform(n, 8000)})
				c.Prologue = Prologue{Fn: allreduce.FnEncode, Elems: int64(elems)}
			}
			cs = append(cs, f)
			c.After = len(cs)
			cs = append(cs, c)
		}
		return cs
	}},
}

// collTol bounds the difference of single collectives' finish times: of
// concurrent collectives, one may finish earlier and another later when
// the members of a group share their links and compute in a different
// order than the representative does.
var collTol = 0.05

// checkAgree runs colls message by message and aggregated and fails if
// the times differ by more than tol, single collectives' by more than
// collTol, or the byte and message counts differ.
func checkAgree(t *testing.T, topo *Topology, colls []Collective, opts Options, tol float64) (per, agg *Result) {
	t.Helper()
	ctx := context.Background()
	per, err := Run(ctx, topo, colls, &opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.Aggregate = AggregateOn
	agg, err = Run(ctx, topo, colls, &opts)
	if err != nil {
		t.Fatal(err)
	}
	if agg.NotAggregated != "" {
		t.Logf("not aggregated: %s", agg.NotAggregated)
	}
	if d := agg.Time/per.Time - 1; !(math.Abs(d) <= tol) {
		t.Errorf("time: per-message %.6g s, aggregated %.6g s (%d groups): %+.3f%%", per.Time, agg.Time, agg.Groups, 100*d)
	}
	if agg.Messages != per.Messages {
		t.Errorf("messages: per-message %d, aggregated %d", per.Messages, agg.Messages)
	}
	if d := float64(agg.Bytes)/float64(per.Bytes) - 1; !(math.Abs(d) <= tol) {
		t.Errorf("bytes: per-message %d, aggregated %d", per.Bytes, agg.Bytes)
	}
	for c := range per.Collectives {
		if d := agg.Collectives[c].Finish/per.Collectives[c].Finish - 1; !(math.Abs(d) <= collTol) {
			t.Errorf("collective %d (%s) finish: per-message %.6g s, aggregated %.6g s: %+.3f%%", c, per.Collectives[c].Name, per.Collectives[c].Finish, agg.Collectives[c].Finish, 100*d)
		}
	}
	return per, agg
}

// aggGrid runs every case on every topology at each size.
func aggGrid(t *testing.T, sizes []int) {
	for _, n := range sizes {
		for _, tn := range aggTopologies {
			topo := aggTopology(t, tn, n)
			for _, c := range aggCases {
				t.Run(fmt.Sprintf("n=%d/%s/%s", n, tn, c.name), func(t *testing.T) {
					per, agg := checkAgree(t, topo, c.colls(t, n), Options{}, 0.01)
					t.Logf("per-message %.6g s (%d events), aggregated %.6g s (%d groups, %d events): %+.4f%%", per.Time, per.Events, agg.Time, agg.Groups, agg.Events, 100*(agg.Time/per.Time-1))
				})
			}
		}
	}
}

// TestAggregateAgrees: the aggregated mode is within 1% of the per-message
// mode on every case and topology (the larger sizes run with the
// experiments build tag, aggregate_big_test.go).
func TestAggregateAgrees(t *testing.T) {
	sizes := []int{8, 32}
	if !testing.Short() {
		sizes = append(sizes, 64)
	}
	aggGrid(t, sizes)
}
