package compressors

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

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
// assembly decoding) in blocks of LosslessBlock exponents, each 4-stream
// Huffman with its own table (so a layer made of parts with different
// scales is coded part by part), raw when that does not pay, or one byte
// when the block holds one value. If the blocks would not pay at all the
// exponents are sent raw.
//
// Body (little-endian): n 24-bit words, then the exponent section: a mode
// byte, then for mode 0 (raw) n exponent bytes, for mode 2 (blocks)
// ceil(n/LosslessBlock) blocks, each a uint32 kind<<30 | length (kind 0
// raw, 1 one value, 2 huff0 table and 4X stream) and its length bytes.
//
// Aggregation is Gather: the payload has a data-dependent length, so it
// cannot be re-encoded chunk by chunk on the hops of a ring (there is no
// ElementCodec); the collective all-gathers whole-layer frames and adds
// them with DecompressAdd in rank order. Lossless therefore pays off where
// fp32 Gather would (few ranks, slow links); for a dense Reduce use "none".
//
// Decoding validates the whole frame (every block decodes to exactly its
// length) into a per-compressor scratch of n exponent bytes before dst is
// touched. Compress and the decoders allocate nothing in steady state. Not
// safe for concurrent use.
type Lossless struct {
	frame
	exp []byte        // exponents of the layer (encode and decode scratch)
	enc huff0.Scratch // block encoder
	dec huff0.Scratch // table of the block being decoded
}

var _ Compressor = (*Lossless)(nil)

// LosslessBlock is the number of exponents per Huffman block of the
// lossless codec (huff0 blocks must be shorter than 256 KiB).
const LosslessBlock = 1 << 17

// Exponent section modes and block kinds.
const (
	expRaw    = 0 // section: n raw exponents; block: raw
	expBlocks = 2 // section: blocks
	expRLE    = 1 // block: one value
	expHuff   = 2 // block: huff0 4X stream with its table
)

func newLossless(r Recipe, n int) *Lossless {
	l := &Lossless{frame: newFrame(r, n)}
	l.enc.Reuse = huff0.ReusePolicyNone
	return l
}

// losslessMaxBody is the largest lossless body of a layer of n elements:
// raw words and raw exponents plus the mode byte.
func losslessMaxBody(n int) int { return 4*n + 1 }

func (l *Lossless) scratch() []byte {
	if len(l.exp) < l.n {
		l.exp = make([]byte, l.n)
	}
	return l.exp[:l.n]
}

// losslessChunk is the number of elements split before the histogram and
// the checksum catch up, so that both read the chunk from cache.
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
	var words []byte
	dst, words = grow(dst, 3*n)
	// Split, count and checksum chunk by chunk; the checksum of the header
	// (whose lengths are known only at the end) is combined in afterwards.
	var crc uint32
	for lo := 0; lo < n; lo += losslessChunk {
		hi := min(lo+losslessChunk, n)
		kernels.SplitFloat32(words[3*lo:3*hi], exp[lo:hi], src[lo:hi])
		crc = crc32.Update(crc, castagnoli, words[3*lo:3*hi])
	}
	secStart := len(dst)
	if n > 0 {
		dst = l.huffman(dst, exp)
	}
	if n == 0 || len(dst)-secStart > 1+n {
		dst = append(dst[:secStart], expRaw)
		dst = append(dst, exp...)
	}
	crc = crc32.Update(crc, castagnoli, dst[secStart:])
	body := len(dst) - headerLen
	l.putHeader(dst[:headerLen], 0, 0, 0, body, body)
	crc = crc32Combine(crc32.Checksum(dst[:headerLen], castagnoli), crc, int64(body))
	return binary.LittleEndian.AppendUint32(dst, crc), nil
}

