package optim

import (
	"fmt"
	"math"
)

// AdamConfig holds Adam's and 1-bit Adam's hyper-parameters.
type AdamConfig struct {
	LR          float64 // learning rate; DeepSpeed default 1e-3
	Beta1       float64 // default 0.9
	Beta2       float64 // default 0.999
	Eps         float64 // added outside the square root, > 0 in float32; default 1e-8
	WeightDecay float64 // decoupled, scaled by lr: update += wd·p; default 0

	// BiasCorrection (Adam only) divides m by 1−β1ᵗ and v by 1−β2ᵗ.
	// DeepSpeed's OnebitAdam ignores its bias_correction flag, so
	// OneBitAdam never bias-corrects; set BiasCorrection false in Adam to
	// compare with it like for like.
	BiasCorrection bool

	// FreezeStep (OneBitAdam only): steps 1..FreezeStep are dense Adam
	// warm-up; v is frozen after step FreezeStep and steps FreezeStep+1...
	// are the compression stage. DeepSpeed's default is 100000; the
	// tutorial recommends 15-25% of the total steps. Must be ≥ 1.
	FreezeStep int

	// Mask (OneBitAdam only, optional, len n): DeepSpeed's exp_avg_mask,
	// multiplied into the momentum after every compressed all-reduce. When
	// nil, the mask is computed at the freeze from the frozen variance: 1
	// where v > MaskThreshold, 0 elsewhere (coordinates that received no, or
	// only negligible, gradient during warm-up: sign compression cannot
	// represent 0, so such coordinates would drift, and dividing their
	// compression error by √v + eps ≈ eps would blow it up).
	Mask []float32

	// MaskThreshold (OneBitAdam only, ≥ 0): the frozen-variance level at or
	// below which a coordinate is masked when Mask is nil. The PyTorch
	// reference (docs/anchors/reference_training.py) masks v <= 1e-16,
	// DefaultAdamConfig's value; 0 masks only v == 0.
	MaskThreshold float64
}

// DefaultMaskThreshold is the reference's frozen-variance mask threshold:
// coordinates with v <= 1e-16 at the freeze are masked.
const DefaultMaskThreshold = 1e-16

// DefaultAdamConfig returns DeepSpeed's defaults: lr 1e-3, betas (0.9,
// 0.999), eps 1e-8, no weight decay, no bias correction, freeze_step 100000,
// and the reference's mask threshold 1e-16.
func DefaultAdamConfig() AdamConfig {
	return AdamConfig{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, FreezeStep: 100000, MaskThreshold: DefaultMaskThreshold}
}

func (c *AdamConfig) validate() error {
	for _, h := range []struct {
		name      string
		v, lo, hi float64
		open      bool
	}{
		{"lr", c.LR, 0, math.MaxFloat32, false},
		{"beta1", c.Beta1, 0, 1, true},
		{"beta2", c.Beta2, 0, 1, true},
		{"eps", c.Eps, 0, 1, false},
		{"weight decay", c.WeightDecay, 0, math.MaxFloat32, false},
		{"mask threshold", c.MaskThreshold, 0, math.MaxFloat32, false},
	} {
		if err := checkHyper(h.name, h.v, h.lo, h.hi, h.open); err != nil {
			return err
		}
	}
	if float32(c.Eps) <= 0 {
		// A coordinate whose gradient is 0 would divide 0 by √0 + 0.
		return fmt.Errorf("%w: eps = %v, want > 0 (as float32)", ErrConfig, c.Eps)
	}
	return nil
}

// Adam is Adam with decoupled weight decay scaled by lr, as DeepSpeed's
// optimizers apply it, on the aggregated gradient:
//
//	m = β1·m + (1−β1)·agg;  v = β2·v + (1−β2)·agg²
//	update = m̂/(√v̂ + eps) + wd·p     (m̂ = m/(1−β1ᵗ), v̂ = v/(1−β2ᵗ) with
//	                                   BiasCorrection, else m̂ = m, v̂ = v)
//	p ← p − lr·update
type Adam struct {
	base
	cfg  AdamConfig
	m, v []float32
}

// NewAdam returns Adam for n parameters.
func NewAdam(n int, cfg AdamConfig) (*Adam, error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: n = %d", ErrConfig, n)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Adam{base: base{n: n, lr: cfg.LR}, cfg: cfg, m: make([]float32, n), v: make([]float32, n)}, nil
}

