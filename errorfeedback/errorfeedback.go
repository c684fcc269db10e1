// Package errorfeedback holds the per-layer state that wraps a gradient codec
// (a compressors.Compressor) on one rank: no feedback, the EF14 residual,
// EF21, EControl and DGC's momentum correction with momentum-factor masking.
// It also holds the worker and server errors of the two-phase 1-bit
// all-reduce of 1-bit Adam (WorkerError, ServerError).
//
// # How a worker uses a Feedback, per layer and step
//
//	payload, err := fb.Encode(buf, g)   // compensate g, compress, update local state
//	// ... exchange payloads; every rank computes, in rank order 0..N-1,
//	//     avg = (1/N) * sum_r Decompress(payload_r)
//	fb.Finish(avg)                      // avg becomes this step's update direction
//	// optimizer: x -= lr * avg   (plain SGD on the direction; see package optim)
//
// The methods of every algorithm, with C the codec, D its decoder and avg
// the vector passed to Finish (docs/algorithms.md §1 and §3.2):
//
//	None      Encode: Δ = C(g)                      Finish: identity
//	EF14      Encode: Δ = C(e+g); e = e+g−D(Δ)      Finish: identity
//	EF21      Encode: Δ = C(g−hᵢ); hᵢ += D(Δ)       Finish: h += avg; avg = h
//	EControl  Encode: Δ = C(η·e+g−hᵢ);              Finish: h += avg; avg = h
//	                  e += g−hᵢ−D(Δ); hᵢ += D(Δ)
//	DGC       Encode: u = m·u+g; v += u; Δ = C(v);  Finish: identity
//	                  v −= D(Δ), u = 0 where sent
//	DGC dense Encode: Δ = C(g)                      Finish: u = m·u+avg; avg = u
//
// For sparse codecs (compressors.Sparse: top-k, dgc, random-k) D(Δ) is read
// from Selected (the sent indices and the values the payload decodes to)
// instead of decoding the payload, so a step costs one pass over the layer
// plus the codec.
//
// EF21 and EControl start from hᵢ = h = 0 (no dense initial round); EControl
// with η = 0 is EF21 bit for bit. All state is O(layer size), allocated once
// at construction; Encode and Finish allocate nothing when dst has capacity
// for the payload.
//
// Concurrency: a Feedback is not safe for concurrent use; use one per layer
// and goroutine, like the Compressor it wraps.
package errorfeedback

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/internal/kernels"
)

// Errors.
var (
	// ErrRecipe means a recipe string did not parse.
	ErrRecipe = errors.New("errorfeedback: bad recipe")
	// ErrLength means a vector's length differs from the layer size.
	ErrLength = errors.New("errorfeedback: length mismatch")
	// ErrNonFinite means the gradient holds NaN or ±Inf. Encode reports it
	// before touching any state, so the step can be skipped.
	ErrNonFinite = errors.New("errorfeedback: non-finite gradient")
	// ErrConfig means invalid parameters (momentum, η, clip norm, world).
	ErrConfig = errors.New("errorfeedback: bad config")
)

// Feedback is one rank's error-feedback state for one layer, wrapping a
// Compressor bound to the same layer.
type Feedback interface {
	// Encode compensates g with the local state, compresses the result
	// with the wrapped codec, appending the payload (a full wire frame) to
	// dst[:0], and updates the local state as if the payload were
	// delivered. g is neither modified nor retained. len(g) must equal
	// Len(), otherwise ErrLength. A gradient holding NaN or Inf returns
	// ErrNonFinite and leaves the state untouched; a codec error is
	// returned wrapped, and the state is then unspecified (call Reset).
	Encode(dst []byte, g []float32) ([]byte, error)

	// Finish turns avg, the mean over ranks of this step's decoded
	// payloads (Decompress of every rank's payload summed in rank order
	// 0..N-1, then scaled by 1/N), into this step's update direction, in
	// place: the model update is x -= lr·avg. Every rank must pass a
	// bit-identical avg; replicated state (EF21's h, DGC's dense momentum)
	// then stays bit-identical too. It panics if len(avg) != Len().
	Finish(avg []float32)

	// Len is the layer's element count.
	Len() int
	// Compressor returns the wrapped codec.
	Compressor() compressors.Compressor
	// SetCompressor swaps the wrapped codec and keeps the state, e.g. at
	// the epochs of DGC's warm-up density schedule. c must have the same
	// Len (else ErrLength); DGC also refuses to switch between its dense and
	// compressed paths (ErrConfig). Every rank must switch at the same step.
	SetCompressor(c compressors.Compressor) error
	// Reset zeroes all state, as after construction.
	Reset()
	// String returns the canonical recipe, e.g. "econtrol:0.1".
	String() string
}

