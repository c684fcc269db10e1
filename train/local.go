package train

import (
	"context"
	"fmt"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/engine"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/internal/kernels"
	"github.com/slimgrad/slimgrad/optim"
)

// Local is the in-process exchanger, a reference without network or clock.
// For units the optimizers ask to average through their codec (optim.Mean),
// every worker's vector goes through its own error feedback and compressor
// (Plan), and every worker gets
//
//	avg = (1/N) · Σ_{r=0..N−1} Decompress(payload_r)   (rank order, then Feedback.Finish)
//
// which is bit-identical on all workers and equals the result of the sparse
// all-gather scheme. For element-wise codecs (none, fp16, bf16) it is the
// exact mean of the decoded payloads, without the per-hop re-encoding of a
// real ring. optim.DenseMean is the exact fp32 mean in rank order.
// optim.TwoPhaseSign runs the two-phase 1-bit all-reduce (docs/algorithms.md §2.2) with
// errorfeedback.TwoPhase's worker and server errors: phase 1 gives chunk c
// of every rank's signs to rank c, phase 2 gathers the server signs.
// PowerSGD (low-rank aggregation) is rejected with ErrUnsupported.
//
// Bytes are accounted for the collective a real run would use: a ring
// all-reduce of BytesPerElem·d per rank for element-wise codecs
// (2(N−1)·bpe·d in total), a ring all-gather for gathered payloads (each
// rank's payload crosses N−1 links), and for the two-phase scheme an
// all-to-all plus an all-gather of d′/(8N)-byte sign chunks, each with a
// 4-byte header and its groups' scales (allreduce.TwoPhaseLayout).
type Local struct {
	plan   Plan
	layers []Layer
	eng    []engine.Layer // the layers resolved as every driver resolves them
	n      int
	fbs    [][]errorfeedback.Feedback // [worker][layer]
	bufs   [][]byte
	avg    []float32
	tp     [][]*errorfeedback.TwoPhase // [worker][layer], made on first use
	// two-phase scratch, reused across steps
	bits, server, recv       [][]byte
	scales, sscales, rscales [][]float32
}

// NewLocal returns a Local exchanger for n workers over layers, communicating
// as plan says (the zero Plan: dense fp32, no error feedback).
func NewLocal(n int, layers []Layer, plan Plan) (*Local, error) {
	if n < 1 || len(layers) == 0 {
		return nil, fmt.Errorf("train: NewLocal: %d workers, %d layers", n, len(layers))
	}
	if err := plan.validate(); err != nil {
		return nil, err
	}
	eng, err := engineLayers(layers, plan, "")
	if err != nil {
		return nil, err
	}
	x := &Local{plan: plan, layers: layers, eng: eng, n: n, fbs: make([][]errorfeedback.Feedback, n), bufs: make([][]byte, n)}
	maxLen := 0
	for w := range n {
		for l := range layers {
			c, err := x.newCodec(l, eng[l].Codec, w)
			if err != nil {
				return nil, err
			}
			if agg := c.Aggregation(); agg != compressors.Reduce && agg != compressors.Gather {
				return nil, fmt.Errorf("%w: the local exchanger cannot run %s (aggregation %s)", ErrUnsupported, c, agg)
			}
			fb, err := eng[l].EF.New(c, errorfeedback.WithWorld(n))
			if err != nil {
				return nil, fmt.Errorf("train: layer %s: %w", layers[l].Name, err)
			}
			x.fbs[w] = append(x.fbs[w], fb)
			maxLen = max(maxLen, layers[l].Size)
		}
	}
	x.avg = make([]float32, maxLen)
	return x, nil
}

// newCodec builds rank's compressor r for layer l (the plan's seed, the
// layer's matrix shape).
func (x *Local) newCodec(l int, r compressors.Recipe, rank int) (compressors.Compressor, error) {
	ly := x.layers[l]
	opts := []compressors.Option{compressors.WithSeed(x.plan.Seed), compressors.WithRank(rank)}
	if len(ly.Shape) >= 2 {
		opts = append(opts, compressors.WithShape(engine.MatrixShape(ly.Shape)))
	}
	c, err := r.New(ly.Size, opts...)
	if err != nil {
		return nil, fmt.Errorf("train: layer %s: %w", ly.Name, err)
	}
	return c, nil
}

