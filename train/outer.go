package train

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"time"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/workload"
)

// Outer configures an outer loop over local training: DiLoCo (Douillard et
// al. 2023) and Streaming DiLoCo (Douillard et al. 2025).
//
// Every worker runs its inner optimizers on its own shard with no
// communication. Fragment p of the model (the units u with u mod Fragments
// == p, the strided pattern of Streaming DiLoCo) is synchronised after the
// inner steps t with (t+1−Offset(p)) mod H == 0 and t+1 ≥ Offset(p), where
// Offset(p) = p·H/Fragments: each fragment once in every H consecutive steps,
// fragments staggered over the round. A sync of fragment p after step t:
//
//	Δ_w = θ_g − θ_w                     pseudo-gradient of worker w (units of p)
//	send, how = outer_w.Prepare(Δ_w)    per unit
//	avg = Exchange(send)                the exchanger of p: its codec, error
//	                                    feedback, scheme, ledger, transport
//
// and after step t+Delay (the communication overlaps Delay inner steps):
//
//	outer_w.Step(θ_g, avg)              the outer optimizer on the global copy
//	θ_w = Mix·θ_g + (1−Mix)·θ_w         Mix = 1: θ_w = θ_g exactly
//
// At the last step of the run every fragment not due then is synchronised too
// and every pending update applied, so that the final global model holds all
// the work done. With Delay 0, Fragments 1 and Mix 1 this is DiLoCo; H = 1
// with the outer optimizer SGD at lr 1 (the identity: θ_g ← θ_g − avg) is
// data-parallel training on averaged parameter updates.
type Outer struct {
	// H is the number of inner steps between two syncs of a fragment (≥ 1).
	H int
	// Optim builds the outer optimizer of a unit (its New is called once per
	// unit and worker; Flat and Sign are ignored: the units are the inner
	// optimizers'). DiLoCo's is Nesterov momentum (optim.NewMomentum with
	// nesterov, lr 0.7, m 0.9); SGD at lr 1 is the identity.
	Optim OptimSpec
	// Fragments is the number of fragments F (0 or 1: the whole model); at
	// most the number of units.
	Fragments int
	// Delay is τ, the inner steps a fragment's sync overlaps before its
	// outer update is applied, in [0, H).
	Delay int
	// Mix is α of Streaming DiLoCo's merge, in (0, 1]; 0 means 1.
	Mix float64
}

// ErrOuter is wrapped by RunOuter's configuration errors.
var ErrOuter = errors.New("train: bad outer-loop config")

func (o Outer) fragments() int { return max(1, o.Fragments) }

func (o Outer) mix() float64 {
	if o.Mix == 0 {
		return 1
	}
	return o.Mix
}

func (o Outer) validate(units int) error {
	switch {
	case o.H < 1:
		return fmt.Errorf("%w: H %d, want at least 1 inner step per round", ErrOuter, o.H)
	case o.Fragments < 0 || o.fragments() > units:
		return fmt.Errorf("%w: %d fragments for %d units, want 1 to %d", ErrOuter, o.Fragments, units, units)
	case o.Delay < 0 || o.Delay >= o.H:
		return fmt.Errorf("%w: delay %d, want 0 to H-1 = %d (a fragment's update must arrive before its next sync)", ErrOuter, o.Delay, o.H-1)
	case !(o.Mix >= 0 && o.Mix <= 1):
		return fmt.Errorf("%w: mix %g, want in (0, 1] (0: 1)", ErrOuter, o.Mix)
	case o.Optim.New == nil:
		return fmt.Errorf("%w: no outer optimizer", ErrOuter)
	}
	return nil
}

// Offset is the first step count (inner steps done) at which fragment p
// syncs: p·H/F.
func (o Outer) Offset(p int) int { return p * o.H / o.fragments() }

