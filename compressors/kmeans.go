package compressors

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
)

// The k-means stage ("topk:0.01+kmeans:16", FedZip's clustering): the m
// values kept by the sparsifier are replaced by the means of at most K
// clusters, and the body carries the c <= min(K, m) centroids and one
// cluster id of w = bits.Len(c-1) bits per kept value instead of m float32.
//
// Clustering is Lloyd's algorithm in one dimension, made exact and cheap by
// sorting: the values are radix-sorted once (three 11-bit passes over
// order-preserving keys) and prefix sums (float64, in sorted order) taken,
// so a cluster is a run of the sorted values, an assignment step is c−1
// binary searches for the midpoints between neighbouring centroids, and an
// update step is c differences of prefix sums. Initialisation is by
// quantiles: centroid j starts at the sorted value of rank ⌊(2j+1)m/2K⌋
// (duplicates dropped). At most kmeansIters iterations run; they stop when
// an assignment no longer changes. Empty clusters are dropped. Everything is
// deterministic (no randomness, fixed float64 operation order), so every
// rank computes the same frame for the same input.
//
// The sent centroids are the float32-rounded means of their clusters under
// the final assignment, so D(C(x)) is the conditional mean of the kept
// values: ‖x_kept − q‖² = ‖x_kept‖² − ‖q‖² up to rounding, and the stage is
// a contraction on top of the sparsifier. Selected() returns these
// quantised values, so error feedback keeps the exact residual x − D(C(x)).
// Compress returns ErrNonFinite if a kept value is NaN or Inf.

// kmeansIters bounds the Lloyd iterations (each costs O(c·log m)).
const kmeansIters = 32

// kmeansWidth is the bits per cluster id for c centroids: ceil(log2 c).
func kmeansWidth(c int) int {
	if c <= 1 {
		return 0
	}
	return bits.Len(uint(c - 1))
}

// kmeans is the scratch of the stage, owned by one compressor.
type kmeans struct {
	k      int       // centroids wanted (the recipe's K)
	key    []uint32  // radix keys, sorted
	pos    []uint32  // positions in key order
	key2   []uint32  // radix scratch
	pos2   []uint32  // radix scratch
	sorted []float32 // values in increasing order
	prefix []float64 // prefix[p] = sum of sorted[:p]
	cent   []float64 // centroids, increasing
	split  []int     // cluster j holds sorted[split[j]:split[j+1]]
	prev   []int
	c32    []float32 // centroids as sent
	label  []uint8   // cluster id of each kept value, in index order
	hist   [3][2048]uint32
	dcent  [MaxKMeans]float32 // centroids of the last decoded frame
}

func newKMeans(k int) *kmeans {
	return &kmeans{k: k, cent: make([]float64, 0, k), split: make([]int, 0, k+1),
		prev: make([]int, 0, k+1), c32: make([]float32, 0, k)}
}

func (km *kmeans) reserve(m int) {
	if cap(km.key) < m {
		km.key = make([]uint32, m)
		km.pos = make([]uint32, m)
		km.key2 = make([]uint32, m)
		km.pos2 = make([]uint32, m)
		km.sorted = make([]float32, m)
		km.prefix = make([]float64, m+1)
		km.label = make([]uint8, m)
	}
}

// floatKey maps float32 bits to a uint32 with the same order as the values
// (negative values reversed below the positive ones).
func floatKey(b uint32) uint32 { return b ^ (uint32(int32(b)>>31) | 0x80000000) }

func keyFloat(k uint32) uint32 {
	if k&0x80000000 != 0 {
		return k ^ 0x80000000
	}
	return ^k
}

