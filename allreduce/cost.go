package allreduce

import (
	"math"
	"math/bits"
)

// Model is the alpha-beta(-gamma) cost model of a collective: sending a
// message of n bytes between two ranks takes Alpha + n·Beta seconds, and
// reducing (adding) one float32 element takes Gamma seconds. Links are
// full-duplex and every rank sends and receives at once (the textbook
// assumptions behind 2(p−1)(α + S/(pB)) for the ring). The simulator
// (package sim) measures the same programs on real topologies; this model is
// for selection and for tools such as L-GreCo that need a closed form.
type Model struct {
	Alpha float64 // seconds per message
	Beta  float64 // seconds per byte (1 / bandwidth)
	Gamma float64 // seconds per reduced float32 element (0: ignore compute)
}

// DefaultModel is a 10 Gbit/s link with 20 µs per message and 1 ns per
// reduced element.
func DefaultModel() Model { return Model{Alpha: 20e-6, Beta: 1 / 1.25e9, Gamma: 1e-9} }

func log2ceil(p int) int {
	if p <= 1 {
		return 0
	}
	return bits.Len(uint(p - 1))
}

// Cost returns the modelled time in seconds of alg over p.World ranks for
// the sizes in p, with p.Segments segments (0 or 1: no pipelining). With S =
// p.Elems·ElemBytes (the dense vector's wire size), P = p.World,
// k = segments, e = ElemBytes, d = ⌈log2 P⌉:
//
//	Ring           RS: (P−1)(kα + Sβ/P + γS/(ePk)), AG: (P−1)(kα + Sβ/P);
//	               k = 1, γ = 0 is the textbook 2(P−1)(α + S/(PB))
//	ReduceScatter  the RS part; AllGather the AG part
//	Tree           2(d + k − 1)(α + Sβ/k + γS/(ek)): two pipelined binary
//	               trees, each carrying S/2 in k segments; per stage the
//	               busiest link carries two segments
//	HalvingDoubling 2dα + 2(P'−1)/P'·Sβ + (P'−1)/P'·γS/e, P' = 2^⌊log2 P⌋,
//	               plus 2(α + Sβ) + γS/e when P is not a power of two
//	AllToAll       (P−1)(α + Sβ/P)
//	Broadcast      d(kα + Sβ): the root sends the whole vector to each of
//	               its d children
//	Barrier        dα
//	AllGatherV     (P−1)α + (P−1)·max(Sizes)·β (each ring step forwards one
//	               payload; Sizes nil: S per rank)
//	SparseGather   as AllGatherV, plus P·γ·Elems for the decode-adds
//	TwoPhaseSign   2(P−1)(α + Bβ), B = 4 + d′/(8P) bytes per message
//	LowRank        ring all-reduces of Rows·R and Cols·R elements, plus
//	               γ·2·Rows·Cols·R for each of the three products
func (m Model) Cost(alg Algorithm, p Params) float64 {
	P := max(p.World, 1)
	if P == 1 && alg != AlgTwoPhaseSign && alg != AlgSparseGather && alg != AlgLowRank {
		return 0
	}
	e := float64(p.elemBytes())
	S := float64(p.Elems) * e
	k := float64(p.segments())
	d := float64(log2ceil(P))
	fp := float64(P)
	a, b, g := m.Alpha, m.Beta, m.Gamma
	rs := (fp - 1) * (k*a + S*b/fp + g*S/(e*fp*k))
	ag := (fp - 1) * (k*a + S*b/fp)
	switch alg {
	case AlgRing:
		return rs + ag
	case AlgReduceScatter:
		return rs
	case AlgAllGather:
		return ag
	case AlgTree:
		return 2 * (d + k - 1) * (a + S*b/k + g*S/(e*k))
	case AlgHalvingDoubling:
		pp := 1 << (bits.Len(uint(P)) - 1)
		fpp := float64(pp)
		t := 2*float64(log2ceil(pp))*a + 2*(fpp-1)/fpp*S*b + (fpp-1)/fpp*g*S/e
		if pp != P {
			t += 2*(a+S*b) + g*S/e
		}
		return t
	case AlgAllToAll:
		return (fp - 1) * (a + S*b/fp)
	case AlgBroadcast:
		return d * (k*a + S*b)
	case AlgBarrier:
		return d * a
	case AlgAllGatherV, AlgSparseGather:
		mx := S
		if p.Sizes != nil {
			mx = 0
			for _, s := range p.Sizes {
				mx = math.Max(mx, float64(s))
			}
		}
		t := (fp - 1) * (a + mx*b)
		if alg == AlgSparseGather {
			t += fp * g * float64(p.Elems)
		}
		return t
	case AlgTwoPhaseSign:
		B := 4 + float64(TwoPhasePaddedLen(p.Elems, P)/(8*P))
		return 2 * (fp - 1) * (a + B*b)
	case AlgLowRank:
		r := float64(p.Components)
		pr := p
		pr.Elems = p.Rows * p.Components
		qr := p
		qr.Elems = p.Cols * p.Components
		return m.Cost(AlgRing, pr) + m.Cost(AlgRing, qr) + 3*2*g*float64(p.Rows)*float64(p.Cols)*r
	}
	return math.Inf(1)
}

