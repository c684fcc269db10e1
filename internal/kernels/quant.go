package kernels

import "math"

// Lanes is a vector of 8 xorshift128 generators (Marsaglia 2003) on uint32,
// the random source of QSGDNibbles. Lane l produces the random number of
// element l of each group of 8. The zero value is invalid; use Seed.
type Lanes struct {
	X, Y, Z, W [8]uint32
}

// Seed fills the state from a 64-bit seed (splitmix64), never all-zero in
// a lane.
func (g *Lanes) Seed(seed uint64) {
	next := func() uint32 {
		seed += 0x9e3779b97f4a7c15
		z := seed
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		return uint32(z ^ (z >> 31))
	}
	for l := range 8 {
		g.X[l], g.Y[l], g.Z[l], g.W[l] = next(), next(), next(), next()
		if g.X[l]|g.Y[l]|g.Z[l]|g.W[l] == 0 {
			g.W[l] = 1
		}
	}
}

// Next advances every lane once and writes the 8 outputs to out.
func (g *Lanes) Next(out *[8]uint32) {
	for l := range 8 {
		t := g.X[l] ^ g.X[l]<<11
		g.X[l], g.Y[l], g.Z[l] = g.Y[l], g.Z[l], g.W[l]
		g.W[l] ^= g.W[l]>>19 ^ t ^ t>>8
		out[l] = g.W[l]
	}
}

// QSGDLevel is the stochastic level of a = |x|·s/‖x‖ given 32 random bits:
// ⌊a⌋, plus one with probability a−⌊a⌋ (from the top 24 bits), at most s.
// a must be finite and in [0, s+1): Go's float-to-int conversion of NaN, Inf
// or out-of-range values is platform-dependent, so callers keep the scale
// s/‖x‖ finite (see compressors.QSGD).
func QSGDLevel(a float32, rnd uint32, s uint32) uint32 {
	l := uint32(int32(a))
	if float32(rnd>>8)*(1.0/(1<<24)) < a-float32(l) {
		l++
	}
	return min(l, s)
}

// QSGDNibbles quantizes src with scale sc (= s/‖bucket‖, finite, so that
// every |x|·sc is a valid QSGDLevel input) and s levels (at most 7) into 4-bit codes sign<<3 | level, two per byte (element 2i in the
// low nibble), drawing one Lanes step per group of 8 elements. len(codes)
// must be (len(src)+1)/2; a trailing odd code leaves the high nibble zero.
func QSGDNibbles(codes []byte, src []float32, sc float32, s uint32, g *Lanes) {
	if len(codes) != (len(src)+1)/2 || s > 7 {
		panic("kernels: QSGDNibbles: bad lengths or levels")
	}
	qsgdNibbles(codes, src, sc, s, g)
}

func qsgdNibblesGeneric(codes []byte, src []float32, sc float32, s uint32, g *Lanes) {
	var rnd [8]uint32
	clear(codes)
	for i, v := range src {
		if i&7 == 0 {
			g.Next(&rnd)
		}
		x := math.Float32bits(v)
		l := QSGDLevel(float32(math.Float32frombits(x&0x7fffffff)*sc), rnd[i&7], s)
		if l != 0 {
			l |= x >> 31 << 3
		}
		codes[i>>1] |= byte(l << (4 * (i & 1)))
	}
}

// QSGDDecodeNibbles decodes 4-bit QSGD codes (two per byte, element 2i in
// the low nibble): dst[i] = ±levels[code&7], negative when code&8 is set,
// written (add false) or added. len(codes) must be (len(dst)+1)/2. Codes are
// not validated here.
func QSGDDecodeNibbles(dst []float32, codes []byte, levels *[8]float32, add bool) {
	if len(codes) != (len(dst)+1)/2 {
		panic("kernels: QSGDDecodeNibbles: bad lengths")
	}
	qsgdDecodeNibbles(dst, codes, levels, add)
}

func qsgdDecodeNibblesGeneric(dst []float32, codes []byte, levels *[8]float32, add bool) {
	for i := range dst {
		c := codes[i>>1] >> (4 * (i & 1))
		v := levels[c&7]
		if c&8 != 0 {
			v = -v
		}
		if add {
			dst[i] += v
		} else {
			dst[i] = v
		}
	}
}
