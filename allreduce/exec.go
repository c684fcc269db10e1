package allreduce

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unsafe"

	"github.com/slimgrad/slimgrad/internal/kernels"
)

// ElementCodec encodes float32 elements on the hops of dense reductions
// (Ring, Tree, HalvingDoubling, ReduceScatter, AllGather, AllToAll,
// Broadcast, and LowRank's factor rings). It has no frame header: a message
// is exactly BytesPerElem() bytes per element. F32 (raw little-endian
// float32) is the default; fp16/bf16 codecs from package compressors satisfy
// this interface. Reductions decode, add in float32, and re-encode on the
// next hop.
//
// Implementations must be safe for use by one goroutine at a time and must
// not retain the slices passed to them.
type ElementCodec interface {
	// BytesPerElem is the encoded size of one element.
	BytesPerElem() int
	// EncodeElems appends the encoding of src to dst and returns it.
	EncodeElems(dst []byte, src []float32) []byte
	// DecodeElems overwrites dst with the decoding of b; len(b) must be
	// len(dst)·BytesPerElem(), otherwise it returns an error.
	DecodeElems(dst []float32, b []byte) error
	// DecodeAddElems adds the decoding of b to dst, with DecodeElems's
	// length rule.
	DecodeAddElems(dst []float32, b []byte) error
}

// PayloadCodec encodes and decodes one rank's payload in the SparseGather
// scheme (top-k, random-k, DGC, QSGD: compressors with Gather aggregation,
// usually wrapped by error feedback).
type PayloadCodec interface {
	// Encode appends the encoding of src (the rank's whole vector) to dst
	// and returns it. It may update error-feedback state.
	Encode(dst []byte, src []float32) ([]byte, error)
	// DecodeAdd adds the decoding of payload to dst (scatter-add). It
	// returns an error, never panics, on a malformed payload.
	DecodeAdd(dst []float32, payload []byte) error
}

// TwoPhaseHook holds the error-feedback state of the TwoPhaseSign scheme
// for one vector (docs/algorithms.md §2.2, with one scale per block of TwoPhaseLayout).
// errorfeedback.TwoPhase implements it (this package holds only the
// scheme's geometry and messages, not its arithmetic).
type TwoPhaseHook interface {
	// TwoPhaseLayout is the geometry the state was built for; it must equal
	// the program's (Elems, World, SignBlock).
	TwoPhaseLayout() TwoPhaseLayout
	// WorkerCompress runs steps 1–4 on m (the d-element input): b =
	// concat(m, 0…) + worker_error; per block k, s_k = RMS of b over the
	// block and worker_error = b − s_k·sgn(b) there. It appends the d′/8
	// MSB-first sign bytes of b (bit 1 for b >= 0) to dst[:0] and the
	// Blocks() scales s_k to scales[:0], and returns both. m is not
	// modified.
	WorkerCompress(dst []byte, scales, m []float32) ([]byte, []float32)
	// ServerStep runs step 6 for chunk (this rank's): per group g of the
	// chunk (TwoPhaseLayout.Group), c = Σ_j sgn_j·(scales[j][g]/N) in rank
	// order j = 0..N−1 plus server_error, s_g = RMS of c over the group,
	// server_error = c − s_g·sgn(c). recv[j] are rank j's sign bytes for
	// the chunk and scales[j] its worker scales of the chunk's groups. It
	// appends the chunk's sign bytes to dst[:0] and the group scales to
	// sscales[:0], and returns both; an error wraps ErrMessage.
	ServerStep(dst []byte, sscales []float32, chunk int, recv [][]byte, scales [][]float32) ([]byte, []float32, error)
}

// LowRankHook runs the PowerSGD steps of the LowRank scheme for one
// Rows×Cols matrix at rank Rank(). compressors' *PowerSGD satisfies it. All
// matrices are row-major: m is Rows×Cols, p is Rows×Rank, q is Cols×Rank.
type LowRankHook interface {
	Rows() int
	Cols() int
	Rank() int
	// ComputeP sets p = m·Q with the hook's current Q.
	ComputeP(p, m []float32)
	// Orthogonalize orthonormalizes p's columns in place.
	Orthogonalize(p []float32)
	// ComputeQ sets q = mᵀ·p.
	ComputeQ(q, m, p []float32)
	// Reconstruct sets dst = p·qᵀ.
	Reconstruct(dst, p, q []float32)
	// SetQ stores q as the next step's Q (warm start).
	SetQ(q []float32)
}

