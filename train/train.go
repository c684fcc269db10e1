// Package train runs data-parallel training scenarios: N worker replicas of a
// workload model, each with its own data shard, sampler and optimizer state,
// whose per-step gradients are combined by an Exchanger: in process, in the
// simulator's virtual time (package sim), or over real transports (package
// worker). Every step yields a Record with the loss, the bytes that were sent
// and the bytes a dense fp32 ring all-reduce would have sent.
package train

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"time"

	"github.com/slimgrad/slimgrad/internal/kernels"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/worker"
	"github.com/slimgrad/slimgrad/workload"
)

// ErrDiverged is returned when the training loss becomes NaN or infinite.
var ErrDiverged = errors.New("train: loss diverged")

// ErrReplicaMismatch is returned when the replicas' parameters differ after a
// step: an exchanger that did not give every worker the same result.
var ErrReplicaMismatch = errors.New("train: replicas diverged from each other")

// Layer describes one vector the exchange handles: a parameter tensor, or
// the whole model flattened into one vector (see Units).
type Layer struct {
	Name  string
	Shape []int // [out, in] for weight matrices
	Size  int
}

// LayersOf returns the layer descriptions of a model's parameters.
func LayersOf(m workload.Model) []Layer {
	ps := m.Params()
	out := make([]Layer, len(ps))
	for i, p := range ps {
		out[i] = Layer{Name: p.Name, Shape: append([]int(nil), p.Shape...), Size: p.Size()}
	}
	return out
}

// Units returns the vectors a worker exchanges for m: its layers, or, if
// flat, a single vector "model" of all parameters (an optimizer over one flat
// vector, like DeepSpeed's 1-bit Adam).
func Units(m workload.Model, flat bool) []Layer {
	if !flat {
		return LayersOf(m)
	}
	n := len(m.Flat())
	return []Layer{{Name: "model", Shape: []int{n}, Size: n}}
}

// unitData returns m's parameters as the vectors of Units(m, flat), aliasing
// the model's storage.
func unitData(m workload.Model, flat bool) [][]float32 {
	if flat {
		return [][]float32{m.Flat()}
	}
	var out [][]float32
	for _, p := range m.Params() {
		out = append(out, p.Data)
	}
	return out
}

// unitGrads returns ws's gradients as the vectors of Units(m, flat),
// aliasing the workspace's storage.
func unitGrads(ws workload.Workspace, flat bool) [][]float32 {
	if flat {
		return [][]float32{ws.FlatGrads()}
	}
	return ws.Grads()
}

// newOptimizers builds one optimizer of spec per unit; what names the
// optimizer's role in errors ("optimizer", "inner optimizer", ...).
func newOptimizers(spec OptimSpec, units []Layer, what string) ([]optim.Optimizer, error) {
	opts := make([]optim.Optimizer, len(units))
	for i, u := range units {
		o, err := spec.New(u.Size)
		if err != nil {
			return nil, fmt.Errorf("train: %s %s: %w", what, spec.Name, err)
		}
		opts[i] = o
	}
	return opts, nil
}

// Exchanger combines the workers' vectors of one step into the result each
// worker hands to its optimizer.
//
// in[w][u] is worker w's vector for unit u (what its optimizer's Prepare
// returned) and how[u] the aggregation the optimizers asked for (the same on
// every worker); Exchange writes worker w's result into out[w][u]. A correct
// exchanger gives every worker bit-identical results. Exchange keeps
// per-worker state (error feedback) between steps; it must not retain in or
// out. It is called from one goroutine at a time.
type Exchanger interface {
	Exchange(ctx context.Context, step int, how []optim.Exchange, in, out [][][]float32) (Stats, error)
	// Name describes the exchanger and its plan, e.g. "local topk:0.001 ef=ef14".
	Name() string
}

// ErrUnsupported is returned by an exchanger asked for an aggregation or codec
// it cannot run.
var ErrUnsupported = errors.New("train: unsupported by this exchanger")

