package errorfeedback

import (
	"fmt"
	"math"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/internal/kernels"
)

// This file holds the state of the two-phase compressed all-reduce of 1-bit
// Adam (docs/algorithms.md §2.2): the worker error (steps 1-4, on the whole
// padded vector) and the server error (step 6, on this rank's chunk). The
// collective itself (all-to-all of sign chunks, all-gathers of scales and
// server signs) is package allreduce's TwoPhaseSign scheme.
//
// Signs: sgn(x) = +1 if x >= 0 else -1 (so +0 and -0 are +1), packed
// MSB-first with bit 1 for x >= 0 (kernels.PackSigns). Scales are RMS values
// ‖x‖₂/√len(x), accumulated in float64 and rounded to float32 once.

// mustLayout is the two-phase geometry (allreduce.TwoPhaseLayout) of a
// d-element vector over world ranks with scale blocks of block elements. It
// panics if the layout is invalid (block negative or not a multiple of 8).
func mustLayout(d, world, block int) allreduce.TwoPhaseLayout {
	l, err := allreduce.NewTwoPhaseLayout(d, world, block)
	if err != nil {
		panic("errorfeedback: " + err.Error())
	}
	return l
}

// rms returns ‖x‖₂/√len(x) with float64 accumulation (0 for empty x).
func rms(x []float32) float32 {
	if len(x) == 0 {
		return 0
	}
	return float32(math.Sqrt(kernels.SumSq(x)) / math.Sqrt(float64(len(x))))
}

// signFeedback packs the signs of b into bits, then replaces b by its
// compression error b − s·sgn(b) (s ≥ 0; sgn is +1 for x ≥ 0, −0
// included), as signFeedbackRef, bit for bit. It picks ±s with bit
// operations instead of a branch: the signs of a gradient's error are
// close to random, and a mispredicted branch per element cost several
// times the rest of the pass.
func signFeedback(bits []byte, b []float32, s float32) {
	kernels.PackSigns(bits, b)
	sb := math.Float32bits(s)
	for j, x := range b {
		u := math.Float32bits(x)
		// neg is 1 iff the sign bit is set and x is not −0 (a NaN
		// stays a NaN either way).
		neg := u >> 31 & ((u&0x7fffffff + 0x7fffffff) >> 31)
		b[j] = x - math.Float32frombits(sb^neg<<31)
	}
}

// signFeedbackRef is signFeedback's plain reference.
func signFeedbackRef(bits []byte, b []float32, s float32) {
	kernels.PackSigns(bits, b)
	for j, x := range b {
		if x >= 0 {
			b[j] = x - s
		} else {
			b[j] = x + s
		}
	}
}

// WorkerError is one rank's worker-side error of the two-phase scheme for a
// d-element vector (docs/algorithms.md §2.2 steps 1-4), with one scale per block of the
// padded vector (see NewBlockWorkerError). It is not safe for concurrent use.
type WorkerError struct {
	d, world int
	lay      allreduce.TwoPhaseLayout
	e        []float32 // worker_error, length d′
	one      [1]float32
}

// NewWorkerError returns a zero worker error for a d-element vector over
// world ranks (internally of length allreduce.TwoPhasePaddedLen(d, world)) with one scale for
// the whole padded vector (DeepSpeed's). It panics if d < 0 or world < 1.
func NewWorkerError(d, world int) *WorkerError { return NewBlockWorkerError(d, world, 0) }

// NewBlockWorkerError is NewWorkerError with one scale per block of block
// elements of the padded vector: block k covers [k·block, (k+1)·block), the
// last block ends at d′ (block 0: one block, the whole vector). Its
// geometry is allreduce.TwoPhaseLayout's. It panics if d < 0, world < 1, or
// block is negative or not a multiple of 8.
func NewBlockWorkerError(d, world, block int) *WorkerError {
	lay := mustLayout(d, world, block)
	return &WorkerError{d: d, world: world, lay: lay, e: make([]float32, lay.Padded())}
}