// F32 is the raw little-endian float32 element codec (lossless). On a
// little-endian host the executor sends float32 regions without copying.
var F32 ElementCodec = f32Codec{}

type f32Codec struct{}

func (f32Codec) BytesPerElem() int { return 4 }

func (f32Codec) EncodeElems(dst []byte, src []float32) []byte {
	for _, v := range src {
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(v))
	}
	return dst
}

func (f32Codec) DecodeElems(dst []float32, b []byte) error {
	if len(b) != 4*len(dst) {
		return fmt.Errorf("%w: %d bytes for %d float32", ErrMessage, len(b), len(dst))
	}
	decodeF32(dst, b)
	return nil
}

func (f32Codec) DecodeAddElems(dst []float32, b []byte) error {
	if len(b) != 4*len(dst) {
		return fmt.Errorf("%w: %d bytes for %d float32", ErrMessage, len(b), len(dst))
	}
	addF32(dst, b)
	return nil
}

var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// f32View returns b as []float32 when that is possible without copying
// (little-endian host, 4-byte aligned), else nil.
func f32View(b []byte) []float32 {
	if !littleEndian || len(b) == 0 || uintptr(unsafe.Pointer(&b[0]))%4 != 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4)
}

// byteView returns the memory of x as bytes (host order).
func byteView(x []float32) []byte {
	if len(x) == 0 {
		return []byte{}
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), 4*len(x))
}

// decodeF32 sets dst from little-endian b (len(b) == 4·len(dst)).
func decodeF32(dst []float32, b []byte) {
	if littleEndian {
		copy(byteView(dst), b)
		return
	}
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
}

// addF32 adds little-endian b to dst (len(b) == 4·len(dst)), element by
// element (vectorized where the CPU allows: the same bits).
func addF32(dst []float32, b []byte) { kernels.DecodeAddFloat32(dst, b) }

// addTo sets dst += src (equal lengths).
func addTo(dst, src []float32) { kernels.Add(dst, src[:len(dst)]) }

// scaleChunk is the elements addScaleF32 adds before it scales them,
// while they are in cache.
const scaleChunk = 16 << 10

// addScaleF32 sets dst = (dst + b)·s for little-endian b (len(b) ==
// 4·len(dst)), rounding after the addition as addF32 followed by a scale
// would (it is that, a cache-sized chunk at a time).
func addScaleF32(dst []float32, b []byte, s float32) {
	for lo := 0; lo < len(dst); lo += scaleChunk {
		hi := min(lo+scaleChunk, len(dst))
		kernels.DecodeAddFloat32(dst[lo:hi], b[4*lo:4*hi])
		kernels.Scale(dst[lo:hi], s)
	}
}

// fuseScales fills fuse (len(ops), zeroed) for Exec.fuse, using ndep
// (len(ops)) as scratch: reduce i gets j+1 and scale j gets -1 when j is
// an FnScale with Deps {i, NoDep} over the same region as i, i is an
// FnReduce from BufStage, and no other op depends on i (so nothing can see
// the region between the two).
func fuseScales(fuse []int32, ndep []uint8, ops []Op) {
	clear(ndep)
	for j := range ops {
		for _, d := range ops[j].Deps {
			if d >= 0 && int(d) < len(ops) && ndep[d] < 2 {
				ndep[d]++
			}
		}
	}
	for j := range ops {
		sc := &ops[j]
		i := sc.Deps[0]
		if sc.Kind != Compute || sc.Fn != FnScale || i < 0 || int(i) >= len(ops) || sc.Deps[1] != NoDep || sc.Dst != sc.Src {
			continue
		}
		rd := &ops[i]
		if ndep[i] != 1 || rd.Kind != Compute || rd.Fn != FnReduce || rd.Src != BufStage || rd.Dst != sc.Dst {
			continue
		}
		c0, n0 := rd.Chunks()
		if c1, n1 := sc.Chunks(); c0 != c1 || n0 != n1 {
			continue
		}
		fuse[i], fuse[j] = int32(j)+1, -1
	}
}

