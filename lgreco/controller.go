package lgreco

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"slices"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/internal/kernels"
)

// Controller is one rank's L-GreCo state: the active per-layer choice, a
// pending Decision and, on the deciding rank (rank 0), the accumulated
// error-compensated gradients. Every rank runs one with the same Plan and
// drives it with the same calls at the same step boundaries:
//
//	at the start of step t, before any collective of step t:
//	  if c.Due(t) {                                   // the same on every rank
//	      var b []byte
//	      if rank == 0 { d := c.Decide(t); b, _ = d.MarshalBinary() }
//	      b = broadcast(b)                            // from rank 0
//	      d, err := plan.Decode(b); err = c.Schedule(d)
//	  }
//	  changed, err := c.Advance(t)                    // switches at d.ApplyAt
//	  if c.Due(t) { err = Agree(ctx, conn, tag, t, c.Signature()) }
//	  for _, l := range changed { rebuild layer l: c.Recipe(l), c.LayerSeed(l) }
//	  ... run step t; on rank 0, if c.Collecting(t), c.Observe(l, g, e) per layer
//
// Agreeing at every Due step is enough: the signature covers the pending
// decision (choice and ApplyAt), so a rank that would switch differently is
// caught at the decision's own boundary, where every rank calls Agree
// (folding the signature into an exchange the step makes anyway, every step,
// is a cheaper alternative).
//
// A Controller is not safe for concurrent use.
type Controller struct {
	plan     *Plan
	active   []int
	applied  int64 // ApplyAt of the active choice (-1: the initial default)
	version  uint32
	pending  *Decision
	last     int64 // last step given to Advance
	acc      [][]float64
	accSteps []int64 // per layer: number of Observe calls in the window
	replay   []*replayLayer
	lastSol  Solution
	lastTab  Table
}

// replayLayer is the replayed error feedback of one layer (Plan.Replayable):
// per candidate, an EF14 over the candidate's own codec, whose residual is
// what the layer would carry had it always run that candidate, and the sum of
// that residual's norm over the decision window.
type replayLayer struct {
	ef    []*errorfeedback.EF14
	sum   []float64
	steps []int64 // steps replayed since the (re)start of each candidate
	warm  []int64 // steps each candidate needs to fill its residual (replayWarm)
	frame []byte
	// PowerSGD: the moving average of rank 0's gradients that the replay
	// runs on, and its factor (nil, 0: the raw gradients).
	ema     []float32
	beta    float64
	emaInit bool
}

// replayWarm is the number of steps error feedback with r needs before its
// residual is representative: a level that sends k of n elements per step
// gets round to every element about once in n/k steps, so a residual
// replayed from zero for fewer steps still underestimates what the level
// carries (for top-k at density d, ⌈1/d⌉ steps). Codecs that send every
// element (QSGD) need one step, and so does PowerSGD, which sends a
// projection of the whole matrix every step (its replayed errors on the
// MNIST MLP were already at their level 100 steps in, at the first
// decision, and stayed there to the last).
func replayWarm(r compressors.Recipe, n int) int64 {
	k := r.K(n)
	if k >= n {
		return 1
	}
	return int64((n + max(k, 1) - 1) / max(k, 1))
}

// lowRank reports whether c is a PowerSGD level.
func lowRank(c Candidate) bool { return c.Recipe.Codec == compressors.CodecPowerSGD }

// NewController returns a Controller whose active choice is the plan's
// uniform default.
func NewController(p *Plan) *Controller {
	return &Controller{plan: p, active: p.Default(), applied: -1, last: -1}
}

// Plan returns the controller's plan.
func (c *Controller) Plan() *Plan { return c.plan }

// Due reports whether step t is an adjustment boundary (t = Start + k·Adjust,
// k ≥ 1): rank 0 must Decide and every rank must receive and Schedule the
// broadcast decision before step t's collectives. It depends only on the
// Config, so every rank agrees.
func (c *Controller) Due(t int64) bool {
	cfg := &c.plan.cfg
	return t > cfg.Start && (t-cfg.Start)%cfg.Adjust == 0
}

