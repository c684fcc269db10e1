// Package binding binds one layer's codec (package compressors) and error
// feedback (package errorfeedback) to the collective scheme that its codec's
// aggregation needs (package allreduce): it chooses the program, builds the
// allreduce.Exec with the right hooks, and runs the error-feedback steps that
// happen before and after the collective.
//
// Both drivers use it: package worker over a real transport, and package sim
// in payload mode, so the bytes and numbers of a simulated step are those of
// a real one. A driver does, per layer and step:
//
//	l.Begin(data)            // error feedback before the collective
//	run l.Program() with l.Exec() (the driver's Machine loop)
//	l.End()                  // bookkeeping after the collective
//	... once every layer of the step succeeded:
//	l.Finish(data)           // error feedback's finishing step (replicated state)
//
// Schemes by aggregation (compressors.Aggregation):
//
//	Reduce   (none, fp16, bf16)   Spec.Algorithm (ring, tree, halving-doubling) with
//	                              the codec's element codec on every hop; error feedback
//	                              other than none runs first: data ← D(EF.Encode(data)).
//	Gather   (topk, randomk, dgc, qsgd)  sparse-gather: EF.Encode → all-gather →
//	                              DecompressAdd in rank order → ×1/N.
//	TwoPhase (sign)               two-phase-sign with errorfeedback.WorkerError and
//	                              ServerError (docs/algorithms.md §2.2).
//	LowRank  (powersgd)           low-rank (P then Q) with the codec's PowerSGD steps;
//	                              with ef14 the residual e = M − P̂Qᵀ (docs/algorithms.md §4.1).
package binding

import (
	"errors"
	"fmt"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/internal/kernels"
)

// ErrSpec is wrapped by every error about an invalid Spec.
var ErrSpec = errors.New("binding: invalid layer spec")

// Spec describes one layer (or fused bucket) on one rank.
type Spec struct {
	Codec compressors.Recipe
	EF    errorfeedback.Recipe
	// Elems is the vector length. Rows and Cols are its matrix shape
	// (required for PowerSGD; Rows·Cols == Elems).
	Elems, Rows, Cols int
	World, Rank       int
	// Seed is shared by all ranks (random-k indices, PowerSGD's Q).
	Seed uint64
	// Algorithm is the all-reduce of Reduce codecs: AlgRing, AlgTree or
	// AlgHalvingDoubling. Other aggregations choose their own scheme.
	Algorithm allreduce.Algorithm
	// Segments pipelines dense rings and trees (0 means 1).
	Segments int
}

// Layer is one layer's scheme, program, executor and state on one rank. It
// is not safe for concurrent use.
type Layer struct {
	spec Spec
	agg  compressors.Aggregation
	comp compressors.Compressor
	fb   errorfeedback.Feedback // Reduce (if not none), Gather
	prog *allreduce.Program
	exec *allreduce.Exec

	elem    compressors.ElementCodec
	payload []byte // Reduce with EF: scratch for the encoded vector

	// LowRank with ef14.
	resid, mcopy []float32
	obs          []float32 // Observation's scratch: M − e

	tp *twoPhase // TwoPhase: worker and server errors

	t timer
}

// timer accumulates encode and decode time and this step's payload bytes.
type timer struct {
	compress, decompress time.Duration
	payload              int64
}

// New builds the layer's codec, error feedback, program and executor.
func New(s Spec) (*Layer, error) {
	l := &Layer{}
	nl, err := build(s, &l.t, nil)
	if err != nil {
		return nil, err
	}
	*l = *nl
	return l, nil
}

