package train

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/worker/adapt"
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
// Per unit and step, by the aggregation asked for and the plan's codec:
//
//	Mean, element-wise codec (none, fp16, bf16): Encode through the error
//	    feedback, decode, all-reduce-average with the Dense algorithm on the
//	    codec's element encoding, Finish.
//	Mean, gathered codec (top-k, DGC, random-k, QSGD): the SparseGather
//	    scheme with the error feedback as payload codec, Finish.
//	Mean, sign codec: the two-phase scheme with worker and server error.
//	DenseMean: an fp32 all-reduce average with the Dense algorithm.
//	TwoPhaseSign: the two-phase 1-bit all-reduce (specs §2.2).
//
//	Mean, PowerSGD: the low-rank (P then Q) scheme with its ef14 residual,
//	    through worker/adapt, as the real worker runs it.
//
// Stats
// count message bytes (no transport framing); DenseBytes is the dense fp32
// ring formula and BaselineTime the simulated time of a dense fp32 ring of
// all units on the same topology.
type Sim struct {
	cfg      SimConfig
	plan     Plan
	units    []Layer
	n        int
	fbs      [][]errorfeedback.Feedback // [rank][unit]
	lowrank  [][]*adapt.Layer           // [rank][unit], PowerSGD units only
	tp       [][]*twoPhaseHook
	progs    map[progKey][]*allreduce.Program
	execs    map[progKey][]*allreduce.Exec
	enc      [][]byte
	pcs      [][]*payloadCodec // [rank][unit], gathered units only
	colls    []sim.Collective
	gradTime time.Duration
	baseline time.Duration
}

type progKey struct {
	unit int
	alg  allreduce.Algorithm
	bpe  int
}

// payloadCodec adapts one rank's error feedback to allreduce.PayloadCodec and
// records the payload size. The payload may be encoded ahead of the
// simulation (precompute, in parallel over ranks); the executor's Encode then
// hands out that payload, which is what it would have computed from the same
// data.
type payloadCodec struct {
	fb    errorfeedback.Feedback
	bytes int64
	pre   []byte
	ready bool
}

func (p *payloadCodec) precompute(src []float32) error {
	b, err := p.fb.Encode(p.pre[:0], src)
	p.pre, p.ready, p.bytes = b, err == nil, int64(len(b))
	return err
}

func (p *payloadCodec) Encode(dst []byte, src []float32) ([]byte, error) {
	if p.ready {
		p.ready = false
		return append(dst[:0], p.pre...), nil
	}
	b, err := p.fb.Encode(dst, src)
	p.bytes += int64(len(b))
	return b, err
}

// twoPhaseHook is a rank's two-phase state whose worker step (steps 1-4, the
// larger part of the work) may run ahead of the simulation, in parallel over
// ranks; the server step runs inside it.
type twoPhaseHook struct {
	st    *allreduce.TwoPhaseState
	bits  []byte
	scale float32
	ready bool
}

func (h *twoPhaseHook) precompute(m []float32) {
	h.bits, h.scale = h.st.WorkerCompress(h.bits[:0], m)
	h.ready = true
}

func (h *twoPhaseHook) WorkerCompress(dst []byte, m []float32) ([]byte, float32) {
	if h.ready {
		h.ready = false
		return append(dst[:0], h.bits...), h.scale
	}
	return h.st.WorkerCompress(dst, m)
}

