package compressors

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/slimgrad/slimgrad/internal/kernels"
)

// Dense is the compressor of the Reduce codecs: none (fp32), fp16 and bf16.
// Compress and the decoders allocate nothing once dst has capacity. Not safe
// for concurrent use (see Compressor).
type Dense struct {
	frame
	elem ElementCodec
}

var (
	_ Compressor = (*Dense)(nil)

	// FP32 is the element codec of "none": little-endian float32.
	FP32 ElementCodec = fp32Elems{}
	// FP16 is the element codec of "fp16": little-endian IEEE binary16 with
	// round-to-nearest-even (overflow to ±Inf, NaN kept).
	FP16 ElementCodec = fp16Elems{}
	// BF16 is the element codec of "bf16": little-endian bfloat16 with
	// round-to-nearest-even.
	BF16 ElementCodec = bf16Elems{}
)

func newDense(r Recipe, n int) *Dense {
	d := &Dense{frame: newFrame(r, n)}
	switch r.Codec {
	case CodecFP16:
		d.elem = FP16
	case CodecBF16:
		d.elem = BF16
	default:
		d.elem = FP32
	}
	return d
}

// The dense codecs: fp32 ("none", alias "fp32"), fp16 and bf16, summed
// element-wise in rings and trees.
var (
	noneCodec = codecDef{name: "none", id: CodecNone, agg: Reduce,
		build: buildDense, nominal: denseNominal(4)}
	fp16Codec = codecDef{name: "fp16", id: CodecFP16, agg: Reduce, biased: true,
		build: buildDense, nominal: denseNominal(2)}
	bf16Codec = codecDef{name: "bf16", id: CodecBF16, agg: Reduce, biased: true,
		build: buildDense, nominal: denseNominal(2)}
)

func buildDense(r Recipe, n int, _ Config) (Compressor, error) { return newDense(r, n), nil }

func denseNominal(bytesPerElem int64) func(Recipe, int, Config) int64 {
	return func(_ Recipe, n int, _ Config) int64 { return FrameOverhead + bytesPerElem*int64(n) }
}

// denseChunk is the number of elements encoded before the checksum catches
// up, so that the CRC reads the body from cache, not from memory.
const denseChunk = 16 << 10

// Compress encodes src as a frame appended to dst[:0].
func (d *Dense) Compress(dst []byte, src []float32) ([]byte, error) {
	if err := checkLen("src", len(src), d.n); err != nil {
		return dst[:0], err
	}
	bpe := d.elem.BytesPerElem()
	dst = d.begin(dst)
	d.putHeader(dst, 0, 0, 0, bpe*d.n, bpe*d.n)
	crc := crc32.Update(0, castagnoli, dst)
	var body []byte
	dst, body = grow(dst, bpe*d.n)
	for lo := 0; lo < len(src); lo += denseChunk {
		hi := min(lo+denseChunk, len(src))
		out := d.elem.EncodeElems(body[bpe*lo:bpe*lo], src[lo:hi])
		crc = crc32.Update(crc, castagnoli, out)
	}
	return binary.LittleEndian.AppendUint32(dst, crc), nil
}

func (d *Dense) open(dst []float32, payload []byte) ([]byte, error) {
	if err := checkLen("dst", len(dst), d.n); err != nil {
		return nil, err
	}
	bpe := d.elem.BytesPerElem()
	h, body, err := d.frame.open(payload, bpe*d.n)
	if err != nil {
		return nil, err
	}
	if h.Count != 0 || h.Aux != 0 || len(body) != bpe*d.n {
		return nil, fmt.Errorf("%w: %v body of %d bytes for %d elements", ErrCorrupt, d.recipe, len(body), d.n)
	}
	return body, nil
}

// Decompress overwrites dst with the decoded frame.
func (d *Dense) Decompress(dst []float32, payload []byte) error {
	body, err := d.open(dst, payload)
	if err != nil {
		return err
	}
	return d.elem.DecodeElems(dst, body)
}

// DecompressAdd adds the decoded frame to dst.
func (d *Dense) DecompressAdd(dst []float32, payload []byte) error {
	body, err := d.open(dst, payload)
	if err != nil {
		return err
	}
	return d.elem.DecodeAddElems(dst, body)
}

// Elems returns the chunk-level codec (as AsElementCodec does).
func (d *Dense) Elems() ElementCodec { return d.elem }

func grow(dst []byte, n int) ([]byte, []byte) {
	l := len(dst)
	if cap(dst)-l < n {
		nd := make([]byte, l, l+n+l/4)
		copy(nd, dst)
		dst = nd
	}
	dst = dst[:l+n]
	return dst, dst[l:]
}

func elemErr(name string, got, n, bpe int) error {
	return fmt.Errorf("%w: %s chunk of %d bytes for %d elements of %d bytes", ErrCorrupt, name, got, n, bpe)
}

type fp32Elems struct{}

func (fp32Elems) BytesPerElem() int { return 4 }
func (fp32Elems) EncodeElems(dst []byte, src []float32) []byte {
	dst, b := grow(dst, 4*len(src))
	kernels.EncodeFloat32(b, src)
	return dst
}
func (fp32Elems) DecodeElems(dst []float32, b []byte) error {
	if len(b) != 4*len(dst) {
		return elemErr("fp32", len(b), len(dst), 4)
	}
	kernels.DecodeFloat32(dst, b)
	return nil
}
func (fp32Elems) DecodeAddElems(dst []float32, b []byte) error {
	if len(b) != 4*len(dst) {
		return elemErr("fp32", len(b), len(dst), 4)
	}
	kernels.DecodeAddFloat32(dst, b)
	return nil
}

type fp16Elems struct{}

func (fp16Elems) BytesPerElem() int { return 2 }
func (fp16Elems) EncodeElems(dst []byte, src []float32) []byte {
	dst, b := grow(dst, 2*len(src))
	kernels.EncodeFloat16(b, src)
	return dst
}
func (fp16Elems) DecodeElems(dst []float32, b []byte) error {
	if len(b) != 2*len(dst) {
		return elemErr("fp16", len(b), len(dst), 2)
	}
	kernels.DecodeFloat16(dst, b)
	return nil
}
func (fp16Elems) DecodeAddElems(dst []float32, b []byte) error {
	if len(b) != 2*len(dst) {
		return elemErr("fp16", len(b), len(dst), 2)
	}
	kernels.DecodeAddFloat16(dst, b)
	return nil
}

type bf16Elems struct{}

func (bf16Elems) BytesPerElem() int { return 2 }
func (bf16Elems) EncodeElems(dst []byte, src []float32) []byte {
	dst, b := grow(dst, 2*len(src))
	kernels.EncodeBFloat16(b, src)
	return dst
}
func (bf16Elems) DecodeElems(dst []float32, b []byte) error {
	if len(b) != 2*len(dst) {
		return elemErr("bf16", len(b), len(dst), 2)
	}
	kernels.DecodeBFloat16(dst, b)
	return nil
}
func (bf16Elems) DecodeAddElems(dst []float32, b []byte) error {
	if len(b) != 2*len(dst) {
		return elemErr("bf16", len(b), len(dst), 2)
	}
	kernels.DecodeAddBFloat16(dst, b)
	return nil
}
