package train

import (
	"context"
	"fmt"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/binding"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/engine"
	"github.com/slimgrad/slimgrad/errorfeedback"
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
	st, _, err := SizeOnlyRun(ctx, n, units, plan, how, cfg)
	return st, err
}

// SizeOnlyRun is SizeOnly that also returns the simulator's Result of the
// step: its Events, and its Groups and NotAggregated, which say whether
// cfg.Options.Aggregate's aggregated mode ran.
func SizeOnlyRun(ctx context.Context, n int, units []Layer, plan Plan, how []optim.Exchange, cfg SimConfig) (Stats, *sim.Result, error) {
	st, res, err := sizeOnly(ctx, n, units, plan, how, cfg)
	if err != nil {
		return Stats{}, nil, err
	}
	return st, res, nil
}

func sizeOnly(ctx context.Context, n int, units []Layer, plan Plan, how []optim.Exchange, cfg SimConfig) (Stats, *sim.Result, error) {
	if cfg.Topology == nil {
		return Stats{}, nil, fmt.Errorf("train: SizeOnly: no topology")
	}
	if len(how) != len(units) || n < 1 {
		return Stats{}, nil, fmt.Errorf("train: SizeOnly: %d workers, %d aggregations for %d units", n, len(how), len(units))
	}
	if err := plan.validate(); err != nil {
		return Stats{}, nil, err
	}
	if err := cfg.checkCompute("SizeOnly"); err != nil {
		return Stats{}, nil, err
	}
	if cfg.FLOPS == 0 {
		cfg.FLOPS = DefaultFLOPS
	}
	s := &Sim{cfg: cfg, units: units, n: n}
	if err := s.computeModel(); err != nil {
		return Stats{}, nil, err
	}
	layers, err := engineLayers(units, plan, "")
	if err != nil {
		return Stats{}, nil, err
	}
	pol := cfg.policy(n, plan.Seed)
	flags, err := flagExchange(pol)
	if err != nil {
		return Stats{}, nil, err
	}
	idx := make([]int, len(units))
	noEF := errorfeedback.Recipe{Kind: errorfeedback.KindNone}
	st := Stats{Layers: make([]LayerStats, len(units))}
	var colls []sim.Collective
	start := s.gradTime.Seconds()
	for u, unit := range units {
		l := layers[u]
		r, ef := l.Codec, l.EF
		if k := len(l.Stages); k > 0 {
			r = l.Stages[k-1].Codec // the steady state, after the warm-up
		}
		switch how[u] {
		case optim.Mean:
		case optim.DenseMean:
			r, ef = compressors.MustParse("none"), noEF
		case optim.TwoPhaseSign:
			if r, err = plan.SignRecipe(); err != nil {
				return Stats{}, nil, err
			}
			ef = noEF
		default:
			return Stats{}, nil, fmt.Errorf("%w: aggregation %v", ErrUnsupported, how[u])
		}
		rows, cols := engine.MatrixShape(unit.Shape)
		spec, err := pol.SchemeFor(r, ef, unit.Size, rows, cols)
		if err != nil {
			return Stats{}, nil, fmt.Errorf("train: unit %s: %w", unit.Name, err)
		}
		_, p, err := binding.SchemeFor(spec)
		if err != nil {
			return Stats{}, nil, fmt.Errorf("train: unit %s: %w", unit.Name, err)
		}
		// The payload of one rank.
		var payload int64
		switch r.Aggregation() {
		case compressors.Reduce:
			payload = int64(p.ElemBytes) * int64(unit.Size)
		case compressors.Gather:
			var opts []compressors.Option
			if len(unit.Shape) >= 2 {
				opts = append(opts, compressors.WithShape(rows, cols))
			}
			payload = r.NominalBytes(unit.Size, opts...)
		case compressors.TwoPhase:
			lay, err := allreduce.NewTwoPhaseLayout(unit.Size, n, r.Block)
			if err != nil {
				return Stats{}, nil, fmt.Errorf("train: unit %s: %w", unit.Name, err)
			}
			payload = int64(lay.PayloadBytes())
		case compressors.LowRank:
			payload = 4 * int64(p.Rows+p.Cols) * int64(p.Components) // the P and Q factors
		}
		alg, p, err := binding.NominalScheme(spec, payload)
		if err != nil {
			return Stats{}, nil, fmt.Errorf("train: unit %s: %w", unit.Name, err)
		}
		c, err := sizeOnlyCollective(ctx, unit.Name, alg, p)
		if err != nil {
			return Stats{}, nil, fmt.Errorf("train: %s for %s: %w", alg, unit.Name, err)
		}
		c.Start, c.Recipe = start, r.String()
		if r.Aggregation() == compressors.Reduce && ef.Kind != errorfeedback.KindNone {
			// Error feedback's encode and decode before the program, as
			// Sim charges it.
			c.Prologue = sim.Prologue{Fn: allreduce.FnEncode, Elems: int64(unit.Size)}
		}
		colls, idx[u] = withFlags(colls, flags, c)
		st.Layers[u] = LayerStats{PayloadBytes: int64(n) * payload, DenseBytes: DenseRingBytes(n, unit.Size)}
	}
	res, err := sim.Run(ctx, cfg.Topology, colls, s.options())
	if err != nil {
		return Stats{}, nil, fmt.Errorf("train: size-only simulation: %w", err)
	}
	for u := range units {
		ls := &st.Layers[u]
		ls.WireBytes = res.Collectives[idx[u]].Bytes
		st.PayloadBytes += ls.PayloadBytes
		st.WireBytes += ls.WireBytes
		st.DenseBytes += ls.DenseBytes
	}
	st.GradTime = s.gradTime
	st.StepTime = seconds(res.Time)
	st.CodecTime = seconds(res.Compress)
	st.ReduceTime = seconds(res.Compute)
	st.CommTime = max(0, seconds(res.Communicate)-s.gradTime)
	return st, res, nil
}