// huffman appends the block-coded exponent section: the mode byte, then
// per block its header and body (huff0 4X with the block's own table, one
// value, or raw).
func (l *Lossless) huffman(dst, exp []byte) []byte {
	dst = append(dst, expBlocks)
	s := &l.enc
	for lo := 0; lo < len(exp); lo += LosslessBlock {
		blk := exp[lo:min(lo+LosslessBlock, len(exp))]
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
	return dst
}

func allSame(b []byte) bool {
	for _, v := range b {
		if v != b[0] {
			return false
		}
	}
	return true
}

// decode validates payload and returns the 24-bit words and the exponents
// (in l.exp or aliasing the payload), without touching dst.
func (l *Lossless) decode(dst []float32, payload []byte) (words, exp []byte, err error) {
	if err := checkLen("dst", len(dst), l.n); err != nil {
		return nil, nil, err
	}
	n := l.n
	h, body, err := l.open(payload, losslessMaxBody(n))
	if err != nil {
		return nil, nil, err
	}
	if h.Count != 0 || h.Aux != 0 {
		return nil, nil, fmt.Errorf("%w: nonzero count or aux field", ErrCorrupt)
	}
	if len(body) < 3*n+1 {
		return nil, nil, fmt.Errorf("%w: lossless body of %d bytes for %d elements", ErrCorrupt, len(body), n)
	}
	words, sec := body[:3*n], body[3*n:]
	switch mode := sec[0]; mode {
	case expRaw:
		if len(sec) != 1+n {
			return nil, nil, fmt.Errorf("%w: raw exponent section of %d bytes for %d elements", ErrCorrupt, len(sec)-1, n)
		}
		return words, sec[1:], nil
	case expBlocks:
		if n == 0 {
			return nil, nil, fmt.Errorf("%w: exponent blocks for an empty layer", ErrCorrupt)
		}
	default:
		return nil, nil, fmt.Errorf("%w: exponent mode %d", ErrCorrupt, mode)
	}
	exp = l.scratch()
	rest := sec[1:]
	for lo := 0; lo < n; lo += LosslessBlock {
		hi := min(lo+LosslessBlock, n)
		if len(rest) < 4 {
			return nil, nil, fmt.Errorf("%w: exponent block at %d is truncated", ErrCorrupt, lo)
		}
		hdr := binary.LittleEndian.Uint32(rest)
		kind, ln := hdr>>30, int(hdr&(1<<30-1))
		rest = rest[4:]
		if ln > len(rest) {
			return nil, nil, fmt.Errorf("%w: exponent block at %d of %d bytes, %d left", ErrCorrupt, lo, ln, len(rest))
		}
		blk := rest[:ln]
		rest = rest[ln:]
		switch kind {
		case expRaw:
			if ln != hi-lo {
				return nil, nil, fmt.Errorf("%w: raw exponent block of %d bytes for %d", ErrCorrupt, ln, hi-lo)
			}
			copy(exp[lo:hi], blk)
		case expRLE:
			if ln != 1 {
				return nil, nil, fmt.Errorf("%w: one-value exponent block of %d bytes", ErrCorrupt, ln)
			}
			fill(exp[lo:hi], blk[0])
		case expHuff:
			if ln >= hi-lo {
				return nil, nil, fmt.Errorf("%w: Huffman exponent block of %d bytes for %d", ErrCorrupt, ln, hi-lo)
			}
			_, stream, err := huff0.ReadTable(blk, &l.dec)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: exponent block at %d: table: %v", ErrCorrupt, lo, err)
			}
			out, err := l.dec.Decoder().Decompress4X(exp[lo:lo:hi], stream)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: exponent block at %d: %v", ErrCorrupt, lo, err)
			}
			if len(out) != hi-lo {
				return nil, nil, fmt.Errorf("%w: exponent block at %d decodes to %d bytes, want %d", ErrCorrupt, lo, len(out), hi-lo)
			}
		default:
			return nil, nil, fmt.Errorf("%w: exponent block kind %d", ErrCorrupt, kind)
		}
	}
	if len(rest) != 0 {
		return nil, nil, fmt.Errorf("%w: %d bytes after the exponent blocks", ErrCorrupt, len(rest))
	}
	return words, exp, nil
}

func fill(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}

// Decompress overwrites dst with the exact floats of the frame.
func (l *Lossless) Decompress(dst []float32, payload []byte) error {
	words, exp, err := l.decode(dst, payload)
	if err != nil {
		return err
	}
	kernels.MergeFloat32(dst, words, exp)
	return nil
}

// DecompressAdd adds the frame's floats to dst.
func (l *Lossless) DecompressAdd(dst []float32, payload []byte) error {
	words, exp, err := l.decode(dst, payload)
	if err != nil {
		return err
	}
	kernels.MergeAddFloat32(dst, words, exp)
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
