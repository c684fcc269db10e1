// Package optim holds the optimizers that live with gradient compression:
// SGD, momentum SGD (with Nesterov and weight decay), DGC-SGD, Adam and
// 1-bit Adam.
//
// An optimizer owns the update rule and says, per step, what vector this
// rank must communicate and how it must be aggregated:
//
//	send, how, err := opt.Prepare(grad)   // grad: this rank's local gradient
//	// the worker aggregates send according to how (Exchange), writing the
//	// result into agg (agg may be send itself, overwritten in place)
//	err = opt.Step(params, agg)            // params updated in place
//
// For most optimizers the vector is the gradient and the aggregation is the
// layer's configured codec with its error feedback (Mean). 1-bit Adam asks for
// a dense mean of the gradient during warm-up (DenseMean) and, after
// freeze_step, for its local momentum through the two-phase 1-bit all-reduce
// (TwoPhaseSign): in that stage the gradient itself is never all-reduced.
//
// Each optimizer works on one flat float32 vector of fixed length (Len). To
// give groups of parameters different settings (e.g. no weight decay on
// biases), use one optimizer per group. All state is allocated at
// construction; Prepare and Step allocate nothing. Optimizers are not safe
// for concurrent use. Every rank must see bit-identical agg vectors; the
// optimizers are deterministic, so replicas stay bit-identical. Every
// optimizer is Stateful: its whole state can be saved and restored
// (MarshalBinary, UnmarshalBinary), e.g. to bring a joining replica level.
package optim

import (
	"errors"
	"fmt"
	"math"
)

// Exchange is how the worker aggregates the vector returned by Prepare.
type Exchange uint8

const (
	// Mean: the mean over ranks through the layer's configured codec and
	// error feedback (package errorfeedback): every rank Encodes, the decoded
	// payloads are summed in rank order and scaled by 1/N, and the
	// Feedback's Finish turns the mean into the update direction. With the
	// "none" codec this is a dense all-reduce mean.
	Mean Exchange = iota
	// DenseMean: a dense fp32 all-reduce mean, whatever codec the layer is
	// configured with, and without error feedback (1-bit Adam's warm-up).
	DenseMean
	// TwoPhaseSign: the two-phase 1-bit compressed all-reduce of specs
	// §2.2 with worker and server error (errorfeedback.WorkerError and
	// ServerError; allreduce's TwoPhaseSign scheme) over the whole vector.
	// The result is the decoded phase-2 output, bit-identical on all ranks.
	TwoPhaseSign
)

var exchangeNames = [...]string{"mean", "dense-mean", "two-phase-sign"}

// String describes the value.
func (e Exchange) String() string {
	if int(e) < len(exchangeNames) {
		return exchangeNames[e]
	}
	return fmt.Sprintf("Exchange(%d)", uint8(e))
}

// Optimizer updates one flat parameter vector from aggregated gradients.
type Optimizer interface {
	// Prepare takes this rank's local gradient (len Len()) and returns the
	// vector to communicate and how to aggregate it. send is grad itself or
	// a buffer owned by the optimizer; the caller may overwrite send in place
	// with the aggregated result and hand it to Step. grad is not retained.
	// It returns ErrLength for a wrong length and ErrSequence if the previous
	// Prepare was not followed by Step.
	Prepare(grad []float32) (send []float32, how Exchange, err error)

	// Step applies one update to params (len Len()) given agg, the
	// aggregated result of the vector the last Prepare returned (agg may
	// alias it, and is not retained). It returns ErrLength for wrong lengths
	// and ErrSequence without a preceding Prepare; params are then unchanged.
	Step(params, agg []float32) error

	// Skip abandons the vector the last Prepare returned: the step is not
	// taken (for example a NaN or Inf gradient on some rank under a skip
	// policy), and the optimizer's state is as before that Prepare; the next
	// call is Prepare. Skip without a pending Prepare does nothing.
	Skip()

	// Len is the parameter count.
	Len() int
	// Steps is the number of completed steps.
	Steps() int
	// LR returns the learning rate; SetLR changes it for the next steps
	// (schedules, warm-up). SetLR does not validate: the caller keeps lr
	// finite and ≥ 0, as the constructors require.
	LR() float64
	SetLR(lr float64)
	// String describes the optimizer and its settings.
	String() string
}

// Errors.
var (
	// ErrLength means a vector's length differs from Len().
	ErrLength = errors.New("optim: length mismatch")
	// ErrSequence means Prepare and Step were not called alternately.
	ErrSequence = errors.New("optim: Prepare and Step must alternate")
	// ErrConfig means invalid hyper-parameters.
	ErrConfig = errors.New("optim: bad config")
)

// base holds what every optimizer shares: length, step count, learning rate
// and the Prepare/Step sequencing.
type base struct {
	n        int
	steps    int
	lr       float64
	prepared bool
}

// Len implements Optimizer.
func (b *base) Len() int { return b.n }

// Skip implements Optimizer for optimizers whose Prepare changes no state.
func (b *base) Skip() { b.prepared = false }

