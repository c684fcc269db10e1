package allreduce

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/slimgrad/slimgrad/internal/kernels"
)

// TwoPhaseVersion is the version of the TwoPhaseSign message format this
// package writes and accepts. Version 1 (before scale blocks) was [scale
// float32 | sign bytes] with no header; a version-1 message is rejected with
// an error that says so.
const TwoPhaseVersion = 2

// MaxTwoPhaseScales is the largest number of scales one TwoPhaseSign
// message can carry (a 24-bit count in the header).
const MaxTwoPhaseScales = 1<<24 - 1

// TwoPhaseLayout is the geometry of the two-phase sign scheme for a
// d-element vector over world ranks with scale blocks of Block elements
// (docs/algorithms.md §2.2, with several scales):
//
//   - the padded vector has d′ = TwoPhasePaddedLen(d, world) elements, in
//     world chunks of L = d′/world elements (chunk c goes to rank c);
//   - block k covers elements [k·B, min((k+1)·B, d′)) of the padded vector,
//     with B = Block, or B = d′ (one block, DeepSpeed's whole-vector scale)
//     when Block is 0. The padding tail belongs to the last block;
//   - the worker scale of block k is the RMS of the worker's compensated
//     vector over the block; the server's groups are the intersections of
//     blocks with its chunk, each with its own server scale.
//
// Block must be 0 or a positive multiple of 8, so that every group starts
// and ends on a byte of packed signs. The zero value is the layout of an
// empty vector over one rank; build layouts with NewTwoPhaseLayout.
type TwoPhaseLayout struct {
	d, world, block int
	padded, chunk   int
}

// NewTwoPhaseLayout returns the layout of a d-element vector over world ranks
// with scale blocks of block elements (0: one block). It returns an error
// wrapping ErrParams if d < 0, world < 1, block is negative or not a
// multiple of 8, or a message would carry more than MaxTwoPhaseScales
// scales.
func NewTwoPhaseLayout(d, world, block int) (TwoPhaseLayout, error) {
	if d < 0 || world < 1 {
		return TwoPhaseLayout{}, fmt.Errorf("%w: two-phase layout of %d elements over %d ranks", ErrParams, d, world)
	}
	if block < 0 || block%8 != 0 {
		return TwoPhaseLayout{}, fmt.Errorf("%w: two-phase scale block %d: want 0 (one scale per vector) or a positive multiple of 8", ErrParams, block)
	}
	l := TwoPhaseLayout{d: d, world: world, block: block, padded: TwoPhasePaddedLen(d, world)}
	l.chunk = l.padded / world
	if block > 0 && l.chunk/block+2 > MaxTwoPhaseScales {
		return TwoPhaseLayout{}, fmt.Errorf("%w: two-phase scale block %d: %d elements per chunk need more than %d scales per message", ErrParams, block, l.chunk, MaxTwoPhaseScales)
	}
	return l, nil
}

// Elems is d, the unpadded vector length.
func (l TwoPhaseLayout) Elems() int { return l.d }

// World is the number of ranks.
func (l TwoPhaseLayout) World() int { return l.world }

// Block is the scale block length as given (0: one block).
func (l TwoPhaseLayout) Block() int { return l.block }

// Padded is d′.
func (l TwoPhaseLayout) Padded() int { return l.padded }

// ChunkLen is L = d′/world.
func (l TwoPhaseLayout) ChunkLen() int { return l.chunk }

func (l TwoPhaseLayout) blockLen() int {
	if l.block == 0 {
		return l.padded
	}
	return l.block
}

// Blocks is the number of worker scales, ⌈d′/B⌉ (0 for an empty vector).
func (l TwoPhaseLayout) Blocks() int {
	if l.padded == 0 {
		return 0
	}
	b := l.blockLen()
	return (l.padded + b - 1) / b
}

// BlockRange returns block k's elements [lo, hi) of the padded vector.
func (l TwoPhaseLayout) BlockRange(k int) (lo, hi int) {
	b := l.blockLen()
	return k * b, min((k+1)*b, l.padded)
}

// ChunkBlocks returns the blocks that intersect chunk c: first, first+1, …,
// first+n−1. Chunk c's messages carry n scales, one per group (the
// intersection of a block with the chunk), in this order.
func (l TwoPhaseLayout) ChunkBlocks(c int) (first, n int) {
	if l.chunk == 0 {
		return 0, 0
	}
	b := l.blockLen()
	lo, hi := c*l.chunk, (c+1)*l.chunk
	first = lo / b
	return first, (hi-1)/b - first + 1
}