// mustIndex is index for ops the driver passed in (already checked by
// the op's region lookup).
func (e *Exec) mustIndex(op *Op) int {
	i, _ := e.index(op)
	return i
}

// Errors of the executor.
var (
	// ErrMessage: a received message or payload has the wrong size or
	// content for its op.
	ErrMessage = errors.New("allreduce: bad message")
	// ErrExec: an op cannot run on this executor (missing hook, wrong
	// buffer, op not from the executor's program).
	ErrExec = errors.New("allreduce: cannot execute op")
)

// ExecOption configures an Exec.
type ExecOption func(*execConfig) error

type execConfig struct {
	codec   ElementCodec
	payload PayloadCodec
	two     TwoPhaseHook
	low     LowRankHook
}

// WithElementCodec sets the codec of dense hops (default F32). nil keeps F32.
func WithElementCodec(c ElementCodec) ExecOption {
	return func(cfg *execConfig) error {
		if c != nil {
			cfg.codec = c
		}
		return nil
	}
}

// WithPayloadCodec sets the SparseGather scheme's codec (required there).
func WithPayloadCodec(c PayloadCodec) ExecOption {
	return func(cfg *execConfig) error { cfg.payload = c; return nil }
}

// WithTwoPhase sets the TwoPhaseSign scheme's error state (required there).
func WithTwoPhase(h TwoPhaseHook) ExecOption {
	return func(cfg *execConfig) error { cfg.two = h; return nil }
}

// WithLowRank sets the LowRank scheme's PowerSGD steps (required there).
func WithLowRank(h LowRankHook) ExecOption {
	return func(cfg *execConfig) error { cfg.low = h; return nil }
}

// Exec is the Executor of every program this package generates: it holds
// one rank's float32 data (BufData), staged messages (BufStage), payload
// slots (BufPayload) and the LowRank factors (BufAux), and runs every Fn of
// every scheme on them (see the generators' doc comments for what each Fn
// means per scheme).
//
// Dense hops use the ElementCodec. With F32 on a little-endian host, Payload
// returns a view of the data itself (no copy) and the program's
// dependencies keep the region unchanged until the send is done. With a
// lossy codec (fp16, bf16), Payload of a float32 region first rounds the
// region in place to the codec's precision, so a sender keeps exactly the
// values its peers receive and every rank ends with the same bits.
//
// Ownership: Exec keeps data (the caller's slice) and writes the result
// into it; the caller must not touch data until the program is finished.
// Bytes handed to Deliver belong to Exec afterwards. Slices returned by
// Payload stay valid and unchanged until the Send op is reported done (by
// the program's dependencies) or Reset.
//
// Exec is not safe for concurrent use: drivers call it from one goroutine.
// Its op arguments must point into the program's Ops (&p.Ops[i]).
type Exec struct {
	cfg  execConfig
	prog *Program
	data []float32
	aux  []float32
	raw  bool // F32 on a little-endian host

	stage [][]byte // per op index: messages delivered to Recv ops into BufStage
	// fuse (raw only), per op index: for an FnReduce from BufStage whose
	// sole dependent is an FnScale of the same region, that op's index+1;
	// the reduce then scales as it adds (one pass instead of two, the same
	// bits) and the FnScale, marked fused[j] = -1, does nothing.
	fuse []int32
	ndep []uint8 // scratch of fuseScales
	// placed, per op index: an FnReduce from BufStage whose message the
	// driver already added into its region as it arrived (Placed); the
	// reduce then does nothing.
	placed  []bool
	scratch [][]byte // per op index: encoded Send payloads (non-raw codecs)
	slots   [][]byte // BufPayload slots
	own     []byte   // backing of slots written by this executor

	// TwoPhaseSign scratch
	bits, sbits                        []byte
	recvBits                           [][]byte
	scales                             [][]float32 // per rank: views of rscales
	wscales, rscales, sscales, dscales []float32
}

