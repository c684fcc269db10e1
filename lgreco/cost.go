package lgreco

import (
	"math"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/compressors"
)

// ModelCost returns the link-aware objective of the alpha-beta(-gamma) model
// m for a job of world ranks: the modelled time in seconds of the collective
// that each candidate's aggregation runs (SchemeCost), for the layers given to
// NewPlan (the same slice, by index). For topologies that one (α, β) pair
// does not describe, plug in a CostFunc backed by the simulator instead.
func ModelCost(m allreduce.Model, world int, layers []Layer) CostFunc {
	return func(l int, c Candidate) float64 {
		return SchemeCost(m, world, layers[l].Rows, layers[l].Cols, c)
	}
}

// SchemeCost is the modelled time in seconds of one layer's collective for
// candidate c: m.Cost of the program Scheme returns (dense rings with the
// model's best segment count). It returns +Inf for a
// world below 1 or a model that gives no finite time.
func SchemeCost(m allreduce.Model, world, rows, cols int, c Candidate) float64 {
	alg, p, ok := Scheme(world, rows, cols, c)
	if !ok {
		return math.Inf(1)
	}
	if alg == allreduce.AlgRing {
		p.Segments = m.BestSegments(alg, p)
	}
	t := m.Cost(alg, p)
	if math.IsNaN(t) || t < 0 {
		return math.Inf(1)
	}
	return t
}

// Scheme returns the collective that package worker runs for a rows×cols
// layer compressed with candidate c over world ranks, as an allreduce
// algorithm and its parameters (Rank 0; set Rank, or use sim.Programs, for
// the other ranks). A simulator-backed CostFunc generates these programs and
// times them on its topology:
//
//	Reduce   ring all-reduce (averaging) of Rows·Cols elements at the codec's
//	         element size (Segments left 0: choose with Model.BestSegments)
//	Gather   sparse gather: all-gather of c.Bytes per rank (Sizes), then the
//	         rank-order decode-adds; its traffic grows with N·payload
//	TwoPhase the two-phase sign all-reduce
//	LowRank  the P-then-Q ring all-reduces of Rows·r and Cols·r elements
//	         (r capped at min(Rows, Cols))
//
// ok is false for world < 1 or a codec without a scheme.
func Scheme(world, rows, cols int, c Candidate) (alg allreduce.Algorithm, p allreduce.Params, ok bool) {
	if world < 1 {
		return 0, p, false
	}
	n := rows * cols
	p = allreduce.Params{World: world, Elems: n}
	switch c.Recipe.Aggregation() {
	case compressors.Reduce:
		alg = allreduce.AlgRing
		p.ElemBytes = 4
		if c.Recipe.Codec == compressors.CodecFP16 || c.Recipe.Codec == compressors.CodecBF16 {
			p.ElemBytes = 2
		}
		p.Average = true
	case compressors.Gather:
		alg = allreduce.AlgSparseGather
		p.Sizes = make([]int64, world)
		for i := range p.Sizes {
			p.Sizes[i] = c.Bytes
		}
	case compressors.TwoPhase:
		alg = allreduce.AlgTwoPhaseSign
	case compressors.LowRank:
		alg = allreduce.AlgLowRank
		p.Rows, p.Cols, p.Components = rows, cols, min(c.Recipe.Rank, rows, cols)
	default:
		return 0, p, false
	}
	return alg, p, true
}
