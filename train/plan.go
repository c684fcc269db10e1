package train

import (
	"fmt"
	"strings"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/optim"
)

// Plan says how every layer is communicated: the compressor and
// error-feedback recipes of each layer, and an optional warm-up schedule.
type Plan struct {
	// Compress is the compressor recipe of compressed layers (e.g.
	// "topk:0.001"); "" or "none" sends everything dense.
	Compress string
	// EF is the error-feedback recipe of every layer (e.g. "ef14",
	// "econtrol:0.1", "dgc:0.9"); "" means "none". Dense layers run the same
	// feedback around the "none" codec (for DGC: momentum after averaging).
	EF string
	// CompressVectors also compresses 1-D tensors (biases). By default only
	// tensors of rank >= 2 are compressed, as in the DGC reference code.
	CompressVectors bool
	// Warmup, if not empty, replaces the density of Compress during the
	// first WarmupSteps steps: stage i of len(Warmup) covers steps
	// [i·WarmupSteps/len, (i+1)·WarmupSteps/len) and uses density
	// optim.DGCDensity(i, density, Warmup) (DGC's exponential warm-up,
	// optim.PaperWarmup: 0.25, 0.0625, 0.015625, 0.00390625). Only for
	// sparse codecs (topk, dgc, randomk); the error feedback keeps its state
	// across the codec changes.
	Warmup      []float64
	WarmupSteps int
	// Seed is shared by all ranks (random-k indices, PowerSGD's Q).
	Seed uint64
	// Sign is the codec of the units an optimizer sends through the
	// two-phase 1-bit all-reduce (optim.TwoPhaseSign, 1-bit Adam's
	// compression stage): "sign" (one scale per unit; the default when
	// empty) or "sign:B" (one scale per block of B elements of the unit,
	// see allreduce.TwoPhaseLayout). Every driver uses it: Local, Sim and
	// RegisterUnits' callers.
	Sign string
}

// SignRecipe returns the parsed Sign codec ("sign" when empty).
func (p Plan) SignRecipe() (compressors.Recipe, error) {
	s := p.Sign
	if s == "" {
		s = "sign"
	}
	r, err := compressors.Parse(s)
	if err != nil {
		return r, fmt.Errorf("train: plan: two-phase codec: %w", err)
	}
	if r.Codec != compressors.CodecSign {
		return r, fmt.Errorf("train: plan: two-phase codec %q is not sign or sign:B", s)
	}
	return r, nil
}

// Compressed reports whether layer l is sent with the Compress codec.
func (p Plan) Compressed(l Layer) bool {
	if p.Compress == "" || p.Compress == "none" {
		return false
	}
	return p.CompressVectors || len(l.Shape) >= 2
}

// RecipeAt returns the compressor recipe of layer l at step.
func (p Plan) RecipeAt(l Layer, step int) string {
	if !p.Compressed(l) {
		return "none"
	}
	if len(p.Warmup) > 0 && step < p.WarmupSteps {
		r, err := compressors.Parse(p.Compress)
		if err == nil && r.Density > 0 {
			stage := step * len(p.Warmup) / p.WarmupSteps
			r.Density = optim.DGCDensity(stage, r.Density, p.Warmup)
			return r.String()
		}
	}
	return p.Compress
}

// Stage is one stretch of a layer's codec schedule: Recipe from step From on.
type Stage struct {
	From   int
	Recipe string
}

// Stages returns layer l's codec schedule under the plan: one stage from
// step 0 with the plan's codec, or, with a warm-up, one stage per warm-up
// density and the plan's codec from WarmupSteps on (consecutive equal
// recipes merged). A driver switches the layer's codec (keeping its error
// feedback) at the start of each stage's From step, on every rank: Sim with
// binding.Layer.SetCodec, real workers through worker.WithCodecSchedule
// (RegisterUnits).
func (p Plan) Stages(l Layer) []Stage {
	out := []Stage{{From: 0, Recipe: p.RecipeAt(l, 0)}}
	if len(p.Warmup) == 0 {
		return out
	}
	for i := 1; i <= len(p.Warmup); i++ {
		// The first step whose stage (step·len/WarmupSteps) is i.
		from := (i*p.WarmupSteps + len(p.Warmup) - 1) / len(p.Warmup)
		if r := p.RecipeAt(l, from); r != out[len(out)-1].Recipe {
			out = append(out, Stage{From: from, Recipe: r})
		}
	}
	return out
}

func (p Plan) efRecipe() string {
	if p.EF == "" {
		return "none"
	}
	return p.EF
}

func (p Plan) validate() error {
	if _, err := errorfeedback.Parse(p.efRecipe()); err != nil {
		return fmt.Errorf("train: plan: %w", err)
	}
	if _, err := p.SignRecipe(); err != nil {
		return err
	}
	if p.Compress != "" {
		r, err := compressors.Parse(p.Compress)
		if err != nil {
			return fmt.Errorf("train: plan: %w", err)
		}
		if len(p.Warmup) > 0 {
			if r.Density == 0 {
				return fmt.Errorf("train: plan: warm-up needs a sparse codec, not %q", p.Compress)
			}
			if p.WarmupSteps < len(p.Warmup) {
				return fmt.Errorf("train: plan: %d warm-up steps for %d stages", p.WarmupSteps, len(p.Warmup))
			}
		}
	}
	return nil
}

// String describes the plan, e.g. "topk:0.001 ef=ef14".
func (p Plan) String() string {
	var b strings.Builder
	c := p.Compress
	if c == "" {
		c = "none"
	}
	fmt.Fprintf(&b, "%s ef=%s", c, p.efRecipe())
	if len(p.Warmup) > 0 {
		fmt.Fprintf(&b, " warmup=%d", p.WarmupSteps)
	}
	return b.String()
}
