// Package engine is the plan of a data-parallel step, shared by every driver:
// which layers share a bucket, and for every bucket the collective that each
// rank runs (a binding.Spec: codec, error feedback, algorithm, segments,
// shape). It is I/O-free and deterministic: every rank that gives it the same
// layers and Policy gets the same buckets, and so do the real worker (package
// worker), the simulator's payload mode (train.Sim) and its size-only mode.
//
// A layer's recipes are resolved once (NewLayer): the codec schedule, the
// error feedback that the codec's scheme accepts, and PowerSGD on a matrix
// too small to gain replaced by dense fp32. Plan then fuses layers and
// chooses each bucket's scheme with SchemeFor (binding.SchemeFor is the
// mapping from a codec's aggregation to its program; SchemeFor adds the
// choice of dense algorithm and pipelining that Policy describes).
package engine

import (
	"fmt"
	"slices"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/binding"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
)

// CodecStage is one stage of a layer's codec schedule: the layer runs Codec
// (a compressors.Parse recipe) from step From on.
type CodecStage struct {
	From  int64
	Codec string
}

// Stage is a resolved CodecStage.
type Stage struct {
	From  int64
	Codec compressors.Recipe
}

// Layer is one registered tensor with its resolved recipes. Build it with
// NewLayer; a Layer is a value that Plan only reads.
type Layer struct {
	Name  string
	Shape []int
	Elems int
	// Codec is the codec the layer starts with (the first stage's, if it
	// has a schedule); EF its error feedback.
	Codec compressors.Recipe
	EF    errorfeedback.Recipe
	// Stages is the codec schedule: nil unless the layer changes codec
	// (then at least two stages, the first from step 0 with Codec, every
	// stage with Codec's aggregation, consecutive recipes different).
	Stages []Stage
}

// NewLayer resolves a layer of the given shape with codec and error feedback
// recipes (compressors.Parse and errorfeedback.Parse syntax) and an optional
// codec schedule, which replaces codec when given (its first stage is the
// codec from step 0). It returns an error for a recipe that does not parse,
// a schedule stage that changes the aggregation (the state would change
// meaning), and error feedback that the codec's scheme does not take (the
// two-phase sign codec keeps its own errors; PowerSGD takes none or ef14).
// PowerSGD on a matrix where rank·(rows+cols)·2 ≥ rows·cols, whose factors
// would be no smaller than the layer, resolves to "none".
func NewLayer(name string, shape []int, codec, ef string, schedule []CodecStage) (Layer, error) {
	l := Layer{Name: name, Shape: slices.Clone(shape), Elems: 1}
	for _, d := range shape {
		l.Elems *= d
	}
	if len(schedule) > 0 {
		codec = schedule[0].Codec
	}
	r, err := resolveCodec(codec, shape)
	if err != nil {
		return l, err
	}
	e, err := errorfeedback.Parse(ef)
	if err != nil {
		return l, err
	}
	if len(schedule) > 0 {
		stages := []Stage{{From: 0, Codec: r}}
		for _, cs := range schedule[1:] {
			sr, err := resolveCodec(cs.Codec, shape)
			if err != nil {
				return l, fmt.Errorf("codec schedule, stage from step %d: %w", cs.From, err)
			}
			if sr.Aggregation() != r.Aggregation() {
				return l, fmt.Errorf("codec schedule: stage from step %d runs %s (%v), the layer starts with %s (%v): every stage must keep the aggregation",
					cs.From, sr, sr.Aggregation(), r, r.Aggregation())
			}
			if sr.String() != stages[len(stages)-1].Codec.String() {
				stages = append(stages, Stage{From: cs.From, Codec: sr})
			}
		}
		if len(stages) > 1 {
			l.Stages = stages
		}
	}
	switch r.Aggregation() {
	case compressors.TwoPhase:
		if e.Kind != errorfeedback.KindNone {
			return l, fmt.Errorf("codec %s keeps its own worker and server error; error feedback must be none, not %s", r, e)
		}
	case compressors.LowRank:
		if e.Kind != errorfeedback.KindNone && e.Kind != errorfeedback.KindEF14 {
			return l, fmt.Errorf("codec %s supports error feedback none or ef14, not %s", r, e)
		}
	}
	l.Codec, l.EF = r, e
	return l, nil
}

// SwitchAt returns the codec that the layer's schedule switches to at step,
// and false when no stage starts there (step 0 is the codec the layer is
// built with, never a switch). Every driver switches its layers with it at
// the start of each step.
func (l *Layer) SwitchAt(step int64) (compressors.Recipe, bool) {
	if step == 0 {
		return compressors.Recipe{}, false
	}
	for _, st := range l.Stages {
		if st.From == step {
			return st.Codec, true
		}
	}
	return compressors.Recipe{}, false
}