// Due reports whether fragment p is synchronised after inner step step
// (0-based) by the schedule (not counting the final flush).
func (o Outer) Due(p, step int) bool {
	done, off := step+1, o.Offset(p)
	if off == 0 {
		off = o.H
	}
	return done >= off && (done-off)%o.H == 0
}

// Fragment returns the fragment of unit u: u mod F.
func (o Outer) Fragment(u int) int { return u % o.fragments() }

// String describes the outer loop, e.g. "outer H=10 F=2 τ=1 α=0.5 nesterov".
func (o Outer) String() string {
	return fmt.Sprintf("outer H=%d F=%d τ=%d α=%g %s", o.H, o.fragments(), o.Delay, o.mix(), o.Optim.Name)
}

// ExchangerFactory builds the exchanger of a subset of the model's units
// (one fragment), for the workers of the run. The caller of RunOuter gets
// the exchangers it builds closed (io.Closer) when RunOuter returns.
type ExchangerFactory func(ctx context.Context, units []Layer) (Exchanger, error)

// RunOuter trains cfg.Workers replicas of task.Model (cloned) with the outer
// loop o: per step, every worker computes its mini-batch gradient and its
// inner optimizers (inner, one per unit of Units(task.Model, inner.Flat))
// step on it locally, the inner optimizer's own vector standing for the
// aggregate (no communication); fragments sync as o says.
//
// ex exchanges the whole model's pseudo-gradients when o has one fragment;
// with several, newEx builds one exchanger per fragment over its units (each
// keeps its own error feedback and codec schedule, whose step is the
// fragment's sync count) and ex only provides the simulated times. An
// exchanger that reports BaselineTime() and GradTime() (Sim) prices the run:
// a local step takes GradTime, a sync's collectives start when its step's
// gradients are done and must be finished when its update is applied
// (overlapping Delay inner steps; concurrent fragment syncs are priced
// separately, without sharing links).
//
// State per worker: the local model θ_w (trained by the inner optimizers,
// whose state persists across rounds), the global copy θ_g (one more copy of
// the parameters, identical on every worker after every sync), one outer
// optimizer per unit (identical on every worker), the pseudo-gradient and
// aggregate buffers (two more copies of the parameters) and, inside the
// exchangers, each rank's error feedback of the pseudo-gradients.
//
// Records: Loss is the mean of the workers' mini-batch losses; evaluations
// and Result.Model are worker 0's global model θ_g; DenseBytes of every step
// is what a dense fp32 ring all-reduce of the whole model sends (per-step
// data parallelism, the baseline of the savings), WireBytes what this step's
// syncs sent (0 on a local step), Synced the number of fragments exchanged.
// cfg.CheckReplicas compares the workers' θ_g after every step. A sync whose
// exchange skipped the update (worker.NaNSkip on real workers) leaves θ_g and
// the outer optimizers as they were (optim.Optimizer.Skip) and the local
// progress in θ_w for the next sync; Record.Skipped says so. RunOuter returns ctx.Err() if ctx is
// cancelled and ErrDiverged if the loss becomes NaN/Inf.
func RunOuter(ctx context.Context, cfg Config, task Task, ex Exchanger, newEx ExchangerFactory, inner OptimSpec, o Outer, onStep func(Record)) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	units := Units(task.Model, inner.Flat)
	if err := o.validate(len(units)); err != nil {
		return nil, err
	}
	shards, err := workload.Shard(task.Train, cfg.Workers, cfg.Split, cfg.Seed)
	if err != nil {
		return nil, err
	}
	n, nf := cfg.Workers, o.fragments()
	frags := o.frags(len(units))
	exs := []Exchanger{ex}
	if nf > 1 {
		if newEx == nil {
			return nil, fmt.Errorf("%w: %d fragments need an exchanger factory", ErrOuter, nf)
		}
		exs = make([]Exchanger, nf)
		defer func() {
			for _, x := range exs {
				if c, ok := x.(io.Closer); ok {
					c.Close()
				}
			}
		}()
		for p, us := range frags {
			ls := make([]Layer, len(us))
			for i, u := range us {
				ls[i] = units[u]
			}
			if exs[p], err = newEx(ctx, ls); err != nil {
				return nil, fmt.Errorf("train: exchanger of fragment %d: %w", p, err)
			}
		}
	}
	run := outerRun{cfg: cfg, task: task, units: units, frags: frags, exs: exs, world: n, rank: -1, o: o}
	if c, ok := ex.(interface {
		GradTime() time.Duration
		BaselineTime() time.Duration
	}); ok {
		run.gradTime, run.baseline = c.GradTime(), c.BaselineTime()
	}
	for w := range n {
		r, err := newOuterReplica(task, cfg, inner, o.Optim, units, shards[w], w)
		if err != nil {
			return nil, err
		}
		run.reps = append(run.reps, r)
	}
	return run.run(ctx, onStep)
}

