package lgreco

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/bits"
	"slices"
	"strconv"

	"github.com/slimgrad/slimgrad/compressors"
)

// Sentinel errors. Errors returned by this package wrap one of them.
var (
	// ErrConfig: an option or a layer description is invalid.
	ErrConfig = errors.New("lgreco: bad configuration")
	// ErrTable: a Table passed to Solve is malformed (a programmer error).
	ErrTable = errors.New("lgreco: bad table")
	// ErrCorrupt: an encoded Decision is truncated, fails its checksum or
	// holds values no encoder produces.
	ErrCorrupt = errors.New("lgreco: corrupt decision")
	// ErrMismatch: a well-formed Decision does not fit this rank's Plan or
	// Controller (another plan, a skipped or repeated version, a step in
	// the past).
	ErrMismatch = errors.New("lgreco: decision does not match")
	// ErrDesync: the ranks do not hold the same configuration (see
	// DesyncError).
	ErrDesync = errors.New("lgreco: ranks disagree on the configuration")
	// ErrStep: the Controller was driven out of order (a step boundary at
	// which a pending decision had to be applied was skipped).
	ErrStep = errors.New("lgreco: step out of order")
)

// Layer describes one layer (tensor) of the model to L-GreCo.
type Layer struct {
	// Name labels the layer in logs; it is part of the plan hash.
	Name string
	// Rows and Cols view the layer as a row-major matrix (PowerSGD): for a
	// tensor of shape [d0, d1, ...], Rows = d0 and Cols = d1·d2·… (Cols = 1
	// for a vector), the same view as package worker.
	Rows, Cols int
	// Default is the uniform default recipe (e.g. "powersgd:4"), the
	// reference of the error budget.
	Default compressors.Recipe
	// Candidates, if not nil, is the explicit candidate list (Default is
	// added if missing; PowerSGD ranks that fail Config.MinCompressionRate
	// are dropped). Nil means Grid(Default, Rows, Cols, cfg) for the
	// Plan's Config. Lists may mix families (e.g. a top-k grid and a rank
	// range): errors are comparable across families because they are all
	// ‖G − C(G)‖₂ on the same G.
	Candidates []compressors.Recipe
}

// LayerOf describes a tensor of the given shape with the matrix view package
// worker uses ([shape[0], product of the rest]; a vector is shape[0]×1).
// It panics on an empty shape.
func LayerOf(name string, shape []int, def compressors.Recipe) Layer {
	if len(shape) == 0 {
		panic("lgreco: LayerOf: empty shape")
	}
	rows, cols := shape[0], 1
	for _, d := range shape[1:] {
		cols *= d
	}
	return Layer{Name: name, Rows: rows, Cols: cols, Default: def}
}

// Elems is Rows·Cols.
func (l Layer) Elems() int { return l.Rows * l.Cols }

// Candidate is one compression level of one layer.
type Candidate struct {
	Recipe compressors.Recipe
	// Bytes is the size of one rank's encoded message for this layer: the
	// compressors' NominalBytes (a full frame, header and checksum
	// included) with the layer's shape. For PowerSGD ranks above the
	// matrix's rank it is the true rank's size plus 1 (docs/algorithms.md §4.2), so
	// that the DP prefers the true rank.
	Bytes int64
}

// ErrorMethod selects how low-rank (PowerSGD) errors are computed.
type ErrorMethod uint8

const (
	// ErrorAuto uses ErrorSVD when min(Rows, Cols) ≤ 512, else ErrorPower.
	ErrorAuto ErrorMethod = iota
	// ErrorSVD is exact: err(r) = sqrt(Σ_{i>r} σ_i²) from gonum's SVD.
	ErrorSVD
	// ErrorPower runs Config.PowerIters power iterations from a Gaussian Q
	// drawn from Config.Seed, as the reference's 'Power' method; it is a
	// deterministic (seeded) estimate that is never below the SVD error.
	ErrorPower
)

