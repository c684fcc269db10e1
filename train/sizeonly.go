package train

import (
	"context"
	"fmt"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
)

// SizeOnly simulates one step of n workers exchanging units without data:
// the simulator's size-only mode, cheap enough for thousands of ranks. Each
// unit runs the scheme Sim would run for the plan's codec (or for how[u]:
// DenseMean is a dense fp32 all-reduce, TwoPhaseSign the two-phase 1-bit
// scheme) with message sizes from the codec's nominal payload
// (compressors.Recipe.NominalBytes: for DGC the upper bound; for PowerSGD
// the P and Q factors). Error feedback
// changes no sizes and is not simulated. The Stats have the same meaning as
// Sim's, with PayloadBytes nominal and BaselineTime left 0 (see
// SizeOnlyBaseline).
func SizeOnly(ctx context.Context, n int, units []Layer, plan Plan, how []optim.Exchange, cfg SimConfig) (Stats, error) {
	if cfg.Topology == nil {
		return Stats{}, fmt.Errorf("train: SizeOnly: no topology")
	}
	if len(how) != len(units) || n < 1 {
		return Stats{}, fmt.Errorf("train: SizeOnly: %d workers, %d aggregations for %d units", n, len(how), len(units))
	}
	if err := plan.validate(); err != nil {
		return Stats{}, err
	}
	if err := cfg.checkCompute("SizeOnly"); err != nil {
		return Stats{}, err
	}
	if cfg.FLOPS == 0 {
		cfg.FLOPS = DefaultFLOPS
	}
	s := &Sim{cfg: cfg, units: units, n: n}
	if err := s.computeModel(); err != nil {
		return Stats{}, err
	}
	dense := s.denseAlg()
	st := Stats{Layers: make([]LayerStats, len(units))}
	var colls []sim.Collective
	start := s.gradTime.Seconds()
	for u, unit := range units {
		r, err := compressors.Parse(plan.RecipeAt(unit, 1<<30))
		if err != nil {
			return Stats{}, err
		}
		var opts []compressors.Option
		rows, cols := 1, unit.Size
		if len(unit.Shape) >= 2 {
			rows, cols = unit.Shape[0], unit.Size/unit.Shape[0]
			opts = append(opts, compressors.WithShape(rows, cols))
		}
		p := allreduce.Params{World: n, Elems: unit.Size}
		alg := dense
		payload := int64(4 * unit.Size)
		switch agg := r.Aggregation(); {
		case how[u] == optim.DenseMean:
			p.Average, p.ElemBytes = true, 4
		case how[u] == optim.TwoPhaseSign || agg == compressors.TwoPhase:
			alg = allreduce.AlgTwoPhaseSign
			if how[u] == optim.TwoPhaseSign {
				if r, err = plan.SignRecipe(); err != nil {
					return Stats{}, err
				}
			}
			p.SignBlock = r.Block
			lay, err := allreduce.NewTwoPhaseLayout(unit.Size, n, r.Block)
			if err != nil {
				return Stats{}, fmt.Errorf("train: unit %s: %w", unit.Name, err)
			}
			payload = int64(lay.PayloadBytes())
		case agg == compressors.Reduce:
			c, err := r.New(unit.Size, opts...)
			if err != nil {
				return Stats{}, err
			}
			ec, ok := compressors.AsElementCodec(c)
			if !ok {
				return Stats{}, fmt.Errorf("%w: %s has no element codec", ErrUnsupported, r)
			}
			p.Average, p.ElemBytes = true, ec.BytesPerElem()
			payload = int64(p.ElemBytes) * int64(unit.Size)
		case agg == compressors.Gather:
			alg = allreduce.AlgSparseGather
			payload = r.NominalBytes(unit.Size, opts...)
			p.Sizes = make([]int64, n)
			for i := range p.Sizes {
				p.Sizes[i] = payload
			}
		case agg == compressors.LowRank:
			alg = allreduce.AlgLowRank
			p.Rows, p.Cols, p.Components = rows, cols, r.Rank
			payload = 4 * int64(rows+cols) * int64(r.Rank) // the P and Q factors
		default:
			return Stats{}, fmt.Errorf("%w: aggregation %v", ErrUnsupported, agg)
		}
		c, err := sizeOnlyCollective(ctx, unit.Name, alg, p)
		if err != nil {
			return Stats{}, fmt.Errorf("train: %s for %s: %w", alg, unit.Name, err)
		}
		c.Start, c.Recipe = start, r.String()
		switch {
		case how[u] == optim.DenseMean:
			c.Recipe = "none"
		case how[u] == optim.TwoPhaseSign:
			c.Recipe = r.String()
		case r.Aggregation() == compressors.Reduce && plan.efRecipe() != "none":
			// Error feedback's encode and decode before the program, as
			// Sim charges it.
			c.Prologue = sim.Prologue{Fn: allreduce.FnEncode, Elems: int64(unit.Size)}
		}
		colls = append(colls, c)
		st.Layers[u] = LayerStats{PayloadBytes: int64(n) * payload, DenseBytes: DenseRingBytes(n, unit.Size)}
	}
	res, err := sim.Run(ctx, cfg.Topology, colls, s.options())
	if err != nil {
		return Stats{}, fmt.Errorf("train: size-only simulation: %w", err)
	}
	for u := range units {
		ls := &st.Layers[u]
		ls.WireBytes = res.Collectives[u].Bytes
		st.PayloadBytes += ls.PayloadBytes
		st.WireBytes += ls.WireBytes
		st.DenseBytes += ls.DenseBytes
	}
	st.GradTime = s.gradTime
	st.StepTime = seconds(res.Time)
	st.CodecTime = seconds(res.Compress)
	st.ReduceTime = seconds(res.Compute)
	st.CommTime = max(0, seconds(res.Communicate)-s.gradTime)
	return st, nil
}