// Steps implements Optimizer.
func (b *base) Steps() int { return b.steps }

// LR implements Optimizer.
func (b *base) LR() float64 { return b.lr }

// SetLR implements Optimizer.
func (b *base) SetLR(lr float64) { b.lr = lr }

func (b *base) checkGrad(g []float32) error {
	if len(g) != b.n {
		return fmt.Errorf("%w: gradient has %d elements, want %d", ErrLength, len(g), b.n)
	}
	if b.prepared {
		return fmt.Errorf("%w: Prepare called twice", ErrSequence)
	}
	b.prepared = true
	return nil
}

// prepareMean is Prepare for optimizers that send the gradient itself
// through the layer's codec (Mean).
func (b *base) prepareMean(grad []float32) ([]float32, Exchange, error) {
	if err := b.checkGrad(grad); err != nil {
		return nil, Mean, err
	}
	return grad, Mean, nil
}

func (b *base) checkStep(p, agg []float32) error {
	if len(p) != b.n || len(agg) != b.n {
		return fmt.Errorf("%w: params %d, agg %d, want %d", ErrLength, len(p), len(agg), b.n)
	}
	if !b.prepared {
		return fmt.Errorf("%w: Step without Prepare", ErrSequence)
	}
	b.prepared = false
	b.steps++
	return nil
}

// checkHyper checks lo <= v <= hi (v < hi if hiOpen). The error states the
// range in words: hi = MaxFloat32 reads "finite" (a float32 limit, not a
// number to make a user read).
func checkHyper(name string, v, lo, hi float64, hiOpen bool) error {
	if !math.IsNaN(v) && v >= lo && v <= hi && !(hiOpen && v == hi) {
		return nil
	}
	var want string
	switch {
	case hi == math.MaxFloat32:
		want = fmt.Sprintf("must be >= %g and finite", lo)
	case hiOpen:
		want = fmt.Sprintf("must be in [%g, %g)", lo, hi)
	default:
		want = fmt.Sprintf("must be in [%g, %g]", lo, hi)
	}
	return fmt.Errorf("%w: %s %s, got %v", ErrConfig, name, want, v)
}

// SGD is plain stochastic gradient descent with L2 weight decay:
// p ← p − lr·(agg + wd·p).
type SGD struct {
	base
	wd float32
}

// NewSGD returns plain SGD for n parameters. 0 ≤ lr ≤ MaxFloat32 (0
// freezes the parameters), weightDecay ≥ 0; otherwise it returns an error
// wrapping ErrConfig.
func NewSGD(n int, lr, weightDecay float64) (*SGD, error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: n = %d", ErrConfig, n)
	}
	if err := checkHyper("lr", lr, 0, math.MaxFloat32, false); err != nil {
		return nil, err
	}
	if err := checkHyper("weight decay", weightDecay, 0, math.MaxFloat32, false); err != nil {
		return nil, err
	}
	return &SGD{base: base{n: n, lr: lr}, wd: float32(weightDecay)}, nil
}

// Prepare returns grad to be averaged with the layer's codec (Mean).
func (o *SGD) Prepare(grad []float32) ([]float32, Exchange, error) {
	return o.prepareMean(grad)
}

// Step sets p ← p − lr·(agg + wd·p).
func (o *SGD) Step(p, agg []float32) error {
	if err := o.checkStep(p, agg); err != nil {
		return err
	}
	lr, wd := float32(o.lr), o.wd
	agg = agg[:len(p)]
	for j := range p {
		p[j] -= lr * (agg[j] + wd*p[j])
	}
	return nil
}

// String describes the optimizer.
func (o *SGD) String() string { return fmt.Sprintf("sgd(lr=%g, wd=%g)", o.lr, o.wd) }

// Momentum is momentum SGD in PyTorch's form with L2 weight decay:
//
//	d = agg + wd·p
//	b = d (first step), else b = m·b + d
//	d = nesterov ? d + m·b : b
//	p ← p − lr·d
//
// Do not use it on top of DGC's momentum correction (errorfeedback.DGC):
// that would apply momentum twice; use DGCSGD there.
type Momentum struct {
	base
	m, wd    float32
	nesterov bool
	buf      []float32
}

// NewMomentum returns momentum SGD for n parameters. 0 ≤ momentum < 1,
// weightDecay ≥ 0.
func NewMomentum(n int, lr, momentum, weightDecay float64, nesterov bool) (*Momentum, error) {
	if _, err := NewSGD(n, lr, weightDecay); err != nil {
		return nil, err
	}
	if err := checkHyper("momentum", momentum, 0, 1, true); err != nil {
		return nil, err
	}
	return &Momentum{base: base{n: n, lr: lr}, m: float32(momentum), wd: float32(weightDecay),
		nesterov: nesterov, buf: make([]float32, n)}, nil
}

// Prepare returns grad to be averaged with the layer's codec (Mean).
func (o *Momentum) Prepare(grad []float32) ([]float32, Exchange, error) {
	return o.prepareMean(grad)
}