// frags returns the units (indices) of each fragment.
func (o Outer) frags(units int) [][]int {
	frags := make([][]int, o.fragments())
	for u := range units {
		frags[o.Fragment(u)] = append(frags[o.Fragment(u)], u)
	}
	return frags
}

// outerRun is the step loop of an outer loop, shared by RunOuter (every
// worker's replica in this process, rank −1) and RunRankOuter (one rank's
// replica, its exchangers being this rank's workers).
type outerRun struct {
	cfg                Config
	task               Task
	units              []Layer
	frags              [][]int
	exs                []Exchanger // per fragment
	reps               []*outerReplica
	world, rank        int
	o                  Outer
	gradTime, baseline time.Duration // simulated; 0 without a simulator
	// combine (RunRankOuter's RankConfig.Combine) turns the rank's loss and
	// byte counts into the job's.
	combine func(ctx context.Context, step int, loss float64, st Stats) (float64, Stats, error)
}

// denseShare is rank's share of a dense ring's bytes for a unit of size
// elements: the job's total split over the ranks so that the shares sum to
// it exactly.
func denseShare(world, rank, size int) int64 {
	t := DenseRingBytes(world, size)
	s := t / int64(world)
	if int64(rank) < t%int64(world) {
		s++
	}
	return s
}

func (x *outerRun) run(ctx context.Context, onStep func(Record)) (*Result, error) {
	cfg, o, units, frags, reps, exs := x.cfg, x.o, x.units, x.frags, x.reps, x.exs
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n, nf := len(reps), len(frags)
	var denseBytes int64
	for _, u := range units {
		denseBytes += DenseRingBytes(x.world, u.Size)
	}
	// Exchange buffers of each fragment: [fragment][worker][unit of fragment].
	in, out := make([][][][]float32, nf), make([][][][]float32, nf)
	for p, us := range frags {
		in[p], out[p] = make([][][]float32, n), make([][][]float32, n)
		for w, r := range reps {
			in[p][w], out[p][w] = make([][]float32, len(us)), make([][]float32, len(us))
			for i, u := range us {
				out[p][w][i] = r.agg[u]
			}
		}
	}
	rounds := make([]int, nf)           // syncs started per fragment
	applyAt := make([]int, nf)          // step after which the pending update is applied; -1: none
	doneAt := make([]time.Duration, nf) // simulated time its collectives finish
	for p := range applyAt {
		applyAt[p] = -1
	}
	res := &Result{Model: reps[0].global}
	rc := newRecorder(cfg, x.task.Test, res, onStep)
	rc.world = x.world
	var clock time.Duration // simulated
	alpha := float32(o.mix())
	// apply runs fragment p's pending outer update on every worker.
	apply := func(p int) error {
		err := parallel(n, func(w int) error {
			for _, u := range frags[p] {
				if err := reps[w].apply(u, alpha); err != nil {
					return fmt.Errorf("train: worker %d unit %s: outer optimizer: %w", reps[w].id, units[u].Name, err)
				}
			}
			return nil
		})
		clock, applyAt[p] = max(clock, doneAt[p]), -1
		return err
	}
	for step := 0; step < cfg.Steps; step++ {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		t0 := time.Now()
		if err := parallel(n, func(w int) error { return reps[w].innerStep(x.task.Train, cfg.Batch, units, step) }); err != nil {
			return res, err
		}
		compute := time.Since(t0)
		var loss float64
		for _, r := range reps {
			loss += r.loss
		}
		loss /= float64(n)
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			err := fmt.Errorf("%w at step %d (loss %g)", ErrDiverged, step, loss)
			if x.rank >= 0 {
				err = errors.Join(err, x.announceDivergence(ctx, step, rounds, in, out))
			}
			return res, err
		}
		last := step == cfg.Steps-1
		start := clock
		clock += x.gradTime
		st := Stats{DenseBytes: denseBytes, GradTime: x.gradTime, BaselineTime: x.baseline, Layers: make([]LayerStats, len(units))}
		for u := range units {
			st.Layers[u].DenseBytes = DenseRingBytes(x.world, units[u].Size)
		}
		synced := 0
		for p, us := range frags {
			if !o.Due(p, step) && !last {
				continue
			}
			if applyAt[p] >= 0 {
				// The final flush reaches a fragment whose update is still
				// in flight: apply it first.
				if err := apply(p); err != nil {
					return res, fmt.Errorf("train: step %d fragment %d: %w", step, p, err)
				}
			}
			s, err := syncFragment(ctx, exs[p], rounds[p], reps, us, in[p], out[p])
			if err != nil {
				return res, fmt.Errorf("train: step %d fragment %d (sync %d): %w", step, p, rounds[p], err)
			}
			rounds[p]++
			synced++
			st.PayloadBytes += s.PayloadBytes
			st.WireBytes += s.WireBytes
			for i, u := range us {
				if i < len(s.Layers) {
					st.Layers[u].PayloadBytes, st.Layers[u].WireBytes = s.Layers[i].PayloadBytes, s.Layers[i].WireBytes
				}
			}
			if s.Recipes != nil {
				if st.Recipes == nil {
					st.Recipes = make([]string, len(units))
				}
				for i, u := range us {
					st.Recipes[u] = s.Recipes[i]
				}
			}
			st.CodecTime, st.ReduceTime = max(st.CodecTime, s.CodecTime), max(st.ReduceTime, s.ReduceTime)
			st.Skipped = st.Skipped || s.Skipped
			if s.Skipped {
				continue
			}
			doneAt[p] = clock + max(0, s.StepTime-s.GradTime)
			applyAt[p] = step + o.Delay
			if last {
				applyAt[p] = step
			}
		}
		computeEnd := clock
		for p := range frags {
			if applyAt[p] == step {
				if err := apply(p); err != nil {
					return res, fmt.Errorf("train: step %d fragment %d: %w", step, p, err)
				}
			}
		}
		if clock > start {
			st.StepTime = clock - start
			st.CommTime = clock - computeEnd
		}
		if cfg.CheckReplicas {
			if err := sameParams(reps[0].gp, func(yield func(int, [][]float32) bool) {
				for w := 1; w < n; w++ {
					if !yield(w, reps[w].gp) {
						return
					}
				}
			}); err != nil {
				return res, fmt.Errorf("step %d: global copies: %w", step, err)
			}
		}
		if x.rank >= 0 {
			var err error
			if loss, st, err = x.rankFigures(ctx, step, loss, st); err != nil {
				return res, err
			}
		}
		rc.synced = synced
		if err := rc.record(step, loss, st, reps[0].global, t0, compute); err != nil {
			return res, err
		}
		if synced > 0 {
			log.Debug("outer sync", "outer", o.String(), "step", step, "fragments", synced, "loss", loss, "wire_bytes", st.WireBytes)
		}
	}
	return res, nil
}

