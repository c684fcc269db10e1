package sim

import (
	"context"
	"errors"
	"fmt"

	"github.com/slimgrad/slimgrad/allreduce"
)

// Programs generates the programs of every rank of one collective:
// allreduce.Generate(alg, p) with p.Rank = 0 .. p.World−1, stored
// contiguously (allreduce.GenerateAll), which is the layout the simulator
// steps fastest.
func Programs(alg allreduce.Algorithm, p allreduce.Params) ([]*allreduce.Program, error) {
	progs, err := allreduce.GenerateAll(alg, p)
	if err != nil {
		return nil, fmt.Errorf("sim: generating %v: %w", alg, err)
	}
	return progs, nil
}

// SizeOnlyCollective returns a size-only collective of alg for p.World
// ranks named name: its programs computed on demand (Collective.Shared)
// where allreduce has a shared form (the ring family, AllGatherV,
// SparseGather), so that memory grows with the number of ranks rather than
// with its square, and generated per rank (Programs) otherwise. Both run
// the same ops and give the same Result.
func SizeOnlyCollective(name string, alg allreduce.Algorithm, p allreduce.Params) (Collective, error) {
	sh, err := allreduce.NewShared(alg, p)
	if err == nil {
		return Collective{Name: name, Shared: sh}, nil
	}
	if !errors.Is(err, allreduce.ErrNotShared) {
		return Collective{}, fmt.Errorf("sim: generating %v: %w", alg, err)
	}
	progs, err := Programs(alg, p)
	if err != nil {
		return Collective{}, err
	}
	return Collective{Name: name, Programs: progs}, nil
}

// elems is the float32 element count of c's programs (Program.Elems).
func (c *Collective) elems() int {
	if c.Shared != nil {
		return c.Shared.Elems
	}
	if len(c.Programs) > 0 {
		return c.Programs[0].Elems
	}
	return 0
}

// Baseline simulates the dense fp32 reference for a step: one ring
// all-reduce (averaging) of elems float32 elements over world ranks on topo,
// size-only, with the placement and compute model of opts (its Trace and
// SizeHint are not used).
func Baseline(ctx context.Context, topo *Topology, world, elems int, opts *Options) (*Result, error) {
	c, err := SizeOnlyCollective("dense-fp32-ring", allreduce.AlgRing, allreduce.Params{World: world, Elems: elems, Average: true})
	if err != nil {
		return nil, err
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	o.Trace, o.SizeHint, o.Recipe = nil, nil, ""
	return Run(ctx, topo, []Collective{c}, &o)
}

// StepResult is a step's simulated cost next to that of the dense fp32
// baseline on the same topology.
type StepResult struct {
	*Result
	// Baseline is the dense fp32 ring all-reduce of DenseElems elements.
	Baseline *Result
	// DenseElems is the total float32 elements of the step's collectives
	// (the sum of their programs' Elems).
	DenseElems int
}

// Speedup is Baseline.Time / Time.
func (s *StepResult) Speedup() float64 { return s.Baseline.Time / s.Time }

// ByteSavings is Baseline.Bytes / Bytes: how many times fewer bytes the step
// moved than the dense baseline.
func (s *StepResult) ByteSavings() float64 {
	if s.Bytes == 0 {
		return 0
	}
	return float64(s.Baseline.Bytes) / float64(s.Bytes)
}

// RunStep runs the step's collectives (see Run) and the dense baseline for
// the same total number of elements.
func RunStep(ctx context.Context, topo *Topology, colls []Collective, opts *Options) (*StepResult, error) {
	res, err := Run(ctx, topo, colls, opts)
	if err != nil {
		return nil, err
	}
	elems := 0
	for i := range colls {
		elems += colls[i].elems()
	}
	if len(colls) == 0 {
		return &StepResult{Result: res, Baseline: &Result{}}, nil
	}
	base, err := Baseline(ctx, topo, colls[0].world(), elems, opts)
	if err != nil {
		return nil, fmt.Errorf("sim: baseline: %w", err)
	}
	return &StepResult{Result: res, Baseline: base, DenseElems: elems}, nil
}
