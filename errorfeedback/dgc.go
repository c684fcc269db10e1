package errorfeedback

import (
	"fmt"
	"math"
	"strconv"

	"github.com/slimgrad/slimgrad/compressors"
)

// DGCConfig configures NewDGC.
type DGCConfig struct {
	// Momentum is m in [0, 1) (0.9 in the paper).
	Momentum float64
	// Nesterov selects the Nesterov form of momentum correction:
	// u = m·(u+g); v += u+g (dense path: u = m·(u+avg); avg = u+avg).
	Nesterov bool
	// Config holds World, ClipNorm, NoMasking and Dense.
	Config
}

// DGC is Deep Gradient Compression's local state for one layer (specs
// §1.1-1.2): momentum correction, accumulation, local gradient clipping and
// momentum-factor masking. Per step, on a compressed layer:
//
//	g ← g·min(1, (ClipNorm/√N)/(‖g‖₂+1e-6))     (only if ClipNorm > 0)
//	u ← m·u + g;  v ← v + u                     (Nesterov: u ← m·(u+g); v ← v+u+g)
//	Δ = C(v)                                    (e.g. DGC's sampled top-k)
//	at every index j the payload carries, with value Δ[j]:
//	    v[j] ← v[j] − Δ[j]      (0: the sent values are v's, in fp32)
//	    u[j] ← 0                (momentum-factor masking, unless NoMasking)
//	Finish: identity; the optimizer then takes a PLAIN SGD step on the
//	averaged update (momentum must not be applied twice).
//
// Clipping with Config.ClipNorm is per layer (the reference code's per-tensor
// clip_grad_norm_ with the paper's N^(-1/2) threshold). For the paper's local
// clipping by the total norm over all layers, call ClipByTotalNorm on the
// whole gradient before the layers' Encode and leave ClipNorm at 0.
//
// The sent indices come from compressors.Sparse.Selected when the codec
// implements it (top-k, dgc, random-k). For other codecs they are the non-zero
// entries of the decoded payload, so a sent value of exactly 0 is then not
// masked (v is 0 there already).
//
// Dense layers (a codec that aggregates by Reduce, such as "none" or "fp16",
// or Config.Dense) take the reference code's dense path: Encode sends the
// (clipped) gradient as is and Finish applies momentum after averaging:
// u ← m·u + avg; avg ← u (Nesterov: u ← m·(u+avg); avg ← u+avg).
type DGC struct {
	c        compressors.Compressor
	m        float32
	nesterov bool
	masking  bool
	dense    bool
	forced   bool      // Config.Dense
	clip     float64   // local threshold ClipNorm/√World, 0 = off
	u        []float32 // momentum
	v        []float32 // accumulated velocity (nil on the dense path)
	w        []float32 // scratch: D(Δ), or the clipped gradient on the dense path
	label    string
}

var _ Feedback = (*DGC)(nil)

// NewDGC wraps c with DGC state (u = v = 0). It returns an error wrapping
// ErrConfig for a momentum outside [0, 1), a negative clip norm or World < 1
// (World 0 is taken as 1).
func NewDGC(c compressors.Compressor, cfg DGCConfig) (*DGC, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil compressor", ErrConfig)
	}
	if cfg.Momentum < 0 || cfg.Momentum >= 1 || math.IsNaN(cfg.Momentum) {
		return nil, fmt.Errorf("%w: dgc momentum %v, want [0, 1)", ErrConfig, cfg.Momentum)
	}
	if cfg.World == 0 {
		cfg.World = 1
	}
	if cfg.World < 1 {
		return nil, fmt.Errorf("%w: world %d < 1", ErrConfig, cfg.World)
	}
	if cfg.ClipNorm < 0 || math.IsNaN(cfg.ClipNorm) || math.IsInf(cfg.ClipNorm, 0) {
		return nil, fmt.Errorf("%w: clip norm %v", ErrConfig, cfg.ClipNorm)
	}
	n := c.Len()
	f := &DGC{
		c: c, m: float32(cfg.Momentum), nesterov: cfg.Nesterov, masking: !cfg.NoMasking,
		dense: cfg.Dense || c.Aggregation() == compressors.Reduce, forced: cfg.Dense,
		u: make([]float32, n), w: make([]float32, n),
	}
	if cfg.ClipNorm > 0 {
		f.clip = cfg.ClipNorm / math.Sqrt(float64(cfg.World))
	}
	if !f.dense {
		f.v = make([]float32, n)
	}
	name := "dgc:"
	if cfg.Nesterov {
		name = "dgc-nesterov:"
	}
	f.label = name + strconv.FormatFloat(cfg.Momentum, 'g', -1, 64)
	return f, nil
}

// clipScale is the factor that brings ‖g‖₂ down to the local threshold.
func (f *DGC) clipScale(g []float32) float32 {
	if f.clip == 0 {
		return 1
	}
	var ss float64
	for _, x := range g {
		ss += float64(x) * float64(x)
	}
	norm := math.Sqrt(ss)
	if norm <= f.clip {
		return 1
	}
	return float32(f.clip / (norm + 1e-6))
}