// Len is d, the unpadded vector length.
func (w *WorkerError) Len() int { return w.d }

// PaddedLen is d′.
func (w *WorkerError) PaddedLen() int { return len(w.e) }

// Block is the scale block length (0: one block).
func (w *WorkerError) Block() int { return w.lay.Block() }

// Blocks is the number of scales CompressBlocks returns.
func (w *WorkerError) Blocks() int { return w.lay.Blocks() }

// ChunkBytes is the number of sign bytes each rank owns, d′/(8·world).
func (w *WorkerError) ChunkBytes() int { return len(w.e) / (8 * w.world) }

// ChunkScales returns the scales of chunk c among the Blocks() scales that
// CompressBlocks returned: those of the blocks that meet the chunk, the ones
// phase 1 sends to rank c with its sign chunk (a view of scales).
func (w *WorkerError) ChunkScales(scales []float32, c int) []float32 {
	first, n := w.lay.ChunkBlocks(c)
	return scales[first : first+n]
}

// Compress runs steps 1-4 on m (len d) with a single scale: b = concat(m,
// 0…) + worker_error, s_w = ‖b‖₂/√d′, worker_error = b − s_w·sgn(b). It
// appends the d′/8 packed sign bytes of b to dst[:0] and returns them with
// s_w. Chunk c of the result (bytes [c·ChunkBytes(), (c+1)·ChunkBytes()))
// goes to rank c in phase 1. m is not modified. It panics if len(m) !=
// Len() or the error has more than one block.
func (w *WorkerError) Compress(dst []byte, m []float32) ([]byte, float32) {
	if w.lay.Blocks() > 1 {
		panic("errorfeedback: WorkerError.Compress on a blocked error; use CompressBlocks")
	}
	dst, sc := w.CompressBlocks(dst, w.one[:0], m)
	if len(sc) == 0 {
		return dst, 0
	}
	return dst, sc[0]
}

// CompressBlocks is Compress with one scale per block: per block k, s_k =
// RMS of b over the block and worker_error = b − s_k·sgn(b) there. It
// appends the d′/8 sign bytes to dst[:0] and the Blocks() scales to
// scales[:0]. It panics if len(m) != Len().
func (w *WorkerError) CompressBlocks(dst []byte, scales, m []float32) ([]byte, []float32) {
	if len(m) != w.d {
		panic("errorfeedback: WorkerError.Compress: len(m) != Len()")
	}
	kernels.Add(w.e[:w.d], m)
	dst = grow(dst[:0], len(w.e)/8)
	nb := w.lay.Blocks()
	if cap(scales) < nb {
		scales = make([]float32, nb)
	}
	scales = scales[:nb]
	for k := range scales {
		lo, hi := w.lay.BlockRange(k)
		scales[k] = rms(w.e[lo:hi])
		signFeedback(dst[lo/8:hi/8], w.e[lo:hi], scales[k])
	}
	return dst, scales
}

// Error returns worker_error (length d′; a view, do not modify).
func (w *WorkerError) Error() []float32 { return w.e }

// Reset zeroes the error.
func (w *WorkerError) Reset() { zero(w.e) }

// ServerError is rank r's server-side error of the two-phase scheme for its
// chunk of d′/world elements (docs/algorithms.md §2.2 step 6), with one scale per group
// of the chunk (see NewBlockServerError). It is not safe for concurrent use.
type ServerError struct {
	world, rank int
	lay         allreduce.TwoPhaseLayout
	e           []float32 // server_error, length chunk
	c           []float32 // scratch for Step
	one         [1]float32
	sc          [][]float32
}

// NewServerError returns a zero server error for a d-element vector over
// world ranks with one scale per chunk: its chunk has allreduce.TwoPhasePaddedLen(d,
// world)/world elements. It panics if d < 0 or world < 1.
func NewServerError(d, world int) *ServerError { return NewBlockServerError(d, world, 0, 0) }