var _ Executor = (*Exec)(nil)

// NewExec returns an executor for program p over data (len(data) ==
// p.Elems; nil is allowed for AllGatherV and Barrier). It returns an error
// wrapping ErrExec when a scheme's hook is missing or does not fit p.
func NewExec(p *Program, data []float32, opts ...ExecOption) (*Exec, error) {
	e := &Exec{cfg: execConfig{codec: F32}}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&e.cfg); err != nil {
			return nil, err
		}
	}
	if err := e.Reset(p, data); err != nil {
		return nil, err
	}
	return e, nil
}

// Reset prepares e to run program p over data with the same options,
// reusing its memory. Staged messages and payload slots are cleared.
func (e *Exec) Reset(p *Program, data []float32) error {
	e.prog, e.data = p, data
	_, e.raw = e.cfg.codec.(f32Codec)
	e.raw = e.raw && littleEndian
	n := len(p.Ops)
	e.stage = grow(e.stage, n)
	clear(e.stage)
	e.fuse = grow(e.fuse, n)
	e.placed = grow(e.placed, n)
	clear(e.placed)
	if e.raw {
		e.ndep = grow(e.ndep, n)
		fuseScales(e.fuse, e.ndep, p.Ops)
	}
	if !e.raw {
		e.scratch = grow(e.scratch, n) // keeps the capacity of earlier buffers
	}
	nslots := 0
	switch p.Alg {
	case AlgAllGatherV, AlgSparseGather:
		nslots = p.World
	case AlgTwoPhaseSign:
		nslots = 3 * p.World
	}
	e.slots = grow(e.slots, nslots)
	clear(e.slots)
	switch p.Alg {
	case AlgAllGatherV, AlgBarrier:
	case AlgTwoPhaseSign:
		if len(data) != p.Elems || TwoPhasePaddedLen(len(data), p.World) != p.Layout.Len() {
			return fmt.Errorf("%w: %s: %d data elements, program for %d", ErrExec, p.Name, len(data), p.Elems)
		}
		if e.cfg.two == nil {
			return fmt.Errorf("%w: %s needs WithTwoPhase", ErrExec, p.Name)
		}
		if l := e.cfg.two.TwoPhaseLayout(); l.Elems() != p.Elems || l.World() != p.World || l.Block() != p.SignBlock {
			return fmt.Errorf("%w: %s: two-phase state for %d elements, %d ranks, scale block %d; program for %d, %d, %d",
				ErrExec, p.Name, l.Elems(), l.World(), l.Block(), p.Elems, p.World, p.SignBlock)
		}
	case AlgLowRank:
		h := e.cfg.low
		if h == nil {
			return fmt.Errorf("%w: %s needs WithLowRank", ErrExec, p.Name)
		}
		if len(data) != p.Elems || h.Rows()*h.Cols() != len(data) || (h.Rows()+h.Cols())*h.Rank() != p.Layout.Len() {
			return fmt.Errorf("%w: %s: hook %d×%d rank %d, data %d, factors %d", ErrExec, p.Name, h.Rows(), h.Cols(), h.Rank(), len(data), p.Layout.Len())
		}
		e.aux = grow(e.aux, p.Layout.Len())
	case AlgSparseGather:
		if e.cfg.payload == nil {
			return fmt.Errorf("%w: %s needs WithPayloadCodec", ErrExec, p.Name)
		}
		fallthrough
	default:
		if len(data) != p.Elems || p.Layout.Len() != p.Elems {
			return fmt.Errorf("%w: %s: %d data elements, program for %d", ErrExec, p.Name, len(data), p.Elems)
		}
	}
	return nil
}

// SetSlot sets payload slot i (AllGatherV: the caller's own payload in slot
// Rank before the run). Exec does not modify b; the caller must not modify
// it until the program is finished.
func (e *Exec) SetSlot(i int, b []byte) { e.slots[i] = b }

