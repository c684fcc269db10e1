package train

import (
	"context"
	"fmt"

	"github.com/slimgrad/slimgrad/worker"
	"github.com/slimgrad/slimgrad/workload"
)

// RunRankOuter trains one rank of a multi-process job with the outer loop o
// (see Outer and RunOuter): this process's replica of task.Model on its shard
// (Shard(task.Train, World, Split, Seed), the sampler of rank Rank, as
// RunOuter's worker Rank), its inner and outer optimizers, its global copy,
// and the step loop RunOuter runs, with one worker per fragment doing the
// exchanges: ws[p] (started or not; RunRankOuter registers fragment p's
// units on it as plan says, with codec as RegisterUnits) exchanges fragment
// p's pseudo-gradients, so that each fragment keeps its own error feedback
// and codec schedule as in RunOuter. len(ws) must be o's number of
// fragments, and each worker must have its own connection (a Worker owns its
// connection's tag space). With the same seed and settings and workers made
// with WorkerOptions, every rank's global copy follows that of RunOuter's
// workers over a Workers exchanger (and over Sim, which computes the same)
// bit for bit.
//
// Records: Loss is this rank's mini-batch loss and the byte counts this
// rank's times World, or, with cfg.Combine, the job's figures as Combine
// returns them (the dense baseline of a step is passed to Combine split into
// the ranks' shares, so that their sum is the job's dense ring bytes).
// Evaluations and Result.Model are this rank's global copy θ_g. There is no
// simulated time. RunRankOuter returns ctx.Err() if ctx is cancelled and
// ErrDiverged if this rank's loss becomes NaN/Inf: before it returns, it runs
// the next sync due (every rank's next) at once with a NaN pseudo-gradient
// (with Combine, after its figures of the steps before it), so that under
// the workers' worker.NaNError policy every other rank stops at that sync
// with a *worker.NonFiniteError naming this rank, rather than waiting for
// it until a timeout; the sync's error is joined to ErrDiverged.
func RunRankOuter(ctx context.Context, cfg RankConfig, task Task, ws []*worker.Worker, plan Plan, codec string, inner OptimSpec, o Outer, onStep func(Record)) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.World < 1 || cfg.Rank < 0 || cfg.Rank >= cfg.World {
		return nil, fmt.Errorf("train: RunRankOuter as rank %d of %d", cfg.Rank, cfg.World)
	}
	units := Units(task.Model, inner.Flat)
	if err := o.validate(len(units)); err != nil {
		return nil, err
	}
	frags := o.frags(len(units))
	if len(ws) != len(frags) {
		return nil, fmt.Errorf("%w: %d workers for %d fragments, want one worker per fragment", ErrOuter, len(ws), len(frags))
	}
	for p, w := range ws {
		if w == nil {
			return nil, fmt.Errorf("%w: no worker for fragment %d", ErrOuter, p)
		}
		if cfg.World != w.World() || cfg.Rank != w.Rank() {
			return nil, fmt.Errorf("train: RunRankOuter as rank %d of %d over the worker of fragment %d of rank %d of %d", cfg.Rank, cfg.World, p, w.Rank(), w.World())
		}
	}
	shards, err := workload.Shard(task.Train, cfg.World, cfg.Split, cfg.Seed)
	if err != nil {
		return nil, err
	}
	exs := make([]Exchanger, len(frags))
	for p, us := range frags {
		ls := make([]Layer, len(us))
		for i, u := range us {
			ls[i] = units[u]
		}
		if err := RegisterUnits(ws[p], ls, plan, codec); err != nil {
			return nil, fmt.Errorf("train: fragment %d: %w", p, err)
		}
		if err := ws[p].Start(ctx); err != nil {
			return nil, fmt.Errorf("train: fragment %d: %w", p, err)
		}
		exs[p] = &Workers{ws: []*worker.Worker{ws[p]}, units: ls, leds: make([]*worker.Ledger, 1), errs: make([]error, 1)}
	}
	r, err := newOuterReplica(task, cfg.Config, inner, o.Optim, units, shards[cfg.Rank], cfg.Rank)
	if err != nil {
		return nil, err
	}
	run := outerRun{cfg: cfg.Config, task: task, units: units, frags: frags, exs: exs, reps: []*outerReplica{r},
		world: cfg.World, rank: cfg.Rank, o: o, combine: cfg.Combine}
	return run.run(ctx, onStep)
}