// SetCodec switches the layer to codec r with the shared seed seed (at a
// step boundary, on every rank at the same step), keeping the error-feedback
// state: the codec, program and executor are rebuilt for r (PowerSGD's P and
// Q sized for the new rank; Q's leading columns carried over from the old
// rank's warm start by compressors.PowerSGD.WarmStartFrom, the rest drawn
// from seed, so identically on every rank that passes the same seed and
// shares the old Q, as the low-rank all-reduce makes it), while the PowerSGD
// ef14 residual, the
// error feedback of gathered and dense codecs (switched with
// errorfeedback.Feedback.SetCompressor) and the two-phase errors carry over.
// r must have the layer's aggregation (a switch between schemes would change
// what the state means); otherwise, or if the new codec cannot be built, it
// returns an error wrapping ErrSpec (or the codec's error) and the layer is
// unchanged. It must not be called between Begin and End.
func (l *Layer) SetCodec(r compressors.Recipe, seed uint64) error {
	if r.Aggregation() != l.agg {
		return fmt.Errorf("%w: cannot switch %s (%v) to %s (%v)", ErrSpec, l.spec.Codec, l.agg, r, r.Aggregation())
	}
	s := l.spec
	s.Codec, s.Seed = r, seed
	nl, err := build(s, &l.t, l)
	if err != nil {
		return err
	}
	if ps, ok := nl.comp.(*compressors.PowerSGD); ok {
		if o, ok := l.comp.(*compressors.PowerSGD); ok {
			if err := ps.WarmStartFrom(o); err != nil {
				return fmt.Errorf("binding: switching to %s: %w", r, err)
			}
		}
	}
	if l.fb != nil {
		// Last, so that a failure leaves the layer as it was.
		if err := l.fb.SetCompressor(nl.comp); err != nil {
			return fmt.Errorf("binding: switching to %s: %w", r, err)
		}
	}
	nl.t = l.t
	*l = *nl
	return nil
}

// build makes a layer for s whose hooks account their time in t. With old
// set, the error-feedback state of old is reused (not modified: the caller
// switches old.fb to the new compressor).
func build(s Spec, t *timer, old *Layer) (*Layer, error) {
	alg, p, err := SchemeFor(s)
	if err != nil {
		return nil, err
	}
	l := &Layer{spec: s, agg: s.Codec.Aggregation()}
	opts := []compressors.Option{compressors.WithSeed(s.Seed), compressors.WithRank(s.Rank)}
	if alg == allreduce.AlgLowRank {
		opts = append(opts, compressors.WithShape(s.Rows, s.Cols))
	}
	comp, err := s.Codec.New(s.Elems, opts...)
	if err != nil {
		return nil, err
	}
	l.comp = comp
	var xopts []allreduce.ExecOption
	switch l.agg {
	case compressors.Reduce:
		ec, ok := compressors.AsElementCodec(comp)
		if !ok {
			return nil, fmt.Errorf("%w: codec %s has no element codec", ErrSpec, s.Codec)
		}
		if ec.BytesPerElem() != p.ElemBytes {
			return nil, fmt.Errorf("%w: codec %s sends %d bytes per element, its recipe says %d", ErrSpec, s.Codec, ec.BytesPerElem(), p.ElemBytes)
		}
		l.elem = ec
		if s.Codec.Codec != compressors.CodecNone {
			// Wrapped for timing; the raw fp32 path (zero copy) is the default.
			xopts = append(xopts, allreduce.WithElementCodec(timedElem{ec, t}))
		}
		if old != nil {
			l.fb, l.payload = old.fb, old.payload
		} else if s.EF.Kind != errorfeedback.KindNone {
			if l.fb, err = s.EF.New(comp, errorfeedback.WithWorld(s.World)); err != nil {
				return nil, err
			}
		}
	case compressors.Gather:
		if old != nil {
			l.fb = old.fb
		} else if l.fb, err = s.EF.New(comp, errorfeedback.WithWorld(s.World)); err != nil {
			return nil, err
		}
		xopts = append(xopts, allreduce.WithPayloadCodec(&payloadCodec{fb: l.fb, comp: comp, t: t}))
	case compressors.TwoPhase:
		if old != nil && old.tp != nil && old.tp.TwoPhaseLayout().Block() == s.Codec.Block {
			l.tp = old.tp
		} else {
			st, err := errorfeedback.NewTwoPhase(s.Elems, s.World, s.Rank, s.Codec.Block)
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrSpec, err)
			}
			l.tp = &twoPhase{TwoPhase: st, t: t}
		}
		xopts = append(xopts, allreduce.WithTwoPhase(l.tp))
	case compressors.LowRank:
		h, ok := comp.(allreduce.LowRankHook)
		if !ok {
			return nil, fmt.Errorf("%w: codec %s does not provide the PowerSGD steps", ErrSpec, s.Codec)
		}
		if h.Rows() != p.Rows || h.Cols() != p.Cols || h.Rank() != p.Components {
			return nil, fmt.Errorf("%w: codec %s is %d×%d of rank %d, its recipe says %d×%d of rank %d",
				ErrSpec, s.Codec, h.Rows(), h.Cols(), h.Rank(), p.Rows, p.Cols, p.Components)
		}
		if s.EF.Kind == errorfeedback.KindEF14 {
			if old != nil && old.resid != nil {
				l.resid, l.mcopy = old.resid, old.mcopy
			} else {
				l.resid = make([]float32, s.Elems)
				l.mcopy = make([]float32, s.Elems)
			}
		}
		xopts = append(xopts, allreduce.WithLowRank(timedLowRank{h, t}))
	}
	if l.prog, err = allreduce.Generate(alg, p); err != nil {
		return nil, err
	}
	// The executor is bound to real data by Begin; a zero vector of the
	// right length satisfies NewExec's checks until then.
	if l.exec, err = allreduce.NewExec(l.prog, make([]float32, s.Elems), xopts...); err != nil {
		return nil, err
	}
	return l, nil
}

