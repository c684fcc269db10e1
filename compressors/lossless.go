package compressors

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"

	"github.com/klauspost/compress/huff0"

	"github.com/slimgrad/slimgrad/internal/kernels"
)

// Lossless ("lossless") sends dense float32 exactly, bit for bit (NaN
// payloads, ±0, subnormals and ±Inf included), in fewer bytes than fp32
// when the exponents are skewed, as those of gradients are (the idea of
// DFloat11). Each float is split into its 8-bit exponent and a 24-bit word
// mantissa | sign<<23. The words are sent raw (they are close to uniform);
// the exponents, which take a few dozen values with a peaked distribution,
// are Huffman-coded with huff0 (the Huffman stage of zstd, with amd64
// assembly decoding) in blocks of LosslessBlock bytes, each 4-stream
// Huffman with its own table (so a layer made of parts with different
// scales is coded part by part), raw when that does not pay, or one byte
// when the block holds one value. If the blocks would not pay at all the
// bytes are sent raw.
//
// Zero elision: when at least 1/16 of the exponents are 0 (exact zeros, as
// in the first layer of an MLP on images with blank borders, or dead ReLU
// units; subnormals also have exponent 0), the words of those elements are
// taken out of the raw stream and sent as a separate byte section coded
// like the exponents, so that a zero costs about its exponent code.
//
// bfloat16 held in float32: when the low 16 bits of every float of the
// layer are zero (bf16 values widened to fp32, e.g. after a bf16 backward
// pass), the words shrink to one byte, mantissa>>16 | sign<<7, and a float
// costs about 8 bits plus its exponent code (DFloat11's setting).
//
// Header: count is the number z of elided elements, aux the layout bits:
// 1 zero elision, 2 bf16 words. Body (little-endian): the words (3 bytes,
// or 1 with bf16) of the n elements or, with elision, of the n−z elements
// with a nonzero exponent, then the exponent section (n bytes), then with
// elision the section of the elided words. A section is a mode byte,
// then for mode 0 (raw) its bytes, for mode 2 (blocks) ceil(len/
// LosslessBlock) blocks, each a uint32 kind<<30 | length (kind 0 raw, 1
// one value, 2 huff0 table and 4X stream) and its length bytes.
//
// Aggregation is Gather: the payload has a data-dependent length, so it
// cannot be re-encoded chunk by chunk on the hops of a ring (there is no
// ElementCodec); the collective all-gathers whole-layer frames and adds
// them with DecompressAdd in rank order. Lossless therefore pays off where
// fp32 Gather would (few ranks, slow links); for a dense Reduce use "none".
//
// Decoding validates the whole frame (every block decodes to exactly its
// length, the elided count matches the zero exponents) into per-compressor
// scratch before dst is touched. Compress and the decoders allocate nothing
// in steady state. Not safe for concurrent use.
type Lossless struct {
	frame
	exp []byte        // exponents of the layer (encode and decode scratch)
	zw  []byte        // elided words (encode and decode scratch)
	enc huff0.Scratch // block encoder
	dec huff0.Scratch // table of the block being decoded
}

var _ Compressor = (*Lossless)(nil)

// LosslessBlock is the number of bytes per Huffman block of the lossless
// codec (huff0 blocks must be shorter than 256 KiB).
const LosslessBlock = 1 << 17

// Section modes and block kinds.
const (
	expRaw    = 0 // section: raw bytes; block: raw
	expBlocks = 2 // section: blocks
	expRLE    = 1 // block: one value
	expHuff   = 2 // block: huff0 4X stream with its table
)

// Layout bits (header aux).
const (
	layoutElided = 1 // words of zero exponents in their own section
	layoutBF16   = 2 // the low 16 bits of every float are zero: 1-byte words
)

func newLossless(r Recipe, n int) *Lossless {
	l := &Lossless{frame: newFrame(r, n)}
	l.enc.Reuse = huff0.ReusePolicyNone
	return l
}

// losslessCodec is "lossless"; its size is the bound of incompressible
// exponents.
var losslessCodec = codecDef{name: "lossless", id: CodecLossless, agg: Gather,
	build: func(r Recipe, n int, _ Config) (Compressor, error) { return newLossless(r, n), nil },
	nominal: func(_ Recipe, n int, _ Config) int64 {
		return FrameOverhead + int64(losslessMaxBody(n))
	}}

// losslessMaxBody is the largest lossless body of a layer of n elements:
// raw words and raw exponents plus two mode bytes.
func losslessMaxBody(n int) int { return 4*n + 2 }

