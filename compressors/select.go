package compressors

import (
	"math"

	"github.com/slimgrad/slimgrad/internal/kernels"
)

const absMask = 0x7fffffff

// The selection below orders elements by key = float32 bits with the sign
// cleared (equal to ordering by |x| for non-NaN values; NaN ranks above +Inf)
// and breaks ties by lower index. All of it is deterministic.

// radixThreshold returns the k-th largest key t of x (1 <= k <= len(x)) and
// ties, the number of elements equal to t that belong to the top k (the
// first ties of them in index order). It makes three histogram passes over
// x (10, 11 and 10 bits of the key), using hist as scratch.
func radixThreshold(x []float32, k int, hist *[2048]uint32) (t uint32, ties int) {
	need := k
	var prefix uint32
	levels := [3]struct{ shift, width uint }{{21, 10}, {10, 11}, {0, 10}}
	for li, lv := range levels {
		nb := 1 << lv.width
		h := hist[:nb]
		clear(h)
		if li == 0 {
			for _, v := range x {
				h[(math.Float32bits(v)&absMask)>>21]++
			}
		} else {
			hi := lv.shift + lv.width
			want := prefix >> hi
			m := uint32(nb - 1)
			for _, v := range x {
				key := math.Float32bits(v) & absMask
				if key>>hi == want {
					h[(key>>lv.shift)&m]++
				}
			}
		}
		for b := nb - 1; b >= 0; b-- {
			c := int(h[b])
			if c >= need {
				prefix |= uint32(b) << lv.shift
				break
			}
			need -= c
		}
	}
	return prefix, need
}

// selector is the scratch of top-k selection; it lives in a compressor so
// that steady-state selection allocates nothing.
type selector struct {
	hist   [2048]uint32
	cidx   []uint32  // candidate indices, increasing
	cval   []float32 // candidate values
	sample []float32
}

// collectGE stores the indices and values of the elements with key >= lo
// into s.cidx/s.cval, up to limit of them. It returns the number found and
// whether more than limit exist (then the count is limit+1).
func (s *selector) collectGE(x []float32, lo uint32, limit int) (int, bool) {
	if cap(s.cidx) < limit {
		s.cidx = make([]uint32, limit)
		s.cval = make([]float32, limit)
	}
	ci, cv := s.cidx[:limit], s.cval[:limit]
	c := 0
	for j := 0; ; j++ {
		j += kernels.NextAbsGE(x[j:], lo)
		if j >= len(x) {
			return c, false
		}
		if c == limit {
			return c + 1, true
		}
		ci[c] = uint32(j)
		cv[c] = x[j]
		c++
	}
}

// filterTop writes the candidates (ci, cv: increasing indices) whose key is
// > t, plus the first ties with key == t, to idx/val. It returns the count.
func filterTop(idx []uint32, val []float32, ci []uint32, cv []float32, t uint32, ties int) int {
	o := 0
	for i, v := range cv {
		key := math.Float32bits(v) & absMask
		if key > t || (key == t && ties > 0) {
			if key == t {
				ties--
			}
			idx[o] = ci[i]
			val[o] = v
			o++
		}
	}
	return o
}

// topKOf selects the exact top k of the candidates (ci, cv) into idx/val in
// index order. len(cv) >= k.
func (s *selector) topKOf(idx []uint32, val []float32, ci []uint32, cv []float32, k int) int {
	if k <= 0 {
		return 0
	}
	if k >= len(cv) {
		copy(idx, ci)
		copy(val, cv)
		return len(cv)
	}
	t, ties := radixThreshold(cv, k, &s.hist)
	return filterTop(idx, val, ci, cv, t, ties)
}

// exactTopK writes the k elements of x with the largest magnitude (ties by
// lower index) to idx/val (len >= k) in increasing index order and returns
// k (clamped to [0, len(x)]).
//
// For large x it first bounds the threshold from below with a strided sample
// and gathers only the elements above the bound (one pass); the result is
// exact whenever at least k elements pass the bound, and otherwise (or if
// far too many pass) it falls back to radix selection over all of x.
func (s *selector) exactTopK(idx []uint32, val []float32, x []float32, k int) int {
	n := len(x)
	if k <= 0 {
		return 0
	}
	if k >= n {
		for j, v := range x {
			idx[j] = uint32(j)
			val[j] = v
		}
		return n
	}
	if n >= 1<<16 && k <= n/16 {
		const stride = 64
		m := n / stride
		if cap(s.sample) < m {
			s.sample = make([]float32, m)
		}
		smp := s.sample[:m]
		for i := range smp {
			smp[i] = x[i*stride+stride/2]
		}
		e := float64(k) * float64(m) / float64(n) // expected sample rank of the k-th largest
		r := min(int(math.Ceil(1.5*e+3*math.Sqrt(e)+8)), m)
		lo, _ := radixThreshold(smp, r, &s.hist)
		limit := 4*k + 8*stride + 4096
		c, over := s.collectGE(x, lo, limit)
		if !over && c >= k {
			return s.topKOf(idx, val, s.cidx[:c], s.cval[:c], k)
		}
		if over && lo < absMask {
			// Many elements tie at the bound (quantized or mostly-zero
			// gradients): if fewer than k are strictly above it, the
			// threshold is the bound itself.
			c2, over2 := s.collectGE(x, lo+1, limit)
			if !over2 {
				if c2 >= k {
					return s.topKOf(idx, val, s.cidx[:c2], s.cval[:c2], k)
				}
				return emitThreshold(idx, val, x, lo, k-c2)
			}
		}
	}
	t, ties := radixThreshold(x, k, &s.hist)
	return emitThreshold(idx, val, x, t, ties)
}

// emitThreshold writes, in index order, the elements of x with key > t and
// the first ties elements with key == t. It visits only those elements (and
// the ones with key > t), using the vectorized magnitude scan.
func emitThreshold(idx []uint32, val []float32, x []float32, t uint32, ties int) int {
	o, j := 0, 0
	for ties > 0 {
		j += kernels.NextAbsGE(x[j:], t)
		if j >= len(x) {
			return o
		}
		if math.Float32bits(x[j])&absMask == t {
			ties--
		}
		idx[o], val[o] = uint32(j), x[j]
		o++
		j++
	}
	if t == absMask {
		return o
	}
	for {
		j += kernels.NextAbsGE(x[j:], t+1)
		if j >= len(x) {
			return o
		}
		idx[o], val[o] = uint32(j), x[j]
		o++
		j++
	}
}
