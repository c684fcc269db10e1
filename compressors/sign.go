package compressors

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"

	"github.com/slimgrad/slimgrad/internal/kernels"
)

// PackSigns appends one bit per element of src to dst and returns it:
// MSB-first (element j is bit 7-(j mod 8) of byte j/8 of the appended
// part), bit 1 iff src[j] >= 0 (so sign(0) = sign(-0) = +1; NaN gives 0).
// Unused low bits of the last byte are 0. It appends (len(src)+7)/8 bytes
// and allocates only if dst lacks capacity. Specs §2.2.
func PackSigns(dst []byte, src []float32) []byte {
	dst, b := grow(dst, (len(src)+7)/8)
	kernels.PackSigns(b, src)
	return dst
}

// UnpackSigns sets dst[j] = +scale where bit j of bits (MSB-first) is 1 and
// -scale where it is 0. It panics if len(bits) < (len(dst)+7)/8.
func UnpackSigns(dst []float32, bits []byte, scale float32) {
	kernels.UnpackSigns(dst, bits, scale)
}

// UnpackSignsAdd adds ±scale to dst[j] according to bit j of bits. It panics
// if len(bits) < (len(dst)+7)/8.
func UnpackSignsAdd(dst []float32, bits []byte, scale float32) {
	kernels.UnpackSignsAdd(dst, bits, scale)
}

// RMS returns ‖x‖₂/√n (0 for an empty x), accumulated in float64: the scale
// of the 1-bit compressor C(x) = RMS(x)·sign(x), which keeps ‖C(x)‖₂ = ‖x‖₂.
func RMS(x []float32) float32 {
	if len(x) == 0 {
		return 0
	}
	return float32(math.Sqrt(kernels.SumSq(x) / float64(len(x))))
}

// signBlocks is the number of scales of a sign frame of n elements with
// scale blocks of block elements: ⌈n/block⌉, or 1 when block is 0.
func signBlocks(n, block int) int {
	if block == 0 {
		return 1
	}
	return (n + block - 1) / block
}

// Sign is the 1-bit compressor C(x) = RMS(x)·sign(x) with sign(0) = +1
// (docs/algorithms.md §2.2), or with Recipe.Block > 0 ("sign:B") one RMS scale per block
// of B elements (block k is [k·B, min((k+1)·B, n))): the frame body is the
// float32 scales (1, or ⌈n/B⌉) followed by the packed sign bits,
// 4·scales + ceil(n/8) bytes; the header's Param is B. Its aggregation is
// TwoPhase: the collectives use PackSigns/UnpackSigns/RMS on chunks with
// worker and server error, and the same block size (allreduce's
// TwoPhaseLayout). Compress returns ErrNonFinite when src holds NaN or Inf
// (a scale would not be finite). Not safe for concurrent use.
type Sign struct {
	frame
	entropy
	block int
}

var _ Compressor = (*Sign)(nil)

func newSignCodec(r Recipe, n int) *Sign {
	return &Sign{frame: newFrame(r, n), entropy: entropy{on: r.Zstd}, block: r.Block}
}

// signCodec is "sign" or "sign:B" (one RMS scale per block of B elements),
// with the zstd stage.
var signCodec = codecDef{name: "sign", id: CodecSign, agg: TwoPhase, biased: true, zstd: true,
	args: func(r *Recipe, arg string, hasArg bool) error {
		if !hasArg {
			return nil
		}
		v, err := strconv.Atoi(arg)
		if err != nil {
			return fmt.Errorf("scale block %q is not an integer (sign:B, B elements per scale)", arg)
		}
		if v < 8 || v%8 != 0 || v > MaxSignBlock {
			return fmt.Errorf("scale block must be a multiple of 8 in [8,%d] (or plain \"sign\": one scale per vector)", MaxSignBlock)
		}
		r.Block = v
		return nil
	},
	format: func(r Recipe) string {
		if r.Block > 0 {
			return strconv.Itoa(r.Block)
		}
		return ""
	},
	build: func(r Recipe, n int, _ Config) (Compressor, error) { return newSignCodec(r, n), nil },
	nominal: func(r Recipe, n int, _ Config) int64 {
		return FrameOverhead + 4*int64(signBlocks(n, r.Block)) + (int64(n)+7)/8
	}}