// Collecting reports whether the deciding rank must Observe step t: the last
// AccIter steps before a boundary, whose error-compensated gradients feed the
// next decision, and, if the plan has replayable layers (Plan.Replayable),
// every step from Start, since replayed error feedback must see every
// gradient.
// Only the deciding rank needs to Observe.
func (c *Controller) Collecting(t int64) bool {
	return c.window(t) || (c.plan.hasReplay() && t >= c.plan.cfg.Start)
}

// window reports whether step t is one of the last AccIter steps before a
// boundary.
func (c *Controller) window(t int64) bool {
	cfg := &c.plan.cfg
	if t < cfg.Start {
		return false
	}
	next := t - (t-cfg.Start)%cfg.Adjust + cfg.Adjust // next boundary after t
	return next-t <= cfg.AccIter
}

// Observe feeds layer l's gradient of the step of the last Advance to the
// next decision. e is the layer's error-feedback residual before this step's
// compression, or nil: under EF14 (over a gathered codec, or PowerSGD's
// ef14) g is the plain gradient and e the residual (binding.Layer.Observation
// gives both); without error feedback e is nil.
//
// One-shot: the error-compensated gradient g + e of the steps of the window
// (the last AccIter steps before a decision) is averaged in float64, and
// err(c) = ‖G − C_c(G)‖₂ on that average (Plan.Errors), as docs/algorithms.md §4.2
// describes.
//
// Replayed: a replayable layer (Plan.Replayable) observed with a residual
// runs, for every candidate c, the error feedback it would have had the layer
// always run c: r_c ← (g + r_c) − C_c(g + r_c), with c's own codec (EF14), on
// every observed gradient from Start on; err(c) is the mean of ‖r_c‖₂ over
// the window (PowerSGD: rank 0's own replay, an estimate, see
// Plan.Replayable). Under error feedback this is what a level costs: the residual
// of a sparser level grows until what it sends keeps up with the gradient,
// which the one-shot error of one error-compensated gradient does not show
// (a dense vector's tail holds nearly all of its energy at any small density,
// so the one-shot errors hardly differ and the DP sparsifies large layers
// almost for free). It does not depend on the active choice either, so the
// budget stays anchored at the uniform default's own residual, and a level
// that proves too sparse is charged for it at the next decision. A candidate
// whose replay has run fewer steps than it needs to fill its residual (about
// n/k steps for a level that sends k of n elements, ⌈1/d⌉ for top-k at
// density d) is not offered yet, since its error would be underestimated;
// the default always is (while it is not filled the budget is
// underestimated, which is on the safe side). A layer is replayed from its
// first observation with a residual; observe it the same way every time. The
// deciding rank must then call Observe at every step for which Collecting
// holds (every step from Start), after Advance of that step; in such a plan,
// one-shot observations outside the window are ignored.
//
// It allocates the layer's state on first use and nothing afterwards (if the
// codecs allocate nothing). It panics if the lengths do not match the layer.
func (c *Controller) Observe(l int, g, e []float32) {
	pl := &c.plan.layers[l]
	n := pl.Elems()
	if len(g) != n || (e != nil && len(e) != n) {
		panic("lgreco: Observe: vector length does not match the layer")
	}
	if c.acc == nil {
		c.acc = make([][]float64, len(c.plan.layers))
		c.accSteps = make([]int64, len(c.plan.layers))
		c.replay = make([]*replayLayer, len(c.plan.layers))
	}
	if !pl.tuned {
		return
	}
	if pl.replay && (e != nil || c.replay[l] != nil) {
		c.observeReplay(l, g)
		return
	}
	if c.plan.hasReplay() && !c.window(c.last) {
		return
	}
	if c.acc[l] == nil {
		c.acc[l] = make([]float64, n)
	}
	a := c.acc[l][:n]
	if e == nil {
		for i, v := range g {
			a[i] += float64(v)
		}
	} else {
		e = e[:n]
		for i, v := range g {
			a[i] += float64(v) + float64(e[i])
		}
	}
	c.accSteps[l]++
}