// SizeOnlyBaseline is the simulated step time of a dense fp32 all-reduce of
// units with cfg.Dense (the ring by default) over n workers, gradient
// compute included: the BaselineTime that SizeOnly leaves to its caller,
// since it is the same for every plan.
func SizeOnlyBaseline(ctx context.Context, n int, units []Layer, cfg SimConfig) (time.Duration, error) {
	t, _, err := SizeOnlyBaselineRun(ctx, n, units, cfg)
	return t, err
}

// SizeOnlyBaselineRun is SizeOnlyBaseline that also returns the
// simulator's Result (see SizeOnlyRun).
func SizeOnlyBaselineRun(ctx context.Context, n int, units []Layer, cfg SimConfig) (time.Duration, *sim.Result, error) {
	t, res, err := sizeOnlyBaseline(ctx, n, units, cfg)
	if err != nil {
		return 0, nil, err
	}
	return t, res, nil
}

func sizeOnlyBaseline(ctx context.Context, n int, units []Layer, cfg SimConfig) (time.Duration, *sim.Result, error) {
	if cfg.Topology == nil {
		return 0, nil, fmt.Errorf("train: SizeOnlyBaseline: no topology")
	}
	if err := cfg.checkCompute("SizeOnlyBaseline"); err != nil {
		return 0, nil, err
	}
	if cfg.FLOPS == 0 {
		cfg.FLOPS = DefaultFLOPS
	}
	s := &Sim{cfg: cfg, units: units, n: n}
	if err := s.computeModel(); err != nil {
		return 0, nil, err
	}
	var base []sim.Collective
	for _, unit := range units {
		c, err := sizeOnlyCollective(ctx, unit.Name, s.denseAlg(), allreduce.Params{World: n, Elems: unit.Size, Average: true, ElemBytes: 4})
		if err != nil {
			return 0, nil, err
		}
		c.Start = s.gradTime.Seconds()
		base = append(base, c)
	}
	res, err := sim.Run(ctx, cfg.Topology, base, s.options())
	if err != nil {
		return 0, nil, fmt.Errorf("train: size-only dense baseline: %w", err)
	}
	return seconds(res.Time), res, nil
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