// SchemeFor is the collective that a layer of spec s runs: the program's
// algorithm and parameters for rank s.Rank, by the codec's aggregation:
//
//	Reduce    s.Algorithm (ring, tree or halving-doubling) in s.Segments,
//	          averaging, at the codec's element size (2 bytes for fp16
//	          and bf16, else 4)
//	Gather    sparse-gather (Params.Sizes nil: the payloads' lengths are
//	          learned at run time; see NominalScheme)
//	TwoPhase  two-phase-sign with the codec's scale block
//	LowRank   low-rank: Rows×Cols with min(rank, Rows, Cols) components
//
// It is the one mapping from codecs to schemes: New builds its program
// from it, and the simulator's size-only mode and L-GreCo's cost models
// time the programs it describes. It builds nothing. It returns an error
// wrapping ErrSpec for a spec that no layer can run (a rank outside the
// world, an algorithm that is not an all-reduce for a Reduce codec,
// error feedback that the scheme does not take, PowerSGD without a
// matrix shape, an unknown aggregation).
func SchemeFor(s Spec) (allreduce.Algorithm, allreduce.Params, error) {
	p := allreduce.Params{World: s.World, Rank: s.Rank, Elems: s.Elems, Average: true}
	if s.World < 1 || s.Rank < 0 || s.Rank >= s.World || s.Elems < 0 {
		return 0, p, fmt.Errorf("%w: rank %d of %d, %d elements", ErrSpec, s.Rank, s.World, s.Elems)
	}
	switch agg := s.Codec.Aggregation(); agg {
	case compressors.Reduce:
		switch s.Algorithm {
		case allreduce.AlgRing, allreduce.AlgTree, allreduce.AlgHalvingDoubling:
		default:
			return 0, p, fmt.Errorf("%w: %v is not an all-reduce for dense layers", ErrSpec, s.Algorithm)
		}
		p.Segments, p.ElemBytes = s.Segments, 4
		if s.Codec.Codec == compressors.CodecFP16 || s.Codec.Codec == compressors.CodecBF16 {
			p.ElemBytes = 2
		}
		return s.Algorithm, p, nil
	case compressors.Gather:
		return allreduce.AlgSparseGather, p, nil
	case compressors.TwoPhase:
		if s.EF.Kind != errorfeedback.KindNone {
			return 0, p, fmt.Errorf("%w: %s keeps its own worker and server errors; error feedback must be none", ErrSpec, s.Codec)
		}
		p.SignBlock = s.Codec.Block
		return allreduce.AlgTwoPhaseSign, p, nil
	case compressors.LowRank:
		if s.EF.Kind != errorfeedback.KindNone && s.EF.Kind != errorfeedback.KindEF14 {
			return 0, p, fmt.Errorf("%w: %s supports error feedback none or ef14, not %s", ErrSpec, s.Codec, s.EF)
		}
		if s.Rows < 1 || s.Cols < 1 || s.Rows*s.Cols != s.Elems {
			return 0, p, fmt.Errorf("%w: %s needs a matrix shape, got %d×%d for %d elements", ErrSpec, s.Codec, s.Rows, s.Cols, s.Elems)
		}
		p.Rows, p.Cols, p.Components = s.Rows, s.Cols, min(s.Codec.Rank, s.Rows, s.Cols)
		return allreduce.AlgLowRank, p, nil
	default:
		return 0, p, fmt.Errorf("%w: unknown aggregation %v", ErrSpec, agg)
	}
}