// observeReplay advances the replayed error feedback of layer l by one step.
func (c *Controller) observeReplay(l int, g []float32) {
	pl := &c.plan.layers[l]
	n := pl.Elems()
	rl := c.replay[l]
	if rl == nil {
		nc := len(pl.cands)
		rl = &replayLayer{ef: make([]*errorfeedback.EF14, nc), sum: make([]float64, nc), steps: make([]int64, nc), warm: make([]int64, nc)}
		for k, cand := range pl.cands {
			rl.warm[k] = replayWarm(cand.Recipe, n)
			comp, err := cand.Recipe.New(n, compressors.WithShape(pl.Rows, pl.Cols), compressors.WithSeed(LayerSeed(c.plan.cfg.Seed, -1, l)))
			if err != nil {
				panic("lgreco: internal error: candidate " + cand.Recipe.String() + ": " + err.Error()) // NewPlan parsed it
			}
			rl.ef[k] = errorfeedback.NewEF14(comp)
		}
		if b := c.plan.cfg.smoothing(); b > 0 && slices.ContainsFunc(pl.cands, lowRank) {
			rl.ema, rl.beta = make([]float32, n), b
		}
		c.replay[l] = rl
	}
	smooth := g
	if rl.ema != nil {
		// PowerSGD candidates replay on rank 0's smoothed gradients (see
		// Config.Ranks).
		if rl.emaInit {
			kernels.Scale(rl.ema, float32(rl.beta))
			kernels.Axpy(rl.ema, float32(1-rl.beta), g)
		} else {
			copy(rl.ema, g)
			rl.emaInit = true
		}
		smooth = rl.ema
	}
	win := c.window(c.last)
	for k, ef := range rl.ef {
		in := g
		if lowRank(pl.cands[k]) {
			in = smooth
		}
		var err error
		rl.frame, err = ef.Encode(rl.frame[:0], in)
		norm := math.NaN()
		if err == nil {
			norm = math.Sqrt(kernels.SumSq(ef.Residual()))
		}
		if math.IsNaN(norm) || math.IsInf(norm, 0) {
			// A non-finite gradient: this window's error is undefined
			// (infeasible), and the replay restarts from zero, the
			// moving average too.
			ef.Reset()
			norm = math.NaN()
			rl.steps[k] = 0
			rl.emaInit = false
		} else {
			rl.steps[k]++
		}
		if win {
			rl.sum[k] += norm
		}
	}
	if win {
		c.accSteps[l]++
	}
}

// Decide runs the DP on the gradients observed since the last decision and
// returns the Decision to broadcast: Version one past the last scheduled one,
// ApplyAt = t + Delay. Tuned layers that were never observed, non-finite
// errors of the default (an undefined budget) or an infeasible DP give a
// decision with Kept set and the previous choice (the pending one if any,
// else the active one). The accumulators are reset. Call it on the deciding
// rank only; it does not change the active choice (Schedule and Advance do).
func (c *Controller) Decide(t int64) *Decision {
	p := c.plan
	prev := c.active
	if c.pending != nil {
		prev = c.pending.Choice
	}
	d := &Decision{Version: c.version + 1, Step: t, ApplyAt: t + p.cfg.Delay, PlanHash: p.hash}
	defer c.resetAcc()
	tab := Table{Err: make([][]float64, len(p.tuned)), Cost: make([][]float64, len(p.tuned)), Default: make([]int, len(p.tuned))}
	for i, l := range p.tuned {
		pl := &p.layers[l]
		if c.accSteps == nil || c.accSteps[l] == 0 {
			d.Kept, d.Choice = true, slices.Clone(prev)
			return d
		}
		inv := 1 / float64(c.accSteps[l])
		if c.replay[l] != nil {
			tab.Err[i] = make([]float64, len(pl.cands))
			rl := c.replay[l]
			for k, s := range rl.sum {
				tab.Err[i][k] = s * inv
				if rl.steps[k] < rl.warm[k] && k != pl.def {
					// Not filled yet: its error would be underestimated
					// (and the DP would pick it for that): infeasible. The
					// default stays, an underestimated budget is on the
					// safe side.
					tab.Err[i][k] = math.NaN()
				}
			}
		} else {
			g := c.acc[l]
			for j := range g {
				g[j] *= inv
			}
			tab.Err[i] = p.Errors(l, g)
		}
		tab.Cost[i] = pl.cost
		tab.Default[i] = pl.def
	}
	if p.cfg.Squared {
		for _, row := range tab.Err {
			for k, e := range row {
				row[k] = e * e
			}
		}
	}
	c.lastTab = tab
	sol, err := Solve(tab, p.cfg.Alpha, p.cfg.Buckets)
	if err != nil {
		panic("lgreco: internal error: " + err.Error()) // the plan guarantees a well-formed table
	}
	c.lastSol = sol
	d.Budget, d.DefaultCost, d.DefaultErr = sol.Budget, sol.DefaultCost, sol.DefaultErr
	if !sol.Feasible {
		d.Kept, d.Choice = true, slices.Clone(prev)
		return d
	}
	d.Choice = p.Default()
	for i, l := range p.tuned {
		d.Choice[l] = sol.Choice[i]
	}
	d.Cost, d.Err = sol.Cost, sol.Err
	return d
}