// resolveCodec parses codec for a layer of the given shape: PowerSGD on a
// matrix too small to gain is "none".
func resolveCodec(codec string, shape []int) (compressors.Recipe, error) {
	r, err := compressors.Parse(codec)
	if err != nil {
		return r, err
	}
	if r.Codec == compressors.CodecPowerSGD {
		rows, cols := MatrixShape(shape)
		if (rows+cols)*r.Rank*2 >= rows*cols {
			r = compressors.MustParse("none")
		}
	}
	return r, nil
}

// MatrixShape views a shape as a matrix [shape[0], product of the rest]
// (a vector [n] is n×1).
func MatrixShape(shape []int) (rows, cols int) {
	if len(shape) == 0 {
		return 0, 0
	}
	rows, cols = shape[0], 1
	for _, d := range shape[1:] {
		cols *= d
	}
	return rows, cols
}

// Fusable reports whether a layer may share a bucket with others: its codec
// is element-wise (Reduce) and so is its error feedback (DGC's clipping uses
// the norm of the whole vector, so DGC layers stay alone), and it has no
// codec schedule (a bucket has one codec).
func (l *Layer) Fusable() bool {
	return l.Codec.Aggregation() == compressors.Reduce && l.EF.Kind != errorfeedback.KindDGC && len(l.Stages) == 0
}

// Policy is what decides a job's plan besides its layers. Every rank of a
// job must use the same Policy apart from Rank.
type Policy struct {
	World, Rank int
	// Seed is shared by all ranks (random-k indices, PowerSGD's Q).
	Seed uint64
	// BucketBytes is the size (fp32 bytes) up to which consecutive fusable
	// layers with the same recipes share a bucket; 0 disables fusion.
	BucketBytes int
	// Algorithms are the all-reduces that a dense bucket may run: nil for
	// ring, tree and halving-doubling chosen per bucket by CostModel; one
	// algorithm forces it.
	Algorithms []allreduce.Algorithm
	// CostModel chooses the dense algorithm and its segment count; zero
	// means allreduce.DefaultModel().
	CostModel allreduce.Model
	// SegmentBytes, if > 0, fixes the pipelining of dense rings and trees:
	// a chunk is split into segments of about this many bytes (at most 64
	// per chunk). 0 takes the segment count from CostModel, with segments
	// of at least MinSegmentBytes.
	SegmentBytes int
	// CheckFinite makes every bucket's collective wait for the non-finite
	// flag exchange (see Flags); a worker whose NaN/Inf policy is not
	// "ignore" runs it.
	CheckFinite bool
}

// FlagBytes is the size of one rank's non-finite flag message for a bucket:
// the index in the bucket of its first layer whose gradient is not finite
// (int32 little-endian, −1 for none), then the rank's mode (dense or
// compressed).
const FlagBytes = 5

// Flags is the exchange that precedes each bucket's collective when
// Policy.CheckFinite is set: every rank sends its FlagBytes-byte flag message to
// every other rank directly, the all-to-all of one element of FlagBytes per
// pair of ranks (allreduce.AlgAllToAll with ElemBytes FlagBytes). From it
// every rank learns, before any error feedback runs, whether some rank's
// gradients in the bucket are not finite or some rank is in another mode,
// and all skip or fail the bucket alike. ok is false when the policy has no
// flag exchange.
func (p Policy) Flags() (alg allreduce.Algorithm, params allreduce.Params, ok bool) {
	if !p.CheckFinite {
		return 0, params, false
	}
	return allreduce.AlgAllToAll, allreduce.Params{World: p.World, Rank: p.Rank, Elems: p.World, ElemBytes: FlagBytes}, true
}

// MinSegmentBytes is the smallest segment of a pipelined dense all-reduce
// whose segment count comes from the cost model: real transports pay their
// per-message cost on every segment (a model that overlaps per-message
// latencies could otherwise split a 1 KiB bucket into a hundred messages).
const MinSegmentBytes = 16 << 10

// Bucket is one collective per step: one layer, or several fused.
type Bucket struct {
	// Layers are the layer indices in submission order (reverse
	// registration order: backward produces the last layer's gradient
	// first).
	Layers []int
	// Offs are the offsets of the layers in the bucket's vector; len(Layers)+1.
	Offs []int
	// Spec is the bucket's collective on this rank.
	Spec binding.Spec
}

// Elems is the bucket's vector length.
func (b *Bucket) Elems() int { return b.Offs[len(b.Offs)-1] }

// Fused reports whether the bucket holds more than one layer.
func (b *Bucket) Fused() bool { return len(b.Layers) > 1 }

