// Package allreduce expresses collective algorithms as programs: for each rank,
// a list of operations (send, receive, compute) with explicit dependencies,
// built with plain loops from the world size, the rank and a chunk layout.
//
// Nothing in this package does I/O, reads a clock, draws global randomness or
// starts a goroutine. A Machine steps a program: it is told which operations
// finished and answers which may start. Two drivers carry the operations out:
// package worker over a real transport, and package sim in virtual time. The
// data itself lives with an Executor that the driver owns.
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
// fixed here; how it runs (which codec, which error-feedback state) is the
// Executor's business.
type Fn uint8

const (
	FnNone      Fn = iota
	FnReduce       // Dst[Chunk] += Src[Chunk] (float32, element-wise)
	FnCopy         // Dst[Chunk] = Src[Chunk]
	FnScale        // Dst[Chunk] *= Scale (e.g. 1/N to average)
	FnEncode       // payload Dst[Chunk] = encode(Src[Chunk])
	FnDecode       // Dst[Chunk] = decode(payload Src[Chunk])
	FnDecodeAdd    // Dst[Chunk] += decode(payload Src[Chunk]) (scatter-add)
	FnServer       // two-phase sign scheme: server step on Src into Dst (specs §2.2 step 6)
	FnOrtho        // low-rank scheme: orthogonalize Dst (PowerSGD P)
	FnProject      // low-rank scheme: Dst = Mᵀ·Src (PowerSGD Q from P)
	FnBarrier      // no data; a join point for dependencies
)

var fnNames = [...]string{"none", "reduce", "copy", "scale", "encode", "decode", "decode-add", "server", "ortho", "project", "barrier"}

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
	BufData    Buf = iota // the caller's float32 vector: input, then result
	BufStage              // float32 scratch of the same length
	BufPayload            // encoded payloads; Chunk indexes the slot (e.g. source rank)
	BufAux                // scheme-specific float32 buffer (P, Q, server chunk)
)

// NoDep marks an unused dependency slot.
const NoDep = -1

// Op is one operation of a program. Ops refer to earlier ops only: Deps[i] is
// NoDep or the index of an op in the same program that must finish first.
type Op struct {
	Kind  OpKind
	Fn    Fn    // Compute only
	Peer  int32 // Send/Recv: the other rank
	Msg   int32 // Send/Recv: index of this message among all messages between the pair in this direction
	Chunk int32 // region index within the buffer; -1 for the whole buffer
	Src   Buf   // Send, Compute
	Dst   Buf   // Recv, Compute
	Deps  [2]int32
	Bytes int64   // Send/Recv: planned message size in bytes (-1 if data-dependent); Compute: elements touched
	Scale float32 // FnScale only
}

func (o Op) String() string {
	var b strings.Builder
	switch o.Kind {
	case Send:
		fmt.Fprintf(&b, "send %s[%d] -> %d #%d", bufName(o.Src), o.Chunk, o.Peer, o.Msg)
	case Recv:
		fmt.Fprintf(&b, "recv %s[%d] <- %d #%d", bufName(o.Dst), o.Chunk, o.Peer, o.Msg)
	default:
		fmt.Fprintf(&b, "%s %s[%d] <- %s", o.Fn, bufName(o.Dst), o.Chunk, bufName(o.Src))
		if o.Fn == FnScale {
			fmt.Fprintf(&b, " *%g", o.Scale)
		}
	}
	if o.Bytes != 0 {
		fmt.Fprintf(&b, " (%d)", o.Bytes)
	}
	for _, d := range o.Deps {
		if d != NoDep {
			fmt.Fprintf(&b, " after %d", d)
		}
	}
	return b.String()
}

func bufName(b Buf) string {
	switch b {
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

// Program is the list of operations one rank runs for one collective.
type Program struct {
	Name   string // algorithm, e.g. "ring"
	Rank   int
	World  int
	Layout Layout
	Ops    []Op
}

// String prints the program one op per line, for golden tests and debugging.
func (p *Program) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s rank %d/%d, %d elements in %d chunks\n", p.Name, p.Rank, p.World, p.Layout.Len(), p.Layout.Chunks())
	for i, o := range p.Ops {
		fmt.Fprintf(&b, "%4d %s\n", i, o)
	}
	return b.String()
}

// Executor holds one rank's buffers, codecs and error-feedback state and
// carries out the data side of operations. Drivers call it from one goroutine
// at a time unless an implementation documents otherwise.
type Executor interface {
	// Payload returns the bytes to transmit for a Send op. The slice stays
	// valid and unchanged until the driver reports that op done.
	Payload(op *Op) ([]byte, error)
	// Deliver hands over the bytes received for a Recv op; the executor
	// owns b afterwards. A malformed message is an error.
	Deliver(op *Op, b []byte) error
	// Run executes a Compute op.
	Run(op *Op) error
}
