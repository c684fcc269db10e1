package compressors

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/slimgrad/slimgrad/internal/kernels"
)

// QSGDBucket is the bucket size of QSGD: each run of QSGDBucket elements
// (the last one may be shorter) is quantized against its own norm, as in the
// paper's experiments and CGX. Without buckets the variance grows as √n/s.
const QSGDBucket = 512

// QSGD is stochastic quantization with s levels (Alistarh et al. 2017), in
// buckets of QSGDBucket elements: element x_j of bucket B is sent as
// sign(x_j)·l_j with l_j in {0..s} chosen so that E[l_j] = s·|x_j|/‖x_B‖₂,
// and decoded as ‖x_B‖₂·sign(x_j)·l_j/s, which is unbiased. The body is the
// float32 norms of the ceil(n/QSGDBucket) buckets, then n fixed-width codes
// of bits.Len(s)+1 bits (4 bits for qsgd:4). Rounding randomness comes from
// (seed, rank, step), so runs are reproducible. A bucket whose norm is so
// small (below s/MaxFloat32, about 1e-38) that s/‖x_B‖₂ overflows float32 is
// sent as zero. Compress returns ErrNonFinite for NaN or Inf input, or when
// a bucket's norm overflows float32. Not safe for concurrent use.
type QSGD struct {
	frame
	entropy
	levels           int
	width            uint
	buckets          int
	seed, rank, step uint64
	g                kernels.Lanes
	lut              [256]float32
	valid            [256]bool
}

var _ Compressor = (*QSGD)(nil)

func newQSGD(r Recipe, n int, cfg Config) *QSGD {
	q := &QSGD{frame: newFrame(r, n), entropy: entropy{on: r.Zstd}, levels: r.Levels,
		width: uint(qsgdWidth(r.Levels)), buckets: (n + QSGDBucket - 1) / QSGDBucket,
		seed: cfg.Seed, rank: uint64(cfg.Rank)}
	// valid[b]: every whole code in byte b has level <= s (widths 2, 4, 8).
	w := q.width
	lmask := uint32(1)<<(w-1) - 1
	if 8%w == 0 {
		for b := range 256 {
			good := true
			for p := uint(0); p < 8/w; p++ {
				if (uint32(b)>>(p*w))&lmask > uint32(q.levels) {
					good = false
				}
			}
			q.valid[b] = good
		}
	}
	return q
}

// qsgdCodec is "qsgd:S" (S levels), with the zstd stage.
var qsgdCodec = codecDef{name: "qsgd", id: CodecQSGD, agg: Gather, zstd: true,
	args: func(r *Recipe, arg string, hasArg bool) error {
		if !hasArg {
			return errors.New("qsgd needs a number of levels, e.g. \"qsgd:4\"")
		}
		v, err := strconv.Atoi(arg)
		if err != nil {
			return fmt.Errorf("levels %q is not an integer", arg)
		}
		if v < 1 || v > MaxQSGDLevels {
			return fmt.Errorf("levels must be in [1,%d]", MaxQSGDLevels)
		}
		r.Levels = v
		return nil
	},
	format: func(r Recipe) string { return strconv.Itoa(r.Levels) },
	build:  func(r Recipe, n int, cfg Config) (Compressor, error) { return newQSGD(r, n, cfg), nil },
	nominal: func(r Recipe, n int, _ Config) int64 {
		nn := int64(n)
		return FrameOverhead + 4*((nn+QSGDBucket-1)/QSGDBucket) + (nn*int64(qsgdWidth(r.Levels))+7)/8
	}}

func (q *QSGD) codeBytes() int { return (q.n*int(q.width) + 7) / 8 }
func (q *QSGD) bodyLen() int   { return 4*q.buckets + q.codeBytes() }

// Compress quantizes src and appends the frame to dst[:0]. Each successful
// call advances the rounding stream; a failed one leaves it as it was.
func (q *QSGD) Compress(dst []byte, src []float32) ([]byte, error) {
	if err := checkLen("src", len(src), q.n); err != nil {
		return dst[:0], err
	}
	dst = q.begin(dst)
	var body []byte
	dst, body = grow(dst, q.bodyLen())
	norms, codes := body[:4*q.buckets], body[4*q.buckets:]
	q.g.Seed(mix(domainQSGD, q.seed, q.rank, q.step))
	w := int(q.width)
	for b := range q.buckets {
		x := src[b*QSGDBucket : min((b+1)*QSGDBucket, q.n)]
		ss := kernels.SumSq(x)
		norm := float32(math.Sqrt(ss))
		if math.IsInf(ss, 0) || math.IsNaN(ss) || math.IsInf(float64(norm), 0) {
			return dst[:0], fmt.Errorf("%w: qsgd bucket %d norm is %v", ErrNonFinite, b, math.Sqrt(ss))
		}
		var sc float32
		if norm > 0 {
			sc = float32(float64(q.levels) / float64(norm))
		}
		if math.IsInf(float64(sc), 0) {
			// norm < s/MaxFloat32 (about 1e-38): s/‖x‖ overflows float32,
			// and 0·Inf = NaN would give zeros a platform-dependent level.
			// Such a bucket is sent as zero.
			norm, sc = 0, 0
		}
		binary.LittleEndian.PutUint32(norms[4*b:], math.Float32bits(norm))
		c := codes[b*QSGDBucket*w/8 : (b*QSGDBucket*w+len(x)*w+7)/8]
		if w == 4 {
			kernels.QSGDNibbles(c, x, sc, uint32(q.levels), &q.g)
		} else {
			q.quantizeN(c, x, sc)
		}
	}
	q.step++
	raw := len(dst) - headerLen
	dst, z := q.squeeze(dst)
	return q.finish(dst, z, 0, 0, raw), nil
}