func (h *twoPhaseHook) ServerStep(dst []byte, recv [][]byte, scales []float32) ([]byte, float32, error) {
	return h.st.ServerStep(dst, recv, scales)
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

func (p *payloadCodec) DecodeAdd(dst []float32, payload []byte) error {
	return p.fb.Compressor().DecompressAdd(dst, payload)
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
	if cfg.FLOPS == 0 {
		cfg.FLOPS = DefaultFLOPS
	}
	s := &Sim{cfg: cfg, plan: plan, units: units, n: n,
		fbs: make([][]errorfeedback.Feedback, n), tp: make([][]*twoPhaseHook, n), lowrank: make([][]*adapt.Layer, n),
		progs: map[progKey][]*allreduce.Program{}, execs: map[progKey][]*allreduce.Exec{},
		enc: make([][]byte, n), pcs: make([][]*payloadCodec, n)}
	for w := range n {
		s.tp[w] = make([]*twoPhaseHook, len(units))
		s.lowrank[w] = make([]*adapt.Layer, len(units))
		s.pcs[w] = make([]*payloadCodec, len(units))
		for i, u := range units {
			fb, err := plan.NewFeedback(u, w, n)
			if err != nil {
				return nil, err
			}
			s.fbs[w] = append(s.fbs[w], fb)
			if fb.Compressor().Aggregation() == compressors.TwoPhase && plan.efRecipe() != "none" {
				return nil, fmt.Errorf("%w: %s runs the two-phase scheme with its own worker and server error; use --ef none, not %s",
					ErrUnsupported, fb.Compressor(), plan.efRecipe())
			}
			if fb.Compressor().Aggregation() == compressors.LowRank {
				// PowerSGD: worker/adapt runs the P-then-Q scheme and its
				// ef14 residual exactly as the real worker does.
				if len(plan.Warmup) > 0 {
					return nil, fmt.Errorf("%w: a warm-up schedule for %s", ErrUnsupported, fb.Compressor())
				}
				if s.lowrank[w][i], err = newLowRank(u, plan, w, n); err != nil {
					return nil, err
				}
			}
		}
	}
	if err := s.computeModel(); err != nil {
		return nil, err
	}
	// The dense fp32 baseline of the same units on the same topology.
	var colls []sim.Collective
	for u := range units {
		progs, err := s.programs(progKey{unit: u, alg: s.denseAlg(), bpe: 4})
		if err != nil {
			return nil, err
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

// computeModel sets the simulated gradient time: the slowest worker's.
func (s *Sim) computeModel() error {
	if s.cfg.GradFLOP <= 0 {
		return nil
	}
	place := s.options().Placement
	var worst float64
	for r := range s.n {
		node := r
		if place != nil {
			node = place[r]
		}
		if node >= len(s.cfg.Topology.Nodes) {
			return fmt.Errorf("train: worker %d has no node in a topology of %d", r, len(s.cfg.Topology.Nodes))
		}
		speed := s.cfg.Topology.Nodes[node].Speed
		if speed <= 0 {
			speed = 1
		}
		worst = max(worst, s.cfg.GradFLOP/(s.cfg.FLOPS*speed))
	}
	s.gradTime = seconds(worst)
	return nil
}

// newLowRank builds rank's PowerSGD layer for unit u.
func newLowRank(u Layer, plan Plan, rank, world int) (*adapt.Layer, error) {
	codec, err := compressors.Parse(plan.RecipeAt(u, 0))
	if err != nil {
		return nil, err
	}
	ef, err := errorfeedback.Parse(plan.efRecipe())
	if err != nil {
		return nil, err
	}
	rows := u.Shape[0]
	l, err := adapt.New(adapt.Spec{Codec: codec, EF: ef, Elems: u.Size, Rows: rows, Cols: u.Size / rows,
		World: world, Rank: rank, Seed: plan.Seed})
	if err != nil {
		return nil, fmt.Errorf("train: unit %s: %w", u.Name, err)
	}
	return l, nil
}

// programs returns (and caches) the programs of all ranks for key.
func (s *Sim) programs(k progKey) ([]*allreduce.Program, error) {
	if p, ok := s.progs[k]; ok {
		return p, nil
	}
	progs := make([]*allreduce.Program, s.n)
	for r := range s.n {
		p := allreduce.Params{World: s.n, Rank: r, Elems: s.units[k.unit].Size}
		if k.alg.Reduces() {
			p.Average, p.ElemBytes = true, k.bpe
		}
		prog, err := allreduce.Generate(k.alg, p)
		if err != nil {
			return nil, fmt.Errorf("train: %s program for %s: %w", k.alg, s.units[k.unit].Name, err)
		}
		progs[r] = prog
	}
	s.progs[k] = progs
	return progs, nil
}

// exec returns rank r's executor for key, reset to run over data.
func (s *Sim) exec(k progKey, r int, data []float32, opts ...allreduce.ExecOption) (*allreduce.Exec, error) {
	progs, err := s.programs(k)
	if err != nil {
		return nil, err
	}
	ex := s.execs[k]
	if ex == nil {
		ex = make([]*allreduce.Exec, s.n)
		s.execs[k] = ex
	}
	// The hooks in opts are persistent per rank and unit (error feedback,
	// two-phase state, payload codec), so an executor is built once per key
	// and rank and reset every step.
	if ex[r] == nil {
		e, err := allreduce.NewExec(progs[r], data, opts...)
		if err != nil {
			return nil, fmt.Errorf("train: executor for %s: %w", s.units[k.unit].Name, err)
		}
		ex[r] = e
		return e, nil
	}
	if err := ex[r].Reset(progs[r], data); err != nil {
		return nil, err
	}
	return ex[r], nil
}

// Name implements Exchanger.
func (s *Sim) Name() string { return "sim " + s.plan.String() }

// BaselineTime is the simulated step time of a dense fp32 ring all-reduce of
// all units on the same topology (gradient compute included).
func (s *Sim) BaselineTime() time.Duration { return s.baseline }

type finish struct {
	unit    int
	fb      bool
	lowrank bool
}

// Exchange implements Exchanger.
func (s *Sim) Exchange(ctx context.Context, step int, how []optim.Exchange, in, out [][][]float32) (Stats, error) {
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	if err := checkShapes(s.n, s.units, how, in, out); err != nil {
		return Stats{}, err
	}
	for w := range s.n {
		if err := s.plan.advance(s.fbs[w], s.units, step, w); err != nil {
			return Stats{}, err
		}
	}
	s.colls = s.colls[:0]
	st := Stats{Layers: make([]LayerStats, len(s.units))}
	var finishes []finish
	gathers := make([][]*payloadCodec, len(s.units))
	var lowUnits []int
	start := s.gradTime.Seconds()
	for u, unit := range s.units {
		ls := &st.Layers[u]
		ls.DenseBytes = DenseRingBytes(s.n, unit.Size)
		execs := make([]allreduce.Executor, s.n)
		agg := compressors.Reduce
		if how[u] == optim.Mean {
			agg = s.fbs[0][u].Compressor().Aggregation()
		}
		switch {
		case how[u] == optim.TwoPhaseSign || (how[u] == optim.Mean && agg == compressors.TwoPhase):
			k := progKey{unit: u, alg: allreduce.AlgTwoPhaseSign}
			parallel(s.n, func(r int) error {
				if s.tp[r][u] == nil {
					s.tp[r][u] = &twoPhaseHook{st: allreduce.NewTwoPhaseState(unit.Size, s.n)}
				}
				copy(out[r][u], in[r][u])
				s.tp[r][u].precompute(out[r][u])
				return nil
			})
			for r := range s.n {
				e, err := s.exec(k, r, out[r][u], allreduce.WithTwoPhase(s.tp[r][u]))
				if err != nil {
					return Stats{}, err
				}
				execs[r] = e
			}
			ls.PayloadBytes = int64(s.n) * int64(allreduce.TwoPhasePaddedLen(unit.Size, s.n)/8+4)
		case how[u] == optim.DenseMean:
			k := progKey{unit: u, alg: s.denseAlg(), bpe: 4}
			for r := range s.n {
				copy(out[r][u], in[r][u])
				e, err := s.exec(k, r, out[r][u])
				if err != nil {
					return Stats{}, err
				}
				execs[r] = e
			}
			ls.PayloadBytes = int64(s.n) * 4 * int64(unit.Size)
		case agg == compressors.Reduce:
			ec, ok := compressors.AsElementCodec(s.fbs[0][u].Compressor())
			if !ok {
				return Stats{}, fmt.Errorf("%w: %s has no element codec", ErrUnsupported, s.fbs[0][u].Compressor())
			}
			k := progKey{unit: u, alg: s.denseAlg(), bpe: ec.BytesPerElem()}
			// Error feedback before the collective: data ← D(EF.Encode(g)).
			if err := parallel(s.n, func(r int) error {
				fb := s.fbs[r][u]
				p, err := fb.Encode(s.enc[r][:0], in[r][u])
				if err != nil {
					return fmt.Errorf("train: worker %d unit %s: %w", r, unit.Name, err)
				}
				s.enc[r] = p
				if err := fb.Compressor().Decompress(out[r][u], p); err != nil {
					return fmt.Errorf("train: worker %d unit %s: %w", r, unit.Name, err)
				}
				return nil
			}); err != nil {
				return Stats{}, err
			}
			for r := range s.n {
				rec, _ := compressors.AsElementCodec(s.fbs[r][u].Compressor())
				e, err := s.exec(k, r, out[r][u], allreduce.WithElementCodec(rec))
				if err != nil {
					return Stats{}, err
				}
				execs[r] = e
			}
			ls.PayloadBytes = int64(s.n) * int64(ec.BytesPerElem()) * int64(unit.Size)
			finishes = append(finishes, finish{unit: u, fb: true})
		case agg == compressors.LowRank:
			progs := make([]*allreduce.Program, s.n)
			for r := range s.n {
				l := s.lowrank[r][u]
				copy(out[r][u], in[r][u])
				if err := l.Begin(out[r][u]); err != nil {
					return Stats{}, fmt.Errorf("train: worker %d unit %s: %w", r, unit.Name, err)
				}
				execs[r], progs[r] = l.Exec(), l.Program()
			}
			lowUnits = append(lowUnits, u)
			s.colls = append(s.colls, sim.Collective{Name: unit.Name, Programs: progs, Executors: execs, Start: start})
			continue
		case agg == compressors.Gather:
			k := progKey{unit: u, alg: allreduce.AlgSparseGather}
			if err := parallel(s.n, func(r int) error {
				if s.pcs[r][u] == nil {
					s.pcs[r][u] = &payloadCodec{fb: s.fbs[r][u]}
				}
				copy(out[r][u], in[r][u])
				if err := s.pcs[r][u].precompute(out[r][u]); err != nil {
					return fmt.Errorf("train: worker %d unit %s: %w", r, unit.Name, err)
				}
				return nil
			}); err != nil {
				return Stats{}, err
			}
			for r := range s.n {
				pc := s.pcs[r][u]
				gathers[u] = append(gathers[u], pc)
				e, err := s.exec(k, r, out[r][u], allreduce.WithPayloadCodec(pc))
				if err != nil {
					return Stats{}, err
				}
				execs[r] = e
			}
			finishes = append(finishes, finish{unit: u, fb: true})
		default:
			return Stats{}, fmt.Errorf("%w: aggregation %v of %s", ErrUnsupported, agg, s.fbs[0][u].Compressor())
		}
		progs := s.progs[progKeyOf(s, u, how[u], agg)]
		s.colls = append(s.colls, sim.Collective{Name: unit.Name, Programs: progs, Executors: execs, Start: start})
	}
	res, err := sim.Run(ctx, s.cfg.Topology, s.colls, s.options())
	if err != nil {
		return Stats{}, fmt.Errorf("train: step %d: simulation: %w", step, err)
	}
	for u := range s.units {
		ls := &st.Layers[u]
		ls.WireBytes = res.Collectives[u].Bytes
		for _, pc := range gathers[u] {
			ls.PayloadBytes += pc.bytes
		}
	}
	for _, u := range lowUnits {
		for r := range s.n {
			l := s.lowrank[r][u]
			l.End(out[r][u])
			_, _, payload := l.Stats()
			st.Layers[u].PayloadBytes += payload
		}
		finishes = append(finishes, finish{unit: u, lowrank: true})
	}
	for _, f := range finishes {
		for r := range s.n {
			if f.lowrank {
				s.lowrank[r][f.unit].Finish(out[r][f.unit])
			} else {
				s.fbs[r][f.unit].Finish(out[r][f.unit])
			}
		}
	}
	for _, ls := range st.Layers {
		st.PayloadBytes += ls.PayloadBytes
		st.WireBytes += ls.WireBytes
		st.DenseBytes += ls.DenseBytes
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

// progKeyOf is the program key Exchange used for unit u.
func progKeyOf(s *Sim, u int, how optim.Exchange, agg compressors.Aggregation) progKey {
	switch {
	case how == optim.TwoPhaseSign || (how == optim.Mean && agg == compressors.TwoPhase):
		return progKey{unit: u, alg: allreduce.AlgTwoPhaseSign}
	case how == optim.DenseMean:
		return progKey{unit: u, alg: s.denseAlg(), bpe: 4}
	case agg == compressors.Reduce:
		ec, _ := compressors.AsElementCodec(s.fbs[0][u].Compressor())
		return progKey{unit: u, alg: s.denseAlg(), bpe: ec.BytesPerElem()}
	}
	return progKey{unit: u, alg: allreduce.AlgSparseGather}
}

var _ Exchanger = (*Sim)(nil)