// announceDivergence tells the other ranks of a multi-process job that this
// rank's loss became non-finite at step, so that they stop at their next
// sync instead of waiting for this rank until a timeout. Every rank walks
// the same sequence of syncs (step by step, fragments in order), and none
// can complete a sync without this rank, so the next sync due from step on
// (or the final flush) is the next one of every rank: this rank runs it at
// once with a NaN pseudo-gradient, after sending (with Combine) its figures
// of the steps up to it with a NaN loss, so that rank 0 is not left waiting
// for them. Under the workers' NaNError policy every rank then fails that
// sync with the same *worker.NonFiniteError naming this rank; under NaNSkip
// every rank skips it and the others time out at their following sync.
// The returned error is the sync's (nil if it went through).
func (x *outerRun) announceDivergence(ctx context.Context, step int, rounds []int, in, out [][][][]float32) error {
	last := x.cfg.Steps - 1
	for s := step; s <= last; s++ {
		for p, us := range x.frags {
			if !x.o.Due(p, s) && s != last {
				continue
			}
			for t := step; t < s && x.combine != nil; t++ {
				st := Stats{Layers: make([]LayerStats, len(x.units))}
				if _, _, err := x.rankFigures(ctx, t, math.NaN(), st); err != nil {
					return err
				}
			}
			for _, r := range x.reps {
				for _, u := range us {
					for j := range r.params[u] {
						r.params[u][j] = float32(math.NaN())
					}
				}
			}
			_, err := syncFragment(ctx, x.exs[p], rounds[p], x.reps, us, in[p], out[p])
			if err != nil {
				return fmt.Errorf("train: rank %d told the others at the sync of fragment %d due after step %d: %w", x.rank, p, s, err)
			}
			return nil
		}
	}
	return nil
}