// quantizeN packs codes of any width, LSB-first, into codes (which starts on
// a byte boundary and is zero-padded at the end), with the same random
// stream as kernels.QSGDNibbles (one Lanes step per 8 elements).
func (q *QSGD) quantizeN(codes []byte, src []float32, sc float32) {
	s := uint32(q.levels)
	w := q.width
	signBit := uint32(1) << (w - 1)
	var acc uint64
	var nb uint
	o := 0
	var rnd [8]uint32
	for i, v := range src {
		if i&7 == 0 {
			q.g.Next(&rnd)
		}
		x := math.Float32bits(v)
		l := kernels.QSGDLevel(float32(math.Float32frombits(x&absMask)*sc), rnd[i&7], s)
		if l != 0 && x>>31 != 0 {
			l |= signBit
		}
		acc |= uint64(l) << nb
		nb += w
		if nb >= 32 {
			binary.LittleEndian.PutUint32(codes[o:], uint32(acc))
			o += 4
			acc >>= 32
			nb -= 32
		}
	}
	for nb > 0 {
		codes[o] = byte(acc)
		o++
		acc >>= 8
		nb -= min(nb, 8)
	}
}

func (q *QSGD) decode(dst []float32, payload []byte) ([]byte, []byte, error) {
	if err := checkLen("dst", len(dst), q.n); err != nil {
		return nil, nil, err
	}
	want := q.bodyLen()
	h, body, err := q.open(payload, want)
	if err != nil {
		return nil, nil, err
	}
	if h.Count != 0 || h.Aux != 0 {
		return nil, nil, fmt.Errorf("%w: nonzero count or aux in a qsgd frame", ErrCorrupt)
	}
	raw, err := q.expand(h, body)
	if err != nil {
		return nil, nil, err
	}
	if len(raw) != want {
		return nil, nil, fmt.Errorf("%w: qsgd body of %d bytes, want %d", ErrCorrupt, len(raw), want)
	}
	norms, codes := raw[:4*q.buckets], raw[4*q.buckets:]
	for b := range q.buckets {
		norm := math.Float32frombits(binary.LittleEndian.Uint32(norms[4*b:]))
		if !(norm >= 0) || math.IsInf(float64(norm), 0) {
			return nil, nil, fmt.Errorf("%w: qsgd bucket %d norm %v", ErrCorrupt, b, norm)
		}
	}
	// Validate every code (level <= s) and the zero padding before writing.
	w := q.width
	s := uint32(q.levels)
	lmask := uint32(1)<<(w-1) - 1
	if 8%w == 0 {
		for _, b := range codes {
			if !q.valid[b] {
				return nil, nil, fmt.Errorf("%w: qsgd level above %d", ErrCorrupt, s)
			}
		}
	} else {
		for i := range q.n {
			if code(codes, i, w)&lmask > s {
				return nil, nil, fmt.Errorf("%w: qsgd level above %d at %d", ErrCorrupt, s, i)
			}
		}
	}
	if tail := uint(q.n) * w % 8; tail != 0 && codes[len(codes)-1]>>tail != 0 {
		return nil, nil, fmt.Errorf("%w: qsgd padding bits are not zero", ErrCorrupt)
	}
	return norms, codes, nil
}

// code extracts code i (w bits, LSB-first bitstream).
func code(codes []byte, i int, w uint) uint32 {
	bit := uint(i) * w
	b := bit / 8
	v := uint32(codes[b])
	if b+1 < uint(len(codes)) {
		v |= uint32(codes[b+1]) << 8
	}
	return (v >> (bit % 8)) & (1<<w - 1)
}

func (q *QSGD) apply(dst []float32, norms, codes []byte, add bool) {
	w := q.width
	lmask := uint32(1)<<(w-1) - 1
	lut := &q.lut
	for b := range q.buckets {
		norm := math.Float32frombits(binary.LittleEndian.Uint32(norms[4*b:]))
		unit := norm / float32(q.levels)
		d := dst[b*QSGDBucket : min((b+1)*QSGDBucket, q.n)]
		if w == 4 {
			var levels [8]float32
			for l := range levels {
				levels[l] = float32(l) * unit
			}
			kernels.QSGDDecodeNibbles(d, codes[b*QSGDBucket/2:b*QSGDBucket/2+(len(d)+1)/2], &levels, add)
			continue
		}
		for c := range uint32(1) << w {
			v := float32(c&lmask) * unit
			if c&(lmask+1) != 0 {
				v = -v
			}
			lut[c] = v
		}
		base := b * QSGDBucket
		for i := range d {
			v := lut[code(codes, base+i, w)]
			if add {
				d[i] += v
			} else {
				d[i] = v
			}
		}
	}
}

// Decompress overwrites dst with the dequantized frame.
func (q *QSGD) Decompress(dst []float32, payload []byte) error {
	norms, codes, err := q.decode(dst, payload)
	if err != nil {
		return err
	}
	q.apply(dst, norms, codes, false)
	return nil
}

// DecompressAdd adds the dequantized frame to dst.
func (q *QSGD) DecompressAdd(dst []float32, payload []byte) error {
	norms, codes, err := q.decode(dst, payload)
	if err != nil {
		return err
	}
	q.apply(dst, norms, codes, true)
	return nil
}