// LastSolution is the DP result of the last Decide (zero before any).
func (c *Controller) LastSolution() Solution { return c.lastSol }

// LastTable is the DP input of the last Decide that had data for every tuned
// layer (zero before any): one row per tuned layer (Plan.Tuned, in layer
// order) with its candidates' errors and costs, for logs and diagnostics.
// The slices are shared: do not modify them.
func (c *Controller) LastTable() Table { return c.lastTab }

func (c *Controller) resetAcc() {
	for l, a := range c.acc {
		clear(a)
		c.accSteps[l] = 0
		if rl := c.replay[l]; rl != nil {
			clear(rl.sum)
		}
	}
}

// Schedule records d, received from the deciding rank, as the pending
// decision. It returns an error wrapping ErrMismatch, and changes nothing,
// if d is for another plan, is not the next version, or applies at a step
// that this rank has already started.
func (c *Controller) Schedule(d *Decision) error {
	if err := c.plan.check(d); err != nil {
		return err
	}
	if d.Version != c.version+1 {
		return fmt.Errorf("%w: decision version %d, this rank expects %d", ErrMismatch, d.Version, c.version+1)
	}
	if d.ApplyAt <= c.last {
		return fmt.Errorf("%w: decision applies at step %d, this rank is already at step %d", ErrMismatch, d.ApplyAt, c.last)
	}
	if c.pending != nil {
		return fmt.Errorf("%w: decision %d arrived before decision %d (step %d) was applied", ErrMismatch, d.Version, c.pending.Version, c.pending.ApplyAt)
	}
	cp := *d
	cp.Choice = slices.Clone(d.Choice)
	c.pending = &cp
	c.version = d.Version
	return nil
}

// Advance moves to the start of step t and, if a pending decision applies at
// t, makes it active. It returns the layers whose recipe changed (nil if
// none); the caller rebuilds their compressors (NewCompressor, LayerSeed).
// Steps must increase; skipping the step at which a pending decision applies
// returns an error wrapping ErrStep, and the choice is not changed.
func (c *Controller) Advance(t int64) ([]int, error) {
	if t <= c.last {
		return nil, fmt.Errorf("%w: step %d after step %d", ErrStep, t, c.last)
	}
	if c.pending != nil && t > c.pending.ApplyAt {
		return nil, fmt.Errorf("%w: step %d skips step %d, at which decision %d applies", ErrStep, t, c.pending.ApplyAt, c.pending.Version)
	}
	c.last = t
	if c.pending == nil || t != c.pending.ApplyAt {
		return nil, nil
	}
	var changed []int
	for l, k := range c.pending.Choice {
		if c.plan.layers[l].cands[k].Recipe != c.plan.layers[l].cands[c.active[l]].Recipe {
			changed = append(changed, l)
		}
	}
	c.active = c.pending.Choice
	c.applied = t
	c.pending = nil
	return changed, nil
}

// Active returns the active choice (a candidate index per layer; do not
// modify).
func (c *Controller) Active() []int { return c.active }

// Pending returns the scheduled decision that is not applied yet, or nil.
func (c *Controller) Pending() *Decision { return c.pending }

// Recipe returns layer l's active recipe.
func (c *Controller) Recipe(l int) compressors.Recipe {
	return c.plan.layers[l].cands[c.active[l]].Recipe
}

// Recipes returns the active recipe of every layer.
func (c *Controller) Recipes() []compressors.Recipe { return c.plan.Recipes(c.active) }

// AppliedAt is the step at which the active choice took effect (-1 for the
// initial default).
func (c *Controller) AppliedAt() int64 { return c.applied }