// String returns "auto", "svd" or "power".
func (m ErrorMethod) String() string {
	switch m {
	case ErrorAuto:
		return "auto"
	case ErrorSVD:
		return "svd"
	case ErrorPower:
		return "power"
	}
	return fmt.Sprintf("ErrorMethod(%d)", uint8(m))
}

// CostFunc gives the cost that the DP minimises for candidate c of layer
// layer, e.g. the modelled communication time in seconds of the collective
// that c's aggregation needs on the job's links (see ModelCost, or a
// function backed by the simulator's topology). It must be deterministic, and
// return a finite non-negative value; NaN or Inf make the candidate
// infeasible.
type CostFunc func(layer int, c Candidate) float64

// Config holds the settings of a Plan and its Controller. Get the defaults
// from DefaultConfig and change them with Options.
type Config struct {
	// Alpha scales the error budget: Σ err ≤ Alpha·Σ err(default). Default 1.
	Alpha float64
	// Squared puts the budget on squared errors, Σ err² ≤ Alpha·Σ err²(default):
	// the squared norm of the whole model's residual, which is what error
	// feedback's convergence bounds charge (the virtual iterate x − γe is
	// off by e). The reference sums the layers' unsquared norms, which
	// undercharges the largest layer's error: on the MNIST MLP a unit of
	// unsquared error cost 7.7× more final loss on the first layer than on
	// the third, a unit of squared error 1.6× (TestMNISTLGreCo). Default
	// true; false is the reference (docs/algorithms.md §4.2).
	Squared bool
	// Buckets is the DP's resolution. Default 10,000.
	Buckets int
	// TopKFactors are the multipliers of the default density that make the
	// top-k (and dgc, random-k) grid; densities are clamped to (0,1] and
	// candidates with the same k merged. Default 2^(i/2), i = −4..4
	// (0.25× to 4×).
	TopKFactors []float64
	// RankLow and RankHigh bound the PowerSGD ranks: r ∈ [⌊RankLow·r0⌋,
	// ⌈RankHigh·r0⌉] (at least 1). Defaults 0.5 and 2 (docs/algorithms.md §4.2).
	RankLow, RankHigh float64
	// QSGDBits is the ± range, in code bits, around the default QSGD
	// width bits.Len(s0)+1; every width w in range contributes its largest
	// level count 2^(w−1)−1 (widths 2..8). Default 2.
	QSGDBits int
	// MinCompressionRate drops PowerSGD candidates whose factors are not
	// this many times smaller than the matrix ((Rows+Cols)·r·rate ≥
	// Rows·Cols): package worker sends those layers dense, as PyTorch's
	// hook does. A layer whose default fails the rule is not tuned at
	// all. Default 2; 0 keeps every rank.
	MinCompressionRate float64
	// ErrorMethod and PowerIters choose how low-rank errors are computed.
	// Default ErrorAuto, 5 iterations.
	ErrorMethod ErrorMethod
	PowerIters  int
	// Seed is shared by all ranks: it seeds the power-iteration estimates
	// (rank 0) and, through LayerSeed, the re-drawn PowerSGD Q of every
	// rank after an adjustment.
	Seed uint64
	// Cost, if not nil, replaces wire bytes as the objective (the
	// link-aware variant); the error budget is unchanged.
	Cost CostFunc
	// Start is the first step of compressed training; adjustments happen
	// at steps Start + k·Adjust, k ≥ 1. Default 0.
	Start int64
	// Adjust is the number of steps between adjustments. Default 100.
	Adjust int64
	// AccIter is the number of steps before each adjustment whose
	// error-compensated gradients rank 0 averages. Default 10; at most
	// Adjust.
	AccIter int64
	// OneShot measures every layer's errors one-shot on the accumulated
	// error-compensated gradient, as docs/algorithms.md §4.2 describes, even where the
	// Controller would replay error feedback (Plan.Replayable). Default
	// false.
	OneShot bool
	// Ranks is the number of ranks whose mean gradient a PowerSGD layer's
	// residual follows: the job's world size (package worker and train's
	// simulator set it). Rank 0 replays PowerSGD's error feedback on an
	// exponential moving average of its own gradients with factor
	// β = (N−1)/(N+1), N = min(Ranks, 2·AccIter+1): for white gradient noise
	// that keeps 1/N of its variance, the noise level of the mean of N
	// ranks' gradients, at a lag of (N−1)/2 steps, at most AccIter (the
	// window the reference averages over). Rank 0's raw gradients carry N×
	// the mean's noise, which overstates the errors of the low ranks: on the
	// MNIST MLP with 8 ranks, smoothing took L-GreCo from 1.045× to 1.096×
	// fewer bytes than the uniform default, both at no loss cost
	// (TestMNISTLGreCo). Gathered codecs are replayed on the raw gradients:
	// each rank compresses its own. Default 1 (no smoothing).
	Ranks int
	// Delay is the number of steps between a decision (made at the start of
	// step S) and the step at which every rank switches (S + Delay), so
	// that the broadcast can overlap step S. Default 1; 0 switches at S.
	Delay int64
}