func (l *Lossless) scratch() []byte {
	if len(l.exp) < l.n {
		l.exp = make([]byte, l.n)
	}
	return l.exp[:l.n]
}

func (l *Lossless) zwords(nb int) []byte {
	if cap(l.zw) < nb {
		l.zw = make([]byte, 3*l.n)
	}
	return l.zw[:nb]
}

// bf16Held reports whether every float of src has zero low 16 bits (a
// bfloat16 value held in float32). It stops at the first that does not,
// which for fp32 data is almost always the first.
func bf16Held(src []float32) bool {
	for _, v := range src {
		if math.Float32bits(v)&0xffff != 0 {
			return false
		}
	}
	return len(src) > 0
}

// losslessChunk is the number of elements split before the checksum and
// the zero count catch up, so that both read the chunk from cache.
const losslessChunk = 16 << 10

// Compress appends the exact encoding of src to dst[:0].
func (l *Lossless) Compress(dst []byte, src []float32) ([]byte, error) {
	if err := checkLen("src", len(src), l.n); err != nil {
		return dst[:0], err
	}
	n := l.n
	exp := l.scratch()
	dst = l.begin(dst)
	if need := headerLen + losslessMaxBody(n) + trailerLen; cap(dst) < need {
		dst = make([]byte, headerLen, need)
	}
	layout, wb := 0, 3 // bytes per word
	if bf16Held(src) {
		layout, wb = layoutBF16, 1
	}
	var words []byte
	dst, words = grow(dst, wb*n)
	// Split, checksum and count zero exponents chunk by chunk; the checksum
	// of the header (whose lengths are known only at the end) is combined
	// in afterwards.
	var crc uint32
	z := 0
	for lo := 0; lo < n; lo += losslessChunk {
		hi := min(lo+losslessChunk, n)
		if wb == 1 {
			kernels.SplitBF16Words(words[lo:hi], exp[lo:hi], src[lo:hi])
		} else {
			kernels.SplitFloat32(words[3*lo:3*hi], exp[lo:hi], src[lo:hi])
		}
		crc = crc32.Update(crc, castagnoli, words[wb*lo:wb*hi])
		z += bytes.Count(exp[lo:hi], zeroByte)
	}
	var zw []byte
	if z > 0 && z >= n/16 {
		layout |= layoutElided
		zw = l.zwords(wb * z)
		// Move the words of zero exponents out, compacting the rest in place.
		w, zi := 0, 0
		for i := 0; i < n; {
			j := bytes.IndexByte(exp[i:], 0)
			if j < 0 {
				j = n - i
			}
			copy(words[wb*w:], words[wb*i:wb*(i+j)])
			w += j
			i += j
			r := zeroRun(exp[i:])
			copy(zw[wb*zi:], words[wb*i:wb*(i+r)])
			zi += r
			i += r
		}
		dst = dst[:headerLen+wb*w]
		crc = crc32c(dst[headerLen:])
	}
	secStart := len(dst)
	dst = l.appendSection(dst, exp)
	if layout&layoutElided != 0 {
		dst = l.appendSection(dst, zw)
	} else {
		z = 0
	}
	crc = crc32.Update(crc, castagnoli, dst[secStart:])
	body := len(dst) - headerLen
	l.putHeader(dst[:headerLen], 0, uint64(layout), z, body, body)
	crc = crc32Combine(crc32c(dst[:headerLen]), crc, int64(body))
	return binary.LittleEndian.AppendUint32(dst, crc), nil
}

var zeroByte = []byte{0}

// appendSection appends the section of b: blocks (huff0 4X with the
// block's own table, one value, or raw), or b raw if blocks do not pay.
func (l *Lossless) appendSection(dst, b []byte) []byte {
	start := len(dst)
	if len(b) == 0 {
		return append(dst, expRaw)
	}
	dst = append(dst, expBlocks)
	s := &l.enc
	for lo := 0; lo < len(b); lo += LosslessBlock {
		blk := b[lo:min(lo+LosslessBlock, len(b))]
		kind, body := uint32(expRaw), blk
		switch {
		case allSame(blk):
			kind, body = expRLE, blk[:1]
		case len(blk) >= 64:
			if out, _, err := huff0.Compress4X(blk, s); err == nil {
				kind, body = expHuff, out
			}
		}
		dst = binary.LittleEndian.AppendUint32(dst, kind<<30|uint32(len(body)))
		dst = append(dst, body...)
	}
	if len(dst)-start > 1+len(b) {
		dst = append(append(dst[:start], expRaw), b...)
	}
	return dst
}

func allSame(b []byte) bool {
	return len(b) > 0 && bytes.Count(b, b[:1]) == len(b)
}