// Stats is what one exchange cost. Byte counts are totals over all workers.
type Stats struct {
	// PayloadBytes is the size of the encoded messages the workers produced
	// (the papers' "compressed size"), summed over workers.
	PayloadBytes int64
	// WireBytes is what all ranks sent on the wire, relays and framing included.
	WireBytes int64
	// DenseBytes is what a dense fp32 ring all-reduce of the same layers
	// would have sent: N · 2(N−1)/N · 4 · elements.
	DenseBytes int64
	// StepTime is the simulated time of the step (0 if the exchanger has
	// no clock): GradTime (the slowest worker's forward and backward pass)
	// plus the collectives, whose time on the critical rank splits into
	// CodecTime (encode, decode, server steps), ReduceTime (element-wise
	// reductions) and CommTime (the rest: sending and waiting).
	StepTime, GradTime, CodecTime, ReduceTime, CommTime time.Duration
	// BaselineTime is the simulated step time of a dense fp32 ring
	// all-reduce of the same units on the same topology (0 without clock).
	BaselineTime time.Duration
	// Layers holds per-layer byte counts, in layer order (may be nil).
	Layers []LayerStats
	// Recipes are the codec recipes of the units in this step, in unit
	// order (nil if the exchanger does not report them): the plan's, a
	// warm-up stage's or L-GreCo's current choice.
	Recipes []string
	// Skipped says every worker skipped this step's update: some gradient
	// was NaN or Inf, or a reduced format overflowed, under the workers'
	// worker.NaNSkip policy.
	Skipped bool
}

// LayerStats are the per-layer byte counts of one exchange.
type LayerStats struct {
	PayloadBytes, WireBytes, DenseBytes int64
}

// Ratio is DenseBytes/WireBytes: how many times fewer bytes than a dense ring.
func (s Stats) Ratio() float64 {
	if s.WireBytes == 0 {
		return 0
	}
	return float64(s.DenseBytes) / float64(s.WireBytes)
}

// DenseRingBytes is the total number of bytes that a dense fp32 ring
// all-reduce of elems elements sends over all n ranks: n · 2(n−1)/n chunks of
// elems/n elements of 4 bytes, i.e. 2(n−1)·4·elems up to the chunk rounding.
func DenseRingBytes(n, elems int) int64 {
	if n <= 1 {
		return 0
	}
	return int64(2*(n-1)) * 4 * int64(elems)
}

// Record is one training step.
type Record struct {
	Step int
	// Loss is the mean of the workers' mini-batch losses.
	Loss float64
	// Evaluated says TestLoss and Accuracy were measured at this step.
	Evaluated bool
	TestLoss  float64
	Accuracy  float64
	Stats
	// Cumulative totals up to and including this step.
	TotalWireBytes, TotalDenseBytes, TotalPayloadBytes int64
	TotalStepTime                                      time.Duration
	// Wall is the real time the step took in this process; Compute is the
	// part spent computing the workers' gradients (all workers).
	Wall, Compute time.Duration
	// CPU is the CPU time, user and system, that this process used during
	// the step (the span of Wall) in RunRank, on systems with getrusage:
	// the worker's whole process, its transport's goroutines and system
	// calls included. 0 elsewhere, and in Run, RunOuter and elastic steps.
	CPU time.Duration
	// Synced is the number of fragments whose pseudo-gradients an outer
	// loop (RunOuter) exchanged at this step: 0 on a local step (and in
	// per-step training, Run and RunRank).
	Synced int
	// Epoch and World are the membership epoch of the step and the number
	// of replicas that contributed to it: 0 and the fixed world size for
	// Run, RunRank and RunOuter; an elastic driver (package elastic) sets
	// them per step, so that a run with churn shows where the world changed.
	Epoch uint64
	World int
}

// Saved is the cumulative ratio TotalDenseBytes/TotalWireBytes.
func (r Record) Saved() float64 {
	if r.TotalWireBytes == 0 {
		return 0
	}
	return float64(r.TotalDenseBytes) / float64(r.TotalWireBytes)
}

// OptimSpec builds the optimizers of one worker.
type OptimSpec struct {
	// Name describes the optimizer, e.g. "momentum:lr=0.1,m=0.9".
	Name string
	// Flat selects one optimizer over the whole model as a single vector
	// (Units(m, true)); otherwise there is one optimizer per layer.
	Flat bool
	// New returns an optimizer for a vector of n parameters.
	New func(n int) (optim.Optimizer, error)
	// Sign, if not empty, is the codec of the units these optimizers send
	// through the two-phase 1-bit all-reduce (optim.TwoPhaseSign): "sign"
	// or "sign:B" (Plan.Sign). Drivers set their Plan.Sign from it and
	// register it as the units' codec on real workers (RegisterUnits).
	Sign string
}