// Kind names an error-feedback algorithm.
type Kind uint8

const (
	KindNone     Kind = iota // plain compression, no error feedback
	KindEF14                 // residual error feedback (Seide'14, Stich'18, Karimireddy'19)
	KindEF21                 // EF21 (Richtárik et al. 2021)
	KindEControl             // EControl(η) (Gao, Islamov, Stich 2024)
	KindDGC                  // DGC momentum correction + masking (Lin et al. 2018)
)

var kindNames = [...]string{"none", "ef14", "ef21", "econtrol", "dgc"}

// String describes the value: the algorithm's recipe name.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	if s := userByKind(k); s != nil {
		return s.Name
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Recipe is a parsed error-feedback recipe string.
type Recipe struct {
	Kind     Kind
	Eta      float64 // EControl's η
	Momentum float64 // DGC's momentum m
	Nesterov bool    // DGC: Nesterov variant ("dgc-nesterov:0.9")
	// Args is the canonical argument text of a user algorithm (see
	// Register): "ARGS" in "myef:ARGS", "" if it has none.
	Args string
}

// Parse parses "none", "ef14", "ef21", "econtrol:ETA" (ETA ≥ 0, e.g.
// "econtrol:0.1"; "econtrol:0" is EF21), "dgc:M" (momentum 0 ≤ M < 1, e.g.
// "dgc:0.9") and "dgc-nesterov:M", and the algorithms added with Register
// ("name" or "name:ARGS"). Errors wrap ErrRecipe.
func Parse(s string) (Recipe, error) {
	name, arg, hasArg := strings.Cut(strings.TrimSpace(s), ":")
	name = strings.ToLower(name)
	noArg := func(k Kind) (Recipe, error) {
		if hasArg {
			return Recipe{}, fmt.Errorf("%w: %q takes no parameter", ErrRecipe, s)
		}
		return Recipe{Kind: k}, nil
	}
	num := func(what string) (float64, error) {
		if !hasArg || arg == "" {
			return 0, fmt.Errorf("%w: %q needs a %s, e.g. %s:0.1", ErrRecipe, s, what, name)
		}
		v, err := strconv.ParseFloat(arg, 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return 0, fmt.Errorf("%w: %q: %s %q is not a finite number", ErrRecipe, s, what, arg)
		}
		return v, nil
	}
	switch name {
	case "none", "":
		if name == "" {
			return Recipe{}, fmt.Errorf("%w: empty recipe (want none, ef14, ef21, econtrol:ETA, dgc:M)", ErrRecipe)
		}
		return noArg(KindNone)
	case "ef14", "ef":
		return noArg(KindEF14)
	case "ef21":
		return noArg(KindEF21)
	case "econtrol":
		eta, err := num("η")
		if err != nil {
			return Recipe{}, err
		}
		if eta < 0 {
			return Recipe{}, fmt.Errorf("%w: %q: η must be >= 0", ErrRecipe, s)
		}
		return Recipe{Kind: KindEControl, Eta: eta}, nil
	case "dgc", "dgc-nesterov":
		m, err := num("momentum")
		if err != nil {
			return Recipe{}, err
		}
		if m < 0 || m >= 1 {
			return Recipe{}, fmt.Errorf("%w: %q: momentum must be in [0, 1)", ErrRecipe, s)
		}
		return Recipe{Kind: KindDGC, Momentum: m, Nesterov: name == "dgc-nesterov"}, nil
	}
	if u, k := lookupUser(name); u != nil {
		r := Recipe{Kind: k}
		if u.ParseArgs == nil {
			return noArg(k)
		}
		canon, err := u.ParseArgs(arg)
		if err != nil {
			return Recipe{}, fmt.Errorf("%w: %q: %w", ErrRecipe, s, err)
		}
		r.Args = canon
		return r, nil
	}
	want := "none, ef14, ef21, econtrol:ETA, dgc:M, dgc-nesterov:M"
	if u := userNames(); len(u) > 0 {
		want += ", " + strings.Join(u, ", ")
	}
	return Recipe{}, fmt.Errorf("%w: unknown algorithm %q (want %s)", ErrRecipe, name, want)
}

