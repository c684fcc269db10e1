package train

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/engine"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/worker"
	"github.com/slimgrad/slimgrad/workload"
)

// RegisterUnits registers units on w as the plan says: each unit's codec and
// error feedback, or, if codec is not empty, that codec with no error feedback
// for every unit (1-bit Adam registers "sign": its compressed stage is the
// two-phase scheme). A warm-up (Plan.Warmup) is registered as each unit's
// codec schedule (worker.WithCodecSchedule from Plan.Stages), so the worker
// switches densities at the same steps as Sim, keeping the error feedback.
func RegisterUnits(w *worker.Worker, units []Layer, plan Plan, codec string) error {
	if err := plan.validate(); err != nil {
		return err
	}
	for _, u := range units {
		c, ef, sched := unitRecipes(u, plan, codec)
		opts := []worker.LayerOption{worker.WithCodec(c), worker.WithErrorFeedback(ef)}
		if len(sched) > 0 {
			ws := make([]worker.CodecStage, len(sched))
			for i, st := range sched {
				ws[i] = worker.CodecStage(st)
			}
			opts = append(opts, worker.WithCodecSchedule(ws...))
		}
		if _, err := w.Register(u.Name, u.Shape, opts...); err != nil {
			return fmt.Errorf("train: register %s: %w", u.Name, err)
		}
	}
	return nil
}

// unitRecipes are the codec, error feedback and codec schedule of unit u
// under plan: the plan's, with its warm-up as the schedule, or, if codec is
// not empty, that codec without error feedback.
func unitRecipes(u Layer, plan Plan, codec string) (c, ef string, sched []engine.CodecStage) {
	if codec != "" {
		return codec, "none", nil
	}
	if st := plan.Stages(u); len(st) > 1 {
		sched = make([]engine.CodecStage, len(st))
		for i, s := range st {
			sched[i] = engine.CodecStage{From: int64(s.From), Codec: s.Recipe}
		}
	}
	return plan.RecipeAt(u, 0), plan.efRecipe(), sched
}

// engineLayers resolves units under plan (see unitRecipes) as package worker
// resolves the layers RegisterUnits registers (engine.NewLayer).
func engineLayers(units []Layer, plan Plan, codec string) ([]engine.Layer, error) {
	out := make([]engine.Layer, len(units))
	for i, u := range units {
		c, ef, sched := unitRecipes(u, plan, codec)
		l, err := engine.NewLayer(u.Name, u.Shape, c, ef, sched)
		if err != nil {
			return nil, fmt.Errorf("train: unit %s: %w", u.Name, err)
		}
		out[i] = l
	}
	return out, nil
}

// WorkerOptions are the worker settings under which a real run computes
// exactly what the simulator exchanger computes: no layer fusion (one
// collective per unit) and the ring for dense layers.
func WorkerOptions(seed uint64, log *slog.Logger) []worker.Option {
	opts := []worker.Option{worker.WithSeed(seed), worker.WithBucketBytes(0), worker.WithAlgorithm(allreduce.AlgRing.String())}
	if log != nil {
		opts = append(opts, worker.WithLogger(log))
	}
	return opts
}

// modeFor maps the optimizers' aggregation of a step to the worker's mode.
func modeFor(how []optim.Exchange) (worker.Mode, error) {
	m := worker.ModeCompressed
	for i, h := range how {
		var hm worker.Mode
		switch h {
		case optim.Mean, optim.TwoPhaseSign:
			hm = worker.ModeCompressed
		case optim.DenseMean:
			hm = worker.ModeDense
		default:
			return 0, fmt.Errorf("%w: aggregation %v", ErrUnsupported, h)
		}
		if i > 0 && hm != m {
			return 0, fmt.Errorf("%w: a step that mixes dense and compressed units", ErrUnsupported)
		}
		m = hm
	}
	return m, nil
}

