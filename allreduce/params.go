package allreduce

import (
	"errors"
	"fmt"
)

// Algorithm names a program generator.
type Algorithm uint8

const (
	AlgRing            Algorithm = iota // Ring: ring all-reduce (reduce-scatter + all-gather), pipelined
	AlgTree                             // Tree: double binary tree all-reduce, pipelined
	AlgHalvingDoubling                  // HalvingDoubling: recursive halving-doubling all-reduce
	AlgReduceScatter                    // ReduceScatter: ring reduce-scatter
	AlgAllGather                        // AllGather: ring all-gather of equal float32 blocks
	AlgAllGatherV                       // AllGatherV: ring all-gather of variable-size byte payloads
	AlgAllToAll                         // AllToAll: pairwise exchange of equal float32 blocks
	AlgBroadcast                        // Broadcast: pipelined binomial tree from Root
	AlgBarrier                          // Barrier: dissemination barrier, empty messages
	AlgSparseGather                     // SparseGather: payload all-gather + rank-order DecodeAdd + 1/N
	AlgTwoPhaseSign                     // TwoPhaseSign: 1-bit Adam's two-phase compressed all-reduce
	AlgLowRank                          // LowRank: PowerSGD's P-then-Q all-reduce
	numAlgorithms
)

var algNames = [...]string{"ring", "tree", "halving-doubling", "reduce-scatter", "all-gather", "all-gather-v", "all-to-all", "broadcast", "barrier", "sparse-gather", "two-phase-sign", "low-rank"}

func (a Algorithm) String() string {
	if int(a) < len(algNames) {
		return algNames[a]
	}
	return fmt.Sprintf("Algorithm(%d)", uint8(a))
}

// Algorithms lists every algorithm, in enum order.
func Algorithms() []Algorithm {
	out := make([]Algorithm, numAlgorithms)
	for i := range out {
		out[i] = Algorithm(i)
	}
	return out
}

// ParseAlgorithm returns the algorithm whose String is s.
func ParseAlgorithm(s string) (Algorithm, error) {
	for i, n := range algNames {
		if n == s {
			return Algorithm(i), nil
		}
	}
	return 0, fmt.Errorf("%w: unknown algorithm %q", ErrParams, s)
}

// Reduces reports whether a's programs sum contributions element-wise with
// FnReduce (every element reduced exactly World−1 times over all ranks).
func (a Algorithm) Reduces() bool {
	switch a {
	case AlgRing, AlgTree, AlgHalvingDoubling, AlgReduceScatter, AlgLowRank:
		return true
	}
	return false
}

// ErrParams is wrapped by every error about invalid generator parameters.
var ErrParams = errors.New("allreduce: invalid parameters")

// Params are the inputs of a program generator. The zero value of an
// optional field selects its default.
type Params struct {
	World int // number of ranks, >= 1
	Rank  int // this rank, 0 <= Rank < World

	// Elems is the float32 element count of BufData: the vector to reduce
	// (Ring, Tree, HalvingDoubling, ReduceScatter, SparseGather,
	// TwoPhaseSign), the whole gathered/exchanged/broadcast vector
	// (AllGather, AllToAll, Broadcast), or Rows·Cols (LowRank). Unused by
	// AllGatherV and Barrier.
	Elems int

	// Segments splits each chunk into this many pieces so that sends of
	// one piece overlap the reduction of another (Ring, Tree,
	// ReduceScatter, AllGather, Broadcast, and LowRank's rings). 0 means 1.
	Segments int

	// ElemBytes is the wire size of one element on dense hops, used for the
	// planned Bytes of Send/Recv ops: 4 for fp32 (the default when 0), 2 for
	// fp16/bf16. It must match the executor's ElementCodec.
	ElemBytes int

	// Average divides the reduced result by World (FnScale 1/World on the
	// reducing rank before it is distributed, so every rank gets the same
	// bits). Reducing algorithms only; SparseGather and LowRank always
	// average.
	Average bool

	// Root is the broadcasting rank (Broadcast).
	Root int

	// Sizes are the payload bytes contributed by each rank (AllGatherV,
	// SparseGather). nil means data-dependent: Bytes is -1 in the program.
	Sizes []int64

	// SignBlock is TwoPhaseSign's scale block: one worker scale per block
	// of SignBlock elements of the padded vector and one server scale per
	// block and chunk (see TwoPhaseLayout); 0 means one worker scale for
	// the whole vector and one server scale per chunk (DeepSpeed's). It
	// must be 0 or a positive multiple of 8.
	SignBlock int

	// Rows, Cols and Components shape LowRank: M is Rows×Cols (row-major in
	// BufData), P is Rows×Components and Q is Cols×Components.
	Rows, Cols, Components int
}

func (p *Params) segments() int {
	if p.Segments <= 0 {
		return 1
	}
	return p.Segments
}