// DefaultConfig returns the default settings (a fresh value every call).
func DefaultConfig() Config {
	f := make([]float64, 0, 9)
	for i := -4; i <= 4; i++ {
		f = append(f, math.Pow(2, float64(i)/2))
	}
	return Config{
		Alpha: 1, Squared: true, Ranks: 1, Buckets: DefaultBuckets, TopKFactors: f,
		RankLow: 0.5, RankHigh: 2, QSGDBits: 2, MinCompressionRate: 2,
		ErrorMethod: ErrorAuto, PowerIters: 5,
		Adjust: 100, AccIter: 10, Delay: 1,
	}
}

// Option changes a Config. Nil options are ignored.
type Option func(*Config) error

// WithConfig replaces the whole configuration.
func WithConfig(c Config) Option { return func(d *Config) error { *d = c; return nil } }

// WithAlpha sets Config.Alpha.
func WithAlpha(a float64) Option { return func(c *Config) error { c.Alpha = a; return nil } }

// WithBuckets sets Config.Buckets.
func WithBuckets(b int) Option { return func(c *Config) error { c.Buckets = b; return nil } }

// WithCost sets the link-aware objective (Config.Cost).
func WithCost(f CostFunc) Option { return func(c *Config) error { c.Cost = f; return nil } }

// WithSchedule sets Config.Start, Adjust, AccIter and Delay.
func WithSchedule(start, adjust, accIter, delay int64) Option {
	return func(c *Config) error {
		c.Start, c.Adjust, c.AccIter, c.Delay = start, adjust, accIter, delay
		return nil
	}
}

// WithRanks sets Config.Ranks.
func WithRanks(n int) Option { return func(c *Config) error { c.Ranks = n; return nil } }

// WithSquared sets Config.Squared.
func WithSquared(on bool) Option { return func(c *Config) error { c.Squared = on; return nil } }

// WithOneShot sets Config.OneShot.
func WithOneShot(on bool) Option { return func(c *Config) error { c.OneShot = on; return nil } }

// WithSeed sets Config.Seed.
func WithSeed(s uint64) Option { return func(c *Config) error { c.Seed = s; return nil } }

// WithErrorMethod sets Config.ErrorMethod.
func WithErrorMethod(m ErrorMethod) Option {
	return func(c *Config) error { c.ErrorMethod = m; return nil }
}

// smoothing is the moving-average factor of PowerSGD's replay (Ranks): 0
// for one rank.
func (c *Config) smoothing() float64 {
	n := float64(min(int64(c.Ranks), 2*c.AccIter+1))
	if n <= 1 {
		return 0
	}
	return (n - 1) / (n + 1)
}