// Encode applies momentum correction and accumulation, compresses v and masks
// the sent indices (compressed layers), or sends the clipped gradient (dense
// layers).
func (f *DGC) Encode(dst []byte, g []float32) ([]byte, error) {
	if err := checkLen("gradient", len(g), len(f.u)); err != nil {
		return dst[:0], err
	}
	if err := checkFinite(g); err != nil {
		return dst[:0], err
	}
	s := f.clipScale(g)
	if f.dense {
		src := g
		if s != 1 {
			w := f.w[:len(g)]
			for j := range w {
				w[j] = g[j] * s
			}
			src = w
		}
		p, err := f.c.Compress(dst, src)
		if err != nil {
			return p, fmt.Errorf("errorfeedback: %s: %w", f.label, err)
		}
		return p, nil
	}
	u, v, m := f.u, f.v[:len(f.u)], f.m
	g = g[:len(u)]
	switch {
	case f.nesterov:
		for j := range u {
			gj := g[j] * s
			u[j] = m * (u[j] + gj)
			v[j] += u[j] + gj
		}
	case s == 1:
		for j := range u {
			u[j] = m*u[j] + g[j]
			v[j] += u[j]
		}
	default:
		for j := range u {
			u[j] = m*u[j] + g[j]*s
			v[j] += u[j]
		}
	}
	p, err := f.c.Compress(dst, v)
	if err != nil {
		return p, fmt.Errorf("errorfeedback: %s: %w", f.label, err)
	}
	if sp, ok := f.c.(compressors.Sparse); ok {
		// The codec lists what it sent: O(k) instead of decoding.
		idx, val := sp.Selected()
		for i, j := range idx {
			v[j] -= val[i]
			if f.masking {
				u[j] = 0
			}
		}
		return p, nil
	}
	w := f.w[:len(u)]
	if err := f.c.Decompress(w, p); err != nil {
		return p, fmt.Errorf("errorfeedback: %s: own payload: %w", f.label, err)
	}
	if f.masking {
		for j, d := range w {
			if d != 0 {
				v[j] -= d
				u[j] = 0
			}
		}
	} else {
		for j, d := range w {
			v[j] -= d
		}
	}
	return p, nil
}

// Finish is the identity on compressed layers and applies momentum after
// averaging on dense layers.
func (f *DGC) Finish(avg []float32) {
	if len(avg) != len(f.u) {
		panic(badFinishLen)
	}
	if !f.dense {
		return
	}
	u, m := f.u[:len(avg)], f.m
	if f.nesterov {
		for j, a := range avg {
			u[j] = m * (u[j] + a)
			avg[j] = u[j] + a
		}
		return
	}
	for j, a := range avg {
		u[j] = m*u[j] + a
		avg[j] = u[j]
	}
}

// SetCompressor swaps the codec (e.g. at a step of DGC's warm-up density
// schedule) and keeps u and v. c must have the same Len and the same
// aggregation class (dense or not) as the current codec.
func (f *DGC) SetCompressor(c compressors.Compressor) error {
	if err := setCompressor(c, len(f.u)); err != nil {
		return err
	}
	if dense := f.forced || c.Aggregation() == compressors.Reduce; dense != f.dense {
		return fmt.Errorf("%w: cannot switch %s between dense and compressed layer paths", ErrConfig, f.label)
	}
	f.c = c
	return nil
}

// Momentum returns u (a view into the state; do not modify).
func (f *DGC) Momentum() []float32 { return f.u }

// Velocity returns v, nil on a dense layer (a view; do not modify).
func (f *DGC) Velocity() []float32 { return f.v }

// Dense reports whether this layer takes the dense path.
func (f *DGC) Dense() bool { return f.dense }

// Len implements Feedback.
func (f *DGC) Len() int { return len(f.u) }

// Compressor implements Feedback.
func (f *DGC) Compressor() compressors.Compressor { return f.c }

// String describes the value.
func (f *DGC) String() string { return f.label }

// Reset zeroes u and v.
func (f *DGC) Reset() {
	zero(f.u)
	zero(f.v)
}

// ClipByTotalNorm is DGC's local gradient clipping over a whole model (specs
// §1.1, §1.6): with norm = ‖(g_1, …, g_L)‖₂ over all layers (float64
// accumulation) and threshold maxNorm/√world, it scales every layer in place
// by threshold/(norm+1e-6) if norm exceeds the threshold. It returns the norm
// before clipping. It panics if world < 1; maxNorm <= 0 disables clipping.
func ClipByTotalNorm(grads [][]float32, maxNorm float64, world int) float64 {
	if world < 1 {
		panic("errorfeedback: ClipByTotalNorm needs world >= 1")
	}
	var ss float64
	for _, g := range grads {
		for _, x := range g {
			ss += float64(x) * float64(x)
		}
	}
	norm := math.Sqrt(ss)
	thr := maxNorm / math.Sqrt(float64(world))
	if maxNorm <= 0 || norm <= thr {
		return norm
	}
	s := float32(thr / (norm + 1e-6))
	for _, g := range grads {
		for j := range g {
			g[j] *= s
		}
	}
	return norm
}