// rankFigures turns one rank's loss and bytes of a step into the job's:
// through combine, with the dense baseline split into the ranks' shares
// (denseShare) so that summing the ranks' figures gives the job's, or
// without it the rank's payload and wire bytes times the world size.
func (x *outerRun) rankFigures(ctx context.Context, step int, loss float64, st Stats) (float64, Stats, error) {
	if x.combine == nil {
		scale := int64(x.world)
		st.PayloadBytes, st.WireBytes = scale*st.PayloadBytes, scale*st.WireBytes
		for i := range st.Layers {
			l := &st.Layers[i]
			l.PayloadBytes, l.WireBytes = scale*l.PayloadBytes, scale*l.WireBytes
		}
		return loss, st, nil
	}
	st.DenseBytes = 0
	for u := range st.Layers {
		st.Layers[u].DenseBytes = denseShare(x.world, x.rank, x.units[u].Size)
		st.DenseBytes += st.Layers[u].DenseBytes
	}
	loss, st, err := x.combine(ctx, step, loss, st)
	if err != nil {
		return loss, st, fmt.Errorf("train: rank %d step %d: combining the ranks' figures: %w", x.rank, step, err)
	}
	return loss, st, nil
}

// outerReplica is one worker's state in RunOuter.
type outerReplica struct {
	id            int // the worker's index (its rank)
	model, global workload.Model
	ws            workload.Workspace
	sampler       *workload.Sampler
	inner, outer  []optim.Optimizer // per unit
	params, gp    [][]float32       // per unit: θ_w (aliases model), θ_g (aliases global)
	grads         [][]float32
	delta, agg    [][]float32 // per unit: pseudo-gradient, exchanged aggregate
	loss          float64
}