// Slot returns payload slot i (AllGatherV: rank i's payload after the run).
// The slice is owned by Exec until Reset.
func (e *Exec) Slot(i int) []byte { return e.slots[i] }

// Aux returns BufAux (LowRank: P then Q after the run).
func (e *Exec) Aux() []float32 { return e.aux }

// index returns op's index in the program.
func (e *Exec) index(op *Op) (int, error) {
	ops := e.prog.Ops
	if len(ops) > 0 {
		i := (uintptr(unsafe.Pointer(op)) - uintptr(unsafe.Pointer(&ops[0]))) / unsafe.Sizeof(Op{})
		if i < uintptr(len(ops)) && &ops[i] == op {
			return int(i), nil
		}
	}
	return 0, fmt.Errorf("%w: op does not belong to program %s", ErrExec, e.prog.Name)
}

// floats returns the float32 region of (buf, op.Chunk, op.Span).
func (e *Exec) floats(buf Buf, op *Op) ([]float32, error) {
	var x []float32
	switch buf {
	case BufData:
		x = e.data
	case BufAux:
		x = e.aux
	default:
		return nil, fmt.Errorf("%w: %v is not a float32 buffer", ErrExec, bufName(buf))
	}
	c, n := op.Chunks()
	if c < 0 {
		return x, nil
	}
	if c+n > e.prog.Layout.Chunks() {
		return nil, fmt.Errorf("%w: chunks [%d, %d) of %d", ErrExec, c, c+n, e.prog.Layout.Chunks())
	}
	lo, hi := e.prog.Layout.Region(c, n)
	return x[lo:hi], nil
}

func (e *Exec) slot(op *Op) (int, error) {
	if op.Chunk < 0 || int(op.Chunk) >= len(e.slots) {
		return 0, fmt.Errorf("%w: payload slot %d of %d", ErrExec, op.Chunk, len(e.slots))
	}
	return int(op.Chunk), nil
}

func checkSize(op *Op, n int) error {
	if op.Bytes >= 0 && int64(n) != op.Bytes {
		return fmt.Errorf("%w: %v: %d bytes, planned %d", ErrMessage, op, n, op.Bytes)
	}
	return nil
}

// Payload returns the bytes of Send op.
func (e *Exec) Payload(op *Op) ([]byte, error) {
	if op.Kind != Send {
		return nil, fmt.Errorf("%w: Payload of %v", ErrExec, op)
	}
	var b []byte
	switch op.Src {
	case BufNone:
		b = []byte{}
	case BufPayload:
		i, err := e.slot(op)
		if err != nil {
			return nil, err
		}
		if e.slots[i] == nil {
			return nil, fmt.Errorf("%w: %v: payload slot %d is empty", ErrExec, op, i)
		}
		b = e.slots[i]
	default:
		x, err := e.floats(op.Src, op)
		if err != nil {
			return nil, err
		}
		if e.raw {
			b = byteView(x)
			break
		}
		i, err := e.index(op)
		if err != nil {
			return nil, err
		}
		b = e.cfg.codec.EncodeElems(e.scratch[i][:0], x)
		e.scratch[i] = b
		if err := e.cfg.codec.DecodeElems(x, b); err != nil { // round in place
			return nil, err
		}
	}
	if err := checkSize(op, len(b)); err != nil {
		return nil, err
	}
	return b, nil
}

