package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"

	"github.com/slimgrad/slimgrad/compressors"
)

// TernGradID is the wire id this example registers TernGrad under (user
// codecs take ids 128-255; every process of a job must use the same).
const TernGradID compressors.Codec = 200

// registerTernGrad adds the recipe "terngrad" (one scale per layer) and
// "terngrad:B" (one scale per block of B elements) to slimgrad.
func registerTernGrad() error {
	return compressors.Register(compressors.CodecSpec{
		Name:        "terngrad",
		ID:          TernGradID,
		Aggregation: compressors.Gather,
		Biased:      false,
		ParseArgs:   parseTernArgs,
		New: func(n int, args string, cfg compressors.Config) (compressors.Compressor, error) {
			block, err := ternBlock(args)
			if err != nil {
				return nil, err
			}
			return newTernGrad(n, block, cfg.Seed, cfg.Rank), nil
		},
		NominalBytes: func(n int, args string, _ compressors.Config) int64 {
			block, _ := ternBlock(args)
			return int64(compressors.FrameOverhead + ternBody(n, ternBlocks(n, block)))
		},
	})
}

// parseTernArgs accepts "" (one scale per layer) or a block size B >= 1.
func parseTernArgs(args string) (string, error) {
	if args == "" {
		return "", nil
	}
	b, err := strconv.Atoi(args)
	if err != nil || b < 1 || b > 1<<30 {
		return "", fmt.Errorf("terngrad:B needs a block of 1 to %d elements, got %q", 1<<30, args)
	}
	return strconv.Itoa(b), nil
}

// ternBlock is the block size of canonical args, 0 for one per layer.
func ternBlock(args string) (int, error) {
	if args == "" {
		return 0, nil
	}
	return strconv.Atoi(args)
}

// ternBlocks is the number of scales of a layer of n elements.
func ternBlocks(n, block int) int {
	if block == 0 {
		return 1
	}
	return (n + block - 1) / block
}

// ternBody is the body size: a float32 scale per block, then 2 bits per
// element.
func ternBody(n, blocks int) int { return 4*blocks + (n+3)/4 }

// TernGrad is the ternary gradient codec of Wen et al., "TernGrad: Ternary
// Gradients to Reduce Communication in Distributed Deep Learning" (NeurIPS
// 2017): with s = max|g| over a block, element g is sent as s·sign(g)·b
// where b is 1 with probability |g|/s and 0 otherwise. The code is
// unbiased (E[s·sign(g)·b] = g) and needs 2 bits per element plus one
// float32 scale per block: about 16× smaller than fp32.
//
// Frame body: the float32 scales, then the codes, four per byte from the
// least significant bits up: 0 for 0, 1 for +s, 2 for −s (3 never occurs).
// Header: Param is the block size (0 for one scale per layer), Count the
// number of blocks. The rounding draws come from a PCG seeded with the
// job's seed and this rank, so runs are reproducible and ranks draw
// independently. Not safe for concurrent use.
type TernGrad struct {
	f      compressors.Frame
	block  int // 0: one scale for the layer
	blocks int
	rng    *rand.Rand
	recipe string
}

var _ compressors.Compressor = (*TernGrad)(nil)

func newTernGrad(n, block int, seed uint64, rank int) *TernGrad {
	recipe := "terngrad"
	if block > 0 {
		recipe += ":" + strconv.Itoa(block)
	}
	return &TernGrad{
		f:     compressors.Frame{Codec: TernGradID, Param: uint32(block), N: n},
		block: block, blocks: ternBlocks(n, block),
		rng:    rand.New(rand.NewPCG(seed, 0x7465726e^uint64(rank))),
		recipe: recipe,
	}
}

// Len implements compressors.Compressor.
func (t *TernGrad) Len() int { return t.f.N }

// Aggregation implements compressors.Compressor: payloads are all-gathered.
func (t *TernGrad) Aggregation() compressors.Aggregation { return compressors.Gather }

// String implements compressors.Compressor.
func (t *TernGrad) String() string { return t.recipe }

// span is block k's element range.
func (t *TernGrad) span(k int) (lo, hi int) {
	if t.block == 0 {
		return 0, t.f.N
	}
	return k * t.block, min((k+1)*t.block, t.f.N)
}

