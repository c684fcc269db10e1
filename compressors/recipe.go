package compressors

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// Codec identifies a compression algorithm. Its value is the codec id in the
// wire format and must never change.
type Codec uint8

const (
	CodecNone     Codec = 1  // fp32, dense
	CodecFP16     Codec = 2  // IEEE binary16, dense
	CodecBF16     Codec = 3  // bfloat16, dense
	CodecTopK     Codec = 4  // exact top-k by magnitude
	CodecDGC      Codec = 5  // top-k with DGC's sampled threshold
	CodecRandomK  Codec = 6  // random-k, indices from a shared seed
	CodecSign     Codec = 7  // 1-bit sign with RMS scale
	CodecQSGD     Codec = 8  // QSGD stochastic quantization
	CodecPowerSGD Codec = 9  // PowerSGD rank-r factors
	CodecLossless Codec = 10 // exact fp32: Huffman-coded exponents, raw sign+mantissa
)

// String returns the codec's recipe name, e.g. "topk", or "Codec(N)" for an
// id that no codec is registered under.
func (c Codec) String() string {
	if d := lookup(c); d != nil {
		return d.name
	}
	return fmt.Sprintf("Codec(%d)", uint8(c))
}

// MaxQSGDLevels is the largest number of QSGD levels (so that a level and its
// sign fit in one byte).
const MaxQSGDLevels = 127

// MaxSignBlock is the largest scale block of "sign:B" (2^30 elements).
const MaxSignBlock = 1 << 30

// MaxKMeans is the largest number of centroids of the k-means stage
// ("+kmeans:K"), so that a cluster id fits in one byte.
const MaxKMeans = 256

// Recipe is a parsed compressor recipe such as "topk:0.001+zstd". The zero
// Recipe is not valid; obtain one from Parse. A Recipe is a small value, safe
// to copy and to use concurrently.
//
// The k-means stage (KMeans > 0, "topk:0.01+kmeans:16+zstd") replaces the
// values kept by topk or dgc by the means of at most KMeans clusters and
// sends the centroids plus a cluster id of ceil(log2 c) bits per value
// instead of the float32 values (c <= KMeans centroids actually used).
// Clustering is one-dimensional Lloyd on the sorted values, initialised at
// quantiles, deterministic on every rank (no randomness), at most 32
// iterations, stopping when the assignment no longer changes. Decoded
// values, and the values Selected reports to error feedback, are the
// float32 cluster means, so the residual stays exact and the stage is a
// contraction (‖x_kept − q‖² = ‖x_kept‖² − ‖q‖²). Compress returns
// ErrNonFinite if a kept value is NaN or Inf.
type Recipe struct {
	Codec   Codec
	Density float64 // topk, dgc, randomk: kept fraction in (0,1]
	Levels  int     // qsgd: number of levels s in [1, MaxQSGDLevels]
	Rank    int     // powersgd: target rank r >= 1
	KMeans  int     // topk, dgc: k-means stage with this many centroids in [1, MaxKMeans]; 0 = off
	// Block (sign only, "sign:B"): elements per scale block, a positive
	// multiple of 8 up to MaxSignBlock; 0 = one scale for the whole vector.
	// The two-phase scheme sends one worker scale per block of the padded
	// vector and one server scale per block and chunk (allreduce's
	// TwoPhaseLayout); the Sign frame one scale per block of the layer.
	Block int
	Zstd  bool // entropy stage (gathered codecs and sign only)
	// Args is the canonical argument text of a user codec (see Register):
	// "ARGS" in "mycodec:ARGS", "" if it has none. Built-in codecs keep
	// their parameters in the fields above and leave Args empty.
	Args string
}

