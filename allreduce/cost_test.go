package allreduce_test

import (
	"math"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
)

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b)) }

func TestCostTextbook(t *testing.T) {
	m := allreduce.Model{Alpha: 5e-6, Beta: 1e-9}
	for _, p := range []int{2, 3, 4, 8, 16, 100} {
		S := 64.0 * 1024 * 1024
		elems := int(S / 4)
		a, b := m.Alpha, m.Beta
		fp := float64(p)
		d := math.Ceil(math.Log2(fp))
		cases := []struct {
			alg  allreduce.Algorithm
			want float64
		}{
			{allreduce.AlgRing, 2 * (fp - 1) * (a + S/fp*b)},
			{allreduce.AlgReduceScatter, (fp - 1) * (a + S/fp*b)},
			{allreduce.AlgAllGather, (fp - 1) * (a + S/fp*b)},
			{allreduce.AlgAllToAll, (fp - 1) * (a + S/fp*b)},
			{allreduce.AlgTree, 2*d*a + (2*d-1)*S*b}, // the root has one child: S/(2B) per direction
			{allreduce.AlgBarrier, d * a},
			{allreduce.AlgBroadcast, d * (a + S*b)},
		}
		if p&(p-1) == 0 {
			cases = append(cases, struct {
				alg  allreduce.Algorithm
				want float64
			}{allreduce.AlgHalvingDoubling, 2*d*a + 2*(fp-1)/fp*S*b})
		}
		for _, c := range cases {
			got := m.Cost(c.alg, allreduce.Params{World: p, Elems: elems})
			if !near(got, c.want) {
				t.Errorf("%v p=%d: cost %g, textbook %g", c.alg, p, got, c.want)
			}
		}
	}
}

// TestCostMatchesPrograms checks the model's message and byte counts against
// the generated programs: for every rank, α·messages sent + β·bytes sent
// equals the model's cost (with γ = 0) for the symmetric algorithms.
func TestCostMatchesPrograms(t *testing.T) {
	m := allreduce.Model{Alpha: 1, Beta: 1e-3}
	for _, n := range []int{2, 3, 5, 8} {
		for _, alg := range []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgReduceScatter, allreduce.AlgAllGather, allreduce.AlgAllToAll, allreduce.AlgTwoPhaseSign, allreduce.AlgBarrier} {
			p := allreduce.Params{World: n, Elems: 840 * n, Segments: 1}
			for r, prog := range genAll(t, alg, p) {
				var msgs, bytes float64
				for _, o := range prog.Ops {
					if o.Kind == allreduce.Send {
						msgs++
						bytes += float64(o.Bytes)
					}
				}
				got, want := m.Alpha*msgs+m.Beta*bytes, m.Cost(alg, p)
				if !near(got, want) {
					t.Errorf("%v n=%d rank %d: program sends %v msgs, %v bytes (%g), model %g", alg, n, r, msgs, bytes, got, want)
				}
			}
		}
	}
}

func TestSelect(t *testing.T) {
	m := allreduce.Model{Alpha: 20e-6, Beta: 1 / 1.25e9, Gamma: 1e-9}
	// Tiny messages over many ranks: latency dominates, ring loses.
	if c := allreduce.Select(m, 64, 256); c.Alg == allreduce.AlgRing {
		t.Errorf("64 ranks, 256 B: selected ring (%+v)", c)
	}
	// Large messages: the tree's 2S bandwidth term loses to ring/HD.
	if c := allreduce.Select(m, 12, 256<<20); c.Alg == allreduce.AlgTree {
		t.Errorf("12 ranks, 256 MiB: selected tree (%+v)", c)
	}
	for _, world := range []int{2, 3, 7, 16, 100} {
		for _, bytes := range []int64{4, 4096, 1 << 20, 64 << 20} {
			c := allreduce.Select(m, world, bytes)
			for _, alg := range []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgTree, allreduce.AlgHalvingDoubling} {
				if other := m.CostBytes(alg, world, bytes); other < c.Cost*(1-1e-12) {
					t.Errorf("world %d bytes %d: selected %v at %g, but %v costs %g", world, bytes, c.Alg, c.Cost, alg, other)
				}
			}
		}
	}
	pol := allreduce.Policy{Model: m, Override: func(world int, bytes int64) (allreduce.Choice, bool) {
		return allreduce.Choice{Alg: allreduce.AlgTree, Segments: 3}, bytes > 1000
	}}
	if c := pol.Select(8, 1<<20); c.Alg != allreduce.AlgTree || c.Segments != 3 {
		t.Errorf("override ignored: %+v", c)
	}
	pol.Candidates = []allreduce.Algorithm{allreduce.AlgRing}
	if c := pol.Select(8, 100); c.Alg != allreduce.AlgRing {
		t.Errorf("candidates ignored: %+v", c)
	}
}

