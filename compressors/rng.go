package compressors

import "math/bits"

// rng is wyrand: a tiny, fast 64-bit generator whose stream is fixed by this
// code (not by a library version), so seeded streams match on every rank and
// every build.
type rng struct{ s uint64 }

func (r *rng) next() uint64 {
	r.s += 0xa0761d6478bd642f
	hi, lo := bits.Mul64(r.s, r.s^0xe7037ed1a0b428db)
	return hi ^ lo
}

// intn returns a uniform value in [0,n) (Lemire's method), n > 0.
func (r *rng) intn(n uint64) uint64 {
	hi, lo := bits.Mul64(r.next(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(r.next(), n)
		}
	}
	return hi
}

// mix derives a stream seed from a few words (splitmix64 finalizer chain).
func mix(words ...uint64) uint64 { return MixSeed(0x9e3779b97f4a7c15, words...) }

// MixSeed folds words into the seed h with splitmix64's finalizer, one word
// at a time, and returns the result: how slimgrad derives every shared
// stream seed (codec streams here, L-GreCo's per-layer seeds), so that all
// ranks that mix the same words get the same seed.
func MixSeed(h uint64, words ...uint64) uint64 {
	for _, w := range words {
		h ^= w
		h += 0x9e3779b97f4a7c15
		h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9
		h = (h ^ (h >> 27)) * 0x94d049bb133111eb
		h ^= h >> 31
	}
	return h
}

// Domain tags keep the streams of different uses apart.
const (
	domainRandomK  = 0x72616e646b // "randk"
	domainDGC      = 0x646763     // "dgc"
	domainQSGD     = 0x71736764   // "qsgd"
	domainPowerSGD = 0x70736764   // "psgd"
)
