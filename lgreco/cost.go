package lgreco

import (
	"math"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/binding"
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
// algorithm and its parameters for rank 0 (set Rank, or use sim.Programs,
// for the other ranks): binding.NominalScheme of the layer with a dense
// ring for Reduce codecs (Segments left 0: choose with Model.BestSegments)
// and c.Bytes per rank for a sparse gather. A simulator-backed CostFunc
// generates these programs and times them on its topology.
//
// ok is false for world < 1 or a codec without a scheme.
func Scheme(world, rows, cols int, c Candidate) (alg allreduce.Algorithm, p allreduce.Params, ok bool) {
	if world < 1 || rows < 1 || cols < 1 {
		return 0, p, false
	}
	alg, p, err := binding.NominalScheme(binding.Spec{Codec: c.Recipe, Elems: rows * cols, Rows: rows, Cols: cols,
		World: world, Algorithm: allreduce.AlgRing}, c.Bytes)
	return alg, p, err == nil
}