func (c *Config) validate() error {
	switch {
	case !(c.Alpha > 0) || math.IsInf(c.Alpha, 0):
		return fmt.Errorf("alpha %v must be positive and finite", c.Alpha)
	case c.Buckets < 1 || c.Buckets > 1<<24:
		return fmt.Errorf("buckets %d out of [1, 2^24]", c.Buckets)
	case c.Ranks < 1:
		return fmt.Errorf("ranks %d: want at least 1", c.Ranks)
	case !(c.RankLow > 0) || !(c.RankHigh >= c.RankLow) || math.IsInf(c.RankHigh, 0):
		return fmt.Errorf("rank range [%v, %v] invalid", c.RankLow, c.RankHigh)
	case c.QSGDBits < 0 || c.QSGDBits > 6:
		return fmt.Errorf("qsgd bit range %d out of [0,6]", c.QSGDBits)
	case c.MinCompressionRate < 0 || math.IsNaN(c.MinCompressionRate):
		return fmt.Errorf("min compression rate %v negative", c.MinCompressionRate)
	case c.ErrorMethod > ErrorPower:
		return fmt.Errorf("unknown error method %d", c.ErrorMethod)
	case c.PowerIters < 1:
		return fmt.Errorf("power iterations %d < 1", c.PowerIters)
	case c.Adjust < 1:
		return fmt.Errorf("adjust every %d steps; must be ≥ 1", c.Adjust)
	case c.AccIter < 1 || c.AccIter > c.Adjust:
		return fmt.Errorf("acc_iter %d out of [1, adjust=%d]", c.AccIter, c.Adjust)
	case c.Delay < 0 || c.Start < 0:
		return fmt.Errorf("negative start %d or delay %d", c.Start, c.Delay)
	case c.Delay >= c.Adjust:
		return fmt.Errorf("delay %d not below adjust %d: a decision must apply before the next one is made", c.Delay, c.Adjust)
	}
	for _, f := range c.TopKFactors {
		if !(f > 0) || math.IsInf(f, 0) {
			return fmt.Errorf("top-k factor %v must be positive", f)
		}
	}
	return nil
}

// Grid returns the default candidate list of a layer whose uniform default is
// def, sorted by increasing size with def included: the top-k (dgc, random-k)
// density grid def.Density·TopKFactors (rounded to 3 significant digits); the PowerSGD ranks
// [⌊RankLow·r0⌋, ⌈RankHigh·r0⌉], capped at max(r0, min(rows, cols)), that
// pass MinCompressionRate; the QSGD level
// counts of widths bits.Len(s0)+1 ± QSGDBits. Other codecs (none, fp16,
// bf16, sign) have only def. The entropy stage flag of def is kept.
func Grid(def compressors.Recipe, rows, cols int, cfg Config) []compressors.Recipe {
	n := rows * cols
	out := []compressors.Recipe{def}
	switch def.Codec {
	case compressors.CodecTopK, compressors.CodecDGC, compressors.CodecRandomK:
		for _, f := range cfg.TopKFactors {
			r := def
			// Three significant digits keep the recipes readable.
			r.Density, _ = strconv.ParseFloat(strconv.FormatFloat(min(def.Density*f, 1), 'g', 3, 64), 64)
			if f == 1 {
				r.Density = def.Density
			}
			out = append(out, r)
		}
	case compressors.CodecPowerSGD:
		// A rank above min(rows, cols) is that rank again (PowerSGD caps
		// it), so the range stops there: a huge RankHigh neither loops for
		// long nor converts an out-of-range float to int.
		top := float64(max(def.Rank, min(rows, cols), 1))
		lo := max(1, int(min(math.Floor(cfg.RankLow*float64(def.Rank)), top)))
		hi := max(lo, int(min(math.Ceil(cfg.RankHigh*float64(def.Rank)), top)))
		for k := lo; k <= hi; k++ {
			r := def
			r.Rank = k
			if k == def.Rank || lowRankOK(rows, cols, k, cfg.MinCompressionRate) {
				out = append(out, r)
			}
		}
	case compressors.CodecQSGD:
		w0 := bits.Len(uint(def.Levels)) + 1
		for w := max(2, w0-cfg.QSGDBits); w <= min(8, w0+cfg.QSGDBits); w++ {
			r := def
			r.Levels = 1<<(w-1) - 1
			out = append(out, r)
		}
	}
	return normalize(out, n, rows, cols)
}