// Config is a training scenario.
type Config struct {
	Workers   int
	Batch     int // per worker
	Steps     int
	Seed      uint64
	Split     workload.Split
	EvalEvery int // steps between test evaluations (0: only at the end)
	// EvalSamples caps the test samples used at periodic evaluations (0: all);
	// the final evaluation always uses the whole test set.
	EvalSamples int
	// CheckReplicas compares all replicas' parameters after every step.
	CheckReplicas bool
	// RecordWindow, if > 0, bounds Result.Records to the last RecordWindow
	// records, so that a long run's memory stays flat (onStep still sees
	// every record, to stream them out); 0 keeps every record.
	RecordWindow int
	// NaNPolicy is what Run does when a worker's prepared gradient holds a
	// NaN or Inf (whatever the exchanger): worker.NaNError (the default)
	// fails the step with a *worker.NonFiniteError, worker.NaNSkip skips it
	// on every worker (Stats.Skipped, nothing sent, no optimizer steps),
	// worker.NaNIgnore exchanges it as it is. Real workers (RunRank) take
	// the policy from their worker.Config instead, where the ranks agree on
	// it over the wire.
	NaNPolicy worker.NaNPolicy
	Logger    *slog.Logger
}

func (c Config) validate() error {
	for _, f := range []struct {
		name   string
		v, min int
	}{{"Workers", c.Workers, 1}, {"Batch", c.Batch, 1}, {"Steps", c.Steps, 1}, {"EvalEvery", c.EvalEvery, 0}, {"EvalSamples", c.EvalSamples, 0}, {"RecordWindow", c.RecordWindow, 0}} {
		if f.v < f.min {
			return fmt.Errorf("train: invalid config: %s %d, want at least %d", f.name, f.v, f.min)
		}
	}
	return nil
}

// Task is a workload ready to train: a model (the initial parameters every
// replica starts from) and its data.
type Task struct {
	Name        string
	Model       workload.Model
	Train, Test *workload.Dataset
}

// Result is the outcome of a run.
type Result struct {
	// Records are the run's records in step order: all of them, or the
	// last Config.RecordWindow.
	Records []Record
	Final   workload.Metrics // on the whole test set
	Last    Record
	// Model is the trained replica (worker 0's in Run, this rank's in
	// RunRank); all replicas hold the same parameters.
	Model workload.Model
}