// NominalScheme is SchemeFor with a sparse gather's payloads set to payload
// bytes on every rank (Params.Sizes), for timing a program before the
// payloads exist (the simulator's size-only mode, L-GreCo's cost models).
func NominalScheme(s Spec, payload int64) (allreduce.Algorithm, allreduce.Params, error) {
	alg, p, err := SchemeFor(s)
	if err == nil && alg == allreduce.AlgSparseGather {
		p.Sizes = make([]int64, s.World)
		for i := range p.Sizes {
			p.Sizes[i] = payload
		}
	}
	return alg, p, err
}

// Program is the layer's program (the same every step).
func (l *Layer) Program() *allreduce.Program { return l.prog }

// Exec is the layer's executor, bound to the data of the last Begin.
func (l *Layer) Exec() *allreduce.Exec { return l.exec }

// Scheme names the program, e.g. "ring" or "sparse-gather".
func (l *Layer) Scheme() string { return l.prog.Name }

// Aggregation is the codec's aggregation.
func (l *Layer) Aggregation() compressors.Aggregation { return l.agg }

// Compressor is the layer's codec.
func (l *Layer) Compressor() compressors.Compressor { return l.comp }

// Feedback is the layer's error feedback (nil for schemes that keep their
// own, and for dense layers without feedback).
func (l *Layer) Feedback() errorfeedback.Feedback { return l.fb }

// LowRankResidual reports whether the layer keeps PowerSGD's ef14 residual
// e itself (a LowRank codec under ef14, whose Feedback is nil): then Begin
// adds e to the data and keeps a copy of the sum M, and End sets
// e = M − Ĝ, three passes over the layer outside the program.
func (l *Layer) LowRankResidual() bool { return l.resid != nil }

// State returns the live slices of the layer's state that carry over to a
// layer of the same Spec in another world size: the error feedback's
// vectors (EF14: the residual; DGC: momentum u, then velocity v when it
// keeps one; EControl: e, hᵢ, h; EF21: hᵢ, h), and for PowerSGD the ef14
// residual, then Q (the warm start, bit-identical on every rank). The
// two-phase sign errors are sharded by world size and are not included;
// nor is any compressor state other than PowerSGD's Q (the random-k stream
// restarts with a new layer). The slices alias the layer: the caller may read
// or overwrite them (same lengths) between steps, never between Begin and
// Finish, and they are valid until SetCodec. Layers built from the same
// Spec return slices of the same count and lengths.
func (l *Layer) State() [][]float32 {
	var st [][]float32
	l.eachState(func(v []float32, _ bool) { st = append(st, v) })
	return st
}

// StateShared reports, for each slice of State in its order, whether it is
// bit-identical on every rank of the job, so that a rank that joins must
// receive it from the others rather than start it at zero: EControl's and
// EF21's estimate h, DGC's momentum and velocity on a layer it sends dense
// (they follow the averaged gradient), and PowerSGD's Q. The others (EF14's
// residual, EControl's e and hᵢ, DGC's state on a sparse layer, the PowerSGD
// residual) are the rank's own.
func (l *Layer) StateShared() []bool {
	var sh []bool
	l.eachState(func(_ []float32, shared bool) { sh = append(sh, shared) })
	return sh
}

// eachState calls f on every slice of State in order, with whether it is
// shared (see StateShared).
func (l *Layer) eachState(f func(v []float32, shared bool)) {
	switch fb := l.fb.(type) {
	case *errorfeedback.EF14:
		f(fb.Residual(), false)
	case *errorfeedback.DGC:
		f(fb.Momentum(), fb.Dense())
		if v := fb.Velocity(); v != nil {
			f(v, fb.Dense())
		}
	case *errorfeedback.EControl:
		if e := fb.Error(); e != nil {
			f(e, false)
		}
		f(fb.Local(), false)
		f(fb.Shared(), true)
	}
	if l.resid != nil {
		f(l.resid, false)
	}
	if ps, ok := l.comp.(*compressors.PowerSGD); ok {
		f(ps.Q(), true)
	}
}