// exchangeComm is the communication time of one rank's step: the wall
// time of the exchange, from the first submission to the last completion
// (Ledger.Wall), less the rank's codec time, and at most the sum of the
// layers' Communicate. Layers whose collectives overlap (concurrent
// buckets) each count the shared wall time in their Communicate, so their
// sum over-counts; a ledger without a wall time (0) keeps that sum.
func exchangeComm(l *worker.Ledger) time.Duration {
	c, d, m := l.Times()
	if l.Wall <= 0 {
		return m
	}
	return min(m, max(0, l.Wall-c-d))
}

// statsOf sums the ledgers of all ranks of one step. CodecTime and
// CommTime are the slowest rank's (see exchangeComm).
func statsOf(leds []*worker.Ledger, units int) Stats {
	st := Stats{Layers: make([]LayerStats, units)}
	var codec, comm time.Duration
	if len(leds) > 0 && leds[0] != nil {
		// The codecs this step ran with (Worker.Recipes may already be the
		// next step's, after an L-GreCo boundary).
		for i, ll := range leds[0].Layers {
			if i < units {
				st.Recipes = append(st.Recipes, ll.Codec)
			}
		}
	}
	for _, l := range leds {
		for i, ll := range l.Layers {
			if i < units {
				st.Layers[i].PayloadBytes += ll.PayloadBytes
				st.Layers[i].WireBytes += ll.SentBytes
				st.Layers[i].DenseBytes += ll.BaselineBytes
			}
		}
		st.PayloadBytes += l.PayloadBytes()
		st.WireBytes += l.SentBytes()
		st.DenseBytes += l.BaselineBytes()
		codec, comm = max(codec, codecTime(l)), max(comm, exchangeComm(l))
		st.Skipped = st.Skipped || l.Skipped
	}
	st.CodecTime, st.CommTime = codec, comm
	return st
}

// Workers is the exchanger backed by real workers (package worker), one per
// rank, over the given transport connections, all driven from this process:
// every Exchange runs worker.Step on all ranks concurrently. Its stats are the
// workers' ledgers summed over ranks: message bytes sent, the worker's
// measured codec time and communication time (the exchange's wall time
// less codec time, see exchangeComm; the slowest rank's), no simulated
// clock.
type Workers struct {
	ws    []*worker.Worker
	units []Layer
	mode  worker.Mode
	leds  []*worker.Ledger
	errs  []error
}

// NewWorkers starts one worker per conn (conns[r] is rank r) with units
// registered as plan says (codec: see RegisterUnits) and opts (see
// WorkerOptions). It returns when every rank has started.
func NewWorkers(ctx context.Context, conns []transport.Conn, units []Layer, plan Plan, codec string, opts ...worker.Option) (*Workers, error) {
	x := &Workers{units: units, leds: make([]*worker.Ledger, len(conns)), errs: make([]error, len(conns))}
	for _, c := range conns {
		w, err := worker.New(ctx, c, opts...)
		if err != nil {
			x.Close()
			return nil, err
		}
		x.ws = append(x.ws, w)
		if err := RegisterUnits(w, units, plan, codec); err != nil {
			x.Close()
			return nil, err
		}
	}
	var wg sync.WaitGroup
	for r, w := range x.ws {
		wg.Go(func() { x.errs[r] = w.Start(ctx) })
	}
	wg.Wait()
	for r, err := range x.errs {
		if err != nil {
			x.Close()
			return nil, fmt.Errorf("train: worker %d: %w", r, err)
		}
	}
	return x, nil
}

// Close closes the workers (not their connections).
func (x *Workers) Close() error {
	for _, w := range x.ws {
		w.Close()
	}
	return nil
}

// Name implements Exchanger.
func (x *Workers) Name() string { return fmt.Sprintf("workers ×%d", len(x.ws)) }