// Parse parses a recipe: "none", "fp16", "bf16", "topk:D", "dgc:D",
// "randomk:D" (density D in (0,1]), "sign" or "sign:B" (one scale per
// block of B elements, B a positive multiple of 8), "qsgd:S" (levels S in
// [1,127]), "powersgd:R" (rank R >= 1) or "lossless", then optional stages
// in this order: "+kmeans:K" after topk or dgc (the kept values are
// replaced by the means of K clusters, K in [1,MaxKMeans]; see KMeans), and
// "+zstd" for the gathered lossy codecs and sign. A codec added with
// Register parses as "name" or "name:ARGS" (its ParseArgs decides) and
// takes no stage. Names are looked up in the codec registry, which is safe
// for concurrent use. Errors are *RecipeError values naming what is wrong;
// an unknown name lists the registered ones.
func Parse(recipe string) (Recipe, error) {
	bad := func(format string, args ...any) (Recipe, error) {
		return Recipe{}, &RecipeError{Recipe: recipe, Reason: fmt.Sprintf(format, args...)}
	}
	s := strings.TrimSpace(recipe)
	var r Recipe
	if i := strings.IndexByte(s, '+'); i >= 0 {
		stages := s[i+1:]
		s = s[:i]
		for more := true; more; {
			var stage string
			stage, stages, more = strings.Cut(stages, "+")
			sname, sarg, sHasArg := strings.Cut(stage, ":")
			switch sname {
			case "zstd":
				if r.Zstd {
					return bad("+zstd given twice")
				}
				if sHasArg {
					return bad("+zstd takes no parameter")
				}
				r.Zstd = true
			case "kmeans":
				if r.Zstd {
					return bad("+kmeans must come before +zstd (zstd is the last stage)")
				}
				if r.KMeans != 0 {
					return bad("+kmeans given twice")
				}
				if !sHasArg {
					return bad("kmeans needs a number of centroids, e.g. \"+kmeans:16\"")
				}
				v, err := strconv.Atoi(sarg)
				if err != nil {
					return bad("centroids %q is not an integer", sarg)
				}
				if v < 1 || v > MaxKMeans {
					return bad("centroids must be in [1,%d]", MaxKMeans)
				}
				r.KMeans = v
			case "":
				return bad("empty stage")
			default:
				return bad("unknown stage %q (want \"+kmeans:K\" or \"+zstd\")", stage)
			}
		}
	}
	name, arg, hasArg := strings.Cut(s, ":")
	d := lookupName(name)
	if d == nil {
		switch name {
		case "kmeans":
			return bad("kmeans is a stage after a sparsifier, e.g. \"topk:0.01+kmeans:16\"")
		case "":
			return bad("empty codec name")
		}
		names := Codecs()
		return bad("unknown codec %q (want %s or %s)", name, strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
	}
	r.Codec = d.id
	if d.args != nil {
		if err := d.args(&r, arg, hasArg); err != nil {
			return bad("%s", err.Error())
		}
	} else if hasArg {
		return bad("%s takes no parameter", name)
	}
	if r.KMeans != 0 && !d.kmeans {
		return bad("+kmeans clusters the values kept by a sparsifier: it follows %s only", namesWith(func(d *codecDef) bool { return d.kmeans }, "or"))
	}
	if r.Zstd && !d.zstd {
		return bad("+zstd applies to %s only", namesWith(func(d *codecDef) bool { return d.zstd }, "and"))
	}
	return r, nil
}

// MustParse is Parse for recipes known to be valid; it panics on error.
func MustParse(recipe string) Recipe {
	r, err := Parse(recipe)
	if err != nil {
		panic(err)
	}
	return r
}

// String returns the canonical recipe, e.g. "topk:0.001+zstd" or, for a
// user codec, "mycodec:ARGS".
func (r Recipe) String() string {
	s := r.Codec.String()
	if d := lookup(r.Codec); d != nil && d.format != nil {
		if a := d.format(r); a != "" {
			s += ":" + a
		}
	}
	if r.KMeans != 0 {
		s += "+kmeans:" + strconv.Itoa(r.KMeans)
	}
	if r.Zstd {
		s += "+zstd"
	}
	return s
}

// Aggregation is how payloads of this recipe combine across ranks (Reduce
// for a codec id that nothing is registered under, as for the zero Recipe).
func (r Recipe) Aggregation() Aggregation {
	if d := lookup(r.Codec); d != nil {
		return d.agg
	}
	return Reduce
}

// Biased reports whether the codec is biased (contractive, needs error
// feedback): topk, dgc (with or without k-means), sign, powersgd and the
// rounding of fp16/bf16. Random-k (scaled by n/k) and QSGD are unbiased;
// none and lossless are exact. A user codec is what its CodecSpec says.
func (r Recipe) Biased() bool {
	if d := lookup(r.Codec); d != nil {
		return d.biased
	}
	return true
}

// K returns the number of elements a sparse codec sends for a layer of n
// elements: ceil(Density·n) clamped to [0,n] (for dgc an upper bound). It is
// n for the other codecs.
func (r Recipe) K(n int) int {
	if d := lookup(r.Codec); d != nil && d.k != nil {
		return d.k(r, n)
	}
	return n
}

// kDensity is K of the codecs with a density.
func kDensity(r Recipe, n int) int { return kFor(r.Density, n) }

func kFor(density float64, n int) int {
	x := density * float64(n)
	// The relative slack keeps e.g. 0.001·25e6 (a hair above 25000 in float64)
	// at 25000 instead of 25001.
	k := int(math.Ceil(x - x*1e-12))
	return min(max(k, 0), n)
}

// qsgdWidth is the bits per element of qsgd:s (level bits plus a sign bit).
func qsgdWidth(levels int) int { return bits.Len(uint(levels)) + 1 }

// NominalBytes returns the size of Compress's output (frame included) for a
// layer of n elements without the entropy stage, which is what the
// size-only simulator charges. For dgc it is the upper bound (num_selects
// pairs); with "+kmeans:K" it is the bound with min(K,k) centroids; for
// lossless it is the bound (incompressible exponents), about 1.0003·4n. For
// powersgd the shape comes from WithShape among opts; without it a square
// layer (√n × √n) is assumed. For a user codec it is its CodecSpec's
// NominalBytes, given the options (invalid options are ignored). For a
// codec id that nothing is registered under it is FrameOverhead.
func (r Recipe) NominalBytes(n int, opts ...Option) int64 {
	d := lookup(r.Codec)
	if d == nil {
		return FrameOverhead
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			_ = o(&cfg)
		}
	}
	return d.nominal(r, n, cfg)
}