// switchCodecs switches every rank's layers whose codec schedule (the plan's
// warm-up) changes at step, keeping their error feedback.
func (x *Local) switchCodecs(step int) error {
	for l := range x.eng {
		r, ok := x.eng[l].SwitchAt(int64(step))
		if !ok {
			continue
		}
		for w := range x.n {
			c, err := x.newCodec(l, r, w)
			if err != nil {
				return err
			}
			if err := x.fbs[w][l].SetCompressor(c); err != nil {
				return fmt.Errorf("train: layer %s: %w", x.layers[l].Name, err)
			}
		}
	}
	return nil
}

// Name implements Exchanger.
func (x *Local) Name() string { return "local " + x.plan.String() }

// Exchange implements Exchanger.
func (x *Local) Exchange(ctx context.Context, step int, how []optim.Exchange, in, out [][][]float32) (Stats, error) {
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	if err := checkShapes(x.n, x.layers, how, in, out); err != nil {
		return Stats{}, err
	}
	if err := x.switchCodecs(step); err != nil {
		return Stats{}, err
	}
	st := Stats{Layers: make([]LayerStats, len(x.layers))}
	for l := range x.layers {
		var ls LayerStats
		var err error
		switch how[l] {
		case optim.Mean:
			ls, err = x.mean(l, in, out)
		case optim.DenseMean:
			ls = x.denseMean(l, in, out)
		case optim.TwoPhaseSign:
			ls, err = x.twoPhase(l, in, out)
		default:
			err = fmt.Errorf("%w: aggregation %v", ErrUnsupported, how[l])
		}
		if err != nil {
			return Stats{}, err
		}
		st.Layers[l] = ls
		st.PayloadBytes += ls.PayloadBytes
		st.WireBytes += ls.WireBytes
		st.DenseBytes += ls.DenseBytes
	}
	return st, nil
}

// denseMean is the exact fp32 mean in rank order, without error feedback.
func (x *Local) denseMean(l int, in, out [][][]float32) LayerStats {
	d := x.layers[l].Size
	avg := x.avg[:d]
	copy(avg, in[0][l])
	for w := 1; w < x.n; w++ {
		kernels.Add(avg, in[w][l])
	}
	kernels.Scale(avg, 1/float32(x.n))
	for w := range x.n {
		copy(out[w][l], avg)
	}
	dense := DenseRingBytes(x.n, d)
	return LayerStats{PayloadBytes: int64(x.n) * 4 * int64(d), WireBytes: dense, DenseBytes: dense}
}

