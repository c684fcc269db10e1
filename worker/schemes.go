package worker

import (
	"context"
	"fmt"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/binding"
	"github.com/slimgrad/slimgrad/transport"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
)

// resolveLayer parses and canonicalizes a layer's recipes and applies the
// scheme rules that do not depend on the world size:
//
//   - PowerSGD needs a matrix: the shape is viewed as [shape[0], rest]. A
//     layer whose factors would not be at least 2× smaller than the matrix
//     ((rows+cols)·r·2 ≥ rows·cols, the rule of PyTorch's PowerSGD hook,
//     which covers vectors) is sent dense ("none") instead.
//   - sign uses the two-phase scheme's own worker and server errors, so its
//     error feedback must be "none"; PowerSGD supports "none" and "ef14"
//     (the residual against the all-reduced approximation, as in the paper).
//
// A codec schedule (WithCodecSchedule) resolves every stage by these rules;
// its first stage becomes the layer's codec, consecutive equal recipes are
// merged, and every stage must keep the first stage's aggregation.
func resolveLayer(s *layerSpec) error {
	if len(s.schedule) > 0 {
		s.codec = s.schedule[0].Codec
	}
	r, err := resolveCodec(s.codec, s.shape)
	if err != nil {
		return err
	}
	e, err := errorfeedback.Parse(s.ef)
	if err != nil {
		return err
	}
	s.stages = nil
	if len(s.schedule) > 0 {
		stages := []stage{{from: 0, recipe: r}}
		for _, cs := range s.schedule[1:] {
			sr, err := resolveCodec(cs.Codec, s.shape)
			if err != nil {
				return fmt.Errorf("codec schedule, stage from step %d: %w", cs.From, err)
			}
			if sr.Aggregation() != r.Aggregation() {
				return fmt.Errorf("codec schedule: stage from step %d runs %s (%v), the layer starts with %s (%v): every stage must keep the aggregation",
					cs.From, sr, sr.Aggregation(), r, r.Aggregation())
			}
			if sr.String() != stages[len(stages)-1].recipe.String() {
				stages = append(stages, stage{from: cs.From, recipe: sr})
			}
		}
		if len(stages) > 1 {
			s.stages = stages
		}
	}
	switch r.Aggregation() {
	case compressors.TwoPhase:
		if e.Kind != errorfeedback.KindNone {
			return fmt.Errorf("codec %s keeps its own worker and server error; error feedback must be none, not %s", r, e)
		}
	case compressors.LowRank:
		if e.Kind != errorfeedback.KindNone && e.Kind != errorfeedback.KindEF14 {
			return fmt.Errorf("codec %s supports error feedback none or ef14, not %s", r, e)
		}
	}
	s.codec, s.ef = r.String(), e.String()
	s.recipe, s.efRecipe = r, e
	return nil
}

// resolveCodec parses codec for a layer of the given shape: PowerSGD on a
// matrix too small to gain is "none".
func resolveCodec(codec string, shape []int) (compressors.Recipe, error) {
	r, err := compressors.Parse(codec)
	if err != nil {
		return r, err
	}
	if r.Codec == compressors.CodecPowerSGD {
		rows, cols := matrixShape(shape)
		if (rows+cols)*r.Rank*2 >= rows*cols {
			r, _ = compressors.Parse("none")
		}
	}
	return r, nil
}

// matrixShape views a shape as a matrix [shape[0], product of the rest].
func matrixShape(shape []int) (rows, cols int) {
	rows, cols = shape[0], 1
	for _, d := range shape[1:] {
		cols *= d
	}
	return rows, cols
}

// fusable reports whether a layer may share a bucket with others: its codec
// is element-wise (Reduce) and its error feedback is element-wise too (DGC's
// clipping uses the norm of the whole vector, so DGC layers stay alone), and
// it has no codec schedule (a bucket has one codec).
func fusable(s *layerSpec) bool {
	return s.recipe.Aggregation() == compressors.Reduce && s.efRecipe.Kind != errorfeedback.KindDGC && len(s.stages) == 0
}

func sameRecipe(a, b *layerSpec) bool { return a.codec == b.codec && a.ef == b.ef }

// layerColl is a bucket's collective: an binding.Layer run by the driver.
type layerColl struct {
	l *binding.Layer
}

func (c *layerColl) scheme() string { return c.l.Scheme() }

func (c *layerColl) finish(data []float32) error {
	c.l.Finish(data)
	return nil
}