// Group returns group i of chunk c as elements [lo, hi) relative to the
// start of the chunk (both multiples of 8).
func (l TwoPhaseLayout) Group(c, i int) (lo, hi int) {
	first, _ := l.ChunkBlocks(c)
	blo, bhi := l.BlockRange(first + i)
	base := c * l.chunk
	return max(blo, base) - base, min(bhi, base+l.chunk) - base
}

// MessageBytes is the size of chunk c's messages (phase 1 to rank c and
// phase 2 from rank c): a 4-byte header (the version byte, then the scale
// count as 24-bit little-endian), n float32 little-endian scales (n from
// ChunkBlocks(c)), then L/8 sign bytes, MSB first, 1 for x >= 0.
func (l TwoPhaseLayout) MessageBytes(c int) int {
	_, n := l.ChunkBlocks(c)
	return 4 + 4*n + l.chunk/8
}

// MaxMessageBytes is the largest MessageBytes over the chunks.
func (l TwoPhaseLayout) MaxMessageBytes() int {
	m := 0
	for c := range l.world {
		m = max(m, l.MessageBytes(c))
	}
	return m
}

// PayloadBytes is the size of one rank's whole worker contribution: the
// d′/8 sign bytes and the Blocks() scales.
func (l TwoPhaseLayout) PayloadBytes() int { return l.padded/8 + 4*l.Blocks() }

// TwoPhaseMessageBytes returns the largest message of the TwoPhaseSign
// scheme for a d-element vector over world ranks with scale blocks of
// block elements, or an error wrapping ErrParams (see NewTwoPhaseLayout).
func TwoPhaseMessageBytes(d, world, block int) (int, error) {
	l, err := NewTwoPhaseLayout(d, world, block)
	if err != nil {
		return 0, err
	}
	return l.MaxMessageBytes(), nil
}

// unpackSigns sets dst[j] = ±s from bit j of bits (MSB first): the kernel
// (kernels.UnpackSigns), whose vector path does not branch on each sign,
// which a decode of near-random signs mispredicts half the time.
func unpackSigns(dst []float32, bits []byte, s float32) { kernels.UnpackSigns(dst, bits, s) }

func putScale(b []byte, s float32) { binary.LittleEndian.PutUint32(b, math.Float32bits(s)) }
func getScale(b []byte) float32    { return math.Float32frombits(binary.LittleEndian.Uint32(b)) }

// putTwoPhaseHeader writes the 4-byte header of a message with n scales.
func putTwoPhaseHeader(b []byte, n int) {
	b[0] = TwoPhaseVersion
	b[1], b[2], b[3] = byte(n), byte(n>>8), byte(n>>16)
}

// twoPhaseMessage checks message m of chunk c (from whom, for errors) and
// returns its scales (decoded into dst) and sign bytes.
func (l TwoPhaseLayout) twoPhaseMessage(dst []float32, m []byte, c int, what string) ([]float32, []byte, error) {
	_, n := l.ChunkBlocks(c)
	want := 4 + 4*n + l.chunk/8
	if len(m) != want {
		if len(m) == 4+l.chunk/8 {
			return nil, nil, fmt.Errorf("%w: %s is a version-1 two-phase message (one scale, no header; %d bytes): this rank speaks version %d (per-block scales); run the same slimgrad version on every rank", ErrMessage, what, len(m), TwoPhaseVersion)
		}
		return nil, nil, fmt.Errorf("%w: %s has %d bytes, want %d", ErrMessage, what, len(m), want)
	}
	if m[0] != TwoPhaseVersion {
		return nil, nil, fmt.Errorf("%w: %s has two-phase message version %d, want %d", ErrMessage, what, m[0], TwoPhaseVersion)
	}
	if got := int(m[1]) | int(m[2])<<8 | int(m[3])<<16; got != n {
		return nil, nil, fmt.Errorf("%w: %s carries %d scales, want %d", ErrMessage, what, got, n)
	}
	dst = grow(dst[:0], n)
	for i := range dst {
		dst[i] = getScale(m[4+4*i:])
	}
	return dst, m[4+4*n:], nil
}