// twoPhase runs the two-phase 1-bit all-reduce of unit l with the plan's
// Sign codec's scale blocks.
func (x *Local) twoPhase(l int, in, out [][][]float32) (LayerStats, error) {
	d := x.layers[l].Size
	sr, err := x.plan.SignRecipe()
	if err != nil {
		return LayerStats{}, err
	}
	if x.tp == nil {
		x.tp = make([][]*errorfeedback.TwoPhase, x.n)
		for w := range x.n {
			x.tp[w] = make([]*errorfeedback.TwoPhase, len(x.layers))
		}
	}
	if x.bits == nil {
		x.bits, x.server, x.recv = make([][]byte, x.n), make([][]byte, x.n), make([][]byte, x.n)
		x.scales, x.sscales, x.rscales = make([][]float32, x.n), make([][]float32, x.n), make([][]float32, x.n)
	}
	bits, server, recv, scales, sscales, rscales := x.bits, x.server, x.recv, x.scales, x.sscales, x.rscales
	for w := range x.n {
		if x.tp[w][l] == nil {
			if x.tp[w][l], err = errorfeedback.NewTwoPhase(d, x.n, w, sr.Block); err != nil {
				return LayerStats{}, fmt.Errorf("train: unit %s: %w", x.layers[l].Name, err)
			}
		}
		bits[w], scales[w] = x.tp[w][l].WorkerCompress(bits[w][:0], scales[w][:0], in[w][l])
	}
	lay := x.tp[0][l].TwoPhaseLayout()
	cb := len(bits[0]) / x.n
	for c := range x.n {
		first, k := lay.ChunkBlocks(c)
		for j := range x.n {
			recv[j] = bits[j][c*cb : (c+1)*cb]
			rscales[j] = scales[j][first : first+k]
		}
		server[c], sscales[c], err = x.tp[c][l].ServerStep(server[c][:0], sscales[c][:0], c, recv, rscales)
		if err != nil {
			return LayerStats{}, fmt.Errorf("train: two-phase server step, rank %d: %w", c, err)
		}
	}
	for w := range x.n {
		if err := errorfeedback.DecodeSignBlocks(out[w][l], sr.Block, server, sscales); err != nil {
			return LayerStats{}, fmt.Errorf("train: two-phase decode: %w", err)
		}
	}
	// Phase 1: every rank sends N−1 chunks with their scales; phase 2:
	// every rank sends its server chunk and scales to N−1 peers.
	var wire int64
	for c := range x.n {
		wire += 2 * int64(x.n-1) * int64(lay.MessageBytes(c))
	}
	return LayerStats{
		PayloadBytes: int64(x.n) * int64(lay.PayloadBytes()),
		WireBytes:    wire,
		DenseBytes:   DenseRingBytes(x.n, d),
	}, nil
}

// mean averages unit l through the plan's codec and error feedback.
func (x *Local) mean(l int, in, out [][][]float32) (LayerStats, error) {
	ly := x.layers[l]
	avg := x.avg[:ly.Size]
	clear(avg)
	ls := LayerStats{DenseBytes: DenseRingBytes(x.n, ly.Size)}
	var agg compressors.Aggregation
	bpe := 4
	for w := range x.n {
		fb := x.fbs[w][l]
		p, err := fb.Encode(x.bufs[w][:0], in[w][l])
		if err != nil {
			return LayerStats{}, fmt.Errorf("train: worker %d layer %s: %w", w, ly.Name, err)
		}
		x.bufs[w] = p
		c := fb.Compressor()
		if err := c.DecompressAdd(avg, p); err != nil {
			return LayerStats{}, fmt.Errorf("train: worker %d layer %s: %w", w, ly.Name, err)
		}
		agg = c.Aggregation()
		if ec, ok := compressors.AsElementCodec(c); ok {
			bpe = ec.BytesPerElem()
			ls.PayloadBytes += int64(bpe) * int64(ly.Size)
		} else {
			ls.PayloadBytes += int64(len(p))
		}
	}
	kernels.Scale(avg, 1/float32(x.n))
	for w := range x.n {
		copy(out[w][l], avg)
		x.fbs[w][l].Finish(out[w][l])
	}
	if agg == compressors.Reduce {
		ls.WireBytes = int64(2*(x.n-1)) * int64(bpe) * int64(ly.Size)
	} else {
		ls.WireBytes = int64(x.n-1) * ls.PayloadBytes
	}
	return ls, nil
}

func checkShapes(n int, layers []Layer, how []optim.Exchange, in, out [][][]float32) error {
	if len(how) != len(layers) {
		return fmt.Errorf("train: exchange: %d aggregations for %d units", len(how), len(layers))
	}
	if len(in) != n || len(out) != n {
		return fmt.Errorf("train: exchange: %d inputs and %d outputs for %d workers", len(in), len(out), n)
	}
	for w := range n {
		if len(in[w]) != len(layers) || len(out[w]) != len(layers) {
			return fmt.Errorf("train: exchange: worker %d has %d/%d layers, want %d", w, len(in[w]), len(out[w]), len(layers))
		}
		for l, ly := range layers {
			if len(in[w][l]) != ly.Size || len(out[w][l]) != ly.Size {
				return fmt.Errorf("train: exchange: worker %d layer %s: %d/%d elements, want %d", w, ly.Name, len(in[w][l]), len(out[w][l]), ly.Size)
			}
		}
	}
	return nil
}

var _ Exchanger = (*Local)(nil)
