package compressors

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/klauspost/compress/huff0"
)

// Lossless ("lossless") sends dense float32 exactly, bit for bit (NaN
// payloads, ±0, subnormals and ±Inf included), in fewer bytes than fp32
// when the exponents are skewed, as those of gradients are (the idea of
// DFloat11). Each float is split into its 8-bit exponent and a 24-bit word
// mantissa | sign<<23. The words are sent raw (they are close to uniform);
// the exponents, which take a few dozen values with a peaked distribution,
// are Huffman-coded with huff0 (the Huffman stage of zstd, with amd64
// assembly decoding): one table built from the layer's histogram, then
// blocks of LosslessBlock exponents, each 4-stream Huffman, raw when that
// does not pay, or run-length when the block holds one value. A layer
// whose exponents take one value is sent as one byte; if Huffman coding
// would not pay at all the exponents are sent raw.
//
// Body (little-endian): n 24-bit words, then the exponent section: a mode
// byte, then for mode 0 (raw) n exponent bytes, for mode 1 (one value) that
// byte, for mode 2 (Huffman) the huff0 table followed by ceil(n/
// LosslessBlock) blocks, each a uint32 kind<<30 | length (kind 0 raw, 1 one
// value, 2 huff0 4X) and its length bytes.
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
	exp  []byte        // exponents of the layer (encode and decode scratch)
	enc  huff0.Scratch // encoder with the layer's table
	dec  huff0.Scratch // decoder table of the last frame
	hist [4][256]uint32
}

var _ Compressor = (*Lossless)(nil)

// LosslessBlock is the number of exponents per Huffman block of the
// lossless codec (huff0 blocks must be shorter than 256 KiB).
const LosslessBlock = 1 << 17

const (
	expRaw  = 0
	expRLE  = 1
	expHuff = 2
)