func newOuterReplica(task Task, cfg Config, inner, outer OptimSpec, units []Layer, shard []int, w int) (*outerReplica, error) {
	m := task.Model.Clone()
	r := &outerReplica{id: w, model: m, global: task.Model.Clone(), ws: m.NewWorkspace(cfg.Batch), sampler: workload.NewSampler(shard, cfg.Seed, w)}
	r.params, r.gp = unitData(m, inner.Flat), unitData(r.global, inner.Flat)
	r.grads = unitGrads(r.ws, inner.Flat)
	var err error
	if r.inner, err = newOptimizers(inner, units, "inner optimizer"); err != nil {
		return nil, err
	}
	if r.outer, err = newOptimizers(outer, units, "outer optimizer"); err != nil {
		return nil, err
	}
	for _, u := range units {
		r.delta = append(r.delta, make([]float32, u.Size))
		r.agg = append(r.agg, make([]float32, u.Size))
	}
	return r, nil
}

// innerStep computes the worker's mini-batch gradient and steps its inner
// optimizers on it, the optimizer's own vector standing for the aggregate.
func (r *outerReplica) innerStep(ds *workload.Dataset, batch int, units []Layer, step int) error {
	var err error
	if r.loss, err = r.ws.Gradient(ds, r.sampler.Next(batch)); err != nil {
		return fmt.Errorf("train: step %d: %w", step, err)
	}
	for u := range units {
		send, _, err := r.inner[u].Prepare(r.grads[u])
		if err == nil {
			err = r.inner[u].Step(r.params[u], send)
		}
		if err != nil {
			return fmt.Errorf("train: step %d unit %s: inner optimizer: %w", step, units[u].Name, err)
		}
	}
	return nil
}

// pseudo computes unit u's pseudo-gradient θ_g − θ_w and hands it to the
// outer optimizer's Prepare.
func (r *outerReplica) pseudo(u int) ([]float32, optim.Exchange, error) {
	d, g, p := r.delta[u], r.gp[u], r.params[u]
	p = p[:len(d)]
	g = g[:len(d)]
	for j := range d {
		d[j] = g[j] - p[j]
	}
	return r.outer[u].Prepare(d)
}

// apply steps unit u's outer optimizer on the global copy with the
// exchanged aggregate and merges the result into the local parameters:
// θ_w = α·θ_g + (1−α)·θ_w (a copy for α = 1).
func (r *outerReplica) apply(u int, alpha float32) error {
	if err := r.outer[u].Step(r.gp[u], r.agg[u]); err != nil {
		return err
	}
	if alpha == 1 {
		copy(r.params[u], r.gp[u])
		return nil
	}
	g, p := r.gp[u], r.params[u]
	g = g[:len(p)]
	for j := range p {
		p[j] = alpha*g[j] + (1-alpha)*p[j]
	}
	return nil
}

// syncFragment computes every worker's pseudo-gradients of the units us and
// exchanges them with ex (as its step round), writing the aggregates into
// out (the replicas' agg buffers).
func syncFragment(ctx context.Context, ex Exchanger, round int, reps []*outerReplica, us []int, in, out [][][]float32) (Stats, error) {
	hows := make([][]optim.Exchange, len(reps))
	if err := parallel(len(reps), func(w int) error {
		hows[w] = make([]optim.Exchange, len(us))
		for i, u := range us {
			var err error
			if in[w][i], hows[w][i], err = reps[w].pseudo(u); err != nil {
				return fmt.Errorf("train: worker %d: outer optimizer: %w", reps[w].id, err)
			}
		}
		return nil
	}); err != nil {
		return Stats{}, err
	}
	for w := 1; w < len(reps); w++ {
		for i := range us {
			if hows[w][i] != hows[0][i] {
				return Stats{}, fmt.Errorf("train: unit %d: worker %d asks for %v, worker 0 for %v", us[i], w, hows[w][i], hows[0][i])
			}
		}
	}
	st, err := ex.Exchange(ctx, round, hows[0], in, out)
	if err != nil {
		return st, fmt.Errorf("exchange: %w", err)
	}
	if st.Skipped {
		// worker.NaNSkip: every worker forgets this sync; the round's local
		// progress stays in θ_w and goes into the next pseudo-gradient.
		for _, r := range reps {
			for _, u := range us {
				r.outer[u].Skip()
			}
		}
	}
	return st, nil
}