// String returns the canonical recipe string; Parse(r.String()) == r.
func (r Recipe) String() string {
	switch r.Kind {
	case KindEControl:
		return "econtrol:" + strconv.FormatFloat(r.Eta, 'g', -1, 64)
	case KindDGC:
		name := "dgc:"
		if r.Nesterov {
			name = "dgc-nesterov:"
		}
		return name + strconv.FormatFloat(r.Momentum, 'g', -1, 64)
	}
	if r.Args != "" && r.Kind >= KindUser {
		return r.Kind.String() + ":" + r.Args
	}
	return r.Kind.String()
}

// Config holds the optional settings of New. Only DGC uses them.
type Config struct {
	// World is the number of ranks N; DGC's local clipping threshold is
	// ClipNorm/√World. Default 1.
	World int
	// ClipNorm > 0 enables DGC's local gradient clipping: before
	// accumulation, g is scaled by min(1, (ClipNorm/√World)/(‖g‖₂+1e-6)).
	// Default 0 (off).
	ClipNorm float64
	// NoMasking disables momentum-factor masking (an ablation; the paper
	// and the reference code mask).
	NoMasking bool
	// Dense forces DGC's dense-layer path (momentum after averaging) even
	// for a codec that does not aggregate by Reduce.
	Dense bool
}

// Option sets a Config field.
type Option func(*Config) error

// WithWorld sets the number of ranks (DGC's clipping threshold is ClipNorm/√n).
func WithWorld(n int) Option {
	return func(c *Config) error {
		if n < 1 {
			return fmt.Errorf("%w: world %d < 1", ErrConfig, n)
		}
		c.World = n
		return nil
	}
}

// WithClipNorm enables DGC's local gradient clipping at max/√World; 0 disables it.
func WithClipNorm(max float64) Option {
	return func(c *Config) error {
		if max < 0 || math.IsNaN(max) || math.IsInf(max, 0) {
			return fmt.Errorf("%w: clip norm %v", ErrConfig, max)
		}
		c.ClipNorm = max
		return nil
	}
}

// WithoutMasking disables DGC's momentum-factor masking (ablation only).
func WithoutMasking() Option {
	return func(c *Config) error { c.NoMasking = true; return nil }
}

// WithDense forces DGC's dense-layer path (momentum after averaging).
func WithDense() Option {
	return func(c *Config) error { c.Dense = true; return nil }
}

// DefaultConfig returns the defaults: World 1, no clipping, masking on.
func DefaultConfig() Config { return Config{World: 1} }

// New builds the Feedback of recipe r around c, a codec bound to one layer.
func (r Recipe) New(c compressors.Compressor, opts ...Option) (Feedback, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil compressor", ErrConfig)
	}
	cfg := DefaultConfig()
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	switch r.Kind {
	case KindNone:
		return NewNone(c), nil
	case KindEF14:
		return NewEF14(c), nil
	case KindEF21:
		return NewEF21(c), nil
	case KindEControl:
		return NewEControl(c, r.Eta)
	case KindDGC:
		return NewDGC(c, DGCConfig{
			Momentum: r.Momentum, Nesterov: r.Nesterov, Config: cfg,
		})
	}
	if r.Kind >= KindUser {
		return newUser(r, c, cfg)
	}
	return nil, fmt.Errorf("%w: kind %v", ErrRecipe, r.Kind)
}

// checkFinite returns ErrNonFinite if g holds NaN or ±Inf. The pass is
// kernels.AllFinite; only a vector that fails it is searched for the
// element to name.
func checkFinite(g []float32) error {
	if kernels.AllFinite(g) {
		return nil
	}
	for i, x := range g {
		// x-x is 0 for finite x and NaN for NaN and ±Inf.
		if x-x != 0 {
			return fmt.Errorf("%w: element %d is %v", ErrNonFinite, i, x)
		}
	}
	return nil
}

// setCompressor validates c for a layer of n elements.
func setCompressor(c compressors.Compressor, n int) error {
	if c == nil {
		return fmt.Errorf("%w: nil compressor", ErrConfig)
	}
	return checkLen("new codec", c.Len(), n)
}

func checkLen(what string, got, want int) error {
	if got != want {
		return fmt.Errorf("%w: %s has %d elements, layer has %d", ErrLength, what, got, want)
	}
	return nil
}

