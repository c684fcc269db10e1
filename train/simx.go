package train

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/binding"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/engine"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/lgreco"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/worker"
)

// SimConfig configures the simulator-backed exchanger.
type SimConfig struct {
	// Topology is the simulated cluster; worker r runs on node r (or as
	// Options.Placement says). Required.
	Topology *sim.Topology
	// Options tune the simulation (calibration, jitter, seed); nil is valid.
	Options *sim.Options
	// Dense is the all-reduce algorithm of element-wise (Reduce) codecs and
	// of dense means. Zero is allreduce.AlgRing.
	Dense allreduce.Algorithm
	// GradFLOP is the work of one worker's forward and backward pass per
	// step, in floating-point operations, and FLOPS the rate of a node of
	// speed 1. Node r takes GradFLOP/(FLOPS·Speed_r); the step's collectives
	// start when the slowest worker is done (synchronous data parallelism).
	// GradFLOP 0 leaves gradient compute out of the step time.
	GradFLOP, FLOPS float64
	// GradSeconds, if positive, is the measured wall time of one worker's
	// forward and backward pass per step on one core of a speed-1 node
	// (sim.Calibration.Grad times the batch): node r then takes
	// GradSeconds/Speed_r and GradFLOP and FLOPS are not used.
	//
	// Either way, when more workers are placed on a node, or on the nodes
	// of one host, than its Cores (sim.Node.Cores, sim.Node.Host,
	// Options.Placement), each of the k workers computes k/Cores times
	// slower (sim.Topology.CoreShares), and k/(Cores·CoreShare) with
	// sim.Options.CoreShare: they all compute at once.
	GradSeconds float64
	// LocalSeconds is a worker's compute per step beyond the gradient, on
	// one core of a speed-1 node: the optimizer's preparation and update,
	// the finite check of what it sends, error feedback's passes that are
	// not collective compute (sim.Calibration.Local, which slimgrad bench
	// measures). It is added to the gradient's time before the step's
	// collectives, scaled as above. Zero leaves it out.
	LocalSeconds float64
	// LGreCo turns on L-GreCo (package lgreco) exactly as
	// worker.Config.LGreCo does on real workers: a controller over the
	// units (default level: the plan's codec), observing rank 0's
	// error-compensated gradients, deciding every Adjust steps and switching
	// every rank's layer (binding.Layer.SetCodec) at the same step, with the
	// plan's Seed as L-GreCo's seed. LGreCoOptions configure it
	// (lgreco.WithSchedule, lgreco.WithAlpha; lgreco.WithSeed is replaced).
	// LGreCoCost, if not nil, builds the objective (e.g. from sim.LinkCost
	// for the link-aware variant); nil minimises wire bytes.
	LGreCo        bool
	LGreCoOptions []lgreco.Option
	LGreCoCost    worker.LGreCoCostFactory
	// NonFinite is the real workers' NaN/Inf policy. Unless it is
	// worker.NaNIgnore, each unit's collective waits for the flag exchange
	// that the workers run before it (engine.Policy.Flags), and the
	// simulation times it.
	NonFinite worker.NaNPolicy
}

// DefaultFLOPS is the per-node gradient compute rate of SimConfig when FLOPS
// is 0: 20 GFLOP/s, one CPU core running gonum's float32 GEMM.
const DefaultFLOPS = 20e9