func (p *Params) elemBytes() int64 {
	if p.ElemBytes <= 0 {
		return 4
	}
	return int64(p.ElemBytes)
}

// maxChunks bounds the number of chunks of a program (Span and Chunk are
// small integers).
const maxChunks = 1 << 30

func (p *Params) validate(alg Algorithm) error {
	if p.World < 1 {
		return fmt.Errorf("%w: World %d < 1", ErrParams, p.World)
	}
	if p.Rank < 0 || p.Rank >= p.World {
		return fmt.Errorf("%w: Rank %d not in [0, %d)", ErrParams, p.Rank, p.World)
	}
	if p.Elems < 0 {
		return fmt.Errorf("%w: Elems %d < 0", ErrParams, p.Elems)
	}
	if p.Segments < 0 || p.ElemBytes < 0 {
		return fmt.Errorf("%w: negative Segments or ElemBytes", ErrParams)
	}
	if int64(p.World)*int64(p.segments())*2 > maxChunks {
		return fmt.Errorf("%w: World·Segments too large", ErrParams)
	}
	switch alg {
	case AlgAllToAll:
		if p.Elems%p.World != 0 {
			return fmt.Errorf("%w: all-to-all of %d elements over %d ranks: not divisible", ErrParams, p.Elems, p.World)
		}
	case AlgBroadcast:
		if p.Root < 0 || p.Root >= p.World {
			return fmt.Errorf("%w: Root %d not in [0, %d)", ErrParams, p.Root, p.World)
		}
	case AlgHalvingDoubling:
		if p.World > 1<<16 {
			return fmt.Errorf("%w: halving-doubling over %d > 65536 ranks", ErrParams, p.World)
		}
	case AlgAllGatherV, AlgSparseGather:
		if p.Sizes != nil {
			if len(p.Sizes) != p.World {
				return fmt.Errorf("%w: %d Sizes for World %d", ErrParams, len(p.Sizes), p.World)
			}
			for i, s := range p.Sizes {
				if s < 0 {
					return fmt.Errorf("%w: Sizes[%d] = %d < 0", ErrParams, i, s)
				}
			}
		}
	case AlgLowRank:
		if p.Rows < 1 || p.Cols < 1 || p.Components < 1 {
			return fmt.Errorf("%w: low-rank shape %d×%d rank %d", ErrParams, p.Rows, p.Cols, p.Components)
		}
		if p.Rows*p.Cols != p.Elems {
			return fmt.Errorf("%w: low-rank %d×%d != Elems %d", ErrParams, p.Rows, p.Cols, p.Elems)
		}
	case AlgTwoPhaseSign:
		if int64(TwoPhasePaddedLen(p.Elems, p.World)) > int64(maxChunks)*8 {
			return fmt.Errorf("%w: two-phase vector too large", ErrParams)
		}
		if _, err := NewTwoPhaseLayout(p.Elems, p.World, p.SignBlock); err != nil {
			return err
		}
	}
	if alg >= numAlgorithms {
		return fmt.Errorf("%w: unknown algorithm %v", ErrParams, alg)
	}
	return nil
}

// Generate builds rank p.Rank's program of algorithm alg.
func Generate(alg Algorithm, p Params) (*Program, error) {
	prog := new(Program)
	if err := GenerateInto(prog, alg, p); err != nil {
		return nil, err
	}
	return prog, nil
}

// GenerateInto is Generate writing into dst, reusing the memory of dst.Ops
// and dst.Layout.Offs (the previous contents are overwritten; programs that
// share these slices must not be in use). Generating allocates nothing when
// dst's slices are large enough, except for the scheme programs
// (TwoPhaseSign, LowRank) and HalvingDoubling, which need O(ops) scratch.
func GenerateInto(dst *Program, alg Algorithm, p Params) error {
	if err := p.validate(alg); err != nil {
		return err
	}
	b := builder{p: dst, n: p.World, r: p.Rank, eb: p.elemBytes()}
	dst.Name = alg.String()
	dst.Alg = alg
	dst.Rank = p.Rank
	dst.World = p.World
	dst.Elems = p.Elems
	dst.SignBlock = 0
	dst.Ops = dst.Ops[:0]
	switch alg {
	case AlgRing:
		b.genRing(&p, true, true)
	case AlgReduceScatter:
		b.genRing(&p, true, false)
	case AlgAllGather:
		b.genRing(&p, false, true)
	case AlgTree:
		b.genTree(&p)
	case AlgHalvingDoubling:
		b.genHD(&p)
	case AlgAllGatherV:
		b.genAllGatherV(&p)
	case AlgAllToAll:
		b.genAllToAll(&p)
	case AlgBroadcast:
		b.genBroadcast(&p)
	case AlgBarrier:
		b.genBarrier(&p)
	case AlgSparseGather:
		b.genSparseGather(&p)
	case AlgTwoPhaseSign:
		b.genTwoPhase(&p)
	case AlgLowRank:
		b.genLowRank(&p)
	}
	return nil
}

