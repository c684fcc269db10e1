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
//
// Overhead is the software cost of a message on a real transport (framing,
// syscalls, stream multiplexing, encryption set-up: the work of sender and
// receiver together), which a CPU pays whatever the link does. Pipelining
// hides Alpha (the wire latency of the segments behind the first overlaps)
// but not Overhead: Cost adds Overhead once for every message the busiest
// rank sends, so that BestSegments trades the overlap of more segments
// against their per-message cost. The simulator has no such term; compare
// with it at Overhead = 0.
type Model struct {
	Alpha    float64 // seconds per message (wire latency)
	Beta     float64 // seconds per byte (1 / bandwidth)
	Gamma    float64 // seconds per reduced float32 element (0: ignore compute)
	Overhead float64 // seconds of CPU per message, not hidden by pipelining
}

// DefaultModel is a 10 Gbit/s link with 20 µs per message and 1 ns per
// reduced element, over a transport that spends 25 µs of CPU per message.
// The overhead is measured: a 16 KiB libp2p message over loopback costs
// about 30 µs of CPU without a security layer and 47 µs with Noise (NATS is
// in between), so the model does not split a 64 MiB all-reduce into
// thousands of 16 KiB segments (1–4 MiB segments were 1.3–2.4× faster).
func DefaultModel() Model {
	return Model{Alpha: 20e-6, Beta: 1 / 1.25e9, Gamma: 1e-9, Overhead: 25e-6}
}

// Messages returns the number of messages the busiest rank sends in alg
// over p.World ranks with p.Segments segments (the count Cost charges
// Overhead for): Ring 2(P−1)k, ReduceScatter and AllGather (P−1)k, Tree
// min(P, 4)·k (an interior rank of one tree sends one segment up and two
// down, and a leaf of the other one up), HalvingDoubling 2⌊log2 P⌋ plus one
// when P is not a power of two, AllToAll, AllGatherV and SparseGather P−1,
// Broadcast ⌈log2 P⌉·k, Barrier ⌈log2 P⌉, TwoPhaseSign 2(P−1), LowRank the
// two rings'.
func Messages(alg Algorithm, p Params) int {
	P := max(p.World, 1)
	if P == 1 {
		return 0
	}
	k := p.segments()
	d := log2ceil(P)
	switch alg {
	case AlgRing:
		return 2 * (P - 1) * k
	case AlgReduceScatter, AlgAllGather:
		return (P - 1) * k
	case AlgTree:
		return min(P, 4) * k
	case AlgHalvingDoubling:
		lg := bits.Len(uint(P)) - 1
		if P&(P-1) != 0 {
			return 2*lg + 1
		}
		return 2 * lg
	case AlgAllToAll, AlgAllGatherV, AlgSparseGather:
		return P - 1
	case AlgBroadcast:
		return d * k
	case AlgBarrier:
		return d
	case AlgTwoPhaseSign:
		return 2 * (P - 1)
	case AlgLowRank:
		pr := p
		pr.Elems = p.Rows * p.Components
		qr := p
		qr.Elems = p.Cols * p.Components
		return Messages(AlgRing, pr) + Messages(AlgRing, qr)
	}
	return 0
}

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
//	Ring           segments go out back to back over one stream per pair;
//	               with τ = Sβ/(Pk) per segment transfer and ρ = γS/(ePk)
//	               per segment reduction, the time is the largest of three
//	               bounds: the chain of one segment through every step plus
//	               the k−1 behind it, (P−1)(α+τ+ρ) + (P−1)(α+τ) +
//	               (k−1)·max(τ,ρ); the link, 2(P−1)kτ + α; the compute
//	               engine, τ + α + (P−1)kρ + (P−1)(τ+α); and the
//	               all-gather behind a reduce-scatter of period
//	               Prs = max(α+τ+ρ, kτ, kρ), which starts when the last
//	               reduce-scatter step's first segment is reduced,
//	               t0 = (P−2)·Prs + τ + α + ρ, and then takes the larger of
//	               (P−1)kτ + α and (k−1)ρ + (P−1)(τ+α). For γ = 0 this is
//	               exact: (2P−3)·max(α+τ, kτ) + kτ + α, and k = 1 is the
//	               textbook 2(P−1)(α + S/(PB))
//	ReduceScatter  max((P−1)(α+τ+ρ) + (k−1)·max(τ,ρ), (P−1)kτ + α + ρ,
//	               τ + α + (P−1)kρ)
//	AllGather      max((P−1)(α+τ) + (k−1)τ, (P−1)kτ + α)
//	Tree           two pipelined binary trees (NCCL), each carrying S/2 in k
//	               segments of σ = S/(2k): the first segment crosses 2d
//	               levels, each α + 2σβ (two children share a NIC) except the
//	               root's single child (α + σβ), plus the reductions
//	               (2d−1)·γσ/e; the others follow one per period
//	               max(4σβ, 2γσ/e), a NIC carrying 4σ per segment index (up
//	               and down, both trees) and an interior rank reducing two
//	               children's segments (P = 2: 2σ and one reduction):
//	               T = 2dα + (2d−1)(2σβ + γσ/e) + (k−1)·max(4σβ, 2γσ/e);
//	               k = 1, γ = 0: 2dα + (2d−1)Sβ
//	HalvingDoubling 2dα + 2(P'−1)/P'·Sβ + (P'−1)/P'·γS/e, P' = 2^⌊log2 P⌋,
//	               plus 2(α + Sβ) + γS/e when P is not a power of two
//	AllToAll       (P−1)(α + Sβ/P)
//	Broadcast      d(kα + Sβ): the root sends the whole vector to each of
//	               its d children
//	Barrier        dα
//	AllGatherV     (P−1)α + (P−1)·max(Sizes)·β (each ring step forwards one
//	               payload; Sizes nil: S per rank)
//	SparseGather   as AllGatherV, plus P·γ·Elems for the decode-adds
//	TwoPhaseSign   2(P−1)(α + Bβ), B = TwoPhaseLayout.MaxMessageBytes (4 +
//	               4·scales + d′/(8P) bytes)
//	LowRank        ring all-reduces of Rows·R and Cols·R elements, plus
//	               γ·2·Rows·Cols·R for each of the three products
//
// On a homogeneous topology the simulator (package sim, free or calibrated
// compute) agrees with Ring, ReduceScatter, AllGather and, for P a power of
// two, HalvingDoubling to within 0.5%, and with Tree to within 0.5% for
// k = 1 and 15% for k > 1 (where the reduce and broadcast waves share the
// NICs only part of the time); for other P, HalvingDoubling's extra ranks
// run ahead and the simulated time is higher (sim's tests).
//
// To all of these Cost adds Overhead·Messages(alg, p), the per-message
// software cost of the busiest rank, which no overlap hides.
func (m Model) Cost(alg Algorithm, p Params) float64 {
	t := m.cost(alg, p)
	if m.Overhead != 0 && alg != AlgLowRank { // LowRank adds its rings' through Cost
		t += m.Overhead * float64(Messages(alg, p))
	}
	return t
}