// Step applies one momentum step.
func (o *Momentum) Step(p, agg []float32) error {
	first := o.steps == 0
	if err := o.checkStep(p, agg); err != nil {
		return err
	}
	lr, m, wd, b := float32(o.lr), o.m, o.wd, o.buf[:len(p)]
	agg = agg[:len(p)]
	for j := range p {
		d := agg[j] + wd*p[j]
		if first {
			b[j] = d
		} else {
			b[j] = m*b[j] + d
		}
		if o.nesterov {
			d += m * b[j]
		} else {
			d = b[j]
		}
		p[j] -= lr * d
	}
	return nil
}

// Buffer returns the momentum buffer (a view; do not modify).
func (o *Momentum) Buffer() []float32 { return o.buf }

// String describes the optimizer.
func (o *Momentum) String() string {
	return fmt.Sprintf("momentum(lr=%g, m=%g, nesterov=%v, wd=%g)", o.lr, o.m, o.nesterov, o.wd)
}

// DGCSGD is the optimizer of Deep Gradient Compression (docs/algorithms.md §1.4, the
// reference DGCSGD): a PLAIN SGD step on agg, the update that
// errorfeedback.DGC already momentum-corrected (compressed layers) or to which
// it applied momentum after averaging (dense layers), plus weight decay with
// its own local momentum buffer, never part of the compressed gradient (so
// sparsification never drops it; p is identical on all replicas):
//
//	if wd != 0:
//	    d = wd·p
//	    b = d (first step), else b = m·b + d
//	    d = (nesterov ? d + m·b : b) + agg
//	else: d = agg
//	p ← p − lr·d
type DGCSGD struct {
	base
	m, wd    float32
	nesterov bool
	buf      []float32 // weight-decay momentum (nil without weight decay)
}

// NewDGCSGD returns DGC-SGD for n parameters; momentum is the weight-decay
// buffer's momentum (use DGC's m), 0 ≤ momentum < 1, weightDecay ≥ 0.
func NewDGCSGD(n int, lr, momentum, weightDecay float64, nesterov bool) (*DGCSGD, error) {
	if _, err := NewMomentum(0, lr, momentum, weightDecay, nesterov); err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, fmt.Errorf("%w: n = %d", ErrConfig, n)
	}
	o := &DGCSGD{base: base{n: n, lr: lr}, m: float32(momentum), wd: float32(weightDecay), nesterov: nesterov}
	if weightDecay != 0 {
		o.buf = make([]float32, n)
	}
	return o, nil
}

// Prepare returns grad to be averaged through the layer's codec with
// errorfeedback.DGC (Mean).
func (o *DGCSGD) Prepare(grad []float32) ([]float32, Exchange, error) {
	return o.prepareMean(grad)
}

// Step applies one DGC-SGD step.
func (o *DGCSGD) Step(p, agg []float32) error {
	first := o.steps == 0
	if err := o.checkStep(p, agg); err != nil {
		return err
	}
	lr := float32(o.lr)
	agg = agg[:len(p)]
	if o.wd == 0 {
		for j := range p {
			p[j] -= lr * agg[j]
		}
		return nil
	}
	m, wd, b := o.m, o.wd, o.buf[:len(p)]
	for j := range p {
		d := wd * p[j]
		if first {
			b[j] = d
		} else {
			b[j] = m*b[j] + d
		}
		if o.nesterov {
			d += m * b[j]
		} else {
			d = b[j]
		}
		p[j] -= lr * (d + agg[j])
	}
	return nil
}

// String describes the optimizer.
func (o *DGCSGD) String() string {
	return fmt.Sprintf("dgc-sgd(lr=%g, m=%g, nesterov=%v, wd=%g)", o.lr, o.m, o.nesterov, o.wd)
}

// PaperWarmup is DGC's warm-up density list from the paper (docs/algorithms.md §1.1,
// §1.5): 75%, 93.75%, 98.4375%, 99.6% sparsity in the first four epochs.
var PaperWarmup = []float64{0.25, 0.0625, 0.015625, 0.00390625}

// DGCDensity returns DGC's density for epoch (0-based): warmup[epoch] while
// epoch < len(warmup), but never below target, and target afterwards. Pass
// PaperWarmup for the paper's schedule 0.25, 0.0625, 0.015625, 0.00390625,
// then target.
func DGCDensity(epoch int, target float64, warmup []float64) float64 {
	if epoch >= 0 && epoch < len(warmup) {
		return max(warmup[epoch], target)
	}
	return target
}

// DGCCodeDensity is the reference code's default warm-up formula (specs
// §1.5), which is NOT the paper's: for epoch < warmupEpochs,
// max(coeff^(epoch+1), target) with coeff = target^(1/(warmupEpochs+1));
// target afterwards.
func DGCCodeDensity(epoch int, target float64, warmupEpochs int) float64 {
	if warmupEpochs > 0 && epoch >= 0 && epoch < warmupEpochs {
		coeff := math.Pow(target, 1/float64(warmupEpochs+1))
		return max(math.Pow(coeff, float64(epoch+1)), target)
	}
	return target
}