// Deliver takes the message received for Recv op.
func (e *Exec) Deliver(op *Op, b []byte) error {
	if op.Kind != Recv {
		return fmt.Errorf("%w: Deliver to %v", ErrExec, op)
	}
	if err := checkSize(op, len(b)); err != nil {
		if e.prog.Alg == AlgTwoPhaseSign && op.Dst == BufPayload {
			return e.twoPhaseSizeError(op, b, err)
		}
		return err
	}
	if b == nil {
		b = []byte{} // nil marks "nothing received" in stage and slots
	}
	switch op.Dst {
	case BufNone:
		if len(b) != 0 {
			return fmt.Errorf("%w: %v: %d bytes, want none", ErrMessage, op, len(b))
		}
		return nil
	case BufStage:
		i, err := e.index(op)
		if err != nil {
			return err
		}
		e.stage[i] = b
		return nil
	case BufPayload:
		i, err := e.slot(op)
		if err != nil {
			return err
		}
		e.slots[i] = b
		return nil
	}
	x, err := e.floats(op.Dst, op)
	if err != nil {
		return err
	}
	if e.raw {
		if len(b) != 4*len(x) {
			return fmt.Errorf("%w: %v: %d bytes for %d float32", ErrMessage, op, len(b), len(x))
		}
		decodeF32(x, b)
		return nil
	}
	if err := e.cfg.codec.DecodeElems(x, b); err != nil {
		return fmt.Errorf("%w: %v: %w", ErrMessage, op, err)
	}
	return nil
}

// Run executes Compute op.
func (e *Exec) Run(op *Op) error {
	if op.Kind != Compute {
		return fmt.Errorf("%w: Run of %v", ErrExec, op)
	}
	switch op.Fn {
	case FnBarrier, FnNone:
		return nil
	case FnReduce:
		dst, err := e.floats(op.Dst, op)
		if err != nil {
			return err
		}
		if op.Src != BufStage {
			src, err := e.floats(op.Src, op)
			if err != nil {
				return err
			}
			addTo(dst, src)
			return nil
		}
		if k := e.mustIndex(op); e.placed[k] {
			e.placed[k] = false
			return nil // added as it arrived (Placed)
		}
		i := op.Deps[0]
		if i < 0 || int(i) >= len(e.stage) || e.stage[i] == nil {
			return fmt.Errorf("%w: %v: no staged message from op %d", ErrExec, op, i)
		}
		b := e.stage[i]
		e.stage[i] = nil
		if e.raw {
			if len(b) != 4*len(dst) {
				return fmt.Errorf("%w: %v: %d bytes for %d float32", ErrMessage, op, len(b), len(dst))
			}
			if j := e.fuse[e.mustIndex(op)]; j > 0 {
				addScaleF32(dst, b, e.prog.Ops[j-1].Scale)
				return nil
			}
			addF32(dst, b)
			return nil
		}
		if err := e.cfg.codec.DecodeAddElems(dst, b); err != nil {
			return fmt.Errorf("%w: %v: %w", ErrMessage, op, err)
		}
		return nil
	case FnCopy:
		dst, err := e.floats(op.Dst, op)
		if err != nil {
			return err
		}
		src, err := e.floats(op.Src, op)
		if err != nil {
			return err
		}
		copy(dst, src)
		return nil
	case FnScale:
		dst, err := e.floats(op.Dst, op)
		if err != nil {
			return err
		}
		if e.raw && e.fuse[e.mustIndex(op)] < 0 {
			return nil // done by the FnReduce before it
		}
		kernels.Scale(dst, op.Scale)
		return nil
	case FnZero:
		dst, err := e.floats(op.Dst, op)
		if err != nil {
			return err
		}
		clear(dst)
		return nil
	}
	switch e.prog.Alg {
	case AlgSparseGather:
		return e.runSparse(op)
	case AlgTwoPhaseSign:
		return e.runTwoPhase(op)
	case AlgLowRank:
		return e.runLowRank(op)
	}
	return fmt.Errorf("%w: %v in %s", ErrExec, op, e.prog.Name)
}

func (e *Exec) runSparse(op *Op) error {
	switch op.Fn {
	case FnEncode:
		i, err := e.slot(op)
		if err != nil {
			return err
		}
		b, err := e.cfg.payload.Encode(e.own[:0], e.data)
		if err != nil {
			return err
		}
		if b == nil {
			b = []byte{}
		}
		e.own = b
		e.slots[i] = b
		return nil
	case FnDecodeAdd:
		i, err := e.slot(op)
		if err != nil {
			return err
		}
		if e.slots[i] == nil {
			return fmt.Errorf("%w: %v: payload slot %d is empty", ErrExec, op, i)
		}
		if err := e.cfg.payload.DecodeAdd(e.data, e.slots[i]); err != nil {
			return fmt.Errorf("%w: payload of rank %d: %w", ErrMessage, i, err)
		}
		return nil
	}
	return fmt.Errorf("%w: %v in %s", ErrExec, op, e.prog.Name)
}