// Config holds the settings that Options change. New starts from the
// defaults (SampleRatio 0.01, Resample true, no shape, seed and rank 0);
// the zero Config is not meaningful.
type Config struct {
	Rows, Cols  int     // matrix shape (powersgd); Rows*Cols must equal n
	Seed        uint64  // seed shared by all ranks (random-k indices, PowerSGD Q)
	Rank        int     // this rank's index, for per-rank randomness (DGC, QSGD)
	SampleRatio float64 // dgc: fraction of elements sampled, clamped to [0.01,1]
	Resample    bool    // dgc: exact resample when over 1.3× (default true)
}

func defaultConfig() Config {
	return Config{SampleRatio: 0.01, Resample: true}
}

// Option configures New.
type Option func(*Config) error

// WithShape sets the matrix shape of the layer (PowerSGD); rows*cols must
// equal the layer's length.
func WithShape(rows, cols int) Option {
	return func(c *Config) error {
		if rows <= 0 || cols <= 0 {
			return fmt.Errorf("shape %dx%d must be positive", rows, cols)
		}
		c.Rows, c.Cols = rows, cols
		return nil
	}
}

// WithSeed sets the seed shared by all ranks (random-k indices, PowerSGD's
// initial Q). Ranks that exchange payloads must use the same seed.
func WithSeed(seed uint64) Option {
	return func(c *Config) error { c.Seed = seed; return nil }
}

// WithRank sets this rank's index for per-rank randomness (DGC sampling
// offsets, QSGD rounding).
func WithRank(rank int) Option {
	return func(c *Config) error {
		if rank < 0 {
			return fmt.Errorf("rank %d is negative", rank)
		}
		c.Rank = rank
		return nil
	}
}

// WithSampleRatio sets DGC's sampled fraction (default 0.01; clamped to
// [0.01,1] as in the reference code).
func WithSampleRatio(ratio float64) Option {
	return func(c *Config) error {
		if !(ratio > 0 && ratio <= 1) {
			return fmt.Errorf("sample ratio %v must be in (0,1]", ratio)
		}
		c.SampleRatio = ratio
		return nil
	}
}

// WithResample turns DGC's exact resample (when more than 1.3× the target
// count pass the threshold) on or off; off multiplies the threshold by 1.3
// instead, as in GRACE.
func WithResample(on bool) Option {
	return func(c *Config) error { c.Resample = on; return nil }
}

// New returns a compressor of this recipe for a layer of n elements. Errors
// wrap ErrRecipe.
func (r Recipe) New(n int, opts ...Option) (Compressor, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return nil, &RecipeError{Recipe: r.String(), Reason: err.Error()}
		}
	}
	bad := func(format string, args ...any) (Compressor, error) {
		return nil, &RecipeError{Recipe: r.String(), Reason: fmt.Sprintf(format, args...)}
	}
	if n < 0 || int64(n) > math.MaxUint32/4 {
		return bad("layer length %d out of range [0,%d]", n, math.MaxUint32/4)
	}
	// Divide rather than multiply: Rows*Cols may overflow to n.
	if cfg.Rows != 0 && (n%cfg.Rows != 0 || n/cfg.Rows != cfg.Cols) {
		return bad("shape %dx%d does not hold %d elements", cfg.Rows, cfg.Cols, n)
	}
	d := lookup(r.Codec)
	if d == nil {
		return bad("unknown codec %v", r.Codec)
	}
	if _, err := Parse(r.String()); err != nil {
		return nil, err
	}
	c, err := d.build(r, n, cfg)
	if err != nil {
		var re *RecipeError
		if errors.As(err, &re) {
			return nil, err
		}
		return bad("%s", err.Error())
	}
	return c, nil
}

// New parses recipe and returns a compressor for a layer of n elements.
func New(recipe string, n int, opts ...Option) (Compressor, error) {
	r, err := Parse(recipe)
	if err != nil {
		return nil, err
	}
	return r.New(n, opts...)
}
