// Package allreduce expresses collective algorithms as programs: for each rank,
// a list of operations (send, receive, compute) with explicit dependencies,
// built with plain loops from the world size, the rank and a chunk layout.
//
// Nothing in this package does I/O, reads a clock, draws global randomness or
// starts a goroutine. A Machine steps a program: it is told which operations
// finished and answers which may start. Two drivers carry the operations out:
// package worker over a real transport, and package sim in virtual time. The
// data itself lives with an Executor that the driver owns; Exec is the
// executor of every program generated here.
//
// Generators: Generate(alg, Params) or the functions named after the
// algorithms (Ring, Tree, HalvingDoubling, ReduceScatter, AllGather,
// AllGatherV, AllToAll, Broadcast, Barrier) and the compressed schemes
// (SparseGather, TwoPhaseSign, LowRank). Each function's doc comment states
// its layout, its ops and what each Fn means in it; GenerateAll builds every
// rank's program with their ops in shared blocks. Check verifies the
// programs of all ranks together; Model and Policy give the alpha-beta cost
// of each algorithm and select one. Machines reset into one Arena share
// memory for their per-op state (the simulator steps thousands at once).
//
// Driver contract:
//   - A message is identified by (collective id, Op.Msg) between a pair of
//     ranks in one direction; drivers use the transport tag
//     collectiveID<<32 | uint64(uint32(Msg)).
//   - For a Send, call Executor.Payload when the op is ready; the bytes stay
//     valid until the op is reported Done. For a Recv, post the receive when
//     ready and call Executor.Deliver with the message, then Done. For a
//     Compute, call Executor.Run, then Done.
//   - Op.Bytes is the planned message size (-1 if data-dependent) and, for
//     Compute ops, the number of float32 elements touched (a cost hint for
//     the simulator's compute model).
//   - Reductions happen in an order fixed by the program, never by arrival
//     order, so every rank (and every run, real or simulated) gets the same
//     bits.
package allreduce

import (
	"fmt"
	"strings"
)

// OpKind is the kind of an operation.
type OpKind uint8

const (
	// Send transmits region (Src, Chunk) to Peer as message number Msg.
	Send OpKind = iota
	// Recv receives message number Msg from Peer into region (Dst, Chunk).
	Recv
	// Compute runs Fn on the executor's buffers.
	Compute
)

func (k OpKind) String() string {
	switch k {
	case Send:
		return "send"
	case Recv:
		return "recv"
	case Compute:
		return "compute"
	}
	return fmt.Sprintf("OpKind(%d)", uint8(k))
}

// Fn names the computation of a Compute operation. Its meaning on buffers is
// fixed here and, for the scheme-specific functions, in the doc comment of the
// scheme's generator; how it runs (which codec, which error-feedback state) is
// the Executor's business.
//
// Regions: (Buf, Chunk, Span) names chunks [Chunk, Chunk+Span) of a float32
// buffer under the program's Layout (Span 0 counts as 1); Chunk -1 is the
// whole buffer. For BufPayload, Chunk is a slot number and Span is unused.
type Fn uint8

const (
	FnNone Fn = iota
	// FnReduce: Dst[region] += decode(message of the Recv op Deps[0]) when
	// Src is BufStage (the staged message of that Recv), or
	// Dst[region] += Src[region] for two float32 buffers.
	FnReduce
	// FnCopy: Dst[region] = Src[region].
	FnCopy
	// FnScale: Dst[region] *= Scale (e.g. 1/N to average).
	FnScale
	// FnEncode: payload = encode(Src); scheme-specific (SparseGather,
	// TwoPhaseSign, LowRank: see their generators).
	FnEncode
	// FnDecode: Dst = decode(payloads); scheme-specific.
	FnDecode
	// FnDecodeAdd: Dst[region] += decode(payload slot Src Chunk) (sparse
	// scatter-add, SparseGather).
	FnDecodeAdd
	// FnServer: the server step of the two-phase sign scheme (docs/algorithms.md §2.2
	// step 6).
	FnServer
	// FnOrtho: orthogonalize the P factor (LowRank).
	FnOrtho
	// FnProject: Q = Mᵀ·P̂ (LowRank).
	FnProject
	// FnBarrier: no data; a join point for dependencies.
	FnBarrier
	// FnZero: Dst[region] = 0.
	FnZero
)

