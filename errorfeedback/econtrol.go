package errorfeedback

import (
	"fmt"
	"math"
	"strconv"

	"github.com/slimgrad/slimgrad/compressors"
)

// EControl is EControl(η) (docs/algorithms.md §3.2) and, with η = 0 and no
// error vector, EF21. Per rank i and step:
//
//	Δᵢ = C(η·eᵢ + g − hᵢ)        (EF21: C(g − hᵢ))
//	eᵢ ← eᵢ + (g − hᵢ) − D(Δᵢ)   (the uncompressed residual; η not involved)
//	hᵢ ← hᵢ + D(Δᵢ)
//	Finish(avg = mean Δ):  h ← h + avg;  avg ← h   (so x −= γ·(h_old + mean Δ))
//
// hᵢ, h and eᵢ start at 0 (no dense initial round: h⁰ᵢ = 0). The replicated h
// equals mean hᵢ up to float rounding, so the virtual iterate x − γ·mean eᵢ
// follows uncompressed SGD (tested to float tolerance).
//
// With η = 0 the compressed vector is computed as g − hᵢ exactly as EF21
// computes it (the η·eᵢ term is skipped, not multiplied by zero), so
// EControl(0) reproduces EF21 bit for bit, including the payload bytes.
// With a codec that is not compressors.Sparse, D(Δᵢ) comes from decoding the
// payload; otherwise from Selected (one pass over the layer).
type EControl struct {
	c     compressors.Compressor
	eta   float32
	ef21  bool      // EF21: no error vector
	e     []float32 // eᵢ (nil for EF21)
	hi    []float32 // hᵢ, this rank's estimate of its gradient
	h     []float32 // h, replicated on every rank: mean of the hᵢ
	w     []float32 // scratch: the compressed input, then D(Δᵢ)
	label string
}

var _ Feedback = (*EControl)(nil)

// NewEF21 wraps c with EF21 state (hᵢ = h = 0). It panics if c is nil.
func NewEF21(c compressors.Compressor) *EControl {
	n := c.Len()
	return &EControl{c: c, ef21: true, hi: make([]float32, n), h: make([]float32, n),
		w: make([]float32, n), label: "ef21"}
}

// NewEControl wraps c with EControl(η) state (eᵢ = hᵢ = h = 0). η must be
// finite and ≥ 0 (theory suggests η of the order of the compressor's δ, e.g.
// k/d for top-k; η = 1 is EF14 applied to g − hᵢ). η = 0 tracks eᵢ without
// using it and is EF21 bit for bit. Errors wrap ErrConfig (a bad η or a nil
// c).
func NewEControl(c compressors.Compressor, eta float64) (*EControl, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil compressor", ErrConfig)
	}
	if eta < 0 || math.IsNaN(eta) || math.IsInf(eta, 0) {
		return nil, fmt.Errorf("%w: econtrol η = %v, want finite and >= 0", ErrConfig, eta)
	}
	n := c.Len()
	return &EControl{c: c, eta: float32(eta), e: make([]float32, n), hi: make([]float32, n),
		h: make([]float32, n), w: make([]float32, n),
		label: "econtrol:" + strconv.FormatFloat(eta, 'g', -1, 64)}, nil
}

// Encode sends Δᵢ = C(η·eᵢ + g − hᵢ) and updates eᵢ and hᵢ.
func (f *EControl) Encode(dst []byte, g []float32) ([]byte, error) {
	if err := checkLen("gradient", len(g), len(f.hi)); err != nil {
		return dst[:0], err
	}
	if err := checkFinite(g); err != nil {
		return dst[:0], err
	}
	w, hi := f.w, f.hi[:len(f.w)]
	g = g[:len(w)]
	if sp, ok := f.c.(compressors.Sparse); ok {
		// One pass: w = (g − hᵢ) [+ η·eᵢ]; eᵢ += g − hᵢ; then the sent
		// pairs: eᵢ −= D(Δᵢ), hᵢ += D(Δᵢ).
		switch {
		case f.ef21:
			for j := range w {
				w[j] = g[j] - hi[j]
			}
		case f.eta == 0:
			e := f.e[:len(w)]
			for j := range w {
				r := g[j] - hi[j]
				w[j] = r
				e[j] += r
			}
		default:
			eta, e := f.eta, f.e[:len(w)]
			for j := range w {
				r := g[j] - hi[j]
				w[j] = r + eta*e[j]
				e[j] += r
			}
		}
		p, err := f.c.Compress(dst, w)
		if err != nil {
			return p, fmt.Errorf("errorfeedback: %s: %w", f.label, err)
		}
		idx, val := sp.Selected()
		if !f.ef21 {
			e := f.e
			for i, j := range idx {
				e[j] -= val[i]
			}
		}
		for i, j := range idx {
			hi[j] += val[i]
		}
		return p, nil
	}
	for j := range w {
		w[j] = g[j] - hi[j]
	}
	if f.eta != 0 {
		eta, e := f.eta, f.e[:len(w)]
		for j := range w {
			w[j] += eta * e[j]
		}
	}
	p, err := f.c.Compress(dst, w)
	if err != nil {
		return p, fmt.Errorf("errorfeedback: %s: %w", f.label, err)
	}
	if err := f.c.Decompress(w, p); err != nil { // w = D(Δᵢ)
		return p, fmt.Errorf("errorfeedback: %s: own payload: %w", f.label, err)
	}
	if !f.ef21 {
		e := f.e[:len(w)]
		for j := range w {
			e[j] += (g[j] - hi[j]) - w[j]
		}
	}
	for j := range w {
		hi[j] += w[j]
	}
	return p, nil
}

// Finish adds the mean message to the replicated h and replaces avg by the
// new h, the update direction.
func (f *EControl) Finish(avg []float32) {
	if len(avg) != len(f.h) {
		panic(badFinishLen)
	}
	h := f.h[:len(avg)]
	for j := range avg {
		h[j] += avg[j]
		avg[j] = h[j]
	}
}

// Eta returns η (0 for EF21).
func (f *EControl) Eta() float64 { return float64(f.eta) }

// Error returns eᵢ, nil for EF21 (a view into the state; do not modify).
func (f *EControl) Error() []float32 { return f.e }

// Local returns hᵢ (a view into the state; do not modify).
func (f *EControl) Local() []float32 { return f.hi }

// Shared returns the replicated h (a view into the state; do not modify).
func (f *EControl) Shared() []float32 { return f.h }

// Len implements Feedback.
func (f *EControl) Len() int { return len(f.hi) }

// Compressor implements Feedback.
func (f *EControl) Compressor() compressors.Compressor { return f.c }

// String describes the value.
func (f *EControl) String() string { return f.label }

// SetCompressor swaps the codec and keeps eᵢ, hᵢ and h.
func (f *EControl) SetCompressor(c compressors.Compressor) error {
	if err := setCompressor(c, len(f.hi)); err != nil {
		return err
	}
	f.c = c
	return nil
}

// Reset zeroes eᵢ, hᵢ and h.
func (f *EControl) Reset() {
	zero(f.e)
	zero(f.hi)
	zero(f.h)
}