// twoPhaseSizeError explains a TwoPhaseSign message of the wrong size
// (a version-1 message, for one), or returns err.
func (e *Exec) twoPhaseSizeError(op *Op, b []byte, err error) error {
	lay, lerr := NewTwoPhaseLayout(e.prog.Elems, e.prog.World, e.prog.SignBlock)
	n, c := e.prog.World, int(op.Chunk)
	if lerr != nil || c < n || c >= 3*n {
		return err
	}
	chunk, what := e.prog.Rank, fmt.Sprintf("phase-1 message from rank %d", op.Peer)
	if c >= 2*n {
		chunk, what = c-2*n, fmt.Sprintf("phase-2 message of chunk %d", c-2*n)
	}
	if _, _, merr := lay.twoPhaseMessage(nil, b, chunk, what); merr != nil {
		return merr
	}
	return err
}

func (e *Exec) runTwoPhase(op *Op) error {
	n, r := e.prog.World, e.prog.Rank
	lay := e.cfg.two.TwoPhaseLayout()
	dp, L := lay.padded, lay.chunk
	cb := L / 8 // sign bytes per chunk
	switch op.Fn {
	case FnEncode:
		bits, sw := e.cfg.two.WorkerCompress(e.bits[:0], e.wscales[:0], e.data)
		e.bits, e.wscales = bits, sw
		if len(bits) != dp/8 || len(sw) != lay.Blocks() {
			return fmt.Errorf("%w: worker compress returned %d sign bytes and %d scales, want %d and %d", ErrExec, len(bits), len(sw), dp/8, lay.Blocks())
		}
		total := 0
		for c := range n {
			total += lay.MessageBytes(c)
		}
		e.own = grow(e.own, total+lay.MessageBytes(r))
		off := 0
		for c := range n {
			first, k := lay.ChunkBlocks(c)
			mb := lay.MessageBytes(c)
			m := e.own[off : off+mb : off+mb]
			off += mb
			putTwoPhaseHeader(m, k)
			for i := range k {
				putScale(m[4+4*i:], sw[first+i])
			}
			copy(m[4+4*k:], bits[c*cb:(c+1)*cb])
			e.slots[c] = m
		}
		e.slots[n+r] = e.slots[r]
		return nil
	case FnServer:
		_, k := lay.ChunkBlocks(r)
		e.recvBits = grow(e.recvBits, n)
		e.scales = grow(e.scales, n)
		e.rscales = grow(e.rscales, n*k)
		for j := range n {
			sc, bits, err := lay.twoPhaseMessage(e.rscales[j*k:j*k], e.slots[n+j], r, fmt.Sprintf("phase-1 message from rank %d", j))
			if err != nil {
				return err
			}
			e.scales[j], e.recvBits[j] = sc, bits
		}
		sbits, ss, err := e.cfg.two.ServerStep(e.sbits[:0], e.sscales[:0], r, e.recvBits, e.scales)
		if err != nil {
			return err
		}
		e.sbits, e.sscales = sbits, ss
		if len(sbits) != cb || len(ss) != k {
			return fmt.Errorf("%w: server step returned %d sign bytes and %d scales, want %d and %d", ErrExec, len(sbits), len(ss), cb, k)
		}
		off := len(e.own) - lay.MessageBytes(r)
		m := e.own[off:len(e.own):len(e.own)]
		putTwoPhaseHeader(m, k)
		for i, s := range ss {
			putScale(m[4+4*i:], s)
		}
		copy(m[4+4*k:], sbits)
		e.slots[2*n+r] = m
		return nil
	case FnDecode:
		d := len(e.data)
		for c := 0; c < n && c*L < d; c++ {
			sc, bits, err := lay.twoPhaseMessage(e.dscales[:0], e.slots[2*n+c], c, fmt.Sprintf("phase-2 message of chunk %d", c))
			if err != nil {
				return err
			}
			e.dscales = sc
			base := c * L
			for g, s := range sc {
				lo, hi := lay.Group(c, g)
				if base+lo >= d {
					break
				}
				unpackSigns(e.data[base+lo:min(base+hi, d)], bits[lo/8:], s)
			}
		}
		return nil
	}
	return fmt.Errorf("%w: %v in %s", ErrExec, op, e.prog.Name)
}