func (c *layerColl) run(ctx context.Context, conn transport.Conn, d *driver, id uint32, data []float32, obs func(*binding.Layer, []float32), opts RunOptions) (collStats, error) {
	var cs collStats
	if err := c.l.Begin(data); err != nil {
		return cs, err
	}
	if obs != nil {
		obs(c.l, data)
	}
	rs, err := d.run(ctx, conn, id, c.l.Program(), c.l.Exec(), opts)
	if err == nil {
		c.l.End(data)
	}
	comp, dec, payload := c.l.Stats()
	cs.run, cs.payload, cs.compress = rs, payload, comp
	// Executor time that was not encoding is decoding and reducing.
	cs.decompress = max(dec, rs.Compute-comp)
	return cs, err
}

// newCollective builds bucket b's scheme on this rank.
func (w *Worker) newCollective(b *bucket) (collective, error) {
	s := w.layers[b.layers[0]]
	rows, cols := matrixShape(s.shape)
	if b.fused {
		rows, cols = b.elems(), 1
	}
	spec := binding.Spec{
		Codec: s.recipe, EF: s.efRecipe,
		Elems: b.elems(), Rows: rows, Cols: cols,
		World: w.conn.Size(), Rank: w.conn.Rank(), Seed: w.cfg.Seed,
	}
	if s.recipe.Aggregation() == compressors.Reduce {
		eb := 4
		switch s.recipe.Codec {
		case compressors.CodecFP16, compressors.CodecBF16:
			eb = 2
		}
		alg, segs, err := w.denseAlgorithm(b.elems(), eb)
		if err != nil {
			return nil, err
		}
		spec.Algorithm, spec.Segments = alg, segs
	}
	l, err := binding.New(spec)
	if err != nil {
		return nil, fmt.Errorf("worker: bucket %d (layer %q): %w", b.index, s.name, err)
	}
	return &layerColl{l: l}, nil
}

// denseAlgorithm picks the all-reduce of a dense bucket of elems elements
// of elemBytes on the wire, and its segment count: Config.Algorithm if set,
// else the cheapest under Config.CostModel; Config.SegmentBytes if set, else
// the model's best segment count, capped so that segments are at least
// minSegmentBytes.
func (w *Worker) denseAlgorithm(elems, elemBytes int) (allreduce.Algorithm, int, error) {
	world := w.conn.Size()
	bytes := int64(elems) * int64(elemBytes)
	pol := allreduce.Policy{Model: w.cfg.CostModel}
	if w.cfg.Algorithm != "" {
		a, err := allreduce.ParseAlgorithm(w.cfg.Algorithm)
		if err != nil {
			return 0, 0, err
		}
		switch a {
		case allreduce.AlgRing, allreduce.AlgTree, allreduce.AlgHalvingDoubling:
		default:
			return 0, 0, fmt.Errorf("worker: algorithm %v is not an all-reduce", a)
		}
		pol.Override = func(int, int64) (allreduce.Choice, bool) { return allreduce.Choice{Alg: a}, true }
	}
	c := pol.Select(world, bytes)
	segs := c.Segments
	perChunk := (bytes + int64(world) - 1) / int64(world)
	if c.Alg == allreduce.AlgTree {
		perChunk = (bytes + 1) / 2
	}
	if seg := w.cfg.SegmentBytes; seg > 0 {
		segs = int(min(max(1, (perChunk+int64(seg)-1)/int64(seg)), 64))
	} else {
		// A floor on the model's choice: real transports pay their
		// per-message cost on every segment, so segments stay at least
		// minSegmentBytes (a model that overlaps per-message latencies can
		// otherwise split a 1 KiB bucket into a hundred messages).
		segs = int(min(int64(segs), max(1, perChunk/minSegmentBytes)))
	}
	return c.Alg, max(segs, 1), nil
}

// minSegmentBytes is the smallest segment of a pipelined dense all-reduce
// whose segment count comes from the cost model.
const minSegmentBytes = 16 << 10

// newDenseCollective builds bucket b's ModeDense scheme: a plain fp32 mean.
func (w *Worker) newDenseCollective(b *bucket) (collective, error) {
	none, _ := compressors.Parse("none")
	noEF, _ := errorfeedback.Parse("none")
	spec := binding.Spec{Codec: none, EF: noEF, Elems: b.elems(), Rows: b.elems(), Cols: 1,
		World: w.conn.Size(), Rank: w.conn.Rank(), Seed: w.cfg.Seed}
	alg, segs, err := w.denseAlgorithm(b.elems(), 4)
	if err != nil {
		return nil, err
	}
	spec.Algorithm, spec.Segments = alg, segs
	l, err := binding.New(spec)
	if err != nil {
		return nil, fmt.Errorf("worker: bucket %d (dense): %w", b.index, err)
	}
	return &layerColl{l: l}, nil
}