// Prepare returns grad to be averaged with the layer's codec (Mean).
func (o *Adam) Prepare(grad []float32) ([]float32, Exchange, error) {
	return o.prepareMean(grad)
}

// Step applies one Adam step.
func (o *Adam) Step(p, agg []float32) error {
	if err := o.checkStep(p, agg); err != nil {
		return err
	}
	b1, b2 := float32(o.cfg.Beta1), float32(o.cfg.Beta2)
	c1, c2 := float32(1), float32(1)
	if o.cfg.BiasCorrection {
		c1 = float32(1 / (1 - math.Pow(o.cfg.Beta1, float64(o.steps))))
		c2 = float32(1 / (1 - math.Pow(o.cfg.Beta2, float64(o.steps))))
	}
	adamUpdate(p, agg, o.m, o.v, b1, b2, c1, c2, float32(o.cfg.Eps), float32(o.cfg.WeightDecay), float32(o.lr))
	return nil
}

// adamUpdate is the shared Adam step (moments updated from g).
func adamUpdate(p, g, m, v []float32, b1, b2, c1, c2, eps, wd, lr float32) {
	g, m, v = g[:len(p)], m[:len(p)], v[:len(p)]
	for j := range p {
		m[j] = b1*m[j] + (1-b1)*g[j]
		v[j] = b2*v[j] + (1-b2)*g[j]*g[j]
		u := (m[j] * c1) / (float32(math.Sqrt(float64(v[j]*c2))) + eps)
		p[j] -= lr * (u + wd*p[j])
	}
}

// Moments returns m and v (views; do not modify).
func (o *Adam) Moments() (m, v []float32) { return o.m, o.v }

// String describes the optimizer.
func (o *Adam) String() string {
	return fmt.Sprintf("adam(lr=%g, betas=(%g, %g), eps=%g, wd=%g, bias-correction=%v)",
		o.lr, o.cfg.Beta1, o.cfg.Beta2, o.cfg.Eps, o.cfg.WeightDecay, o.cfg.BiasCorrection)
}

// Stage is 1-bit Adam's phase.
type Stage uint8

const (
	Warmup      Stage = iota // dense Adam on the averaged gradient
	Compression              // frozen v, local momentum through the 1-bit all-reduce
)

// String describes the value.
func (s Stage) String() string {
	if s == Warmup {
		return "warmup"
	}
	return "compression"
}

// OneBitAdam is 1-bit Adam as DeepSpeed's OnebitAdam implements it (specs
// §2.1) on one vector: the whole model flattened (DeepSpeed's choice, so the
// two-phase scales are whole-model RMS values), or one tensor, with one
// OneBitAdam per tensor (the PyTorch reference's choice: per-tensor scales,
// which label-skewed shards need; the driver's sign codec can add scale
// blocks within a tensor, see train.Plan.Sign):
//
//	warm-up, steps 1..FreezeStep: Prepare returns the local gradient for a
//	    DenseMean; Step: m = β1·m + (1−β1)·ḡ; v = β2·v + (1−β2)·ḡ²
//	    (after step FreezeStep, v is frozen and the mask is fixed:
//	    1 where v > MaskThreshold)
//	compression, steps FreezeStep+1...: Prepare updates the LOCAL momentum
//	    m = β1·m + (1−β1)·g_local and returns m for TwoPhaseSign (the
//	    gradient is never all-reduced); Step: m = agg ⊙ mask (the
//	    all-reduced momentum replaces the local one on every rank)
//	both: update = m/(√v + eps) + wd·p;  p ← p − lr·update
//
// No bias correction (DeepSpeed ignores the flag). Unlike DeepSpeed there is
// no dummy initialization step. The worker and server errors of the
// two-phase all-reduce live with the worker (errorfeedback.WorkerError and
// ServerError), not here.
type OneBitAdam struct {
	base
	cfg  AdamConfig
	m, v []float32
	den  []float32 // √v + eps, fixed at the freeze
	mask []float32
	send []float32 // the compression stage's local momentum, sent by Prepare
}