var fnNames = [...]string{"none", "reduce", "copy", "scale", "encode", "decode", "decode-add", "server", "ortho", "project", "barrier", "zero"}

func (f Fn) String() string {
	if int(f) < len(fnNames) {
		return fnNames[f]
	}
	return fmt.Sprintf("Fn(%d)", uint8(f))
}

// Buf identifies one of the executor's buffers. What each id holds is fixed by
// the scheme that generated the program (see the Buf constants).
type Buf int16

const (
	BufNone Buf = -1       // no data: an empty message (Barrier)
	BufData Buf = iota - 1 // the caller's float32 vector: input, then result
	// BufStage holds received messages until a later FnReduce consumes
	// them: a Recv into BufStage keeps its message, and the FnReduce whose
	// Deps[0] is that Recv adds it into its Dst region.
	BufStage
	BufPayload // byte payloads; Chunk is the slot (e.g. source rank)
	BufAux     // scheme-specific float32 buffer (LowRank: P then Q)
)

// NoDep marks an unused dependency slot.
const NoDep int32 = -1

// Op is one operation of a program. Ops refer to earlier ops only: Deps[i] is
// NoDep or the index of an op in the same program that must finish first.
//
// Fields are ordered to keep an Op at 40 bytes: programs of 1000s of ranks
// are held in memory at once by the simulator.
type Op struct {
	// Bytes is, for Send/Recv, the planned message size in bytes (-1 if it
	// depends on the data); for Compute, the number of float32 elements
	// touched (a cost hint; 0 if unknown).
	Bytes int64
	Peer  int32 // Send/Recv: the other rank
	// Msg identifies a Send/Recv among the messages between this rank and
	// Peer in this direction within the program: the Send with number k
	// from a to b matches the Recv with number k from a at b. Drivers put
	// it in the low 32 bits of the transport tag.
	Msg   int32
	Chunk int32    // first chunk of the region (slot for BufPayload); -1 for the whole buffer
	Deps  [2]int32 // NoDep or indices of earlier ops that must finish first
	Scale float32  // FnScale only
	Src   Buf      // Send, Compute
	Dst   Buf      // Recv, Compute
	Kind  OpKind
	Fn    Fn     // Compute only
	Span  uint16 // number of consecutive chunks from Chunk; 0 means 1
}

// Chunks returns the region's first chunk and chunk count (Span 0 counts as
// one chunk).
func (o *Op) Chunks() (first, n int) {
	n = int(o.Span)
	if n == 0 {
		n = 1
	}
	return int(o.Chunk), n
}

// String formats o for program listings, e.g. "send data[3] -> 2 #5 (64 B)
// after 7" or "decode-add data <- payload[1] (100 el) after 5 after 6".
func (o Op) String() string {
	var b strings.Builder
	switch o.Kind {
	case Send:
		fmt.Fprintf(&b, "send %s -> %d #%d", o.side(o.Src, false), o.Peer, o.Msg)
	case Recv:
		fmt.Fprintf(&b, "recv %s <- %d #%d", o.side(o.Dst, false), o.Peer, o.Msg)
	default:
		slot := o.Src == BufPayload || o.Dst == BufPayload
		fmt.Fprintf(&b, "%s %s", o.Fn, o.side(o.Dst, slot))
		if o.Src != BufNone && o.Src != o.Dst {
			fmt.Fprintf(&b, " <- %s", o.side(o.Src, slot))
		}
		if o.Fn == FnScale {
			fmt.Fprintf(&b, " *%g", o.Scale)
		}
	}
	if o.Bytes != 0 {
		unit := "B"
		if o.Kind == Compute {
			unit = "el"
		}
		fmt.Fprintf(&b, " (%d %s)", o.Bytes, unit)
	}
	for _, d := range o.Deps {
		if d != NoDep {
			fmt.Fprintf(&b, " after %d", d)
		}
	}
	return b.String()
}

// side formats one buffer operand; whole is set for the float32 side of an
// op whose Chunk names a payload slot.
func (o Op) side(buf Buf, slot bool) string {
	name := bufName(buf)
	switch {
	case buf == BufNone:
		return name
	case slot && buf != BufPayload:
		return name
	case o.Chunk < 0:
		return name
	case o.Span > 1:
		return fmt.Sprintf("%s[%d:%d]", name, o.Chunk, int(o.Chunk)+int(o.Span))
	}
	return fmt.Sprintf("%s[%d]", name, o.Chunk)
}