// Exchange implements Exchanger.
func (x *Workers) Exchange(ctx context.Context, step int, how []optim.Exchange, in, out [][][]float32) (Stats, error) {
	if err := checkShapes(len(x.ws), x.units, how, in, out); err != nil {
		return Stats{}, err
	}
	mode, err := modeFor(how)
	if err != nil {
		return Stats{}, err
	}
	if mode != x.mode {
		for _, w := range x.ws {
			if err := w.SetMode(mode); err != nil {
				return Stats{}, err
			}
		}
		x.mode = mode
	}
	var wg sync.WaitGroup
	for r, w := range x.ws {
		for u := range x.units {
			copy(out[r][u], in[r][u])
		}
		wg.Go(func() { x.leds[r], x.errs[r] = w.Step(ctx, out[r]) })
	}
	wg.Wait()
	for r, err := range x.errs {
		if err != nil {
			return Stats{}, fmt.Errorf("train: worker %d step %d: %w", r, step, err)
		}
	}
	return statsOf(x.leds, len(x.units)), nil
}

var _ Exchanger = (*Workers)(nil)

// RankConfig is one process's part of a multi-process job.
type RankConfig struct {
	Config
	// Rank and World place this process in the job; they must match the
	// worker's transport.
	Rank, World int
	// Combine, if not nil, turns this rank's mini-batch loss and byte
	// counts into the job's (the mean loss summed in rank order as Run does,
	// the bytes of all ranks), e.g. by gathering them at rank 0. Ranks that
	// do not learn the job's figures return their own. Without Combine,
	// Record.Loss is this rank's loss and the byte counts are this rank's
	// times World (an estimate: sparse payloads differ between ranks).
	//
	// RunRank calls Combine once per step, in step order, on a goroutine
	// of its own that runs beside the next step's gradient and exchange, so
	// that a gather at rank 0 is not in the training step's critical path:
	// it waits for step s's call to return after step s+1's exchange (and
	// for the last step's before it returns), and only then hands step s's
	// Record to onStep. Combine must not use the worker; st is its own.
	// The ctx it gets is cancelled when RunRank returns early.
	Combine func(ctx context.Context, step int, loss float64, st Stats) (float64, Stats, error)
}