// CostBytes is Cost for a dense vector of bytes bytes of float32 (Elems =
// bytes/4) with the best segment count (see BestSegments). For
// AllGatherV and SparseGather, bytes is each rank's payload size.
func (m Model) CostBytes(alg Algorithm, world int, bytes int64) float64 {
	p := Params{World: world, Elems: int(bytes / 4)}
	if alg == AlgAllGatherV || alg == AlgSparseGather {
		p.Elems = 0
		p.Sizes = make([]int64, world)
		for i := range p.Sizes {
			p.Sizes[i] = bytes
		}
	}
	p.Segments = m.BestSegments(alg, p)
	return m.Cost(alg, p)
}

// maxSegments bounds BestSegments.
const maxSegments = 1 << 12

// BestSegments returns the segment count in 1, 2, 4, …, 4096 (and at most
// Elems/World) that minimises Cost(alg, p) for the pipelined algorithms
// (Ring, ReduceScatter, Tree, Broadcast); 1 for the others.
func (m Model) BestSegments(alg Algorithm, p Params) int {
	switch alg {
	case AlgRing, AlgReduceScatter, AlgTree, AlgBroadcast:
	default:
		return 1
	}
	best, bestT := 1, math.Inf(1)
	limit := max(p.Elems/max(p.World, 1), 1)
	for k := 1; k <= maxSegments && k <= limit; k *= 2 {
		p.Segments = k
		if t := m.Cost(alg, p); t < bestT {
			best, bestT = k, t
		}
	}
	return best
}

// Choice is a selected algorithm with its segment count and modelled cost.
type Choice struct {
	Alg      Algorithm
	Segments int
	Cost     float64 // seconds
}

// Policy selects the dense all-reduce algorithm for a message. The zero
// Policy uses DefaultModel over Ring, Tree and HalvingDoubling.
type Policy struct {
	Model Model // zero: DefaultModel()
	// Candidates are the algorithms to choose from (nil: Ring, Tree,
	// HalvingDoubling).
	Candidates []Algorithm
	// Override, if non-nil, is asked first; ok = false falls back to the
	// model. Segments 0 in its answer means "the model's best".
	Override func(world int, bytes int64) (c Choice, ok bool)
}

// Select returns the cheapest candidate for a dense float32 vector of bytes
// bytes over world ranks (ties: the earlier candidate).
func (pol Policy) Select(world int, bytes int64) Choice {
	m := pol.Model
	if m == (Model{}) {
		m = DefaultModel()
	}
	p := Params{World: world, Elems: int(bytes / 4)}
	if pol.Override != nil {
		if c, ok := pol.Override(world, bytes); ok {
			p.Segments = c.Segments
			if c.Segments <= 0 {
				p.Segments = m.BestSegments(c.Alg, p)
			}
			return Choice{Alg: c.Alg, Segments: p.Segments, Cost: m.Cost(c.Alg, p)}
		}
	}
	cands := pol.Candidates
	if cands == nil {
		cands = []Algorithm{AlgRing, AlgTree, AlgHalvingDoubling}
	}
	best := Choice{Cost: math.Inf(1)}
	for _, alg := range cands {
		p.Segments = m.BestSegments(alg, p)
		if t := m.Cost(alg, p); t < best.Cost {
			best = Choice{Alg: alg, Segments: p.Segments, Cost: t}
		}
	}
	return best
}

// Select is Policy{Model: m}.Select(world, bytes).
func Select(m Model, world int, bytes int64) Choice {
	return Policy{Model: m}.Select(world, bytes)
}
