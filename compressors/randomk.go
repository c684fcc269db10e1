package compressors

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
)

// RandomK sends k = ceil(density·n) elements chosen uniformly without
// replacement, scaled by n/k so that the estimate is unbiased
// (E[C(x)] = x). The indices are a function of the shared seed (WithSeed)
// and the step number carried in the frame header, so only the k values are
// sent (4k bytes plus the frame). Every rank advances its own step counter
// once per Compress; ranks that start together stay in step. Not safe for
// concurrent use.
type RandomK struct {
	frame
	entropy
	seed uint64
	step uint64
	k    int
	set  []uint64 // bitset of chosen indices (scratch, cleared after use)
	idx  []uint32
	val  []float32
	last int
	r    rng
	// The indices of one step are a pure function of (seed, step): keep the
	// last set, since a receiver decodes N frames of the same step.
	have     bool
	haveStep uint64
}

var _ Sparse = (*RandomK)(nil)

func newRandomK(r Recipe, n int, cfg Config) *RandomK {
	return &RandomK{frame: newFrame(r, n), entropy: entropy{on: r.Zstd}, seed: cfg.Seed, k: r.K(n)}
}

// randomkCodec is "randomk:D": k values, indices from the shared seed.
var randomkCodec = codecDef{name: "randomk", id: CodecRandomK, agg: Gather, zstd: true,
	args: densityArg, format: formatDensity, k: kDensity,
	build: func(r Recipe, n int, cfg Config) (Compressor, error) { return newRandomK(r, n, cfg), nil },
	nominal: func(r Recipe, n int, _ Config) int64 {
		return FrameOverhead + 4*int64(r.K(n))
	}}

// Step is the step number the next Compress will use.
func (rk *RandomK) Step() uint64 { return rk.step }

// SetStep sets the step number of the next Compress (e.g. after a restart).
func (rk *RandomK) SetStep(step uint64) { rk.step = step }

// indices fills rk.idx[:k] with the sorted indices of step (Floyd's
// algorithm over a bitset, then a scan of the bitset).
func (rk *RandomK) indices(step uint64) []uint32 {
	n, k := rk.n, rk.k
	if len(rk.idx) < k {
		rk.idx = make([]uint32, k)
		rk.val = make([]float32, k)
	}
	idx := rk.idx[:k]
	if rk.have && rk.haveStep == step {
		return idx
	}
	rk.have, rk.haveStep = true, step
	if k == n {
		for i := range idx {
			idx[i] = uint32(i)
		}
		return idx
	}
	if len(rk.set) < (n+63)/64 {
		rk.set = make([]uint64, (n+63)/64)
	}
	set := rk.set
	rk.r.s = mix(domainRandomK, rk.seed, step)
	for j := n - k; j < n; j++ {
		t := int(rk.r.intn(uint64(j + 1)))
		if set[t>>6]&(1<<(t&63)) != 0 {
			t = j
		}
		set[t>>6] |= 1 << (t & 63)
	}
	o := 0
	for w, word := range set {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			idx[o] = uint32(w<<6 | b)
			o++
			word &= word - 1
		}
		set[w] = 0
		if o == k {
			break
		}
	}
	return idx
}

// scale is n/k as float32.
func (rk *RandomK) scale() float32 {
	if rk.k == 0 {
		return 0
	}
	return float32(float64(rk.n) / float64(rk.k))
}

// Compress sends (n/k)·src at this step's indices and advances the step.
func (rk *RandomK) Compress(dst []byte, src []float32) ([]byte, error) {
	if err := checkLen("src", len(src), rk.n); err != nil {
		return dst[:0], err
	}
	idx := rk.indices(rk.step)
	s := rk.scale()
	dst = rk.begin(dst)
	var b []byte
	dst, b = grow(dst, 4*len(idx))
	for i, j := range idx {
		v := s * src[j]
		rk.val[i] = v
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	rk.last = len(idx)
	raw := len(dst) - headerLen
	dst, z := rk.squeeze(dst)
	step := rk.step
	rk.step++
	return rk.finish(dst, z, step, len(idx), raw), nil
}

// Selected returns the indices and (scaled) values sent by the last
// Compress; valid until the next call.
func (rk *RandomK) Selected() ([]uint32, []float32) { return rk.idx[:rk.last], rk.val[:rk.last] }

func (rk *RandomK) decode(dst []float32, payload []byte, add bool) error {
	if err := checkLen("dst", len(dst), rk.n); err != nil {
		return err
	}
	h, body, err := rk.open(payload, 4*rk.k)
	if err != nil {
		return err
	}
	if int(h.Count) != rk.k {
		return fmt.Errorf("%w: %d values, want %d", ErrCorrupt, h.Count, rk.k)
	}
	raw, err := rk.expand(h, body)
	if err != nil {
		return err
	}
	if len(raw) != 4*rk.k {
		return fmt.Errorf("%w: body of %d bytes for %d values", ErrCorrupt, len(raw), rk.k)
	}
	idx := rk.indices(h.Aux)
	if !add {
		clear(dst)
	}
	for i, j := range idx {
		dst[j] += math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return nil
}

// Decompress overwrites dst with the frame's values at the indices of the
// frame's step (zeros elsewhere). It needs the same seed as the sender.
func (rk *RandomK) Decompress(dst []float32, payload []byte) error {
	return rk.decode(dst, payload, false)
}

// DecompressAdd adds the frame's values at the indices of the frame's step.
func (rk *RandomK) DecompressAdd(dst []float32, payload []byte) error {
	return rk.decode(dst, payload, true)
}