func bufName(b Buf) string {
	switch b {
	case BufNone:
		return "none"
	case BufData:
		return "data"
	case BufStage:
		return "stage"
	case BufPayload:
		return "payload"
	case BufAux:
		return "aux"
	}
	return fmt.Sprintf("buf%d", b)
}

// Layout splits a buffer of Offs[len(Offs)-1] elements into chunks:
// chunk c is [Offs[c], Offs[c+1]). Chunks may be empty.
type Layout struct {
	Offs []int
}

// EvenLayout splits n elements into k chunks whose sizes differ by at most
// one, the larger ones first. It panics if k < 1 or n < 0.
func EvenLayout(n, k int) Layout {
	if k < 1 || n < 0 {
		panic("allreduce: EvenLayout needs k >= 1 and n >= 0")
	}
	offs := make([]int, k+1)
	q, r := n/k, n%k
	for c := 0; c < k; c++ {
		sz := q
		if c < r {
			sz++
		}
		offs[c+1] = offs[c] + sz
	}
	return Layout{Offs: offs}
}

// Len is the total number of elements.
func (l Layout) Len() int {
	if len(l.Offs) == 0 {
		return 0
	}
	return l.Offs[len(l.Offs)-1]
}

// Chunks is the number of chunks.
func (l Layout) Chunks() int {
	if len(l.Offs) == 0 {
		return 0
	}
	return len(l.Offs) - 1
}

// Bounds returns chunk c's [lo, hi). Chunk -1 is the whole buffer.
func (l Layout) Bounds(c int) (lo, hi int) {
	if c < 0 {
		return 0, l.Len()
	}
	return l.Offs[c], l.Offs[c+1]
}

// Region returns [lo, hi) of chunks [c, c+n). Chunk -1 is the whole buffer.
func (l Layout) Region(c, n int) (lo, hi int) {
	if c < 0 {
		return 0, l.Len()
	}
	return l.Offs[c], l.Offs[c+n]
}

// Program is the list of operations one rank runs for one collective.
type Program struct {
	Name   string    // algorithm, e.g. "ring"
	Alg    Algorithm // the generator that built it
	Rank   int
	World  int
	Elems  int    // float32 elements of BufData the program expects (Params.Elems)
	Layout Layout // chunks of the reduced/gathered float32 buffer (see each generator)
	// SignBlock is TwoPhaseSign's scale block (Params.SignBlock).
	SignBlock int
	Ops       []Op
}

// String prints the program one op per line, for golden tests and debugging.
func (p *Program) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s rank %d/%d, %d elements, layout of %d in %d chunks\n", p.Name, p.Rank, p.World, p.Elems, p.Layout.Len(), p.Layout.Chunks())
	for i, o := range p.Ops {
		fmt.Fprintf(&b, "%4d %s\n", i, o)
	}
	return b.String()
}

// KeepsMessage reports whether an Executor holds on to the message of Recv
// op o after Deliver: a Recv into BufStage or BufPayload keeps it until a
// later op consumes it. Any other message is decoded into a float32 buffer
// during Deliver and is dead afterwards.
func (o *Op) KeepsMessage() bool {
	return o.Kind == Recv && (o.Dst == BufStage || o.Dst == BufPayload)
}

// Executor holds one rank's buffers, codecs and error-feedback state and
// carries out the data side of operations. Drivers call it from one goroutine
// at a time unless an implementation documents otherwise.
type Executor interface {
	// Payload returns the bytes to transmit for a Send op. The slice stays
	// valid and unchanged until the driver reports that op done.
	Payload(op *Op) ([]byte, error)
	// Deliver hands over the bytes received for a Recv op; the executor
	// owns b afterwards. It keeps b only if op.KeepsMessage(): otherwise b
	// is dead once Deliver returns, and the driver may recycle its memory
	// (transport.Release). A message kept in BufStage is dead once the
	// FnReduce that consumes it (Deps[0]) has run; one kept in BufPayload
	// lives until the executor is reset for another run. A malformed
	// message is an error.
	Deliver(op *Op, b []byte) error
	// Run executes a Compute op.
	Run(op *Op) error
}