func (e *Exec) runLowRank(op *Op) error {
	h := e.cfg.low
	np := h.Rows() * h.Rank()
	p, q := e.aux[:np], e.aux[np:]
	switch op.Fn {
	case FnEncode:
		h.ComputeP(p, e.data)
	case FnOrtho:
		h.Orthogonalize(p)
	case FnProject:
		h.ComputeQ(q, e.data, p)
	case FnDecode:
		h.Reconstruct(e.data, p, q)
		h.SetQ(q)
	default:
		return fmt.Errorf("%w: %v in %s", ErrExec, op, e.prog.Name)
	}
	return nil
}

// Placement says where a driver may write the message of a Recv op as its
// bytes arrive (Placing): copied into Dst, or added to the float32 in Dst
// (then, if Scaled, multiplied by Scale, rounding after the addition as a
// separate scaling would).
type Placement struct {
	Dst    []byte // host-order float32 memory of the executor
	Add    bool
	Scaled bool
	Scale  float32
}

// Placing is implemented by an Executor whose Recv messages a driver may
// apply where they belong as they arrive, instead of handing the whole
// message to Deliver and then running the FnReduce that consumes it: one
// pass over memory instead of two or three. Exec implements it for F32 on
// a little-endian host.
type Placing interface {
	// Place returns where the message of Recv op recv may go as it
	// arrives. For a Recv into a float32 buffer, reduce is nil and the
	// message is copied into its region. For a Recv into BufStage, reduce
	// is the FnReduce that consumes it (Deps[0] is recv): the message is
	// added into reduce's region (and scaled, when the reduce is fused with
	// an FnScale). ok is false when the message must go through Deliver
	// (another codec, a payload, a size not planned exactly).
	//
	// The driver may use the placement only when the region's other
	// writers are done: every dependency of reduce other than recv has
	// finished (the Recv's own are, as it is ready). The Dst slice belongs
	// to the driver until it reports recv done.
	Place(recv, reduce *Op) (pl Placement, ok bool)
	// Placed records that the message of recv was applied as Place said,
	// instead of Deliver: reduce (if not nil) then does nothing when run.
	Placed(recv, reduce *Op) error
}

var _ Placing = (*Exec)(nil)

// Place implements Placing.
func (e *Exec) Place(recv, reduce *Op) (Placement, bool) {
	if !e.raw || recv.Kind != Recv {
		return Placement{}, false
	}
	ri, err := e.index(recv)
	if err != nil {
		return Placement{}, false
	}
	var pl Placement
	var x []float32
	switch {
	case reduce == nil && (recv.Dst == BufData || recv.Dst == BufAux):
		x, err = e.floats(recv.Dst, recv)
	case reduce != nil && recv.Dst == BufStage:
		k, err := e.index(reduce)
		if err != nil || reduce.Kind != Compute || reduce.Fn != FnReduce || reduce.Src != BufStage || int(reduce.Deps[0]) != ri {
			return Placement{}, false
		}
		if x, err = e.floats(reduce.Dst, reduce); err != nil {
			return Placement{}, false
		}
		pl.Add = true
		if j := e.fuse[k]; j > 0 {
			pl.Scaled, pl.Scale = true, e.prog.Ops[j-1].Scale
		}
	default:
		return Placement{}, false
	}
	if err != nil || len(x) == 0 || recv.Bytes != 4*int64(len(x)) {
		return Placement{}, false
	}
	pl.Dst = byteView(x)
	return pl, true
}

// Placed implements Placing.
func (e *Exec) Placed(recv, reduce *Op) error {
	if _, err := e.index(recv); err != nil {
		return err
	}
	if reduce == nil {
		return nil
	}
	k, err := e.index(reduce)
	if err != nil {
		return err
	}
	e.placed[k] = true
	return nil
}