// Sim is the exchanger that runs every step's collectives in the simulator
// (package sim) in payload mode: the same allreduce programs and executors
// as the real worker, over a simulated topology in virtual time, so the
// averaged result is the one the real collectives compute and the step time,
// bytes and per-link traffic come from the network model.
//
// Every unit of every rank is a binding.Layer, the same binding of
// codec, error feedback and collective scheme that package worker runs over
// a transport; Sim only replaces the transport by the simulator. Per unit
// and step, by the aggregation asked for:
//
//	Mean: the plan's codec and error feedback (adapt's scheme for the
//	    codec's aggregation: the Dense all-reduce on the element encoding,
//	    the sparse gather, the two-phase sign scheme, PowerSGD's P-then-Q).
//	DenseMean: an fp32 all-reduce average with the Dense algorithm (the
//	    worker's ModeDense).
//	TwoPhaseSign: the two-phase 1-bit all-reduce (the plan's Sign codec,
//	    "sign" or "sign:B", what 1-bit Adam registers on real workers).
//
// A DGC warm-up (Plan.Warmup) switches the Mean layers' codecs at the stage
// boundaries with binding.Layer.SetCodec, keeping the error feedback; L-GreCo
// (SimConfig.LGreCo) switches them at its decisions' steps the same way; the
// two combine when L-GreCo starts after the warm-up.
//
// Stats count message bytes (no transport framing); DenseBytes is the dense
// fp32 ring formula and BaselineTime the simulated time of a dense fp32 ring
// of all units on the same topology.
type Sim struct {
	cfg    SimConfig
	plan   Plan
	units  []Layer
	n      int
	layers [][]*binding.Layer // [rank][unit]: the plan's codec (Mean)
	dense  [][]*binding.Layer // [rank][unit]: fp32 (DenseMean), built on first use
	signs  [][]*binding.Layer // [rank][unit]: sign (TwoPhaseSign), built on first use
	lg     *lgreco.Controller
	lgPlan *lgreco.Plan

	// The engine's view: the policy of rank 0, the resolved units and
	// rank 0's buckets (one per unit), and the flag exchange before each
	// (nil without one).
	pol     engine.Policy
	eng     []engine.Layer
	buckets []engine.Bucket
	flags   *allreduce.Shared
	collIdx []int // per unit: its collective's index in colls

	colls    []sim.Collective
	gradTime time.Duration
	baseline time.Duration
}