// readSection decodes the section at the start of sec, of want bytes, into
// out (or returns the raw bytes aliasing sec) and returns the rest of sec.
func (l *Lossless) readSection(sec []byte, want int, out []byte, what string) (data, rest []byte, err error) {
	if len(sec) < 1 {
		return nil, nil, fmt.Errorf("%w: %s section missing", ErrCorrupt, what)
	}
	switch mode := sec[0]; mode {
	case expRaw:
		if len(sec) < 1+want {
			return nil, nil, fmt.Errorf("%w: raw %s section of %d bytes for %d", ErrCorrupt, what, len(sec)-1, want)
		}
		return sec[1 : 1+want], sec[1+want:], nil
	case expBlocks:
		if want == 0 {
			return nil, nil, fmt.Errorf("%w: %s blocks for no bytes", ErrCorrupt, what)
		}
	default:
		return nil, nil, fmt.Errorf("%w: %s section mode %d", ErrCorrupt, what, mode)
	}
	out = out[:want]
	rest = sec[1:]
	for lo := 0; lo < want; lo += LosslessBlock {
		hi := min(lo+LosslessBlock, want)
		if len(rest) < 4 {
			return nil, nil, fmt.Errorf("%w: %s block at %d is truncated", ErrCorrupt, what, lo)
		}
		hdr := binary.LittleEndian.Uint32(rest)
		kind, ln := hdr>>30, int(hdr&(1<<30-1))
		rest = rest[4:]
		if ln > len(rest) {
			return nil, nil, fmt.Errorf("%w: %s block at %d of %d bytes, %d left", ErrCorrupt, what, lo, ln, len(rest))
		}
		blk := rest[:ln]
		rest = rest[ln:]
		switch kind {
		case expRaw:
			if ln != hi-lo {
				return nil, nil, fmt.Errorf("%w: raw %s block of %d bytes for %d", ErrCorrupt, what, ln, hi-lo)
			}
			copy(out[lo:hi], blk)
		case expRLE:
			if ln != 1 {
				return nil, nil, fmt.Errorf("%w: one-value %s block of %d bytes", ErrCorrupt, what, ln)
			}
			fill(out[lo:hi], blk[0])
		case expHuff:
			if ln >= hi-lo {
				return nil, nil, fmt.Errorf("%w: Huffman %s block of %d bytes for %d", ErrCorrupt, what, ln, hi-lo)
			}
			_, stream, err := huff0.ReadTable(blk, &l.dec)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: %s block at %d: table: %v", ErrCorrupt, what, lo, err)
			}
			got, err := l.dec.Decoder().Decompress4X(out[lo:lo:hi], stream)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: %s block at %d: %v", ErrCorrupt, what, lo, err)
			}
			if len(got) != hi-lo {
				return nil, nil, fmt.Errorf("%w: %s block at %d decodes to %d bytes, want %d", ErrCorrupt, what, lo, len(got), hi-lo)
			}
		default:
			return nil, nil, fmt.Errorf("%w: %s block kind %d", ErrCorrupt, what, kind)
		}
	}
	return out, rest, nil
}

// losslessFrame is a validated lossless frame.
type losslessFrame struct {
	words, exp, zw []byte // zw: elided words, nil without elision
	wb             int    // bytes per word: 3, or 1 for the bf16 layout
}

// decode validates payload completely without touching dst.
func (l *Lossless) decode(dst []float32, payload []byte) (losslessFrame, error) {
	var f losslessFrame
	if err := checkLen("dst", len(dst), l.n); err != nil {
		return f, err
	}
	n := l.n
	h, body, err := l.open(payload, losslessMaxBody(n))
	if err != nil {
		return f, err
	}
	z := int(h.Count)
	elided := h.Aux&layoutElided != 0
	if h.Aux&^(layoutElided|layoutBF16) != 0 || elided != (z > 0) || z > n || (h.Aux&layoutBF16 != 0 && n == 0) {
		return f, fmt.Errorf("%w: lossless layout %d with %d elided elements", ErrCorrupt, h.Aux, z)
	}
	f.wb = 3
	if h.Aux&layoutBF16 != 0 {
		f.wb = 1
	}
	wb := f.wb
	if len(body) < wb*(n-z) {
		return f, fmt.Errorf("%w: lossless body of %d bytes for %d words", ErrCorrupt, len(body), n-z)
	}
	f.words = body[:wb*(n-z)]
	rest := body[wb*(n-z):]
	if f.exp, rest, err = l.readSection(rest, n, l.scratch(), "exponent"); err != nil {
		return f, err
	}
	if z > 0 {
		if c := bytes.Count(f.exp, zeroByte); c != z {
			return f, fmt.Errorf("%w: %d zero exponents, header says %d elided", ErrCorrupt, c, z)
		}
		if f.zw, rest, err = l.readSection(rest, wb*z, l.zwords(wb*z), "elided word"); err != nil {
			return f, err
		}
	}
	if len(rest) != 0 {
		return f, fmt.Errorf("%w: %d bytes after the last section", ErrCorrupt, len(rest))
	}
	return f, nil
}