// Run trains cfg.Workers replicas of task.Model (cloned; task.Model is not
// modified) for cfg.Steps steps. Per step, every worker computes its
// mini-batch gradient, its optimizers Prepare the vectors to send, ex
// exchanges them (ex must have been built for Units(task.Model, opt.Flat)),
// and every worker's optimizers Step with the result. onStep, if not nil, sees
// every record as it is produced. Run returns ctx.Err() if ctx is cancelled,
// ErrDiverged if the loss becomes NaN/Inf on a step that is not skipped,
// and follows cfg.NaNPolicy when a prepared gradient holds a NaN or Inf.
func Run(ctx context.Context, cfg Config, task Task, ex Exchanger, opt OptimSpec, onStep func(Record)) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	shards, err := workload.Shard(task.Train, cfg.Workers, cfg.Split, cfg.Seed)
	if err != nil {
		return nil, err
	}
	n := cfg.Workers
	units := Units(task.Model, opt.Flat)
	type replica struct {
		model   workload.Model
		ws      workload.Workspace
		sampler *workload.Sampler
		opts    []optim.Optimizer
		params  [][]float32 // per unit
		grads   [][]float32 // per unit
		in, out [][]float32
		how     []optim.Exchange
		loss    float64
		err     error
	}
	reps := make([]*replica, n)
	in := make([][][]float32, n)
	out := make([][][]float32, n)
	for w := range n {
		m := task.Model.Clone()
		r := &replica{model: m, ws: m.NewWorkspace(cfg.Batch), sampler: workload.NewSampler(shards[w], cfg.Seed, w)}
		r.params, r.grads = unitData(m, opt.Flat), unitGrads(r.ws, opt.Flat)
		if r.opts, err = newOptimizers(opt, units, "optimizer"); err != nil {
			return nil, err
		}
		for _, u := range units {
			r.out = append(r.out, make([]float32, u.Size))
		}
		r.in = make([][]float32, len(units))
		r.how = make([]optim.Exchange, len(units))
		reps[w] = r
		in[w], out[w] = r.in, r.out
	}
	par := min(n, runtime.GOMAXPROCS(0))
	res := &Result{Model: reps[0].model}
	rc := newRecorder(cfg, task.Test, res, onStep)
	skipRun := 0 // steps skipped in a row
	for step := 0; step < cfg.Steps; step++ {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		t0 := time.Now()
		// Local gradients, in parallel; each replica only touches its own state.
		var wg sync.WaitGroup
		next := make(chan int, n)
		for w := range n {
			next <- w
		}
		close(next)
		for range par {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for w := range next {
					r := reps[w]
					r.loss, r.err = r.ws.Gradient(task.Train, r.sampler.Next(cfg.Batch))
					for u := range units {
						if r.err != nil {
							break
						}
						r.in[u], r.how[u], r.err = r.opts[u].Prepare(r.grads[u])
					}
				}
			}()
		}
		wg.Wait()
		compute := time.Since(t0)
		var loss float64
		for w, r := range reps {
			if r.err != nil {
				return res, fmt.Errorf("train: worker %d step %d: %w", w, step, r.err)
			}
			loss += r.loss
		}
		loss /= float64(n)
		for w, r := range reps {
			for u := range units {
				if r.how[u] != reps[0].how[u] {
					return res, fmt.Errorf("train: step %d unit %s: worker %d asks for %v, worker 0 for %v", step, units[u].Name, w, r.how[u], reps[0].how[u])
				}
			}
		}
		var st Stats
		nf := nonFinite(step, cfg.NaNPolicy, units, in)
		switch {
		case nf != nil && cfg.NaNPolicy == worker.NaNSkip:
			st.Skipped = true
			skipRun++
			log.Warn("step skipped", "step", step, "reason", nf.Error())
			if skipRun == MaxSkipRun {
				return res, fmt.Errorf("%w: %d steps in a row skipped, up to step %d (%v)", ErrDiverged, skipRun, step, nf)
			}
		case math.IsNaN(loss) || math.IsInf(loss, 0):
			return res, fmt.Errorf("%w at step %d (loss %g)", ErrDiverged, step, loss)
		case nf != nil:
			return res, fmt.Errorf("train: %w", nf)
		default:
			skipRun = 0
			if st, err = ex.Exchange(ctx, step, reps[0].how, in, out); err != nil {
				return res, fmt.Errorf("train: step %d: exchange: %w", step, err)
			}
		}
		for w, r := range reps {
			for u := range units {
				if st.Skipped { // worker.NaNSkip: every worker skips the update
					r.opts[u].Skip()
					continue
				}
				if err := r.opts[u].Step(r.params[u], r.out[u]); err != nil {
					return res, fmt.Errorf("train: worker %d step %d unit %s: optimizer: %w", w, step, units[u].Name, err)
				}
			}
		}
		if cfg.CheckReplicas {
			if err := sameParams(reps[0].params, func(yield func(int, [][]float32) bool) {
				for w := 1; w < n; w++ {
					if !yield(w, reps[w].params) {
						return
					}
				}
			}); err != nil {
				return res, fmt.Errorf("step %d: %w", step, err)
			}
		}
		if err := rc.record(step, loss, st, reps[0].model, t0, compute); err != nil {
			return res, err
		}
		if step%100 == 0 || step == cfg.Steps-1 {
			log.Debug("step", "exchanger", ex.Name(), "step", step, "loss", loss, "wire_bytes", st.WireBytes, "saved", st.Ratio())
		}
	}
	return res, nil
}

// MaxSkipRun is how many steps in a row Run skips under worker.NaNSkip before
// it gives up with ErrDiverged: a model whose every gradient is non-finite
// no longer trains, and skipping on would only hide it.
const MaxSkipRun = 100

// nonFinite returns the *worker.NonFiniteError of a step whose prepared
// vectors in[w][u] hold a NaN or Inf (the first unit, in unit order, that
// some worker flags, with every worker that flags it), or nil if all are
// finite or policy is worker.NaNIgnore.
func nonFinite(step int, policy worker.NaNPolicy, units []Layer, in [][][]float32) *worker.NonFiniteError {
	if policy == worker.NaNIgnore {
		return nil
	}
	for u := range units {
		var ranks []int
		for w := range in {
			if !kernels.AllFinite(in[w][u]) {
				ranks = append(ranks, w)
			}
		}
		if ranks != nil {
			return &worker.NonFiniteError{Step: int64(step), Layer: units[u].Name, Ranks: ranks}
		}
	}
	return nil
}