// cost is Cost without the Overhead term (except LowRank's, whose rings go
// through Cost).
func (m Model) cost(alg Algorithm, p Params) float64 {
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
	tau := S * b / (fp * k)
	rho := g * S / (e * fp * k)
	follow := (k - 1) * max(tau, rho) // the segments behind the first
	switch alg {
	case AlgRing:
		chain := (fp-1)*(a+tau+rho) + (fp-1)*(a+tau) + follow
		link := 2*(fp-1)*k*tau + a
		engine := tau + a + (fp-1)*k*rho + (fp-1)*(tau+a)
		t0 := (fp-2)*max(a+tau+rho, k*tau, k*rho) + tau + a + rho
		ag := t0 + max((fp-1)*k*tau+a, (k-1)*rho+(fp-1)*(tau+a))
		return max(chain, link, engine, ag)
	case AlgReduceScatter:
		return max((fp-1)*(a+tau+rho)+follow, (fp-1)*k*tau+a+rho, tau+a+(fp-1)*k*rho)
	case AlgAllGather:
		return max((fp-1)*(a+tau)+(k-1)*tau, (fp-1)*k*tau+a)
	case AlgTree:
		sig := S / (2 * k)
		per := max(4*sig*b, 2*g*sig/e)
		if P == 2 {
			per = max(2*sig*b, g*sig/e)
		}
		return 2*d*a + (2*d-1)*(2*sig*b+g*sig/e) + (k-1)*per
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
		lay, err := NewTwoPhaseLayout(p.Elems, P, p.SignBlock)
		if err != nil {
			return math.Inf(1)
		}
		B := float64(lay.MaxMessageBytes())
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