// LayerSeed is the seed of layer l's compressor under the active choice:
// LayerSeed(Config.Seed, AppliedAt(), l). Every rank gets the same value, so
// PowerSGD's re-drawn Q is identical everywhere.
func (c *Controller) LayerSeed(l int) uint64 { return LayerSeed(c.plan.cfg.Seed, c.applied, l) }

// NewCompressor builds layer l's compressor for the active choice, with the
// layer's shape and LayerSeed (PowerSGD's P and Q sized for the new rank and Q
// re-drawn from the shared seed, identically on every rank). opts are added
// after those (e.g. compressors.WithRank for per-rank randomness). To keep a
// PowerSGD layer's warm start across the change, as the worker does, call
// compressors.PowerSGD.WarmStartFrom with the layer's previous compressor.
func (c *Controller) NewCompressor(l int, opts ...compressors.Option) (compressors.Compressor, error) {
	pl := &c.plan.layers[l]
	all := append([]compressors.Option{compressors.WithShape(pl.Rows, pl.Cols), compressors.WithSeed(c.LayerSeed(l))}, opts...)
	return c.Recipe(l).New(pl.Elems(), all...)
}

// LayerSeed derives the shared seed of layer l's compressor from the job's
// seed and the step at which the configuration took effect (splitmix64 of the
// three words). At applied = -1 (the initial configuration) it returns seed
// itself, so an unadjusted job seeds its compressors exactly as without
// L-GreCo.
func LayerSeed(seed uint64, applied int64, l int) uint64 {
	if applied < 0 {
		return seed
	}
	return compressors.MixSeed(seed^0x4c477265436f5365, uint64(applied), uint64(l))
}

// Signature hashes what this rank will run: the plan, the active choice and
// the step it took effect, and the pending decision (version, apply step and
// choice). Ranks that compare signatures at every step boundary (Agree, or
// the worker's own per-step exchange) detect a rank that would apply a
// different choice, or the same one at a different step, before any
// collective whose sizes depend on it.
func (c *Controller) Signature() uint64 {
	h := fnv.New64a()
	var b []byte
	b = binary.LittleEndian.AppendUint64(b, c.plan.hash)
	b = binary.LittleEndian.AppendUint64(b, uint64(c.applied))
	b = binary.LittleEndian.AppendUint32(b, c.version)
	for _, k := range c.active {
		b = binary.AppendUvarint(b, uint64(k))
	}
	if c.pending != nil {
		b = append(b, 1)
		b = binary.LittleEndian.AppendUint64(b, uint64(c.pending.ApplyAt))
		for _, k := range c.pending.Choice {
			b = binary.AppendUvarint(b, uint64(k))
		}
	} else {
		b = append(b, 0)
	}
	h.Write(b)
	return h.Sum64()
}

// DesyncError reports that ranks hold different configurations at a step.
type DesyncError struct {
	// Step is the training step at which the signatures were compared.
	Step int64
	// Signatures holds every rank's Signature, indexed by rank.
	Signatures []uint64
	// Ranks lists the ranks whose signature differs from rank 0's.
	Ranks []int
}

// Error names the step, the differing ranks and the signatures of the first
// of them and of rank 0. It does not panic on a DesyncError built by hand
// without Ranks.
func (e *DesyncError) Error() string {
	if len(e.Ranks) == 0 || len(e.Signatures) == 0 || e.Ranks[0] < 0 || e.Ranks[0] >= len(e.Signatures) {
		return fmt.Sprintf("lgreco: step %d: ranks %v disagree with rank 0 on the per-layer configuration", e.Step, e.Ranks)
	}
	return fmt.Sprintf("lgreco: step %d: ranks %v disagree with rank 0 on the per-layer configuration (signatures %016x vs %016x); they would run collectives of different sizes",
		e.Step, e.Ranks, e.Signatures[e.Ranks[0]], e.Signatures[0])
}

// Unwrap returns ErrDesync.
func (e *DesyncError) Unwrap() error { return ErrDesync }

// CheckSignatures compares the ranks' signatures (indexed by rank) and returns
// a *DesyncError naming the ranks that differ from rank 0, or nil.
func CheckSignatures(step int64, sigs []uint64) error {
	var bad []int
	for r, s := range sigs {
		if s != sigs[0] {
			bad = append(bad, r)
		}
	}
	if bad == nil {
		return nil
	}
	return &DesyncError{Step: step, Signatures: slices.Clone(sigs), Ranks: bad}
}