// lowRankOK is package worker's rule: PowerSGD only when the factors are
// rate times smaller than the matrix.
func lowRankOK(rows, cols, r int, rate float64) bool {
	return float64((rows+cols)*r)*rate < float64(rows*cols)
}

// normalize dedupes candidates (same recipe, or the same k for sparse codecs:
// the first one wins; callers put the default first) and sorts them stably by
// size.
func normalize(in []compressors.Recipe, n, rows, cols int) []compressors.Recipe {
	type item struct {
		r     compressors.Recipe
		bytes int64
		key   string
	}
	var items []item
	seen := map[string]bool{}
	for _, r := range in {
		key := r.String()
		switch r.Codec {
		case compressors.CodecTopK, compressors.CodecDGC, compressors.CodecRandomK:
			key = fmt.Sprintf("%s/k=%d/z=%v", r.Codec, r.K(n), r.Zstd)
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		items = append(items, item{r, r.NominalBytes(n, compressors.WithShape(rows, cols)), key})
	}
	slices.SortStableFunc(items, func(a, b item) int {
		if a.bytes != b.bytes {
			if a.bytes < b.bytes {
				return -1
			}
			return 1
		}
		return 0
	})
	out := make([]compressors.Recipe, len(items))
	for i, it := range items {
		out[i] = it.r
	}
	return out
}

// planLayer is one layer of a Plan with its resolved candidates.
type planLayer struct {
	Layer
	cands  []Candidate
	cost   []float64 // the DP's objective per candidate
	def    int       // index of Default in cands
	tuned  bool      // false: a single candidate, not part of the DP
	replay bool      // replayable: see Plan.Replayable
}

// Plan is the immutable description of a tuning problem: the layers, their
// candidate lists with sizes and costs, and the settings. Every rank builds
// the same Plan from the same layers and options; its Hash is carried by
// every Decision so that a rank with another plan refuses it. A Plan is safe
// for concurrent use.
type Plan struct {
	cfg     Config
	layers  []planLayer
	tuned   []int // indices of the tuned layers, in order
	nreplay int   // number of replayable layers
	hash    uint64
}

// NewPlan resolves the candidate lists of layers under the options and
// computes the per-candidate sizes and, with a CostFunc, costs. Errors wrap
// ErrConfig.
func NewPlan(layers []Layer, opts ...Option) (*Plan, error) {
	cfg := DefaultConfig()
	for _, o := range opts {
		if o != nil {
			if err := o(&cfg); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrConfig, err)
			}
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	p := &Plan{cfg: cfg, layers: make([]planLayer, len(layers))}
	for i, l := range layers {
		if l.Rows < 1 || l.Cols < 1 || l.Rows > math.MaxInt32/l.Cols {
			return nil, fmt.Errorf("%w: layer %d (%s) has shape %d×%d", ErrConfig, i, l.Name, l.Rows, l.Cols)
		}
		if _, err := compressors.Parse(l.Default.String()); err != nil || l.Default.Codec == 0 {
			return nil, fmt.Errorf("%w: layer %d (%s) default recipe: %v", ErrConfig, i, l.Name, err)
		}
		pl := planLayer{Layer: l}
		var recipes []compressors.Recipe
		lowRankDense := l.Default.Codec == compressors.CodecPowerSGD &&
			cfg.MinCompressionRate > 0 && !lowRankOK(l.Rows, l.Cols, l.Default.Rank, cfg.MinCompressionRate)
		switch {
		case lowRankDense:
			// Sent dense by the worker; not tuned (docs/algorithms.md §4.2 "excluded").
			recipes = []compressors.Recipe{l.Default}
		case l.Candidates != nil:
			list := []compressors.Recipe{l.Default}
			for _, r := range l.Candidates {
				// The worker would send these dense: drop them, as Grid does.
				if r.Codec == compressors.CodecPowerSGD && cfg.MinCompressionRate > 0 && !lowRankOK(l.Rows, l.Cols, r.Rank, cfg.MinCompressionRate) {
					continue
				}
				list = append(list, r)
			}
			recipes = normalize(list, l.Elems(), l.Rows, l.Cols)
		default:
			recipes = Grid(l.Default, l.Rows, l.Cols, cfg)
		}
		pl.def = -1
		for c, r := range recipes {
			if _, err := compressors.Parse(r.String()); err != nil {
				return nil, fmt.Errorf("%w: layer %d (%s) candidate %s: %v", ErrConfig, i, l.Name, r, err)
			}
			cand := Candidate{Recipe: r, Bytes: candidateBytes(r, l.Rows, l.Cols)}
			pl.cands = append(pl.cands, cand)
			if r == l.Default {
				pl.def = c
			}
		}
		if pl.def < 0 {
			panic("lgreco: internal error: default lost in normalize")
		}
		pl.tuned = len(pl.cands) > 1
		pl.replay = pl.tuned && !cfg.OneShot
		for _, cand := range pl.cands {
			if !replayable(cand.Recipe) {
				pl.replay = false
			}
		}
		pl.cost = make([]float64, len(pl.cands))
		for c, cand := range pl.cands {
			if cfg.Cost != nil {
				pl.cost[c] = cfg.Cost(i, cand)
			} else {
				pl.cost[c] = float64(cand.Bytes)
			}
		}
		if pl.tuned {
			p.tuned = append(p.tuned, i)
		}
		if pl.replay {
			p.nreplay++
		}
		p.layers[i] = pl
	}
	p.hash = p.computeHash()
	return p, nil
}

// replayable reports whether error feedback can be replayed with r on the
// deciding rank: a codec without a memory of its own whose Compress is a
// function of its input (and its own seeded stream).
//
// Gathered codecs: each rank compresses its own error-compensated gradient,
// so a replay on rank 0's gradients is rank 0's residual exactly.
//
// PowerSGD: its factors are averaged over the ranks before a residual is
// formed, so the replay (EF14 over the single-rank Compress on rank 0's
// gradients) is an estimate: the residual that matters follows error
// feedback on the mean gradient, which rank 0 does not have; rank 0's
// stream has the same signal and N× the gradient noise, which inflates the
// errors of the lowest ranks where noise dominates (the safe side). The
// real residual of rank 0 is no better a measure: it also carries a random
// walk of rank 0's gradient noise (the part that cancels across ranks),
// which grows without bound and is nearly flat across ranks. On the MNIST
// MLP the replayed errors gave stable decisions where the one-shot ones on
// rank 0's (or even the mean) error-compensated gradient flipped between
// unrelated choices from one decision to the next.
func replayable(r compressors.Recipe) bool {
	switch r.Codec {
	case compressors.CodecDGC, compressors.CodecLossless:
		return false
	case compressors.CodecPowerSGD:
		return true
	}
	return r.Aggregation() == compressors.Gather
}

// candidateBytes is the wire size of one rank's message (see Candidate.Bytes).
func candidateBytes(r compressors.Recipe, rows, cols int) int64 {
	b := r.NominalBytes(rows*cols, compressors.WithShape(rows, cols))
	if r.Codec == compressors.CodecPowerSGD && r.Rank > min(rows, cols) {
		b++
	}
	return b
}

func (p *Plan) computeHash() uint64 {
	h := fnv.New64a()
	var buf []byte
	put := func(v uint64) { buf = binary.LittleEndian.AppendUint64(buf[:0], v); h.Write(buf) }
	put(uint64(len(p.layers)))
	put(math.Float64bits(p.cfg.Alpha))
	put(uint64(p.cfg.Buckets))
	for _, l := range p.layers {
		put(uint64(len(l.Name)))
		h.Write([]byte(l.Name))
		put(uint64(l.Rows))
		put(uint64(l.Cols))
		put(uint64(l.def))
		put(uint64(len(l.cands)))
		for _, c := range l.cands {
			s := c.Recipe.String()
			put(uint64(len(s)))
			h.Write([]byte(s))
		}
	}
	return h.Sum64()
}

// Config returns the plan's settings.
func (p *Plan) Config() Config { return p.cfg }

// Hash identifies the plan (layer names and shapes, candidate recipes,
// defaults, alpha, buckets); ranks must agree on it.
func (p *Plan) Hash() uint64 { return p.hash }

// Layers is the number of layers.
func (p *Plan) Layers() int { return len(p.layers) }

// Layer returns layer l as given to NewPlan.
func (p *Plan) Layer(l int) Layer { return p.layers[l].Layer }

// Tuned reports whether layer l takes part in the DP (it has more than one
// candidate). Untuned layers always use their default.
func (p *Plan) Tuned(l int) bool { return p.layers[l].tuned }

// hasReplay reports whether some layer is replayable.
func (p *Plan) hasReplay() bool { return p.nreplay > 0 }

// Replayable reports whether the Controller replays layer l's error feedback
// when it is given the layer's residual (see Controller.Observe): a tuned
// layer whose candidates are all gathered codecs without a memory of their
// own (top-k, random-k, QSGD; not DGC, whose memory is its momentum
// correction), or all PowerSGD ranks (an estimate from rank 0's gradients
// alone, see replayable), unless Config.OneShot is set.
// Replayed, err(c) is the norm of the residual that c itself would carry
// under error feedback, rather than ‖G − C_c(G)‖ on the residual that the
// active choice left; other layers are measured one-shot, as docs/algorithms.md §4.2
// describes. Only the deciding rank measures, so this does not enter the
// plan hash.
func (p *Plan) Replayable(l int) bool { return p.layers[l].replay }

// Candidates returns layer l's candidates, sorted by increasing Bytes. The
// slice is shared: do not modify it.
func (p *Plan) Candidates(l int) []Candidate { return p.layers[l].cands }

// Cost returns the DP objective of candidate c of layer l: its Bytes, or the
// CostFunc's value with the link-aware objective.
func (p *Plan) Cost(l, c int) float64 { return p.layers[l].cost[c] }

// Default returns the uniform default choice (a fresh slice).
func (p *Plan) Default() []int {
	d := make([]int, len(p.layers))
	for i, l := range p.layers {
		d[i] = l.def
	}
	return d
}

// Recipes maps a choice (a candidate index per layer) to recipes.
// It panics if choice does not fit the plan.
func (p *Plan) Recipes(choice []int) []compressors.Recipe {
	if len(choice) != len(p.layers) {
		panic("lgreco: choice length does not match the plan")
	}
	out := make([]compressors.Recipe, len(choice))
	for l, c := range choice {
		out[l] = p.layers[l].cands[c].Recipe
	}
	return out
}

// Bytes is Σ Candidates(l)[choice[l]].Bytes: one rank's message bytes per step.
func (p *Plan) Bytes(choice []int) int64 {
	var s int64
	for l, c := range choice {
		s += p.layers[l].cands[c].Bytes
	}
	return s
}

// TotalCost is Σ Cost(l, choice[l]) in float64, in layer order.
func (p *Plan) TotalCost(choice []int) float64 {
	var s float64
	for l, c := range choice {
		s += p.layers[l].cost[c]
	}
	return s
}

// validChoice reports whether choice fits the plan.
func (p *Plan) validChoice(choice []int) error {
	if len(choice) != len(p.layers) {
		return fmt.Errorf("%d layers, plan has %d", len(choice), len(p.layers))
	}
	for l, c := range choice {
		if c < 0 || c >= len(p.layers[l].cands) {
			return fmt.Errorf("layer %d candidate %d out of range [0,%d)", l, c, len(p.layers[l].cands))
		}
	}
	return nil
}
