package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/lgreco"
)

// NaNPolicy says what a step does when some rank's gradient holds a NaN
// or an Inf. The ranks always agree: each bucket's flags are exchanged before
// its data, so every rank takes the same decision.
type NaNPolicy uint8

const (
	// NaNError fails the step on every rank with a *NonFiniteError.
	NaNError NaNPolicy = iota
	// NaNSkip skips the step on every rank: the gradients are left as
	// they were, Ledger.Skipped is set and no error is returned.
	NaNSkip
	// NaNIgnore does not look: non-finite values go through the
	// collectives as they are (the exchange of flags and the scan of the
	// gradients are saved). Error feedback refuses them
	// (errorfeedback.ErrNonFinite), which then fails the step like any
	// local error; Mode disagreements go undetected.
	NaNIgnore
)

func (p NaNPolicy) String() string {
	switch p {
	case NaNError:
		return "error"
	case NaNSkip:
		return "skip"
	case NaNIgnore:
		return "ignore"
	}
	return fmt.Sprintf("NaNPolicy(%d)", uint8(p))
}

// ParseNaNPolicy returns the policy named s ("error", "skip" or "ignore",
// as String prints them), or an error that lists the names.
func ParseNaNPolicy(s string) (NaNPolicy, error) {
	for _, p := range []NaNPolicy{NaNError, NaNSkip, NaNIgnore} {
		if s == p.String() {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown NaN policy %q (want error, skip or ignore)", s)
}

// Config holds a Worker's settings. Get the defaults from DefaultConfig and
// change them with Options.
type Config struct {
	// Timeout bounds every single message: a peer that neither delivers a
	// message nor accepts one within Timeout fails the step on this rank
	// with a *transport.PeerError wrapping ErrTimeout. It must cover the
	// longest time a peer may legitimately spend between collectives
	// (compute skew between ranks). Default 60 s.
	Timeout time.Duration
	// BucketBytes is the size (fp32 bytes) up to which consecutive layers
	// with the same element-wise codec are fused into one collective.
	// 0 disables fusion. Default 25 MiB, as PyTorch DDP.
	BucketBytes int
	// NonFinite is the policy for NaN/Inf gradients. Default NaNError.
	NonFinite NaNPolicy
	// Codec and ErrorFeedback are the recipes of layers registered without
	// their own (compressors.Parse and errorfeedback.Parse syntax).
	// Defaults "none" and "none".
	Codec, ErrorFeedback string
	// Algorithm forces the all-reduce algorithm for dense (Reduce) layers,
	// by allreduce algorithm name ("ring", "tree", "halving-doubling").
	// Empty selects per bucket with CostModel (allreduce.Policy.Select).
	Algorithm string
	// CostModel is the alpha-beta-gamma model that selects the dense
	// algorithm and its segment count. Zero means allreduce.DefaultModel(),
	// whose per-message Overhead (25 µs, the CPU a libp2p or NATS message
	// costs on loopback) keeps large buckets in segments of a MiB or more;
	// a model with Overhead 0 pipelines as deeply as its link allows.
	CostModel allreduce.Model
	// Seed is the seed shared by all ranks (random-k indices, PowerSGD's Q).
	Seed uint64
	// SendsPerPeer bounds the sends in flight to one peer per collective.
	// Default 2.
	SendsPerPeer int
	// SegmentBytes, if > 0, fixes the pipelining of dense rings and trees:
	// a chunk is split into segments of about this many bytes (at most 64
	// per chunk). 0 (the default) takes the segment count from CostModel,
	// with segments of at least 16 KiB.
	SegmentBytes int
	// SkipSignature turns off the start-up comparison of layer lists.
	SkipSignature bool
	// NoAbortNotice turns off abort notices: by default a rank whose step
	// fails tells every peer (a tiny message on a reserved tag, collective
	// id 0, that each rank listens to from Start to Close), so the peers
	// fail the step in flight, or their next step if none is, at once with
	// a *transport.PeerError wrapping ErrAborted instead of waiting for
	// Config.Timeout.
	NoAbortNotice bool
	// Logger receives debug and error logs. Default slog.Default().
	Logger *slog.Logger

	// LGreCo turns on L-GreCo (package lgreco, docs/algorithms.md §4.2):
	// every layer whose codec has levels (top-k, dgc and random-k
	// densities, PowerSGD ranks, QSGD widths) gets its level chosen by
	// rank 0's dynamic program every Adjust steps, under the error budget
	// of the uniform default (the registered recipe); every rank switches
	// at the same step boundary, keeping error-feedback state. The
	// boundary exchanges run at the end of Wait for the next step (see
	// Wait). Ledger.Layers[i].Codec and Recipes report the active levels.
	LGreCo bool
	// LGreCoOptions configure L-GreCo's plan and schedule (e.g.
	// lgreco.WithSchedule, lgreco.WithAlpha). lgreco.WithSeed is always
	// Config.Seed. They are part of the start-up signature, through the
	// plan's hash, its schedule and every candidate's cost.
	LGreCoOptions []lgreco.Option
	// LGreCoLinkAware makes L-GreCo minimize the modelled communication
	// time of each layer's collective under CostModel
	// (lgreco.ModelCost) instead of bytes. A user CostFunc passed with
	// lgreco.WithCost in LGreCoOptions is replaced.
	LGreCoLinkAware bool
	// LGreCoCost, if not nil, builds L-GreCo's objective from the job's
	// world size and the layers as L-GreCo sees them (one lgreco.LayerOf
	// per registered layer, in registration order), e.g. the simulated
	// time on the job's topology:
	//
	//	func(world int, layers []lgreco.Layer) (lgreco.CostFunc, error) {
	//		return sim.LinkCost(topo, world, layers, nil)
	//	}
	//
	// Every rank must get the same costs (they are in the start-up
	// signature). It excludes LGreCoLinkAware.
	LGreCoCost LGreCoCostFactory
}

// LGreCoCostFactory builds the cost function of L-GreCo's DP for a job of
// world ranks and the given layers (see Config.LGreCoCost).
type LGreCoCostFactory func(world int, layers []lgreco.Layer) (lgreco.CostFunc, error)

// DefaultConfig returns the default settings (a fresh value every call).
func DefaultConfig() Config {
	return Config{
		Timeout:       60 * time.Second,
		BucketBytes:   25 << 20,
		NonFinite:     NaNError,
		Codec:         "none",
		ErrorFeedback: "none",
		SendsPerPeer:  2,
	}
}

func (c *Config) validate() error {
	switch {
	case c.Timeout < 0:
		return errors.New("negative timeout")
	case c.BucketBytes < 0:
		return errors.New("negative bucket size")
	case c.NonFinite > NaNIgnore:
		return fmt.Errorf("unknown non-finite policy %d", c.NonFinite)
	case c.SendsPerPeer < 1:
		return errors.New("SendsPerPeer must be at least 1")
	case c.SegmentBytes < 0:
		return errors.New("negative SegmentBytes")
	case c.LGreCoCost != nil && c.LGreCoLinkAware:
		return errors.New("LGreCoCost and LGreCoLinkAware are exclusive")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Option changes a Config. Nil options are ignored.
type Option func(*Config) error

// WithConfig replaces the whole configuration.
func WithConfig(c Config) Option { return func(d *Config) error { *d = c; return nil } }

// WithTimeout sets Config.Timeout.
func WithTimeout(d time.Duration) Option {
	return func(c *Config) error { c.Timeout = d; return nil }
}

// WithBucketBytes sets Config.BucketBytes.
func WithBucketBytes(n int) Option {
	return func(c *Config) error { c.BucketBytes = n; return nil }
}

// WithNaNPolicy sets Config.NonFinite.
func WithNaNPolicy(p NaNPolicy) Option {
	return func(c *Config) error { c.NonFinite = p; return nil }
}

// WithDefaultCodec sets the recipes of layers registered without their own.
func WithDefaultCodec(codec, errorFeedback string) Option {
	return func(c *Config) error { c.Codec, c.ErrorFeedback = codec, errorFeedback; return nil }
}

// WithAlgorithm forces the all-reduce algorithm of dense layers by name.
func WithAlgorithm(name string) Option {
	return func(c *Config) error { c.Algorithm = name; return nil }
}

// WithCostModel sets Config.CostModel.
func WithCostModel(m allreduce.Model) Option {
	return func(c *Config) error { c.CostModel = m; return nil }
}

// WithSeed sets the seed shared by all ranks.
func WithSeed(s uint64) Option { return func(c *Config) error { c.Seed = s; return nil } }

// WithSendsPerPeer sets Config.SendsPerPeer.
func WithSendsPerPeer(n int) Option {
	return func(c *Config) error { c.SendsPerPeer = n; return nil }
}

// WithSegmentBytes sets Config.SegmentBytes.
func WithSegmentBytes(n int) Option {
	return func(c *Config) error { c.SegmentBytes = n; return nil }
}

// WithLogger sets Config.Logger.
func WithLogger(l *slog.Logger) Option { return func(c *Config) error { c.Logger = l; return nil } }

// WithLGreCo turns on L-GreCo (Config.LGreCo) with the given plan options,
// e.g. lgreco.WithSchedule(start, adjust, accIter, delay).
func WithLGreCo(opts ...lgreco.Option) Option {
	return func(c *Config) error {
		c.LGreCo = true
		c.LGreCoOptions = append(c.LGreCoOptions, opts...)
		return nil
	}
}

// WithLGreCoLinkAware turns on L-GreCo with the link-aware objective
// (Config.LGreCoLinkAware) and the given plan options.
func WithLGreCoLinkAware(opts ...lgreco.Option) Option {
	return func(c *Config) error {
		c.LGreCo, c.LGreCoLinkAware = true, true
		c.LGreCoOptions = append(c.LGreCoOptions, opts...)
		return nil
	}
}

// WithLGreCoCost turns on L-GreCo with the objective built by f
// (Config.LGreCoCost) and the given plan options.
func WithLGreCoCost(f LGreCoCostFactory, opts ...lgreco.Option) Option {
	return func(c *Config) error {
		c.LGreCo, c.LGreCoCost = true, f
		c.LGreCoOptions = append(c.LGreCoOptions, opts...)
		return nil
	}
}

// LayerOption changes how one layer is communicated.
type LayerOption func(*layerSpec) error

// WithCodec sets the layer's compressor recipe, e.g. "topk:0.01".
func WithCodec(recipe string) LayerOption {
	return func(s *layerSpec) error { s.codec = recipe; return nil }
}

// WithErrorFeedback sets the layer's error-feedback recipe, e.g. "ef14".
func WithErrorFeedback(recipe string) LayerOption {
	return func(s *layerSpec) error { s.ef = recipe; return nil }
}

// CodecStage is one stretch of a layer's codec schedule (WithCodecSchedule):
// the compressor recipe Codec from step From on.
type CodecStage struct {
	From  int64
	Codec string
}

// WithCodecSchedule makes the layer run stages[i].Codec from step
// stages[i].From on, e.g. DGC's density warm-up (train.Plan.Stages):
//
//	worker.WithCodecSchedule(
//		worker.CodecStage{From: 0, Codec: "dgc:0.25"},
//		worker.CodecStage{From: 100, Codec: "dgc:0.0625"},
//		worker.CodecStage{From: 200, Codec: "dgc:0.001"})
//
// stages[0].From must be 0 and the From steps strictly increasing. The
// schedule replaces the codec of WithCodec and the Worker's default (its
// first stage is the layer's codec). Steps are counted by the Worker: every
// step that Wait returned from counts, skipped and ModeDense steps included.
// At the boundary before step From (at the end of Wait, before L-GreCo's
// boundary) every rank switches the layer with binding.Layer.SetCodec, the
// shared Config.Seed as the codec's seed, keeping the error-feedback state;
// a failure there breaks the Worker like a failed L-GreCo boundary.
//
// Every stage must resolve to the aggregation of the first (a switch between
// schemes would change what the error-feedback state means); Register
// refuses a schedule that does not. The schedule is part of the layer's
// signature line, so ranks with different schedules fail at Start with a
// *SignatureError. A scheduled layer is never fused with others. With
// L-GreCo, the default level of a scheduled layer is its last stage's
// recipe, and L-GreCo's start (lgreco.WithSchedule) must be at or after the
// last stage's From on every layer it tunes (two controllers of one layer's
// codec cannot both hold): Start refuses otherwise. A schedule of one stage
// (or of equal consecutive recipes) is merged into fewer stages.
func WithCodecSchedule(stages ...CodecStage) LayerOption {
	return func(s *layerSpec) error {
		if len(stages) == 0 {
			return errors.New("empty codec schedule")
		}
		if stages[0].From != 0 {
			return fmt.Errorf("codec schedule starts at step %d, not 0", stages[0].From)
		}
		for i := 1; i < len(stages); i++ {
			if stages[i].From <= stages[i-1].From {
				return fmt.Errorf("codec schedule: stage %d from step %d does not follow step %d", i, stages[i].From, stages[i-1].From)
			}
		}
		s.schedule = slices.Clone(stages)
		return nil
	}
}
