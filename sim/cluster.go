package sim

import (
	"context"
	"errors"
	"fmt"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/binding"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
)

// LayerSpec describes one layer (or fused bucket of layers) of a simulated
// training step.
type LayerSpec struct {
	Name string
	// Elems is the vector length; Rows×Cols its matrix shape (PowerSGD).
	Elems, Rows, Cols int
	// Codec and EF are the layer's compressor and error feedback; the codec's
	// aggregation picks the scheme (see package binding).
	Codec compressors.Recipe
	EF    errorfeedback.Recipe
	// Algorithm is the all-reduce of dense (Reduce) codecs: AlgRing,
	// AlgTree or AlgHalvingDoubling. Segments pipelines it (0 means 1).
	Algorithm allreduce.Algorithm
	Segments  int
	// Start is when the layer's gradient is ready in the step (seconds);
	// with a backward pass, later layers' collectives start earlier.
	Start float64
}

// ClusterConfig configures a Cluster.
type ClusterConfig struct {
	Topology *Topology
	World    int
	Layers   []LayerSpec
	// Seed is shared by all ranks (random-k indices, PowerSGD's Q) and
	// seeds the simulator's jitter.
	Seed uint64
	// Options tunes the simulation (placement, calibration, jitter). Its
	// Seed is replaced by Seed; Trace applies to every step.
	Options Options
}

// ErrCluster is wrapped by every configuration error of NewCluster and Step.
var ErrCluster = errors.New("sim: bad cluster")

// Cluster simulates data-parallel training steps in payload mode: World
// virtual ranks, each with the same per-layer codec and error-feedback
// state as a real worker (package binding), exchanging real payloads
// over the simulated topology. Results are bit-identical to the same step
// run by package worker over a real transport; sizes are the real payload
// sizes and times come from the network and compute models.
//
// A Cluster keeps per-rank error-feedback state between steps. It is not
// safe for concurrent use.
type Cluster struct {
	cfg    ClusterConfig
	layers [][]*binding.Layer // [rank][layer]
	sim    *Simulator
	colls  []Collective
	base   *Result
	dense  int
}

// NewCluster builds every rank's layers. It returns an error wrapping
// ErrCluster (or binding.ErrSpec) for an invalid configuration.
func NewCluster(cfg ClusterConfig) (*Cluster, error) {
	if cfg.Topology == nil || cfg.World < 1 || len(cfg.Layers) == 0 {
		return nil, fmt.Errorf("%w: need a topology, World >= 1 and at least one layer", ErrCluster)
	}
	s, err := NewSimulator(cfg.Topology)
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, sim: s, layers: make([][]*binding.Layer, cfg.World)}
	for r := range c.layers {
		c.layers[r] = make([]*binding.Layer, len(cfg.Layers))
		for l, ls := range cfg.Layers {
			al, err := binding.New(binding.Spec{
				Codec: ls.Codec, EF: ls.EF, Elems: ls.Elems, Rows: ls.Rows, Cols: ls.Cols,
				World: cfg.World, Rank: r, Seed: cfg.Seed, Algorithm: ls.Algorithm, Segments: ls.Segments,
			})
			if err != nil {
				return nil, fmt.Errorf("%w: layer %d (%s): %w", ErrCluster, l, ls.Name, err)
			}
			c.layers[r][l] = al
		}
	}
	c.colls = make([]Collective, len(cfg.Layers))
	for l, ls := range cfg.Layers {
		progs := make([]*allreduce.Program, cfg.World)
		for r := range progs {
			progs[r] = c.layers[r][l].Program()
		}
		c.colls[l] = Collective{Name: ls.Name, Programs: progs, Executors: make([]allreduce.Executor, cfg.World), Start: ls.Start, Prologue: prologueOf(ls), Recipe: ls.Codec.String()}
		c.dense += ls.Elems
	}
	return c, nil
}

// prologueOf models the work a layer does before its program: error
// feedback with a lossy element codec (encode then decode the whole
// vector) for dense layers. Gathered, sign and low-rank schemes encode
// inside their programs.
func prologueOf(ls LayerSpec) Prologue {
	if ls.Codec.Aggregation() == compressors.Reduce && ls.EF.Kind != errorfeedback.KindNone {
		return Prologue{Fn: allreduce.FnEncode, Elems: int64(ls.Elems)}
	}
	return Prologue{}
}

// Layers returns rank r's layers (for inspection: codec, feedback, scheme).
func (c *Cluster) Layers(rank int) []*binding.Layer { return c.layers[rank] }