// Plan fuses layers into buckets and chooses each bucket's scheme. Layers are
// taken in reverse order; consecutive fusable layers with the same recipes
// share a bucket while it stays within BucketBytes. A fused bucket is a
// vector (Rows = Elems, Cols = 1); a lone layer keeps its matrix shape.
func (p Policy) Plan(layers []Layer) ([]Bucket, error) {
	var out []Bucket
	var cur *Bucket
	for li := len(layers) - 1; li >= 0; li-- {
		l := &layers[li]
		if cur != nil && p.BucketBytes > 0 && l.Fusable() {
			h := &layers[cur.Layers[0]]
			if h.Fusable() && sameRecipes(l, h) && 4*(cur.Elems()+l.Elems) <= p.BucketBytes {
				cur.Layers = append(cur.Layers, li)
				cur.Offs = append(cur.Offs, cur.Elems()+l.Elems)
				continue
			}
		}
		out = append(out, Bucket{Layers: []int{li}, Offs: []int{0, l.Elems}})
		cur = &out[len(out)-1]
	}
	for i := range out {
		b := &out[i]
		h := &layers[b.Layers[0]]
		rows, cols := MatrixShape(h.Shape)
		if b.Fused() {
			rows, cols = b.Elems(), 1
		}
		s, err := p.SchemeFor(h.Codec, h.EF, b.Elems(), rows, cols)
		if err != nil {
			return nil, fmt.Errorf("bucket %d (layer %q): %w", i, h.Name, err)
		}
		b.Spec = s
	}
	return out, nil
}

func sameRecipes(a, b *Layer) bool {
	return a.Codec.String() == b.Codec.String() && a.EF.String() == b.EF.String()
}

// SchemeFor is the collective of a vector of elems elements (a rows×cols
// matrix) compressed with codec under error feedback ef on this rank: a
// Reduce codec's bucket gets its all-reduce and segment count from the
// Policy (see Dense), every other codec the scheme of its aggregation
// (binding.SchemeFor). The Spec is checked with binding.SchemeFor, so an
// error here is the one binding.New would return.
func (p Policy) SchemeFor(codec compressors.Recipe, ef errorfeedback.Recipe, elems, rows, cols int) (binding.Spec, error) {
	s := binding.Spec{Codec: codec, EF: ef, Elems: elems, Rows: rows, Cols: cols,
		World: p.World, Rank: p.Rank, Seed: p.Seed}
	if codec.Aggregation() == compressors.Reduce {
		// The element size first, with any algorithm: the dense choice
		// depends on the bytes on the wire.
		_, ps, err := binding.SchemeFor(s)
		if err != nil {
			return s, err
		}
		if s.Algorithm, s.Segments, err = p.dense(elems, ps.ElemBytes); err != nil {
			return s, err
		}
	}
	if _, _, err := binding.SchemeFor(s); err != nil {
		return s, err
	}
	return s, nil
}

// Dense is the plain fp32 mean of a vector of elems elements without error
// feedback: the scheme of a bucket in dense mode (NaN/Inf fallback, 1-bit
// Adam's warm-up).
func (p Policy) Dense(elems int) (binding.Spec, error) {
	return p.SchemeFor(compressors.MustParse("none"), errorfeedback.Recipe{Kind: errorfeedback.KindNone}, elems, elems, 1)
}

// dense picks the all-reduce of a dense bucket of elems elements of
// elemBytes on the wire and its segment count: the one algorithm of
// Algorithms if it has one, else the cheapest under CostModel; SegmentBytes
// if set, else the model's best count capped so that segments are at least
// MinSegmentBytes.
func (p Policy) dense(elems, elemBytes int) (allreduce.Algorithm, int, error) {
	bytes := int64(elems) * int64(elemBytes)
	pol := allreduce.Policy{Model: p.CostModel, Candidates: p.Algorithms}
	for _, a := range p.Algorithms {
		switch a {
		case allreduce.AlgRing, allreduce.AlgTree, allreduce.AlgHalvingDoubling:
		default:
			return 0, 0, fmt.Errorf("engine: algorithm %v is not an all-reduce", a)
		}
	}
	if len(p.Algorithms) == 1 {
		a := p.Algorithms[0]
		pol.Override = func(int, int64) (allreduce.Choice, bool) { return allreduce.Choice{Alg: a}, true }
	}
	c := pol.Select(p.World, bytes)
	segs := c.Segments
	perChunk := (bytes + int64(p.World) - 1) / int64(p.World)
	if c.Alg == allreduce.AlgTree {
		perChunk = (bytes + 1) / 2
	}
	if seg := p.SegmentBytes; seg > 0 {
		segs = int(min(max(1, (perChunk+int64(seg)-1)/int64(seg)), 64))
	} else {
		segs = int(min(int64(segs), max(1, perChunk/MinSegmentBytes)))
	}
	return c.Alg, max(segs, 1), nil
}