// Ring returns rank p.Rank's ring all-reduce program on BufData: a
// reduce-scatter then an all-gather, each of World−1 steps, every chunk split
// into p.Segments segments so that the send of one segment overlaps the
// reduction of another.
//
// Layout: World blocks of EvenLayout(Elems, World), each split evenly into
// Segments chunks: chunk c·S+s is segment s of block c. Rank r finishes the
// reduce-scatter owning block r.
//
// Ops, per step k and segment s (right = r+1, left = r−1, mod World):
//
//	reduce-scatter: send   data[block r−1−k, s] -> right     #k·S+s
//	                recv   stage[block r−2−k, s] <- left     #k·S+s
//	                reduce data[c] += stage (the Recv is the reduce's Deps[0])
//	(Average)       scale  data[block r, s] *= 1/World
//	all-gather:     send   data[block r−k, s] -> right       #(World−1+k)·S+s
//	                recv   data[block r−1−k, s] <- left      (overwrites)
//
// Block c's sum is accumulated in the order c+1, c+2, …, c (mod World) and
// then copied, so every rank ends with the same bits.
func Ring(p Params) (*Program, error) { return Generate(AlgRing, p) }

// Tree returns rank p.Rank's double-binary-tree all-reduce program on
// BufData (NCCL's trees: tree 0 is the binary tree in which rank 0 is the
// root with one child and a rank with lowest set bit b has children rank∓b/2;
// tree 1 mirrors it for even World and shifts it by one for odd World, so at
// most one rank is interior in both).
//
// Layout: EvenLayout(Elems, 2·Segments); tree t carries chunks t·S..t·S+S−1.
// Per chunk c (message numbers 2c going up, 2c+1 going down):
//
//	recv stage[c] <- child 0; recv stage[c] <- child 1
//	reduce data[c] += child 0's; reduce data[c] += child 1's   (own + c0 + c1)
//	send data[c] -> parent; recv data[c] <- parent (the root: scale if Average)
//	send data[c] -> child 0; send data[c] -> child 1
//
// Latency grows with log2(World) instead of World; every node sends and
// receives about 2·Elems·ElemBytes bytes in total.
func Tree(p Params) (*Program, error) { return Generate(AlgTree, p) }

// HalvingDoubling returns rank p.Rank's recursive halving-doubling
// (Rabenseifner) all-reduce program on BufData: 2·log2(World) steps, for
// small messages.
//
// With P the largest power of two <= World and E = World−P: ranks 2i and
// 2i+1 (i < E) first combine (the even rank sends its whole vector, message
// 0, and later receives the result, the last message); the P remaining ranks
// (virtual rank v) run a reduce-scatter by recursive vector halving (step j
// exchanges half of the current range with v XOR P/2^j, one message with
// Span chunks, reduced from BufStage) and an all-gather by recursive
// doubling. Layout: EvenLayout(Elems, P); v owns block v after the
// reduce-scatter (scaled there if Average). Message number = step index.
func HalvingDoubling(p Params) (*Program, error) { return Generate(AlgHalvingDoubling, p) }

// ReduceScatter returns the reduce-scatter half of Ring: afterwards rank r's
// block r (chunks [r·S, (r+1)·S), see Ring's layout) holds the sum (times
// 1/World if Average); other blocks hold partial sums.
func ReduceScatter(p Params) (*Program, error) { return Generate(AlgReduceScatter, p) }

// AllGather returns the all-gather half of Ring on BufData: rank r
// contributes block r (Ring's layout) and every rank ends with all blocks.
// The rest of the buffer's initial contents are ignored.
func AllGather(p Params) (*Program, error) { return Generate(AlgAllGather, p) }

// AllGatherV returns a ring all-gather of variable-size byte payloads in
// BufPayload slots 0..World−1: rank r's own payload is slot r (Exec.SetSlot
// before the run); afterwards slot j holds rank j's payload on every rank.
// Step k (message k): send slot r−k to r+1, receive slot r−1−k from r−1.
// Planned Bytes are p.Sizes[slot], or -1 when p.Sizes is nil.
func AllGatherV(p Params) (*Program, error) { return Generate(AlgAllGatherV, p) }

// AllToAll returns a pairwise all-to-all on BufData (Elems divisible by
// World; Layout EvenLayout(Elems, World)): afterwards chunk j of rank r holds
// what was chunk r of rank j. Sends come first (chunk r+k to rank r+k), then
// receives (chunk r−k from rank r−k, each after the send of that chunk); one
// message per pair, number 0.
func AllToAll(p Params) (*Program, error) { return Generate(AlgAllToAll, p) }