// recorder turns each step's figures into a Record: it keeps the running
// totals, evaluates the model on the test set when due (on the first
// cfg.EvalSamples samples every cfg.EvalEvery steps, on the whole set at the
// last step, which also sets Result.Final), and appends the record to the
// Result and hands it to onStep. Run and RunRank share it.
type recorder struct {
	cfg     Config
	test    *workload.Dataset
	evalIdx []int // periodic evaluations' samples; nil: all
	tot     Record
	res     *Result
	onStep  func(Record)
	// synced is the next record's Synced (RunOuter sets it per step).
	synced int
	world  int // Record.World
}

func newRecorder(cfg Config, test *workload.Dataset, res *Result, onStep func(Record)) *recorder {
	r := &recorder{cfg: cfg, test: test, res: res, onStep: onStep, world: cfg.Workers}
	if cfg.EvalSamples > 0 && cfg.EvalSamples < test.N {
		r.evalIdx = make([]int, cfg.EvalSamples)
		for i := range r.evalIdx {
			r.evalIdx[i] = i
		}
	}
	return r
}

// record adds the Record of step, whose mean loss is loss and exchange
// figures st, that began at t0 and spent compute on the gradients; m is the
// model to evaluate. It returns m.Evaluate's error.
func (r *recorder) record(step int, loss float64, st Stats, m workload.Model, t0 time.Time, compute time.Duration) error {
	rec, err := r.start(step, m, t0, compute)
	if err != nil {
		return err
	}
	r.finish(rec, loss, st)
	return nil
}

// start returns the Record of step without its loss and exchange figures
// (finish adds them): the test metrics of m when due, Wall since t0 and
// compute. It returns m.Evaluate's error.
func (r *recorder) start(step int, m workload.Model, t0 time.Time, compute time.Duration) (Record, error) {
	rec := Record{Step: step, Synced: r.synced, World: r.world}
	last := step == r.cfg.Steps-1
	if last || (r.cfg.EvalEvery > 0 && (step+1)%r.cfg.EvalEvery == 0) {
		idx := r.evalIdx
		if last {
			idx = nil
		}
		met, err := m.Evaluate(r.test, idx)
		if err != nil {
			return rec, err
		}
		rec.Evaluated, rec.TestLoss, rec.Accuracy = true, met.Loss, met.Accuracy
		if last {
			r.res.Final = met
		}
	}
	rec.Wall, rec.Compute = time.Since(t0), compute
	return rec, nil
}

// finish completes rec (from start) with the step's mean loss and exchange
// figures st, adds it to the running totals and the Result, and hands it to
// onStep. Records must be finished in step order.
func (r *recorder) finish(rec Record, loss float64, st Stats) {
	rec.Loss, rec.Stats = loss, st
	r.tot.TotalWireBytes += st.WireBytes
	r.tot.TotalDenseBytes += st.DenseBytes
	r.tot.TotalPayloadBytes += st.PayloadBytes
	r.tot.TotalStepTime += st.StepTime
	rec.TotalWireBytes, rec.TotalDenseBytes, rec.TotalPayloadBytes, rec.TotalStepTime =
		r.tot.TotalWireBytes, r.tot.TotalDenseBytes, r.tot.TotalPayloadBytes, r.tot.TotalStepTime
	if w := r.cfg.RecordWindow; w > 0 && len(r.res.Records) >= 2*w-1 {
		// Keep the last w-1 and append: amortised O(1) per step, at most
		// 2w-1 records held.
		r.res.Records = append(r.res.Records[:0], r.res.Records[len(r.res.Records)-(w-1):]...)
	}
	r.res.Records = append(r.res.Records, rec)
	if w := r.cfg.RecordWindow; w > 0 && rec.Step == r.cfg.Steps-1 && len(r.res.Records) > w {
		r.res.Records = r.res.Records[len(r.res.Records)-w:]
	}
	r.res.Last = rec
	if r.onStep != nil {
		r.onStep(rec)
	}
}

func sameParams(ref [][]float32, others func(yield func(int, [][]float32) bool)) error {
	for w, ps := range others {
		for l := range ref {
			for j, v := range ref[l] {
				if math.Float32bits(ps[l][j]) != math.Float32bits(v) {
					return fmt.Errorf("%w: worker %d layer %d element %d: %g vs %g", ErrReplicaMismatch, w, l, j, ps[l][j], v)
				}
			}
		}
	}
	return nil
}