// NewBlockServerError returns rank's zero server error for a d-element vector
// over world ranks with scale blocks of block elements (see
// NewBlockWorkerError): the chunk's groups are the intersections of the
// blocks with chunk rank, each with its own server scale. It panics if d <
// 0, world < 1, rank is not in [0, world), or block is negative or not a
// multiple of 8.
func NewBlockServerError(d, world, rank, block int) *ServerError {
	if rank < 0 || rank >= max(world, 1) {
		panic("errorfeedback: NewBlockServerError: rank out of range")
	}
	lay := mustLayout(d, world, block)
	return &ServerError{world: world, rank: rank, lay: lay, e: make([]float32, lay.ChunkLen()), c: make([]float32, lay.ChunkLen())}
}

// Len is the chunk length d′/world.
func (s *ServerError) Len() int { return len(s.e) }

// ChunkBytes is len/8, the size of one sign chunk.
func (s *ServerError) ChunkBytes() int { return len(s.e) / 8 }

// Groups is the number of scales of this chunk: worker scales received from
// each rank, and server scales sent.
func (s *ServerError) Groups() int {
	_, n := s.lay.ChunkBlocks(s.rank)
	return n
}

// MeanSigns sets c = Σ_j (scales[j]/world)·sgn_j in rank order j = 0..N−1,
// where sgn_j[k] = +1 if bit k of recv[j] (MSB-first) is 1, else −1: the
// average of the decoded worker messages for this rank's chunk, with a
// single scale per rank. It returns an error wrapping ErrLength if the
// counts or sizes do not match or the chunk has several groups.
func (s *ServerError) MeanSigns(c []float32, recv [][]byte, scales []float32) error {
	if len(scales) != s.world {
		return fmt.Errorf("%w: %d sign chunks and %d scales for world %d", ErrLength, len(recv), len(scales), s.world)
	}
	if s.sc == nil {
		s.sc = make([][]float32, s.world)
	}
	one := min(1, s.Groups()) // an empty chunk has no group
	for j := range scales {
		s.sc[j] = scales[j : j+one]
	}
	return s.MeanSignBlocks(c, recv, s.sc)
}

// MeanSignBlocks is MeanSigns with one scale per group: scales[j][g] is
// rank j's worker scale for group g of the chunk.
func (s *ServerError) MeanSignBlocks(c []float32, recv [][]byte, scales [][]float32) error {
	if len(recv) != s.world || len(scales) != s.world {
		return fmt.Errorf("%w: %d sign chunks and %d scale lists for world %d", ErrLength, len(recv), len(scales), s.world)
	}
	if len(c) != len(s.e) {
		return fmt.Errorf("%w: chunk buffer %d, want %d", ErrLength, len(c), len(s.e))
	}
	ng := s.Groups()
	for j, b := range recv {
		if len(b) != len(s.e)/8 {
			return fmt.Errorf("%w: sign chunk from rank %d has %d bytes, want %d", ErrLength, j, len(b), len(s.e)/8)
		}
		if len(scales[j]) != ng {
			return fmt.Errorf("%w: %d scales from rank %d, want %d", ErrLength, len(scales[j]), j, ng)
		}
	}
	zero(c)
	inv := float32(1 / float64(s.world))
	for j, b := range recv {
		for g := range ng {
			lo, hi := s.lay.Group(s.rank, g)
			kernels.UnpackSignsAdd(c[lo:hi], b[lo/8:hi/8], scales[j][g]*inv)
		}
	}
	return nil
}

// Compress runs the error part of step 6 on c, the mean of the decoded worker
// messages for this chunk (see MeanSigns): c += server_error (in place),
// s_s = ‖c‖₂/√len(c), server_error = c − s_s·sgn(c). It appends the packed
// signs of c (len(c)/8 bytes) to dst[:0] and returns them with s_s. On return
// c holds the compensated vector c_r. It panics if len(c) != Len() or the
// chunk has several groups.
func (s *ServerError) Compress(dst []byte, c []float32) ([]byte, float32) {
	if s.Groups() > 1 {
		panic("errorfeedback: ServerError.Compress on a blocked chunk; use CompressBlocks")
	}
	dst, sc := s.CompressBlocks(dst, s.one[:0], c)
	if len(sc) == 0 {
		return dst, 0
	}
	return dst, sc[0]
}