// Observation returns what L-GreCo's deciding rank observes of this step,
// given data as Begin left it: the plain gradient g and the error-feedback
// residual e it was compensated with, for the layers whose feedback keeps
// one (lgreco.Controller.Observe replays error feedback from those):
//
//	gathered codec under EF14   data (the plain gradient: EF14 encodes
//	                            later) and the residual
//	PowerSGD with ef14          data − e (data is already M = g + e),
//	                            in a scratch buffer of the layer, and e
//	otherwise                   data and nil (other feedback: the plain
//	                            gradient; Reduce codecs: the decoded vector)
//
// The slices alias the layer's state: read only, valid until the next Begin
// or SetCodec. Call it after Begin and before the program runs.
func (l *Layer) Observation(data []float32) (g, e []float32) {
	switch {
	case l.agg == compressors.Gather:
		if r, ok := l.fb.(interface{ Residual() []float32 }); ok {
			return data, r.Residual()
		}
	case l.agg == compressors.LowRank && l.resid != nil:
		if l.obs == nil {
			l.obs = make([]float32, len(l.resid))
		}
		kernels.AxpyTo(l.obs, -1, l.resid, data)
		return l.obs, l.resid
	}
	return data, nil
}

// Begin starts a step on data (len Elems), which the layer then owns until
// End: it runs error feedback's encode for Reduce codecs (data ← D(EF(data)))
// and the residual for LowRank with ef14 (data ← data + e), and binds the
// executor to data. A NaN or Inf in data makes error feedback fail with an
// error wrapping errorfeedback.ErrNonFinite, before any state changes.
func (l *Layer) Begin(data []float32) error {
	if len(data) != l.spec.Elems {
		return fmt.Errorf("%w: %d elements, layer has %d", ErrSpec, len(data), l.spec.Elems)
	}
	l.t = timer{}
	t0 := time.Now()
	// Only encoding counts as compress time: a layer with nothing to
	// encode here (plain fp32, or a gathered codec that encodes in its
	// payload hook) adds none.
	encodes := false
	switch {
	case l.agg == compressors.Reduce:
		l.t.payload = int64(l.spec.Elems * l.elem.BytesPerElem())
		if l.fb != nil {
			encodes = true
			var err error
			if l.payload, err = l.fb.Encode(l.payload[:0], data); err != nil {
				return err
			}
			if err := l.comp.Decompress(data, l.payload); err != nil {
				return err
			}
		}
	case l.agg == compressors.LowRank:
		l.t.payload = 4 * int64((l.prog.Layout.Len()))
		if l.resid != nil {
			encodes = true
			kernels.Add(data, l.resid)
			copy(l.mcopy, data)
		}
	}
	if encodes {
		l.t.compress += time.Since(t0)
	}
	return l.exec.Reset(l.prog, data)
}

// End finishes the step's local bookkeeping after the program ran: the
// PowerSGD residual e = M − P̂Qᵀ (ef14).
func (l *Layer) End(data []float32) {
	if l.resid != nil {
		t0 := time.Now()
		kernels.AxpyTo(l.resid, -1, data, l.mcopy) // e = M − Ĝ
		l.t.compress += time.Since(t0)
	}
}

// Finish turns the averaged data into this step's update direction
// (errorfeedback.Feedback.Finish). Call it on every rank, for every layer,
// only when the whole step succeeded.
func (l *Layer) Finish(data []float32) {
	if l.fb != nil {
		l.fb.Finish(data)
	}
}

// Stats returns the time spent encoding (compression and error feedback)
// and decoding inside the hooks since Begin, and the bytes of this rank's
// encoded contribution (the compressed payload, the element-encoded vector
// of a dense layer, the sign bytes and scale, or the P and Q factors).
// Reductions inside the executor are not in decompress; drivers add the
// executor time they measure.
func (l *Layer) Stats() (compress, decompress time.Duration, payloadBytes int64) {
	return l.t.compress, l.t.decompress, l.t.payload
}