// cluster quantises val in place (val[i] = centroid of its cluster) and
// returns the number of centroids c; km.c32[:c] are the centroids and
// km.label[:len(val)] the cluster ids.
func (km *kmeans) cluster(val []float32) (int, error) {
	m := len(val)
	km.c32 = km.c32[:0]
	if m == 0 {
		return 0, nil
	}
	km.reserve(m)
	key, pos := km.key[:m], km.pos[:m]
	h := &km.hist
	clear(h[0][:])
	clear(h[1][:])
	clear(h[2][:])
	for i, v := range val {
		b := math.Float32bits(v)
		if b&0x7f800000 == 0x7f800000 {
			return 0, fmt.Errorf("%w: kept value %d is %v", ErrNonFinite, i, v)
		}
		k := floatKey(b)
		key[i], pos[i] = k, uint32(i)
		h[0][k&2047]++
		h[1][(k>>11)&2047]++
		h[2][k>>22]++
	}
	// LSD radix sort; stable, so equal keys stay in index order. A pass
	// whose digit is the same for all keys is skipped.
	src, srcPos, dst, dstPos := key, pos, km.key2[:m], km.pos2[:m]
	for p, shift := range [3]uint{0, 11, 22} {
		hp := &h[p]
		if hp[(src[0]>>shift)&2047] == uint32(m) {
			continue
		}
		var sum uint32
		for d := range hp {
			c := hp[d]
			hp[d] = sum
			sum += c
		}
		for i, k := range src {
			d := (k >> shift) & 2047
			o := hp[d]
			hp[d]++
			dst[o], dstPos[o] = k, srcPos[i]
		}
		src, srcPos, dst, dstPos = dst, dstPos, src, srcPos
	}
	sorted, prefix := km.sorted[:m], km.prefix[:m+1]
	var acc float64
	prefix[0] = 0
	for p, k := range src {
		v := math.Float32frombits(keyFloat(k))
		sorted[p] = v
		acc += float64(v)
		prefix[p+1] = acc
	}

	// Quantile initialisation, duplicates dropped.
	kk := min(km.k, m)
	cent := km.cent[:0]
	for j := range kk {
		v := float64(sorted[((2*j+1)*m)/(2*kk)])
		if len(cent) == 0 || v > cent[len(cent)-1] {
			cent = append(cent, v)
		}
	}
	split, prev := km.split[:0], km.prev[:0]
	for it := 0; ; it++ {
		// Assignment: cluster j takes the values in (b[j-1], b[j]], b the
		// midpoints; ties go to the lower centroid.
		split = append(split[:0], 0)
		lo := 0
		for j := 0; j+1 < len(cent); j++ {
			b := (cent[j] + cent[j+1]) / 2
			// First p >= lo with sorted[p] > b.
			l, r := lo, m
			for l < r {
				mid := int(uint(l+r) >> 1)
				if float64(sorted[mid]) <= b {
					l = mid + 1
				} else {
					r = mid
				}
			}
			split = append(split, l)
			lo = l
		}
		split = append(split, m)
		if it > 0 && equalInts(split, prev) {
			break // cent holds the means of exactly these clusters
		}
		// Update: means of the non-empty clusters (in increasing order).
		cent = cent[:0]
		w := 1
		for j := 0; j+1 < len(split); j++ {
			a, b := split[j], split[j+1]
			if a == b {
				continue
			}
			cent = append(cent, (prefix[b]-prefix[a])/float64(b-a))
			split[w] = b
			w++
		}
		split = split[:w]
		prev = append(prev[:0], split...)
		if it+1 >= kmeansIters {
			break
		}
	}
	km.cent, km.split, km.prev = cent, split, prev

	c := len(cent)
	c32 := km.c32[:c]
	label := km.label[:m]
	for j := range c {
		q := float32(cent[j])
		c32[j] = q
		for _, i := range srcPos[split[j]:split[j+1]] {
			label[i] = uint8(j)
			val[i] = q
		}
	}
	km.c32 = c32
	return c, nil
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// appendLabels packs ids of w bits LSB-first (zero padding in the last byte).
func appendLabels(dst []byte, label []uint8, w int) []byte {
	if w == 0 {
		return dst
	}
	var acc uint64
	var nb uint
	for _, l := range label {
		acc |= uint64(l) << nb
		nb += uint(w)
		if nb >= 32 {
			dst = append(dst, byte(acc), byte(acc>>8), byte(acc>>16), byte(acc>>24))
			acc >>= 32
			nb -= 32
		}
	}
	for nb > 0 {
		dst = append(dst, byte(acc))
		acc >>= 8
		nb -= min(nb, 8)
	}
	return dst
}

// parseKMeans validates the value section b of a frame with m kept values
// and c centroids (length, finite centroids, every id < c, zero padding)
// and decodes the centroids into km.dcent and the ids into km.label.
func (km *kmeans) parseKMeans(b []byte, m, c int) error {
	w := kmeansWidth(c)
	want := 4*c + (m*w+7)/8
	if len(b) != want {
		return fmt.Errorf("%w: k-means section of %d bytes, want %d for %d values and %d centroids", ErrCorrupt, len(b), want, m, c)
	}
	for j := range c {
		v := binary.LittleEndian.Uint32(b[4*j:])
		if v&0x7f800000 == 0x7f800000 {
			return fmt.Errorf("%w: centroid %d is not finite", ErrCorrupt, j)
		}
		km.dcent[j] = math.Float32frombits(v)
	}
	km.reserve(m)
	label := km.label[:m]
	if w == 0 {
		clear(label)
		return nil
	}
	ids := b[4*c:]
	if used := m * w; used%8 != 0 && ids[len(ids)-1]>>(used%8) != 0 {
		return fmt.Errorf("%w: nonzero padding after the cluster ids", ErrCorrupt)
	}
	uw := uint(w)
	mask := uint64(1)<<uw - 1
	var acc uint64
	var nb uint
	p := 0
	for i := range label {
		if nb < uw {
			for nb <= 56 && p < len(ids) {
				acc |= uint64(ids[p]) << nb
				p++
				nb += 8
			}
		}
		id := acc & mask
		if id >= uint64(c) {
			return fmt.Errorf("%w: cluster id %d of value %d is not below %d", ErrCorrupt, id, i, c)
		}
		label[i] = uint8(id)
		acc >>= uw
		nb -= uw
	}
	return nil
}