// NewOneBitAdam returns 1-bit Adam for n parameters. cfg.FreezeStep must be
// ≥ 1 and cfg.Mask nil or of length n.
func NewOneBitAdam(n int, cfg AdamConfig) (*OneBitAdam, error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: n = %d", ErrConfig, n)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.FreezeStep < 1 {
		return nil, fmt.Errorf("%w: freeze step %d < 1", ErrConfig, cfg.FreezeStep)
	}
	if cfg.BiasCorrection {
		return nil, fmt.Errorf("%w: 1-bit Adam has no bias correction (as DeepSpeed)", ErrConfig)
	}
	o := &OneBitAdam{base: base{n: n, lr: cfg.LR}, cfg: cfg, m: make([]float32, n), v: make([]float32, n),
		den: make([]float32, n), mask: make([]float32, n), send: make([]float32, n)}
	if cfg.Mask != nil {
		if len(cfg.Mask) != n {
			return nil, fmt.Errorf("%w: mask has %d elements, want %d", ErrConfig, len(cfg.Mask), n)
		}
		copy(o.mask, cfg.Mask)
	}
	return o, nil
}

// Stage returns the stage of the next step.
func (o *OneBitAdam) Stage() Stage {
	if o.steps < o.cfg.FreezeStep {
		return Warmup
	}
	return Compression
}

// Prepare returns the local gradient for a DenseMean during warm-up, and in
// the compression stage returns the local momentum β1·m + (1−β1)·grad (in an
// internal buffer, valid until the next Prepare) for TwoPhaseSign.
func (o *OneBitAdam) Prepare(grad []float32) ([]float32, Exchange, error) {
	if err := o.checkGrad(grad); err != nil {
		return nil, DenseMean, err
	}
	if o.Stage() == Warmup {
		return grad, DenseMean, nil
	}
	// The local momentum goes to a buffer of its own: o.m changes only in
	// Step (to the all-reduced momentum), so that Skip leaves it as it was.
	b1 := float32(o.cfg.Beta1)
	m, send := o.m, o.send[:len(o.m)]
	grad = grad[:len(m)]
	for j := range m {
		send[j] = b1*m[j] + (1-b1)*grad[j]
	}
	return send, TwoPhaseSign, nil
}

// Step applies one step: the Adam moment update on the averaged gradient
// during warm-up, or the masked all-reduced momentum in the compression
// stage, then the update with the (frozen) v.
func (o *OneBitAdam) Step(p, agg []float32) error {
	stage := o.Stage()
	if err := o.checkStep(p, agg); err != nil {
		return err
	}
	eps, wd, lr := float32(o.cfg.Eps), float32(o.cfg.WeightDecay), float32(o.lr)
	if stage == Warmup {
		adamUpdate(p, agg, o.m, o.v, float32(o.cfg.Beta1), float32(o.cfg.Beta2), 1, 1, eps, wd, lr)
		if o.steps == o.cfg.FreezeStep {
			o.freeze()
		}
		return nil
	}
	m, den, mask := o.m, o.den[:len(o.m)], o.mask[:len(o.m)]
	agg, p = agg[:len(m)], p[:len(m)]
	for j := range m {
		m[j] = agg[j] * mask[j]
		p[j] -= lr * (m[j]/den[j] + wd*p[j])
	}
	return nil
}

func (o *OneBitAdam) freeze() {
	eps := float32(o.cfg.Eps)
	for j, x := range o.v {
		o.den[j] = float32(math.Sqrt(float64(x))) + eps
	}
	if o.cfg.Mask != nil {
		return
	}
	th := float32(o.cfg.MaskThreshold)
	for j, x := range o.v {
		if x > th {
			o.mask[j] = 1
		} else {
			o.mask[j] = 0
		}
	}
}

// Moments returns m and v (views; do not modify).
func (o *OneBitAdam) Moments() (m, v []float32) { return o.m, o.v }

// Mask returns the momentum mask, meaningful once frozen (a view).
func (o *OneBitAdam) Mask() []float32 { return o.mask }

// String describes the optimizer.
func (o *OneBitAdam) String() string {
	return fmt.Sprintf("onebit-adam(lr=%g, betas=(%g, %g), eps=%g, wd=%g, freeze_step=%d, mask_threshold=%g)",
		o.lr, o.cfg.Beta1, o.cfg.Beta2, o.cfg.Eps, o.cfg.WeightDecay, o.cfg.FreezeStep, o.cfg.MaskThreshold)
}

var (
	_ Optimizer = (*SGD)(nil)
	_ Optimizer = (*Momentum)(nil)
	_ Optimizer = (*DGCSGD)(nil)
	_ Optimizer = (*Adam)(nil)
	_ Optimizer = (*OneBitAdam)(nil)
)