// Step runs one training step. in[r][l] is rank r's vector for layer l (not
// modified); out[r][l] (same lengths) receives rank r's update direction:
// the averaged decompressed vector after error feedback's Finish. Every
// rank's out is bit-identical. The StepResult holds the simulated cost and
// that of the dense fp32 ring baseline on the same topology.
//
// If Step fails, error-feedback state may be partly updated; the Cluster
// should not be used for further steps.
func (c *Cluster) Step(ctx context.Context, in, out [][][]float32) (*StepResult, error) {
	W, L := c.cfg.World, len(c.cfg.Layers)
	if len(in) != W || len(out) != W {
		return nil, fmt.Errorf("%w: %d/%d rank vectors for %d ranks", ErrCluster, len(in), len(out), W)
	}
	for r := 0; r < W; r++ {
		if len(in[r]) != L || len(out[r]) != L {
			return nil, fmt.Errorf("%w: rank %d has %d/%d layers, want %d", ErrCluster, r, len(in[r]), len(out[r]), L)
		}
		for l, al := range c.layers[r] {
			n := c.cfg.Layers[l].Elems
			if len(in[r][l]) != n || len(out[r][l]) != n {
				return nil, fmt.Errorf("%w: rank %d layer %d has %d/%d elements, want %d", ErrCluster, r, l, len(in[r][l]), len(out[r][l]), n)
			}
			copy(out[r][l], in[r][l])
			if err := al.Begin(out[r][l]); err != nil {
				return nil, fmt.Errorf("sim: rank %d layer %d: %w", r, l, err)
			}
			c.colls[l].Executors[r] = al.Exec()
		}
	}
	opts := c.cfg.Options
	opts.Seed = c.cfg.Seed
	res, err := c.sim.Run(ctx, c.colls, &opts)
	if err != nil {
		return nil, err
	}
	for r := 0; r < W; r++ {
		for l, al := range c.layers[r] {
			al.End(out[r][l])
		}
	}
	for r := 0; r < W; r++ {
		for l, al := range c.layers[r] {
			al.Finish(out[r][l])
		}
	}
	if c.base == nil {
		if c.base, err = Baseline(ctx, c.cfg.Topology, W, c.dense, &opts); err != nil {
			return nil, fmt.Errorf("sim: baseline: %w", err)
		}
	}
	return &StepResult{Result: res, Baseline: c.base, DenseElems: c.dense}, nil
}

// SizeOnlyLayer returns the programs of one layer's scheme for world ranks
// without data, for size-only runs of compressed steps at large World, and
// the size in bytes of one rank's data-dependent payload (the codec's
// nominal size) for Options.SizeHint. The scheme is the one package
// package binding picks for the codec.
func SizeOnlyLayer(ls LayerSpec, world int) (Collective, int64, error) {
	p := allreduce.Params{World: world, Elems: ls.Elems, Segments: ls.Segments, Average: true}
	var alg allreduce.Algorithm
	var nominal int64
	switch ls.Codec.Aggregation() {
	case compressors.Reduce:
		alg = ls.Algorithm
		switch ls.Codec.Codec {
		case compressors.CodecFP16, compressors.CodecBF16:
			p.ElemBytes = 2
		}
		nominal = int64(ls.Elems * max(p.ElemBytes, 4))
	case compressors.Gather:
		alg, p.Segments = allreduce.AlgSparseGather, 0
		nominal = ls.Codec.NominalBytes(ls.Elems)
	case compressors.TwoPhase:
		alg, p.Segments, p.SignBlock = allreduce.AlgTwoPhaseSign, 0, ls.Codec.Block
		lay, err := allreduce.NewTwoPhaseLayout(ls.Elems, world, ls.Codec.Block)
		if err != nil {
			return Collective{}, 0, fmt.Errorf("%w: layer %s: %v", ErrCluster, ls.Name, err)
		}
		nominal = int64(lay.PayloadBytes())
	case compressors.LowRank:
		alg = allreduce.AlgLowRank
		p.Rows, p.Cols, p.Components = ls.Rows, ls.Cols, ls.Codec.Rank
		if ls.Rows*ls.Cols != ls.Elems || ls.Rows < 1 {
			return Collective{}, 0, fmt.Errorf("%w: layer %s: powersgd needs Rows×Cols == Elems", ErrCluster, ls.Name)
		}
	default:
		return Collective{}, 0, fmt.Errorf("%w: layer %s: unknown aggregation", ErrCluster, ls.Name)
	}
	progs, err := Programs(alg, p)
	if err != nil {
		return Collective{}, 0, err
	}
	return Collective{Name: ls.Name, Programs: progs, Start: ls.Start, Prologue: prologueOf(ls), Recipe: ls.Codec.String()}, nominal, nil
}