// CompressBlocks is Compress with one server scale per group: s_g = RMS of
// c over group g and server_error = c − s_g·sgn(c) there. It appends the
// sign bytes to dst[:0] and the Groups() scales to sscales[:0].
func (s *ServerError) CompressBlocks(dst []byte, sscales, c []float32) ([]byte, []float32) {
	if len(c) != len(s.e) {
		panic("errorfeedback: ServerError.Compress: len(c) != Len()")
	}
	kernels.Add(c, s.e)
	copy(s.e, c)
	dst = grow(dst[:0], len(c)/8)
	ng := s.Groups()
	if cap(sscales) < ng {
		sscales = make([]float32, ng)
	}
	sscales = sscales[:ng]
	for g := range sscales {
		lo, hi := s.lay.Group(s.rank, g)
		sscales[g] = rms(c[lo:hi])
		signFeedback(dst[lo/8:hi/8], s.e[lo:hi], sscales[g])
	}
	return dst, sscales
}

// Step is MeanSigns followed by Compress on an internal buffer: the whole of
// step 6 for this rank's chunk, given the sign chunks recv[j] and worker
// scales scales[j] received from every rank j in phase 1. It appends the
// server's sign bytes to dst[:0] and returns them with the server scale.
func (s *ServerError) Step(dst []byte, recv [][]byte, scales []float32) ([]byte, float32, error) {
	if err := s.MeanSigns(s.c, recv, scales); err != nil {
		return dst[:0], 0, err
	}
	out, ss := s.Compress(dst, s.c)
	return out, ss, nil
}

// StepBlocks is Step with one scale per group: scales[j] are rank j's
// Groups() worker scales for this chunk (WorkerError.ChunkScales); it
// appends the server's sign bytes to dst[:0] and its Groups() scales to
// sscales[:0].
func (s *ServerError) StepBlocks(dst []byte, sscales []float32, recv [][]byte, scales [][]float32) ([]byte, []float32, error) {
	if err := s.MeanSignBlocks(s.c, recv, scales); err != nil {
		return dst[:0], sscales[:0], err
	}
	out, ss := s.CompressBlocks(dst, sscales, s.c)
	return out, ss, nil
}

// Error returns server_error (a view, do not modify).
func (s *ServerError) Error() []float32 { return s.e }

// Reset zeroes the error.
func (s *ServerError) Reset() { zero(s.e) }

// DecodeSigns is phase 2's output (docs/algorithms.md §2.2 step 8): for every chunk c,
// out[c·L : (c+1)·L] = scales[c]·sgn(bits[c]) with L = allreduce.TwoPhasePaddedLen(len(out),
// world)/world and world = len(bits), truncated to len(out). It returns an
// error wrapping ErrLength if the counts or sizes do not match.
func DecodeSigns(out []float32, bits [][]byte, scales []float32) error {
	if len(bits) < 1 || len(scales) != len(bits) {
		return fmt.Errorf("%w: %d sign chunks and %d scales", ErrLength, len(bits), len(scales))
	}
	world := len(bits)
	chunk := allreduce.TwoPhasePaddedLen(len(out), world) / world
	for c, b := range bits {
		if len(b) != chunk/8 {
			return fmt.Errorf("%w: server sign chunk %d has %d bytes, want %d", ErrLength, c, len(b), chunk/8)
		}
	}
	for c, b := range bits {
		lo := c * chunk
		if lo >= len(out) {
			break
		}
		kernels.UnpackSigns(out[lo:min(lo+chunk, len(out))], b, scales[c])
	}
	return nil
}

