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
// candidate c, with the scheme package worker runs for its aggregation:
//
//	Reduce   ring all-reduce of Rows·Cols elements at the codec's element
//	         size, with the model's best segment count
//	Gather   sparse gather: an all-gather of c.Bytes per rank, then the
//	         rank-order decode-adds, Σ growing with N·payload
//	TwoPhase the two-phase sign all-reduce
//	LowRank  the P-then-Q ring all-reduces of Rows·r and Cols·r elements
//	         (r capped at min(Rows, Cols)) plus the three products
//
// It returns +Inf for a world below 1 or a model that rejects the parameters.
func SchemeCost(m allreduce.Model, world, rows, cols int, c Candidate) float64 {
	if world < 1 {
		return math.Inf(1)
	}
	n := rows * cols
	p := allreduce.Params{World: world, Elems: n}
	var alg allreduce.Algorithm
	switch c.Recipe.Aggregation() {
	case compressors.Reduce:
		alg = allreduce.AlgRing
		p.ElemBytes = 4
		if c.Recipe.Codec == compressors.CodecFP16 || c.Recipe.Codec == compressors.CodecBF16 {
			p.ElemBytes = 2
		}
		p.Average = true
		p.Segments = m.BestSegments(alg, p)
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
		return math.Inf(1)
	}
	t := m.Cost(alg, p)
	if math.IsNaN(t) || t < 0 {
		return math.Inf(1)
	}
	return t
}