// Broadcast returns a pipelined binomial-tree broadcast of BufData from
// p.Root. Layout: EvenLayout(Elems, Segments); with v = (rank − Root) mod
// World, v's parent is v without its highest set bit and its children are
// v+2^k for 2^k > v, served largest subtree first. Per segment s (message s):
// recv data[s] <- parent, then send data[s] to each child.
func Broadcast(p Params) (*Program, error) { return Generate(AlgBroadcast, p) }

// Barrier returns a dissemination barrier: in round k = 0..⌈log2 World⌉−1
// (message k) send an empty message (BufNone, Bytes 0) to rank+2^k after
// round k−1's receive, and receive one from rank−2^k. No rank finishes
// before every rank has started.
func Barrier(p Params) (*Program, error) { return Generate(AlgBarrier, p) }

// SparseGather returns the Gather-aggregation scheme's program (top-k,
// random-k, DGC, QSGD), needing WithPayloadCodec on the executor:
//
//	encode payload[Rank] <- data        slot Rank = PayloadCodec.Encode(data)
//	zero data                           (after the encode)
//	ring all-gather of slots 0..N−1     as AllGatherV (messages 0..N−2)
//	decode-add data <- payload[j]       for j = 0..N−1 in order: PayloadCodec.DecodeAdd
//	scale data *= 1/N
//
// The result, the mean of all decoded payloads summed in rank order, is the
// same bits on every rank. Bytes are p.Sizes[j] or -1. Layout: one chunk.
func SparseGather(p Params) (*Program, error) { return Generate(AlgSparseGather, p) }

// TwoPhaseSign returns the two-phase compressed all-reduce of 1-bit Adam
// (docs/algorithms.md §2.2), needing WithTwoPhase on the executor. With d = Elems,
// d′ = TwoPhasePaddedLen(d, N), B = d′/(8N) and the scale blocks of
// TwoPhaseLayout(d, N, SignBlock), chunk c's messages are [version 2 | scale
// count n_c (24-bit) | n_c float32 little-endian scales | B sign bytes, MSB
// first, 1 for x >= 0] (TwoPhaseLayout.MessageBytes): phase 1's
// all-to-all of sign chunks carries the all-gather of worker scales, and
// phase 2's all-gather of server sign chunks carries the server scales (the
// same bytes as separate scale messages, half the messages). Payload slots:
// 0..N−1 outgoing (slot c for rank c), N..2N−1 incoming (slot N+j from rank
// j; N+Rank is the own chunk), 2N..3N−1 the server chunks.
//
//	encode payload <- data            steps 1–4: TwoPhaseHook.WorkerCompress
//	send payload[c] -> c #0; recv payload[N+j] <- j #0
//	server payload[2N+Rank]           step 6: TwoPhaseHook.ServerStep over slots N..2N−1
//	ring all-gather of slots 2N..3N−1 (messages 1..N−1)
//	decode data <- payload            step 8: data[chunk c] = s_s(c)·sgn(slot 2N+c), first d
//
// Layout: N chunks of d′/N elements of the padded vector (Layout.Len() = d′).
func TwoPhaseSign(p Params) (*Program, error) { return Generate(AlgTwoPhaseSign, p) }

// LowRank returns PowerSGD's P-then-Q all-reduce (docs/algorithms.md §4.1), needing
// WithLowRank on the executor. BufData is M (Rows×Cols, row-major); BufAux
// is P (Rows×R) then Q (Cols×R), R = Components, row-major.
//
//	encode aux <- data      P = M·Q (LowRankHook.ComputeP, the hook's Q)
//	ring all-reduce of P with scale 1/N     (messages from 0)
//	ortho aux               P̂ = orthogonalize(P)
//	project aux <- data     Q = Mᵀ·P̂ (LowRankHook.ComputeQ)
//	ring all-reduce of Q with scale 1/N     (messages from 2(N−1)S)
//	decode data <- aux      M ← P̂·Qᵀ (Reconstruct), then SetQ(Q) (warm start)
//
// Chunk -1 on these compute ops means the factor(s) the function names.
// Layout (over BufAux): P in N blocks of Segments chunks, then Q likewise.
// Every rank ends with the same P̂, Q and P̂·Qᵀ bits.
func LowRank(p Params) (*Program, error) { return Generate(AlgLowRank, p) }

// TwoPhasePaddedLen returns d′ for a d-element vector over world ranks
// (docs/algorithms.md §2.2): d rounded up to a multiple of world·lcm(world, 8), so that
// each of the world chunks of d′/world elements packs into d′/(8·world)
// whole bytes.
func TwoPhasePaddedLen(d, world int) int {
	g := 8
	for a := world; a != 0; {
		g, a = a, g%a
	}
	unit := world * (8 * world / g)
	return (d + unit - 1) / unit * unit
}