// NominalPayload is the bytes of this rank's contribution that the layer
// plans to send before knowing the data (compressors.Recipe.NominalBytes for
// gathered codecs).
func (l *Layer) NominalPayload() int64 {
	switch l.agg {
	case compressors.Reduce:
		return int64(l.spec.Elems * l.elem.BytesPerElem())
	case compressors.TwoPhase:
		return int64(l.tp.TwoPhaseLayout().PayloadBytes())
	case compressors.LowRank:
		return 4 * int64(l.prog.Layout.Len())
	}
	return l.spec.Codec.NominalBytes(l.spec.Elems)
}

// payloadCodec adapts error feedback and a Gather codec to
// allreduce.PayloadCodec.
type payloadCodec struct {
	fb   errorfeedback.Feedback
	comp compressors.Compressor
	t    *timer
}

func (c *payloadCodec) Encode(dst []byte, src []float32) ([]byte, error) {
	t0 := time.Now()
	b, err := c.fb.Encode(dst, src)
	c.t.compress += time.Since(t0)
	c.t.payload = int64(len(b))
	return b, err
}

func (c *payloadCodec) DecodeAdd(dst []float32, payload []byte) error {
	t0 := time.Now()
	err := c.comp.DecompressAdd(dst, payload)
	c.t.decompress += time.Since(t0)
	return err
}

// twoPhase times errorfeedback's two-phase state (the allreduce.TwoPhaseHook).
type twoPhase struct {
	*errorfeedback.TwoPhase
	t *timer
}

func (h *twoPhase) WorkerCompress(dst []byte, scales, m []float32) ([]byte, []float32) {
	t0 := time.Now()
	b, s := h.TwoPhase.WorkerCompress(dst, scales, m)
	h.t.compress += time.Since(t0)
	h.t.payload = int64(len(b)) + 4*int64(len(s))
	return b, s
}

func (h *twoPhase) ServerStep(dst []byte, sscales []float32, chunk int, recv [][]byte, scales [][]float32) ([]byte, []float32, error) {
	t0 := time.Now()
	b, s, err := h.TwoPhase.ServerStep(dst, sscales, chunk, recv, scales)
	h.t.compress += time.Since(t0)
	return b, s, err
}

// timedElem times an element codec's encoding and decoding.
type timedElem struct {
	c compressors.ElementCodec
	t *timer
}

func (e timedElem) BytesPerElem() int { return e.c.BytesPerElem() }

func (e timedElem) EncodeElems(dst []byte, src []float32) []byte {
	t0 := time.Now()
	b := e.c.EncodeElems(dst, src)
	e.t.compress += time.Since(t0)
	return b
}

func (e timedElem) DecodeElems(dst []float32, b []byte) error {
	t0 := time.Now()
	err := e.c.DecodeElems(dst, b)
	e.t.decompress += time.Since(t0)
	return err
}

func (e timedElem) DecodeAddElems(dst []float32, b []byte) error {
	t0 := time.Now()
	err := e.c.DecodeAddElems(dst, b)
	e.t.decompress += time.Since(t0)
	return err
}

// timedLowRank times the PowerSGD steps: the products and the
// orthogonalization count as compression, the reconstruction as
// decompression.
type timedLowRank struct {
	h allreduce.LowRankHook
	t *timer
}

func (h timedLowRank) Rows() int { return h.h.Rows() }
func (h timedLowRank) Cols() int { return h.h.Cols() }
func (h timedLowRank) Rank() int { return h.h.Rank() }
func (h timedLowRank) ComputeP(p, m []float32) {
	t0 := time.Now()
	h.h.ComputeP(p, m)
	h.t.compress += time.Since(t0)
}
func (h timedLowRank) Orthogonalize(p []float32) {
	t0 := time.Now()
	h.h.Orthogonalize(p)
	h.t.compress += time.Since(t0)
}
func (h timedLowRank) ComputeQ(q, m, p []float32) {
	t0 := time.Now()
	h.h.ComputeQ(q, m, p)
	h.t.compress += time.Since(t0)
}
func (h timedLowRank) Reconstruct(dst, p, q []float32) {
	t0 := time.Now()
	h.h.Reconstruct(dst, p, q)
	h.t.decompress += time.Since(t0)
}
func (h timedLowRank) SetQ(q []float32) { h.h.SetQ(q) }
