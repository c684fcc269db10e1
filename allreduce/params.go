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

// Ring returns the ring all-reduce program (see AlgRing and genRing).
func Ring(p Params) (*Program, error) { return Generate(AlgRing, p) }

// Tree returns the double-binary-tree all-reduce program.
func Tree(p Params) (*Program, error) { return Generate(AlgTree, p) }

// HalvingDoubling returns the recursive halving-doubling all-reduce program.
func HalvingDoubling(p Params) (*Program, error) { return Generate(AlgHalvingDoubling, p) }

// ReduceScatter returns the ring reduce-scatter program.
func ReduceScatter(p Params) (*Program, error) { return Generate(AlgReduceScatter, p) }

// AllGather returns the ring all-gather program of equal float32 blocks.
func AllGather(p Params) (*Program, error) { return Generate(AlgAllGather, p) }

// AllGatherV returns the ring all-gather program of variable-size payloads.
func AllGatherV(p Params) (*Program, error) { return Generate(AlgAllGatherV, p) }

// AllToAll returns the pairwise all-to-all program.
func AllToAll(p Params) (*Program, error) { return Generate(AlgAllToAll, p) }

// Broadcast returns the pipelined binomial-tree broadcast program.
func Broadcast(p Params) (*Program, error) { return Generate(AlgBroadcast, p) }

// Barrier returns the dissemination barrier program.
func Barrier(p Params) (*Program, error) { return Generate(AlgBarrier, p) }

// SparseGather returns the gather-aggregation scheme's program.
func SparseGather(p Params) (*Program, error) { return Generate(AlgSparseGather, p) }

// TwoPhaseSign returns the two-phase compressed all-reduce program.
func TwoPhaseSign(p Params) (*Program, error) { return Generate(AlgTwoPhaseSign, p) }

// LowRank returns the PowerSGD P-then-Q all-reduce program.
func LowRank(p Params) (*Program, error) { return Generate(AlgLowRank, p) }

// TwoPhasePaddedLen returns d′ for a d-element vector over world ranks
// (specs §2.2): d rounded up to a multiple of world·lcm(world, 8), so that
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