const badFinishLen = "errorfeedback: Finish: len(avg) != Len()"

func zero(s []float32) {
	for i := range s {
		s[i] = 0
	}
}

// None is plain compression without error feedback: Δ = C(g).
type None struct {
	c compressors.Compressor
}

var _ Feedback = (*None)(nil)

// NewNone wraps c without error feedback. c must not be nil.
func NewNone(c compressors.Compressor) *None { return &None{c: c} }

// Encode compresses g as is.
func (f *None) Encode(dst []byte, g []float32) ([]byte, error) {
	if err := checkLen("gradient", len(g), f.c.Len()); err != nil {
		return dst[:0], err
	}
	if err := checkFinite(g); err != nil {
		return dst[:0], err
	}
	p, err := f.c.Compress(dst, g)
	if err != nil {
		return p, fmt.Errorf("errorfeedback: none: %w", err)
	}
	return p, nil
}

// Finish leaves avg unchanged: the direction is the mean of the messages.
func (f *None) Finish(avg []float32) {
	if len(avg) != f.c.Len() {
		panic(badFinishLen)
	}
}

// Len implements Feedback.
func (f *None) Len() int { return f.c.Len() }

// Compressor implements Feedback.
func (f *None) Compressor() compressors.Compressor { return f.c }

// Reset implements Feedback.
func (f *None) Reset() {}

// SetCompressor swaps the codec.
func (f *None) SetCompressor(c compressors.Compressor) error {
	if err := setCompressor(c, f.c.Len()); err != nil {
		return err
	}
	f.c = c
	return nil
}

// String describes the value.
func (f *None) String() string { return "none" }

// EF14 is classic residual error feedback in gradient form:
// Δ = C(e + g), e ← e + g − D(Δ). The update direction is the mean of the
// messages.
type EF14 struct {
	c compressors.Compressor
	e []float32 // residual
	w []float32 // scratch: e + g
}

var _ Feedback = (*EF14)(nil)

// NewEF14 wraps c with a zero residual. It panics if c is nil.
func NewEF14(c compressors.Compressor) *EF14 {
	n := c.Len()
	return &EF14{c: c, e: make([]float32, n), w: make([]float32, n)}
}

// Encode sends C(e+g) and keeps e+g−D(C(e+g)) as the residual.
func (f *EF14) Encode(dst []byte, g []float32) ([]byte, error) {
	if err := checkLen("gradient", len(g), len(f.e)); err != nil {
		return dst[:0], err
	}
	if err := checkFinite(g); err != nil {
		return dst[:0], err
	}
	if sp, ok := f.c.(compressors.Sparse); ok {
		// One pass: e ← e + g, compress e, subtract the sent pairs.
		e := f.e
		kernels.Add(e, g[:len(e)])
		p, err := f.c.Compress(dst, e)
		if err != nil {
			return p, fmt.Errorf("errorfeedback: ef14: %w", err)
		}
		idx, val := sp.Selected()
		for i, j := range idx {
			e[j] -= val[i]
		}
		return p, nil
	}
	w, e := f.w, f.e[:len(f.w)]
	kernels.AddTo(w, e, g[:len(w)])
	p, err := f.c.Compress(dst, w)
	if err != nil {
		return p, fmt.Errorf("errorfeedback: ef14: %w", err)
	}
	if err := f.c.Decompress(e, p); err != nil {
		return p, fmt.Errorf("errorfeedback: ef14: own payload: %w", err)
	}
	kernels.SubTo(e, w, e)
	return p, nil
}

// Finish leaves avg unchanged.
func (f *EF14) Finish(avg []float32) {
	if len(avg) != len(f.e) {
		panic(badFinishLen)
	}
}

// Residual returns the residual e (a view into the state; do not modify).
func (f *EF14) Residual() []float32 { return f.e }

// Len implements Feedback.
func (f *EF14) Len() int { return len(f.e) }

// Compressor implements Feedback.
func (f *EF14) Compressor() compressors.Compressor { return f.c }

// Reset implements Feedback.
func (f *EF14) Reset() { zero(f.e) }

// SetCompressor swaps the codec and keeps the residual.
func (f *EF14) SetCompressor(c compressors.Compressor) error {
	if err := setCompressor(c, len(f.e)); err != nil {
		return err
	}
	f.c = c
	return nil
}

// String describes the value.
func (f *EF14) String() string { return "ef14" }