// SizeOnlyBaseline is the simulated step time of a dense fp32 all-reduce of
// units with cfg.Dense (the ring by default) over n workers, gradient
// compute included: the BaselineTime that SizeOnly leaves to its caller,
// since it is the same for every plan.
func SizeOnlyBaseline(ctx context.Context, n int, units []Layer, cfg SimConfig) (time.Duration, error) {
	if cfg.Topology == nil {
		return 0, fmt.Errorf("train: SizeOnlyBaseline: no topology")
	}
	if err := cfg.checkCompute("SizeOnlyBaseline"); err != nil {
		return 0, err
	}
	if cfg.FLOPS == 0 {
		cfg.FLOPS = DefaultFLOPS
	}
	s := &Sim{cfg: cfg, units: units, n: n}
	if err := s.computeModel(); err != nil {
		return 0, err
	}
	var base []sim.Collective
	for _, unit := range units {
		c, err := sizeOnlyCollective(ctx, unit.Name, s.denseAlg(), allreduce.Params{World: n, Elems: unit.Size, Average: true, ElemBytes: 4})
		if err != nil {
			return 0, err
		}
		c.Start = s.gradTime.Seconds()
		base = append(base, c)
	}
	res, err := sim.Run(ctx, cfg.Topology, base, s.options())
	if err != nil {
		return 0, fmt.Errorf("train: size-only dense baseline: %w", err)
	}
	return seconds(res.Time), nil
}

// sizeOnlyCollective is the size-only collective of alg for p.World ranks:
// its programs computed on demand where allreduce has a shared form (memory
// linear in the ranks, sim.SizeOnlyCollective), else generated per rank
// (stopping with ctx.Err() when ctx ends).
func sizeOnlyCollective(ctx context.Context, name string, alg allreduce.Algorithm, p allreduce.Params) (sim.Collective, error) {
	if _, err := allreduce.NewShared(alg, p); err == nil {
		return sim.SizeOnlyCollective(name, alg, p)
	}
	progs, err := generateAll(ctx, alg, p, p.World)
	if err != nil {
		return sim.Collective{}, err
	}
	return sim.Collective{Name: name, Programs: progs}, nil
}

// generateAll generates every rank's program; it stops with ctx.Err()
// when ctx ends (thousands of ranks take seconds).
func generateAll(ctx context.Context, alg allreduce.Algorithm, p allreduce.Params, n int) ([]*allreduce.Program, error) {
	progs := make([]*allreduce.Program, n)
	for r := range n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		p.Rank = r
		prog, err := allreduce.Generate(alg, p)
		if err != nil {
			return nil, err
		}
		progs[r] = prog
	}
	return progs, nil
}