// Block is the scale block length (0: one scale for the whole vector).
func (s *Sign) Block() int { return s.block }

// blockRange is block k of the frame's n elements.
func (s *Sign) blockRange(k int) (lo, hi int) {
	if s.block == 0 {
		return 0, s.n
	}
	return k * s.block, min((k+1)*s.block, s.n)
}

// Compress appends the frame of RMS(src)·sign(src) (per block) to dst[:0].
func (s *Sign) Compress(dst []byte, src []float32) ([]byte, error) {
	if err := checkLen("src", len(src), s.n); err != nil {
		return dst[:0], err
	}
	dst = s.begin(dst)
	nb := signBlocks(len(src), s.block)
	var body []byte
	dst, body = grow(dst, 4*nb+(len(src)+7)/8)
	bits := body[4*nb:]
	for k := range nb {
		lo, hi := s.blockRange(k)
		// One pass for the signs and the sum of squares (= RMS exactly).
		ss := kernels.PackSignsSumSq(bits[lo/8:], src[lo:hi])
		var scale float32
		if hi > lo {
			scale = float32(math.Sqrt(ss / float64(hi-lo)))
		}
		if math.IsInf(float64(scale), 0) || math.IsNaN(float64(scale)) {
			return dst[:0], fmt.Errorf("%w: sign scale of block %d is %v", ErrNonFinite, k, scale)
		}
		binary.LittleEndian.PutUint32(body[4*k:], math.Float32bits(scale))
	}
	raw := len(dst) - headerLen
	dst, z := s.squeeze(dst)
	return s.finish(dst, z, 0, 0, raw), nil
}

// decode checks payload and returns its raw body (scales, then bits).
func (s *Sign) decode(dst []float32, payload []byte) ([]byte, error) {
	if err := checkLen("dst", len(dst), s.n); err != nil {
		return nil, err
	}
	nb := signBlocks(s.n, s.block)
	want := 4*nb + (s.n+7)/8
	h, body, err := s.open(payload, want)
	if err != nil {
		return nil, err
	}
	if h.Count != 0 || h.Aux != 0 {
		return nil, fmt.Errorf("%w: nonzero count or aux in a sign frame", ErrCorrupt)
	}
	raw, err := s.expand(h, body)
	if err != nil {
		return nil, err
	}
	if len(raw) != want {
		return nil, fmt.Errorf("%w: sign body of %d bytes, want %d", ErrCorrupt, len(raw), want)
	}
	for k := range nb {
		scale := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*k:]))
		if !(scale >= 0) || math.IsInf(float64(scale), 0) {
			return nil, fmt.Errorf("%w: sign scale %v", ErrCorrupt, scale)
		}
	}
	bits := raw[4*nb:]
	if r := s.n % 8; r != 0 && bits[len(bits)-1]&(0xff>>r) != 0 {
		return nil, fmt.Errorf("%w: padding bits of the last sign byte are not zero", ErrCorrupt)
	}
	return raw, nil
}

// unpack writes (add: adds) ±scale of every block of raw to dst.
func (s *Sign) unpack(dst []float32, raw []byte, add bool) {
	nb := signBlocks(s.n, s.block)
	bits := raw[4*nb:]
	for k := range nb {
		lo, hi := s.blockRange(k)
		scale := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*k:]))
		if add {
			UnpackSignsAdd(dst[lo:hi], bits[lo/8:], scale)
		} else {
			UnpackSigns(dst[lo:hi], bits[lo/8:], scale)
		}
	}
}

// Decompress overwrites dst with ±scale from the frame.
func (s *Sign) Decompress(dst []float32, payload []byte) error {
	raw, err := s.decode(dst, payload)
	if err != nil {
		return err
	}
	s.unpack(dst, raw, false)
	return nil
}

// DecompressAdd adds ±scale from the frame to dst.
func (s *Sign) DecompressAdd(dst []float32, payload []byte) error {
	raw, err := s.decode(dst, payload)
	if err != nil {
		return err
	}
	s.unpack(dst, raw, true)
	return nil
}