func newLossless(r Recipe, n int) *Lossless {
	l := &Lossless{frame: newFrame(r, n)}
	l.enc.Reuse = huff0.ReusePolicyMust
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

// Compress appends the exact encoding of src to dst[:0].
func (l *Lossless) Compress(dst []byte, src []float32) ([]byte, error) {
	if err := checkLen("src", len(src), l.n); err != nil {
		return dst[:0], err
	}
	n := l.n
	exp := l.scratch()
	dst = l.begin(dst)
	if cap(dst)-len(dst) < 3*n+64 {
		nd := make([]byte, headerLen, headerLen+losslessMaxBody(n)+trailerLen+n/64+64)
		dst = nd
	}
	var words []byte
	dst, words = grow(dst, 3*n)
	for i := range l.hist {
		clear(l.hist[i][:])
	}
	splitFloats(words, exp, src, &l.hist)
	secStart := len(dst)
	var hist [256]uint32
	distinct := 0
	for s := range hist {
		c := l.hist[0][s] + l.hist[1][s] + l.hist[2][s] + l.hist[3][s]
		hist[s] = c
		if c != 0 {
			distinct++
		}
	}
	switch {
	case n == 0:
		dst = append(dst, expRaw)
	case distinct == 1:
		dst = append(dst, expRLE, exp[0])
	default:
		dst = l.huffman(dst, exp, &hist)
		if len(dst)-secStart > 1+n {
			dst = append(dst[:secStart], expRaw)
			dst = append(dst, exp...)
		}
	}
	return l.finish(dst, 0, 0, 0, len(dst)-headerLen), nil
}

// huffman appends the Huffman exponent section (mode, table, blocks), or
// the raw section if no table can be built.
func (l *Lossless) huffman(dst, exp []byte, hist *[256]uint32) []byte {
	start := len(dst)
	s := &l.enc
	if err := s.BuildCTable(hist); err != nil {
		return append(append(dst, expRaw), exp...)
	}
	dst = append(dst, expHuff)
	var err error
	if dst, err = s.AppendTable(dst); err != nil {
		return append(append(dst[:start], expRaw), exp...)
	}
	for lo := 0; lo < len(exp); lo += LosslessBlock {
		blk := exp[lo:min(lo+LosslessBlock, len(exp))]
		kind, body := uint32(expRaw), blk
		if len(blk) >= 64 {
			out, _, err := huff0.Compress4X(blk, s)
			switch {
			case err == nil:
				kind, body = expHuff, out
			case errors.Is(err, huff0.ErrUseRLE):
				kind, body = expRLE, blk[:1]
			}
		} else if allSame(blk) {
			kind, body = expRLE, blk[:1]
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
	case expRLE:
		if len(sec) != 2 || n == 0 {
			return nil, nil, fmt.Errorf("%w: one-value exponent section of %d bytes", ErrCorrupt, len(sec))
		}
		exp = l.scratch()
		fill(exp, sec[1])
		return words, exp, nil
	case expHuff:
	default:
		return nil, nil, fmt.Errorf("%w: exponent mode %d", ErrCorrupt, mode)
	}
	if n == 0 {
		return nil, nil, fmt.Errorf("%w: Huffman exponents for an empty layer", ErrCorrupt)
	}
	_, rest, err := huff0.ReadTable(sec[1:], &l.dec)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: exponent table: %v", ErrCorrupt, err)
	}
	exp = l.scratch()
	dec := l.dec.Decoder()
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
			out, err := dec.Decompress4X(exp[lo:lo:hi], blk)
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
	mergeFloats(dst, words, exp, false)
	return nil
}

// DecompressAdd adds the frame's floats to dst.
func (l *Lossless) DecompressAdd(dst []float32, payload []byte) error {
	words, exp, err := l.decode(dst, payload)
	if err != nil {
		return err
	}
	mergeFloats(dst, words, exp, true)
	return nil
}

// splitFloats writes the 24-bit words (mantissa | sign<<23) of src into
// words (3 bytes each) and the exponents into exp, and counts the exponents
// into four histograms (element i into hist[i%4]).
func splitFloats(words, exp []byte, src []float32, hist *[4][256]uint32) {
	n := len(src)
	words, exp = words[:3*n], exp[:n]
	i := 0
	for ; i+8 <= n; i += 8 {
		s := src[i : i+8 : i+8]
		var q [3]uint64
		var e uint64
		for k := range 8 {
			u := math.Float32bits(s[k])
			ek := (u >> 23) & 0xff
			hist[k&3][ek]++
			e |= uint64(ek) << (8 * k)
			w := uint64(u&0x7fffff | (u>>8)&0x800000)
			bit := 24 * k
			q[bit/64] |= w << (bit % 64)
			if bit%64 > 40 {
				q[bit/64+1] |= w >> (64 - bit%64)
			}
		}
		binary.LittleEndian.PutUint64(exp[i:], e)
		wb := words[3*i : 3*i+24 : 3*i+24]
		binary.LittleEndian.PutUint64(wb[0:], q[0])
		binary.LittleEndian.PutUint64(wb[8:], q[1])
		binary.LittleEndian.PutUint64(wb[16:], q[2])
	}
	for ; i < n; i++ {
		u := math.Float32bits(src[i])
		ek := (u >> 23) & 0xff
		hist[i&3][ek]++
		exp[i] = byte(ek)
		w := u&0x7fffff | (u>>8)&0x800000
		words[3*i], words[3*i+1], words[3*i+2] = byte(w), byte(w>>8), byte(w>>16)
	}
}

// mergeFloats rebuilds the floats from words and exp into dst (or adds
// them to dst).
func mergeFloats(dst []float32, words, exp []byte, add bool) {
	n := len(dst)
	words, exp = words[:3*n], exp[:n]
	i := 0
	for ; i+8 <= n; i += 8 {
		wb := words[3*i : 3*i+24 : 3*i+24]
		q0 := binary.LittleEndian.Uint64(wb[0:])
		q1 := binary.LittleEndian.Uint64(wb[8:])
		q2 := binary.LittleEndian.Uint64(wb[16:])
		e := binary.LittleEndian.Uint64(exp[i:])
		const m = 0xffffff
		v := [8]uint32{
			uint32(q0) & m, uint32(q0>>24) & m, uint32(q0>>48|q1<<16) & m, uint32(q1>>8) & m,
			uint32(q1>>32) & m, uint32(q1>>56|q2<<8) & m, uint32(q2>>16) & m, uint32(q2 >> 40),
		}
		d := dst[i : i+8 : i+8]
		if add {
			for k := range 8 {
				d[k] += math.Float32frombits(v[k]&0x7fffff | (v[k]&0x800000)<<8 | uint32(byte(e>>(8*k)))<<23)
			}
		} else {
			for k := range 8 {
				d[k] = math.Float32frombits(v[k]&0x7fffff | (v[k]&0x800000)<<8 | uint32(byte(e>>(8*k)))<<23)
			}
		}
	}
	for ; i < n; i++ {
		w := uint32(words[3*i]) | uint32(words[3*i+1])<<8 | uint32(words[3*i+2])<<16
		f := math.Float32frombits(w&0x7fffff | (w&0x800000)<<8 | uint32(exp[i])<<23)
		if add {
			dst[i] += f
		} else {
			dst[i] = f
		}
	}
}