// Compress appends the frame of a ternary draw for src to dst[:0].
func (t *TernGrad) Compress(dst []byte, src []float32) ([]byte, error) {
	if len(src) != t.f.N {
		return dst[:0], fmt.Errorf("%w: terngrad: %d elements, want %d", compressors.ErrLength, len(src), t.f.N)
	}
	b := t.f.Begin(dst)
	scales := len(b)
	b = append(b, make([]byte, ternBody(t.f.N, t.blocks))...)
	codes := b[scales+4*t.blocks:]
	for k := range t.blocks {
		lo, hi := t.span(k)
		var s float32
		for _, v := range src[lo:hi] {
			if v-v != 0 {
				return dst[:0], fmt.Errorf("%w: terngrad: %v", compressors.ErrNonFinite, v)
			}
			s = max(s, float32(math.Abs(float64(v))))
		}
		binary.LittleEndian.PutUint32(b[scales+4*k:], math.Float32bits(s))
		if s == 0 {
			continue
		}
		for i := lo; i < hi; i++ {
			v := src[i]
			if t.rng.Float32()*s >= float32(math.Abs(float64(v))) {
				continue // b = 0
			}
			c := byte(1)
			if v < 0 {
				c = 2
			}
			codes[i/4] |= c << (2 * (i % 4))
		}
	}
	return t.f.Seal(b, 0, uint32(t.blocks)), nil
}

// open validates a frame completely and returns its scales and codes.
func (t *TernGrad) open(dst []float32, payload []byte) (scales, codes []byte, err error) {
	if len(dst) != t.f.N {
		return nil, nil, fmt.Errorf("%w: terngrad: dst has %d elements, want %d", compressors.ErrLength, len(dst), t.f.N)
	}
	body := ternBody(t.f.N, t.blocks)
	h, b, err := t.f.Open(payload, body)
	if err != nil {
		return nil, nil, err
	}
	if len(b) != body || int(h.Count) != t.blocks || h.Aux != 0 {
		return nil, nil, fmt.Errorf("%w: terngrad: %d body bytes, %d blocks, aux %d", compressors.ErrCorrupt, len(b), h.Count, h.Aux)
	}
	scales, codes = b[:4*t.blocks], b[4*t.blocks:]
	for k := range t.blocks {
		s := math.Float32frombits(binary.LittleEndian.Uint32(scales[4*k:]))
		if !(s >= 0) || math.IsInf(float64(s), 0) {
			return nil, nil, fmt.Errorf("%w: terngrad: scale %v", compressors.ErrCorrupt, s)
		}
	}
	for i, c := range codes {
		// Every 2-bit code is 0, 1 or 2; the padding after the last
		// element is 0.
		if c&(c>>1)&0x55 != 0 || (i == len(codes)-1 && t.f.N%4 != 0 && c>>(2*(t.f.N%4)) != 0) {
			return nil, nil, fmt.Errorf("%w: terngrad: bad code byte %#02x", compressors.ErrCorrupt, c)
		}
	}
	return scales, codes, nil
}

func (t *TernGrad) decode(dst []float32, payload []byte, add bool) error {
	scales, codes, err := t.open(dst, payload)
	if err != nil {
		return err
	}
	for k := range t.blocks {
		s := math.Float32frombits(binary.LittleEndian.Uint32(scales[4*k:]))
		lo, hi := t.span(k)
		for i := lo; i < hi; i++ {
			var v float32
			switch (codes[i/4] >> (2 * (i % 4))) & 3 {
			case 1:
				v = s
			case 2:
				v = -s
			}
			if add {
				dst[i] += v
			} else {
				dst[i] = v
			}
		}
	}
	return nil
}

// Decompress overwrites dst with the payload's ternary vector.
func (t *TernGrad) Decompress(dst []float32, payload []byte) error {
	return t.decode(dst, payload, false)
}

// DecompressAdd adds the payload's ternary vector to dst.
func (t *TernGrad) DecompressAdd(dst []float32, payload []byte) error {
	return t.decode(dst, payload, true)
}