// RunRank trains one rank of a multi-process data-parallel job: this
// process's replica of task.Model, its shard (the same sharding as Run:
// Shard(task.Train, World, Split, Seed)), its sampler and optimizers, with
// w (started or not; RunRank registers the units) doing the exchange. With
// the same seed and settings every rank's parameters follow those of Run's
// replicas when the exchanges compute the same (see WorkerOptions).
//
// Record.Loss is this rank's mini-batch loss, or the job's mean through
// cfg.MeanLoss; test metrics are evaluated on every rank (the replicas are
// identical). Records carry this rank's ledger
// bytes scaled to the whole job (its bytes times World), so that byte columns
// compare with Run's.
func RunRank(ctx context.Context, cfg RankConfig, task Task, w *worker.Worker, plan Plan, opt OptimSpec, codec string, onStep func(Record)) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.World != w.World() || cfg.Rank != w.Rank() {
		return nil, fmt.Errorf("train: RunRank as rank %d of %d over a worker of rank %d of %d", cfg.Rank, cfg.World, w.Rank(), w.World())
	}
	shards, err := workload.Shard(task.Train, cfg.World, cfg.Split, cfg.Seed)
	if err != nil {
		return nil, err
	}
	units := Units(task.Model, opt.Flat)
	if err := RegisterUnits(w, units, plan, codec); err != nil {
		return nil, err
	}
	if err := w.Start(ctx); err != nil {
		return nil, err
	}
	m := task.Model.Clone()
	ws := m.NewWorkspace(cfg.Batch)
	sampler := workload.NewSampler(shards[cfg.Rank], cfg.Seed, cfg.Rank)
	params, grads := unitData(m, opt.Flat), unitGrads(ws, opt.Flat)
	opts, err := newOptimizers(opt, units, "optimizer")
	if err != nil {
		return nil, err
	}
	send := make([][]float32, len(units))
	how := make([]optim.Exchange, len(units))
	mode := worker.ModeCompressed
	res := &Result{Model: m}
	rc := newRecorder(cfg.Config, task.Test, res, onStep)
	rc.world = cfg.World
	// combining is the step whose figures cfg.Combine is turning into the
	// job's, nil if none.
	var combining *combineCall
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		if combining != nil {
			<-combining.done
		}
	}()
	// collect waits for combining and records its step.
	collect := func() error {
		c := combining
		if c == nil {
			return nil
		}
		combining = nil
		<-c.done
		if c.err != nil {
			return fmt.Errorf("train: rank %d step %d: combining the ranks' figures: %w", cfg.Rank, c.rec.Step, c.err)
		}
		rc.finish(c.rec, c.loss, c.st)
		return nil
	}
	skipRun := 0 // steps skipped in a row
	for step := 0; step < cfg.Steps; step++ {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		t0, cpu0 := time.Now(), processCPU()
		loss, err := ws.Gradient(task.Train, sampler.Next(cfg.Batch))
		if err != nil {
			return res, err
		}
		for u := range units {
			if send[u], how[u], err = opts[u].Prepare(grads[u]); err != nil {
				return res, err
			}
		}
		compute := time.Since(t0)
		m2, err := modeFor(how)
		if err != nil {
			return res, err
		}
		if m2 != mode {
			if err := w.SetMode(m2); err != nil {
				return res, err
			}
			mode = m2
		}
		led, err := w.Step(ctx, send)
		if nf := (*worker.NonFiniteError)(nil); errors.As(err, &nf) && (math.IsNaN(loss) || math.IsInf(loss, 0)) {
			return res, fmt.Errorf("%w at step %d (loss %g): %w", ErrDiverged, step, loss, err)
		}
		if err != nil {
			return res, fmt.Errorf("train: rank %d step %d: %w", cfg.Rank, step, err)
		}
		// A non-finite loss comes with a non-finite gradient, which the
		// worker's NaN policy has handled the same way on every rank
		// (skipped, or a *worker.NonFiniteError above); only a step that
		// went through with it (worker.NaNIgnore) ends here.
		if !led.Skipped && (math.IsNaN(loss) || math.IsInf(loss, 0)) {
			return res, fmt.Errorf("%w at step %d (loss %g)", ErrDiverged, step, loss)
		}
		skipRun++
		if !led.Skipped {
			skipRun = 0
		} else if skipRun == MaxSkipRun {
			return res, fmt.Errorf("%w: %d steps in a row skipped, up to step %d", ErrDiverged, skipRun, step)
		}
		for u := range units {
			if led.Skipped { // worker.NaNSkip: every rank skips the update
				opts[u].Skip()
				continue
			}
			if err := opts[u].Step(params[u], send[u]); err != nil {
				return res, err
			}
		}
		st := statsOf([]*worker.Ledger{led}, len(units))
		rec, err := rc.start(step, m, t0, compute)
		if err != nil {
			return res, err
		}
		if cpu1 := processCPU(); cpu0 > 0 {
			rec.CPU = cpu1 - cpu0
		}
		if cfg.Combine == nil {
			scale := int64(cfg.World)
			st.PayloadBytes, st.WireBytes, st.DenseBytes = scale*st.PayloadBytes, scale*st.WireBytes, scale*st.DenseBytes
			for i := range st.Layers {
				l := &st.Layers[i]
				l.PayloadBytes, l.WireBytes, l.DenseBytes = scale*l.PayloadBytes, scale*l.WireBytes, scale*l.DenseBytes
			}
			rc.finish(rec, loss, st)
			continue
		}
		// The previous step's figures: their call has had this step's
		// gradient and exchange to finish in.
		if err := collect(); err != nil {
			return res, err
		}
		c := &combineCall{rec: rec, done: make(chan struct{})}
		combining = c
		go func() {
			defer close(c.done)
			c.loss, c.st, c.err = cfg.Combine(ctx, step, loss, st)
		}()
	}
	if err := collect(); err != nil {
		return res, err
	}
	return res, nil
}

// combineCall is one step's call of RankConfig.Combine in RunRank: the
// step's Record without its figures, and, once done is closed, the job's
// loss and figures or the error.
type combineCall struct {
	rec  Record
	done chan struct{}
	loss float64
	st   Stats
	err  error
}

// codecTime is a rank's encode and decode time over all layers.
func codecTime(l *worker.Ledger) time.Duration { return l.CodecTime() }