// fill sets every byte of b to v (by doubling copies).
func fill(b []byte, v byte) {
	if len(b) == 0 {
		return
	}
	b[0] = v
	for i := 1; i < len(b); i *= 2 {
		copy(b[i:], b[:i])
	}
}

// merge writes or adds the frame's floats into dst: runs of nonzero
// exponents, then runs of zero exponents (whose words are consecutive in
// zw), each through the split kernels.
func (f losslessFrame) merge(dst []float32, add bool) {
	if f.zw == nil {
		f.run(dst, f.words, f.exp, add)
		return
	}
	n, wb := len(dst), f.wb
	exp, words, zw := f.exp[:n], f.words, f.zw
	w, zi := 0, 0
	for i := 0; i < n; {
		j := bytes.IndexByte(exp[i:], 0)
		if j < 0 {
			j = n - i
		}
		if j > 0 {
			f.run(dst[i:i+j], words[wb*w:wb*(w+j)], exp[i:i+j], add)
			w += j
			i += j
		}
		if r := zeroRun(exp[i:]); r > 0 {
			f.run(dst[i:i+r], zw[wb*zi:wb*(zi+r)], exp[i:i+r], add)
			zi += r
			i += r
		}
	}
}

// run merges one run of elements.
func (f losslessFrame) run(dst []float32, words, exp []byte, add bool) {
	switch {
	case f.wb == 1:
		kernels.MergeBF16Words(dst, words, exp, add)
	case add:
		kernels.MergeAddFloat32(dst, words, exp)
	default:
		kernels.MergeFloat32(dst, words, exp)
	}
}

// zeroRun returns the number of leading zero bytes of b.
func zeroRun(b []byte) int {
	i := 0
	for ; i+8 <= len(b) && binary.LittleEndian.Uint64(b[i:]) == 0; i += 8 {
	}
	for ; i < len(b) && b[i] == 0; i++ {
	}
	return i
}

// Decompress overwrites dst with the exact floats of the frame.
func (l *Lossless) Decompress(dst []float32, payload []byte) error {
	f, err := l.decode(dst, payload)
	if err != nil {
		return err
	}
	f.merge(dst, false)
	return nil
}

// DecompressAdd adds the frame's floats to dst.
func (l *Lossless) DecompressAdd(dst []float32, payload []byte) error {
	f, err := l.decode(dst, payload)
	if err != nil {
		return err
	}
	f.merge(dst, true)
	return nil
}

// crc32Combine returns the CRC-32C of A‖B from crcA = CRC(A), crcB = CRC(B)
// and len(B) (zlib's crc32_combine: crcA is advanced over len(B) zero bytes
// by repeated squaring of the one-zero-bit operator over GF(2)).
func crc32Combine(crcA, crcB uint32, lenB int64) uint32 {
	if lenB <= 0 {
		return crcA
	}
	var even, odd [32]uint32
	odd[0] = crc32.Castagnoli // reflected polynomial: one zero bit
	row := uint32(1)
	for i := 1; i < 32; i++ {
		odd[i] = row
		row <<= 1
	}
	gf2Square(&even, &odd) // two zero bits
	gf2Square(&odd, &even) // four zero bits
	for {
		gf2Square(&even, &odd) // 8·2^j zero bits
		if lenB&1 != 0 {
			crcA = gf2Times(&even, crcA)
		}
		lenB >>= 1
		if lenB == 0 {
			break
		}
		gf2Square(&odd, &even)
		if lenB&1 != 0 {
			crcA = gf2Times(&odd, crcA)
		}
		lenB >>= 1
		if lenB == 0 {
			break
		}
	}
	return crcA ^ crcB
}

func gf2Times(mat *[32]uint32, vec uint32) uint32 {
	var sum uint32
	for i := 0; vec != 0; i, vec = i+1, vec>>1 {
		if vec&1 != 0 {
			sum ^= mat[i]
		}
	}
	return sum
}

func gf2Square(square, mat *[32]uint32) {
	for i := range 32 {
		square[i] = gf2Times(mat, mat[i])
	}
}