// TestMessagesMatchPrograms checks Messages, the count Cost charges Overhead
// for, against the generated programs: the most sends of any rank.
func TestMessagesMatchPrograms(t *testing.T) {
	m := allreduce.Model{Overhead: 1} // Cost is then Overhead·Messages alone
	algs := []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgReduceScatter, allreduce.AlgAllGather,
		allreduce.AlgTree, allreduce.AlgHalvingDoubling, allreduce.AlgAllToAll, allreduce.AlgBroadcast,
		allreduce.AlgBarrier, allreduce.AlgTwoPhaseSign}
	for _, alg := range algs {
		for _, n := range []int{2, 3, 4, 5, 6, 8, 13, 16} {
			for _, k := range []int{1, 4} {
				p := allreduce.Params{World: n, Elems: 840 * n * 8, Segments: k}
				most := 0
				for _, prog := range genAll(t, alg, p) {
					sends := 0
					for _, o := range prog.Ops {
						if o.Kind == allreduce.Send {
							sends++
						}
					}
					most = max(most, sends)
				}
				if got := allreduce.Messages(alg, p); got != most {
					t.Errorf("%v n=%d k=%d: Messages %d, busiest program sends %d", alg, n, k, got, most)
				}
				if got := m.Cost(alg, p); got != float64(most) {
					t.Errorf("%v n=%d k=%d: Cost with only Overhead = 1 is %g, want %d", alg, n, k, got, most)
				}
			}
		}
	}
}

// TestOverheadSegments checks that a per-message overhead keeps the
// pipelined algorithms from splitting a large vector into tiny segments,
// and that without it the choice is the overlap-only one.
func TestOverheadSegments(t *testing.T) {
	const bytes = 64 << 20
	base := allreduce.Model{Alpha: 20e-6, Beta: 1 / 1.25e9, Gamma: 1e-9}
	withOH := base
	withOH.Overhead = 25e-6
	for _, world := range []int{2, 4, 8} {
		p := allreduce.Params{World: world, Elems: bytes / 4}
		for _, alg := range []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgTree} {
			perSeg := func(k int) int64 {
				if alg == allreduce.AlgTree {
					return bytes / 2 / int64(k) // each tree carries half
				}
				return bytes / int64(world) / int64(k)
			}
			k0 := base.BestSegments(alg, p)
			k1 := withOH.BestSegments(alg, p)
			if seg := perSeg(k1); seg < 1<<20 {
				t.Errorf("%v world %d, overhead 25 µs: %d segments of %d B, want ≥ 1 MiB", alg, world, k1, seg)
			}
			if k1 > k0 {
				t.Errorf("%v world %d: overhead raised the segments from %d to %d", alg, world, k0, k1)
			}
			// Without overhead the choice minimises the overhead-free cost,
			// which for the tree is the deepest pipelining allowed.
			for k := 1; k <= 4096; k *= 2 {
				q := p
				q.Segments = k
				if c, best := base.Cost(alg, q), base.Cost(alg, allreduce.Params{World: world, Elems: bytes / 4, Segments: k0}); c < best*(1-1e-12) {
					t.Errorf("%v world %d, no overhead: %d segments cost %g < chosen %d at %g", alg, world, k, c, k0, best)
				}
			}
		}
		if k := base.BestSegments(allreduce.AlgTree, p); k != 4096 {
			t.Errorf("tree world %d, no overhead: %d segments, want 4096 (the overlap-only choice)", world, k)
		}
		// The overhead is added on top: Cost grows by Overhead·Messages.
		for _, alg := range []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgTree, allreduce.AlgHalvingDoubling, allreduce.AlgBroadcast} {
			q := p
			q.Segments = 8
			want := base.Cost(alg, q) + withOH.Overhead*float64(allreduce.Messages(alg, q))
			if got := withOH.Cost(alg, q); !near(got, want) {
				t.Errorf("%v world %d: cost %g with overhead, want %g", alg, world, got, want)
			}
		}
	}
	// LowRank charges its two rings' messages.
	lr := allreduce.Params{World: 4, Rows: 512, Cols: 256, Components: 4}
	ring := func(elems int) allreduce.Params { return allreduce.Params{World: 4, Elems: elems} }
	want := base.Cost(allreduce.AlgLowRank, lr) + withOH.Overhead*float64(allreduce.Messages(allreduce.AlgRing, ring(512*4))+allreduce.Messages(allreduce.AlgRing, ring(256*4)))
	if got := withOH.Cost(allreduce.AlgLowRank, lr); !near(got, want) {
		t.Errorf("low-rank with overhead: %g, want %g", got, want)
	}
	if d := allreduce.DefaultModel(); d.Overhead <= 0 {
		t.Errorf("DefaultModel has no per-message overhead: %+v", d)
	}
}