// DecodeSignBlocks is DecodeSigns with scale blocks of block elements (see
// NewBlockWorkerError): scales[c][g] is the server scale of group g of chunk
// c, and out[group] = scales[c][g]·sgn(bits[c][group]).
func DecodeSignBlocks(out []float32, block int, bits [][]byte, scales [][]float32) error {
	world := len(bits)
	if world < 1 || len(scales) != world {
		return fmt.Errorf("%w: %d sign chunks and %d scale lists", ErrLength, len(bits), len(scales))
	}
	if block < 0 || block%8 != 0 {
		return fmt.Errorf("%w: scale block %d is not a multiple of 8", ErrLength, block)
	}
	lay := mustLayout(len(out), world, block)
	chunk := lay.ChunkLen()
	for c, b := range bits {
		if len(b) != chunk/8 {
			return fmt.Errorf("%w: server sign chunk %d has %d bytes, want %d", ErrLength, c, len(b), chunk/8)
		}
		if _, n := lay.ChunkBlocks(c); len(scales[c]) != n {
			return fmt.Errorf("%w: server chunk %d has %d scales, want %d", ErrLength, c, len(scales[c]), n)
		}
	}
	for c, b := range bits {
		base := c * chunk
		for g, s := range scales[c] {
			lo, hi := lay.Group(c, g)
			if base+lo >= len(out) {
				break
			}
			kernels.UnpackSigns(out[base+lo:min(base+hi, len(out))], b[lo/8:], s)
		}
	}
	return nil
}

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// TwoPhase is one rank's state of the two-phase sign all-reduce for one
// vector: its WorkerError and ServerError, as the allreduce.TwoPhaseHook
// that allreduce.WithTwoPhase takes. It persists across steps (keep one per
// layer and rank). Not safe for concurrent use.
type TwoPhase struct {
	lay  allreduce.TwoPhaseLayout
	rank int
	W    *WorkerError
	S    *ServerError
}

var _ allreduce.TwoPhaseHook = (*TwoPhase)(nil)

// NewTwoPhase returns rank's zero errors for a d-element vector over world
// ranks with scale blocks of block elements (0: one per vector). It returns
// allreduce.NewTwoPhaseLayout's error for invalid arguments, or an error
// for a rank outside the world.
func NewTwoPhase(d, world, rank, block int) (*TwoPhase, error) {
	lay, err := allreduce.NewTwoPhaseLayout(d, world, block)
	if err != nil {
		return nil, err
	}
	if rank < 0 || rank >= world {
		return nil, fmt.Errorf("errorfeedback: two-phase state of rank %d in a world of %d", rank, world)
	}
	return &TwoPhase{lay: lay, rank: rank, W: NewBlockWorkerError(d, world, block), S: NewBlockServerError(d, world, rank, block)}, nil
}

// TwoPhaseLayout implements allreduce.TwoPhaseHook.
func (t *TwoPhase) TwoPhaseLayout() allreduce.TwoPhaseLayout { return t.lay }

// WorkerCompress implements allreduce.TwoPhaseHook (WorkerError.CompressBlocks).
func (t *TwoPhase) WorkerCompress(dst []byte, scales, m []float32) ([]byte, []float32) {
	return t.W.CompressBlocks(dst, scales, m)
}

// ServerStep implements allreduce.TwoPhaseHook (ServerError.StepBlocks) for
// the chunk of the rank the state was built for. Its errors (another chunk,
// messages of the wrong sizes) wrap allreduce.ErrMessage.
func (t *TwoPhase) ServerStep(dst []byte, sscales []float32, chunk int, recv [][]byte, scales [][]float32) ([]byte, []float32, error) {
	if chunk != t.rank {
		return dst[:0], sscales[:0], fmt.Errorf("%w: server step for chunk %d on the state of rank %d", allreduce.ErrMessage, chunk, t.rank)
	}
	b, ss, err := t.S.StepBlocks(dst, sscales, recv, scales)
	if err != nil {
		return b, ss, fmt.Errorf("%w: %w", allreduce.ErrMessage, err)
	}
	return b, ss, nil
}

// Reset zeroes both errors.
func (t *TwoPhase) Reset() {
	t.W.Reset()
	t.S.Reset()
}