// parallel runs f(0..n-1) on up to GOMAXPROCS goroutines and returns the
// first error by index.
func parallel(n int, f func(i int) error) error {
	errs := make([]error, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, runtime.GOMAXPROCS(0)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				errs[i] = f(i)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// checkCompute rejects a negative, NaN or infinite compute model, which would
// otherwise give negative or NaN gradient times on the simulated clock.
func (cfg SimConfig) checkCompute(who string) error {
	ok := func(v float64) bool { return v >= 0 && !math.IsInf(v, 0) }
	if !ok(cfg.FLOPS) || !ok(cfg.GradFLOP) {
		return fmt.Errorf("train: %s: FLOPS %g, GradFLOP %g: want finite and non-negative", who, cfg.FLOPS, cfg.GradFLOP)
	}
	if !ok(cfg.GradSeconds) {
		return fmt.Errorf("train: %s: GradSeconds %g: want finite and non-negative", who, cfg.GradSeconds)
	}
	if !ok(cfg.LocalSeconds) {
		return fmt.Errorf("train: %s: LocalSeconds %g: want finite and non-negative", who, cfg.LocalSeconds)
	}
	return nil
}

// NewSim returns a simulator-backed exchanger for n workers over units.
func NewSim(ctx context.Context, n int, units []Layer, plan Plan, cfg SimConfig) (*Sim, error) {
	if cfg.Topology == nil {
		return nil, fmt.Errorf("train: NewSim: no topology")
	}
	if n < 1 || len(units) == 0 {
		return nil, fmt.Errorf("train: NewSim: %d workers, %d units", n, len(units))
	}
	if err := plan.validate(); err != nil {
		return nil, err
	}
	if err := cfg.checkCompute("NewSim"); err != nil {
		return nil, err
	}
	if cfg.FLOPS == 0 {
		cfg.FLOPS = DefaultFLOPS
	}
	s := &Sim{cfg: cfg, plan: plan, units: units, n: n,
		layers: make([][]*binding.Layer, n), dense: make([][]*binding.Layer, n), signs: make([][]*binding.Layer, n)}
	if ef := plan.efRecipe(); ef != "none" {
		for _, u := range units {
			if codec, err := compressors.Parse(plan.RecipeAt(u, 0)); err == nil && codec.Aggregation() == compressors.TwoPhase {
				return nil, fmt.Errorf("%w: %s runs the two-phase scheme with its own worker and server error; use --ef none, not %s",
					ErrUnsupported, codec, ef)
			}
		}
	}
	if err := s.newPlan(); err != nil {
		return nil, err
	}
	for w := range n {
		// Thousands of workers take seconds to set up: stay cancellable.
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s.layers[w] = make([]*binding.Layer, len(units))
		s.dense[w] = make([]*binding.Layer, len(units))
		s.signs[w] = make([]*binding.Layer, len(units))
		for _, b := range s.buckets {
			spec := b.Spec
			spec.Rank = w
			u := b.Layers[0]
			l, err := binding.New(spec)
			if err != nil {
				return nil, fmt.Errorf("train: unit %s: %w", units[u].Name, err)
			}
			s.layers[w][u] = l
		}
	}
	if cfg.LGreCo {
		if err := s.newLGreCo(); err != nil {
			return nil, err
		}
	}
	if err := s.computeModel(); err != nil {
		return nil, err
	}
	// The dense fp32 baseline of the same units on the same topology.
	var colls []sim.Collective
	for u := range units {
		progs, err := generateAll(ctx, s.denseAlg(), allreduce.Params{World: n, Elems: units[u].Size, Average: true, ElemBytes: 4}, n)
		if err != nil {
			return nil, fmt.Errorf("train: %s program for %s: %w", s.denseAlg(), units[u].Name, err)
		}
		colls = append(colls, sim.Collective{Name: units[u].Name, Programs: progs, Start: s.gradTime.Seconds()})
	}
	res, err := sim.Run(ctx, cfg.Topology, colls, s.options())
	if err != nil {
		return nil, fmt.Errorf("train: simulating the dense baseline: %w", err)
	}
	s.baseline = seconds(res.Time)
	return s, nil
}

// policy is the engine's policy of rank 0 of a simulated job of n workers:
// that of the real workers under WorkerOptions, with Dense as their
// algorithm and NonFinite as their NaN policy.
func (cfg SimConfig) policy(n int, seed uint64) engine.Policy {
	dense := cfg.Dense // zero is the ring
	return engine.Policy{World: n, Seed: seed, Algorithms: []allreduce.Algorithm{dense}, CheckFinite: cfg.NonFinite != worker.NaNIgnore}
}

// flagExchange is the shared program of the flag exchange that precedes
// every bucket's collective under pol, or nil if pol has none.
func flagExchange(pol engine.Policy) (*allreduce.Shared, error) {
	alg, p, ok := pol.Flags()
	if !ok {
		return nil, nil
	}
	sh, err := allreduce.NewShared(alg, p)
	if err != nil {
		return nil, fmt.Errorf("train: flag exchange: %w", err)
	}
	return sh, nil
}

// withFlags appends c to colls, chained after the flag exchange flags if
// it is not nil (appended first, from c's Start), and returns colls and c's
// index in it.
func withFlags(colls []sim.Collective, flags *allreduce.Shared, c sim.Collective) ([]sim.Collective, int) {
	if flags != nil {
		colls = append(colls, sim.Collective{Name: c.Name + " (flags)", Shared: flags, Start: c.Start})
		c.After = len(colls)
	}
	return append(colls, c), len(colls)
}

// newPlan resolves the units as package worker resolves the layers that
// RegisterUnits registers, and plans them with the policy of the real
// run's WorkerOptions (one bucket per unit, Dense for element-wise codecs).
func (s *Sim) newPlan() error {
	layers, err := engineLayers(s.units, s.plan, "")
	if err != nil {
		return err
	}
	s.pol = s.cfg.policy(s.n, s.plan.Seed)
	if s.buckets, err = s.pol.Plan(layers); err != nil {
		return fmt.Errorf("train: %w", err)
	}
	if s.flags, err = flagExchange(s.pol); err != nil {
		return err
	}
	s.eng = layers
	return nil
}

// Policy returns the engine's policy of rank 0 (see SimConfig.NonFinite
// and Plan).
func (s *Sim) Policy() engine.Policy { return s.pol }

// Plan returns rank 0's buckets (engine.Policy.Plan) of the units' Mean
// exchange: one per unit, in reverse order, each with the collective that
// a real worker registered by RegisterUnits under WorkerOptions runs. The
// result is the caller's.
func (s *Sim) Plan() []engine.Bucket {
	out := make([]engine.Bucket, len(s.buckets))
	for i, b := range s.buckets {
		out[i] = engine.Bucket{Layers: slices.Clone(b.Layers), Offs: slices.Clone(b.Offs), Spec: b.Spec}
	}
	return out
}

// newLGreCo builds L-GreCo's plan and controller over the units, as
// package worker does over its registered layers.
func (s *Sim) newLGreCo() error {
	layers := make([]lgreco.Layer, len(s.units))
	for i, u := range s.units {
		// The default level is the codec after any warm-up (L-GreCo starts
		// after it), as worker gives a scheduled layer its last stage.
		st := s.plan.Stages(u)
		r, err := compressors.Parse(st[len(st)-1].Recipe)
		if err != nil {
			return err
		}
		layers[i] = lgreco.LayerOf(u.Name, u.Shape, r)
	}
	// The world size first, so that the caller's options can override it.
	opts := append([]lgreco.Option{lgreco.WithRanks(s.n)}, s.cfg.LGreCoOptions...)
	opts = append(opts, lgreco.WithSeed(s.plan.Seed))
	if f := s.cfg.LGreCoCost; f != nil {
		cost, err := f(s.n, layers)
		if err != nil {
			return fmt.Errorf("train: L-GreCo cost function: %w", err)
		}
		opts = append(opts, lgreco.WithCost(cost))
	}
	p, err := lgreco.NewPlan(layers, opts...)
	if err != nil {
		return fmt.Errorf("train: L-GreCo: %w", err)
	}
	if len(s.plan.Warmup) > 0 && p.Config().Start < int64(s.plan.WarmupSteps) {
		return fmt.Errorf("%w: L-GreCo starting at step %d, inside the %d-step warm-up (lgreco.WithSchedule's start must be at least the warm-up)",
			ErrUnsupported, p.Config().Start, s.plan.WarmupSteps)
	}
	s.lgPlan, s.lg = p, lgreco.NewController(p)
	return nil
}

// LinkCostFactory is the worker.LGreCoCostFactory of L-GreCo's link-aware
// objective on topo (sim.LinkCost with opts): the simulated time of each
// candidate's collective on the job's links.
func LinkCostFactory(topo *sim.Topology, opts *sim.Options) worker.LGreCoCostFactory {
	return func(world int, layers []lgreco.Layer) (lgreco.CostFunc, error) {
		return sim.LinkCost(topo, world, layers, opts)
	}
}

func seconds(t float64) time.Duration { return time.Duration(t * float64(time.Second)) }

func (s *Sim) denseAlg() allreduce.Algorithm {
	if s.cfg.Dense == 0 {
		return allreduce.AlgRing
	}
	return s.cfg.Dense
}

func (s *Sim) options() *sim.Options {
	if s.cfg.Options == nil {
		return &sim.Options{}
	}
	return s.cfg.Options
}

// computeModel sets the simulated gradient time: the slowest worker's, from
// the measured GradSeconds or else GradFLOP/FLOPS, plus LocalSeconds, over
// the node's speed and slowed by the workers sharing the node's (or host's)
// cores.
func (s *Sim) computeModel() error {
	work := s.cfg.GradSeconds
	if work <= 0 && s.cfg.GradFLOP > 0 {
		work = s.cfg.GradFLOP / s.cfg.FLOPS
	}
	work += s.cfg.LocalSeconds
	if work <= 0 {
		return nil
	}
	shares, err := s.cfg.Topology.CoreShares(s.options().Placement, s.n)
	if err != nil {
		return fmt.Errorf("train: %w", err)
	}
	place := s.options().Placement
	var worst float64
	for r := range s.n {
		nd := r
		if place != nil {
			nd = place[r]
		}
		speed := s.cfg.Topology.Nodes[nd].Speed
		if speed <= 0 {
			speed = 1
		}
		sh := shares[r]
		if f := s.options().CoreShare; sh > 1 && f > 0 {
			sh /= f // the oversubscribed cores' time lost to switching
		}
		worst = max(worst, work*sh/speed)
	}
	s.gradTime = seconds(worst)
	return nil
}

// Name implements Exchanger.
func (s *Sim) Name() string {
	if s.lg != nil {
		return "sim " + s.plan.String() + " lgreco"
	}
	return "sim " + s.plan.String()
}

// BaselineTime is the simulated step time of a dense fp32 ring all-reduce of
// all units on the same topology (gradient compute included).
func (s *Sim) BaselineTime() time.Duration { return s.baseline }

// GradTime is the simulated time of a step's gradient computation: the
// slowest worker's forward and backward pass (0 without SimConfig.GradFLOP
// or GradSeconds).
func (s *Sim) GradTime() time.Duration { return s.gradTime }

// Recipes returns the codec recipe of every unit's Mean layer now, in unit
// order (the plan's, the warm-up stage's or L-GreCo's active choice).
func (s *Sim) Recipes() []string {
	out := make([]string, len(s.units))
	for u, l := range s.layers[0] {
		out[u] = l.Compressor().String()
	}
	return out
}

// LGreCo returns L-GreCo's controller (nil without SimConfig.LGreCo), for
// reports: its plan, active choice and last solution.
func (s *Sim) LGreCo() *lgreco.Controller { return s.lg }

// boundary switches codecs at the start of step: the DGC warm-up stage and
// L-GreCo's schedule (decided from rank 0's observations, applied to every
// rank). It reports whether rank 0 observes this step for L-GreCo.
func (s *Sim) boundary(step int) (collect bool, err error) {
	for u, l := range s.eng {
		r, ok := l.SwitchAt(int64(step))
		if !ok {
			continue
		}
		for w := range s.n {
			if err := s.layers[w][u].SetCodec(r, s.plan.Seed); err != nil {
				return false, fmt.Errorf("train: codec schedule of unit %s: %w", l.Name, err)
			}
		}
	}
	if s.lg == nil {
		return false, nil
	}
	c, t := s.lg, int64(step)
	if c.Due(t) {
		// One controller stands for every rank's: they hold the same state
		// once rank 0's decision is scheduled.
		if err := c.Schedule(c.Decide(t)); err != nil {
			return false, fmt.Errorf("train: L-GreCo decision of step %d: %w", step, err)
		}
	}
	changed, err := c.Advance(t)
	if err != nil {
		return false, fmt.Errorf("train: L-GreCo: %w", err)
	}
	for _, u := range changed {
		for w := range s.n {
			if err := s.layers[w][u].SetCodec(c.Recipe(u), c.LayerSeed(u)); err != nil {
				return false, fmt.Errorf("train: L-GreCo: unit %s to %s: %w", s.units[u].Name, c.Recipe(u), err)
			}
		}
	}
	return c.Collecting(t), nil
}

// layerFor returns rank's layer of unit u for aggregation how, building the
// DenseMean and TwoPhaseSign layers on first use.
func (s *Sim) layerFor(rank, u int, how optim.Exchange) (*binding.Layer, error) {
	var slot **binding.Layer
	var spec binding.Spec
	var err error
	unit := s.units[u]
	switch how {
	case optim.Mean:
		return s.layers[rank][u], nil
	case optim.DenseMean:
		slot = &s.dense[rank][u]
		if *slot == nil {
			spec, err = s.pol.Dense(unit.Size)
		}
	case optim.TwoPhaseSign:
		slot = &s.signs[rank][u]
		if *slot == nil {
			var r compressors.Recipe
			if r, err = s.plan.SignRecipe(); err == nil {
				rows, cols := engine.MatrixShape(unit.Shape)
				spec, err = s.pol.SchemeFor(r, errorfeedback.Recipe{Kind: errorfeedback.KindNone}, unit.Size, rows, cols)
			}
		}
	default:
		return nil, fmt.Errorf("%w: aggregation %v", ErrUnsupported, how)
	}
	if err != nil {
		return nil, fmt.Errorf("train: unit %s: %w", unit.Name, err)
	}
	if *slot == nil {
		spec.Rank = rank
		l, err := binding.New(spec)
		if err != nil {
			return nil, fmt.Errorf("train: unit %s: %w", unit.Name, err)
		}
		*slot = l
	}
	return *slot, nil
}

// Exchange implements Exchanger.
func (s *Sim) Exchange(ctx context.Context, step int, how []optim.Exchange, in, out [][][]float32) (Stats, error) {
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	if err := checkShapes(s.n, s.units, how, in, out); err != nil {
		return Stats{}, err
	}
	collect, err := s.boundary(step)
	if err != nil {
		return Stats{}, err
	}
	s.colls = s.colls[:0]
	if len(s.collIdx) != len(s.units) {
		s.collIdx = make([]int, len(s.units))
	}
	st := Stats{Layers: make([]LayerStats, len(s.units))}
	ls := make([][]*binding.Layer, len(s.units)) // [unit][rank]
	start := s.gradTime.Seconds()
	for u, unit := range s.units {
		st.Layers[u].DenseBytes = DenseRingBytes(s.n, unit.Size)
		ls[u] = make([]*binding.Layer, s.n)
		for r := range s.n {
			if ls[u][r], err = s.layerFor(r, u, how[u]); err != nil {
				return Stats{}, err
			}
		}
		// Error feedback before the collective, in parallel over ranks
		// (each rank's layer state is its own).
		if err := parallel(s.n, func(r int) error {
			copy(out[r][u], in[r][u])
			if err := ls[u][r].Begin(out[r][u]); err != nil {
				return fmt.Errorf("train: worker %d unit %s: %w", r, unit.Name, err)
			}
			return nil
		}); err != nil {
			return Stats{}, err
		}
		if collect && how[u] == optim.Mean && s.lgPlan.Tuned(u) {
			s.observe(u, ls[u][0], out[0][u])
		}
		// The ranks' first compute ops (the encode of the gathered, two-phase
		// and low-rank schemes: most of the codec work) run ahead, in
		// parallel over ranks; the simulation then runs the rest.
		progs := make([]*allreduce.Program, s.n)
		execs := make([]allreduce.Executor, s.n)
		if err := parallel(s.n, func(r int) error {
			l := ls[u][r]
			progs[r] = l.Program()
			if s.options().LiveCompute {
				execs[r] = l.Exec() // measured compute: nothing runs ahead
				return nil
			}
			x, err := runAhead(l.Program(), l.Exec())
			if err != nil {
				return fmt.Errorf("train: worker %d unit %s: %w", r, unit.Name, err)
			}
			execs[r] = x
			return nil
		}); err != nil {
			return Stats{}, err
		}
		c := collective(unit, ls[u][0], progs, execs, start)
		s.colls, s.collIdx[u] = withFlags(s.colls, s.flags, c)
	}
	res, err := sim.Run(ctx, s.cfg.Topology, s.colls, s.options())
	if err != nil {
		return Stats{}, fmt.Errorf("train: step %d: simulation: %w", step, err)
	}
	for u := range s.units {
		st.Layers[u].WireBytes = res.Collectives[s.collIdx[u]].Bytes
		for r, l := range ls[u] {
			l.End(out[r][u])
			_, _, payload := l.Stats()
			st.Layers[u].PayloadBytes += payload
		}
	}
	for u := range s.units {
		for r, l := range ls[u] {
			l.Finish(out[r][u])
		}
	}
	for _, l := range st.Layers {
		st.PayloadBytes += l.PayloadBytes
		st.WireBytes += l.WireBytes
		st.DenseBytes += l.DenseBytes
	}
	st.Recipes = make([]string, len(s.units))
	for u := range s.units {
		st.Recipes[u] = ls[u][0].Compressor().String()
	}
	st.GradTime = s.gradTime
	st.StepTime = seconds(res.Time)
	st.CodecTime = seconds(res.Compress)
	st.ReduceTime = seconds(res.Compute)
	// The critical rank's Communicate includes waiting for the gradients.
	st.CommTime = max(0, seconds(res.Communicate)-s.gradTime)
	st.BaselineTime = s.baseline
	return st, nil
}

// collective is the simulated collective of unit as rank 0's layer l runs
// it: its recipe (per layer and step, so recipe-qualified calibration keys
// and the fp16/bf16 hop codec follow warm-up and L-GreCo, and dense layers
// of a compressed plan are not charged the plan's codec) and, as the
// prologue, the work of error feedback that the program's ops do not
// count: for an element-wise codec, the encode and decode that Begin runs
// before the program (data ← D(EF(data))); for a gathered codec, the
// compensation of the gradient by the feedback's state (EF14: e ← e + g,
// a pass over the layer like a reduction), which its payload encode runs
// before the codec's compression (bench's encode throughput is the
// compression alone); for a low-rank codec under ef14, the layer's own
// residual passes (binding.Layer.LowRankResidual: Begin's M ← data + e and
// its copy of M, End's e ← M − Ĝ), three passes charged as reductions
// (each reads and writes as much as one) before the program, End's
// included: it is CPU of the same rank either way.
func collective(unit Layer, l *binding.Layer, progs []*allreduce.Program, execs []allreduce.Executor, start float64) sim.Collective {
	c := sim.Collective{Name: unit.Name, Programs: progs, Executors: execs, Start: start, Recipe: l.Compressor().String()}
	switch fb := l.Feedback(); {
	case l.Aggregation() == compressors.LowRank && l.LowRankResidual():
		c.Prologue = sim.Prologue{Fn: allreduce.FnReduce, Elems: 3 * int64(unit.Size)}
	case fb == nil:
	case l.Aggregation() == compressors.Reduce:
		c.Prologue = sim.Prologue{Fn: allreduce.FnEncode, Elems: int64(unit.Size)}
	case l.Aggregation() == compressors.Gather:
		if _, none := fb.(*errorfeedback.None); !none {
			c.Prologue = sim.Prologue{Fn: allreduce.FnReduce, Elems: int64(unit.Size)}
		}
	}
	return c
}

// aheadExec is an executor whose compute ops in pre already ran (runAhead):
// Run skips them once; everything else goes to the Exec.
type aheadExec struct {
	*allreduce.Exec
	pre []*allreduce.Op
}

func (a *aheadExec) Run(op *allreduce.Op) error {
	for i, p := range a.pre {
		if p == op {
			a.pre[i] = nil
			return nil
		}
	}
	return a.Exec.Run(op)
}

// runAhead runs the compute ops of p that depend on nothing (a valid first
// step of any execution order the program's dependencies allow, so the
// result is the same bits) on x, and returns the executor for the rest. The
// simulator charges compute from its model, not from measured time, so
// running ahead changes no simulated time (with Options.LiveCompute, which
// measures, Exchange does not run ahead).
func runAhead(p *allreduce.Program, x *allreduce.Exec) (allreduce.Executor, error) {
	var pre []*allreduce.Op
	for i := range p.Ops {
		op := &p.Ops[i]
		if op.Kind != allreduce.Compute || op.Deps[0] != allreduce.NoDep || op.Deps[1] != allreduce.NoDep {
			continue
		}
		if err := x.Run(op); err != nil {
			return nil, err
		}
		pre = append(pre, op)
	}
	if len(pre) == 0 {
		return x, nil
	}
	return &aheadExec{Exec: x, pre: pre}, nil
}

// observe feeds rank 0's gradient and error-feedback residual of unit u
// (data after Begin) to L-GreCo, as the worker's observer does.
func (s *Sim) observe(u int, l *binding.Layer, data []float32) {
	g, e := l.Observation(data)
	s.lg.Observe(u, g, e)
}

// RecipeHash is a short stable digest of a list of per-layer recipes (the
// CSV's recipe column): equal lists give equal hashes.
func RecipeHash(recipes []string) string {
	if len(recipes) == 0 {
		return ""
	}
	h := fnv.New32a() // FNV-1a, 32 bits
	io.WriteString(h, strings.Join(recipes, ";"))
	return fmt.Sprintf("%08x", h.Sum32())
}

var _ Exchanger = (*Sim)(nil)
