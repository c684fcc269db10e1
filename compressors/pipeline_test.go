package compressors

import (
	"cmp"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// losslessInputs are the vectors the lossless codec must reproduce bit for
// bit: Gaussian gradients, arbitrary bit patterns (NaN payloads, ±Inf,
// subnormals), the special values, constant layers and a layer whose first
// blocks are zero.
func losslessInputs(r *rand.Rand, n int) map[string][]float32 {
	gauss := make([]float32, n)
	bitsv := make([]float32, n)
	special := make([]float32, n)
	zeros := make([]float32, n)
	ones := make([]float32, n)
	mixed := make([]float32, n)
	halfzero := make([]float32, n)
	bf16 := make([]float32, n)
	bf16specials := []uint32{0, 0x80000000, 0x00010000, 0x807f0000, 0x7f800000, 0xff800000, 0x7fc10000, 0xff810000, 0x7f7f0000}
	specials := []uint32{
		0x00000000, 0x80000000, // ±0
		0x00000001, 0x807fffff, 0x00400000, // subnormals
		0x7f800000, 0xff800000, // ±Inf
		0x7fc00000, 0xffc00001, 0x7f800001, 0x7fbfffff, 0xff812345, // quiet and signalling NaNs with payloads
		0x7f7fffff, 0x00800000, 0x3f800000, 0xbf800000, // max, min normal, ±1
	}
	for i := range n {
		gauss[i] = float32(r.NormFloat64() * 1e-3)
		bitsv[i] = math.Float32frombits(r.Uint32())
		special[i] = math.Float32frombits(specials[r.IntN(len(specials))])
		ones[i] = 1
		if i >= min(n, 2*LosslessBlock+17) {
			mixed[i] = gauss[i]
		}
		if r.IntN(50) == 0 {
			bf16[i] = math.Float32frombits(bf16specials[r.IntN(len(bf16specials))])
		} else {
			bf16[i] = math.Float32frombits(math.Float32bits(gauss[i]) &^ 0xffff)
		}
		switch r.IntN(8) {
		case 0, 1, 2:
			halfzero[i] = 0
		case 3:
			halfzero[i] = float32(math.Copysign(0, -1))
		case 4:
			halfzero[i] = math.Float32frombits(r.Uint32() & 0x807fffff) // ±subnormal or ±0
		default:
			halfzero[i] = gauss[i]
		}
	}
	return map[string][]float32{"gauss": gauss, "bits": bitsv, "special": special, "zeros": zeros, "ones": ones, "mixed": mixed, "halfzero": halfzero, "bf16": bf16}
}

func TestLosslessExact(t *testing.T) {
	r := rand.New(rand.NewPCG(61, 62))
	for _, n := range []int{0, 1, 7, 8, 9, 63, 64, 65, 1000, LosslessBlock, LosslessBlock + 1, 3*LosslessBlock + 77} {
		c, err := New("lossless", n)
		if err != nil {
			t.Fatal(err)
		}
		for name, x := range losslessInputs(r, n) {
			b, err := c.Compress(nil, x)
			if err != nil {
				t.Fatalf("n=%d %s: %v", n, name, err)
			}
			if max := NominalBytes(t, n); len(b) > max {
				t.Fatalf("n=%d %s: %d bytes, above the bound %d", n, name, len(b), max)
			}
			y := make([]float32, n)
			for i := range y {
				y[i] = 7
			}
			if err := c.Decompress(y, b); err != nil {
				t.Fatalf("n=%d %s: %v", n, name, err)
			}
			for i := range x {
				if math.Float32bits(x[i]) != math.Float32bits(y[i]) {
					t.Fatalf("n=%d %s: y[%d] = %#08x, want %#08x", n, name, i, math.Float32bits(y[i]), math.Float32bits(x[i]))
				}
			}
			base := make([]float32, n)
			for i := range base {
				base[i] = float32(i % 5)
			}
			acc := slices.Clone(base)
			if err := c.DecompressAdd(acc, b); err != nil {
				t.Fatal(err)
			}
			for i := range acc {
				if w := base[i] + x[i]; acc[i] != w && !(w != w && acc[i] != acc[i]) {
					t.Fatalf("n=%d %s: DecompressAdd[%d] = %v, want %v", n, name, i, acc[i], w)
				}
			}
			// Sizes: skewed exponents compress, constant ones take a byte,
			// random bits cost at most the mode byte.
			body := len(b) - FrameOverhead
			switch name {
			case "gauss":
				if n >= 1000 && body > 35*n/10 {
					t.Errorf("n=%d gauss: %d body bytes, want below 3.5 per float", n, body)
				}
			case "ones": // bf16-held: one-byte words
				if want := n + min(1+5*((n+LosslessBlock-1)/LosslessBlock), 1+n); body != want {
					t.Errorf("n=%d %s: %d body bytes, want %d", n, name, body, want)
				}
			case "zeros": // elided words, one-value blocks
				if want := 2 + 20*((n+LosslessBlock-1)/LosslessBlock); body > want {
					t.Errorf("n=%d zeros: %d body bytes, want at most %d", n, body, want)
				}
			case "bf16":
				if n >= 1000 && body > 15*n/10 {
					t.Errorf("n=%d bf16: %d body bytes, want below 1.5 per float", n, body)
				}
			case "halfzero":
				if n >= 1000 && body > 22*n/10 {
					t.Errorf("n=%d halfzero: %d body bytes, want below 2.2 per float", n, body)
				}
			case "mixed":
				if n > 2*LosslessBlock && body > 3*n+(n-2*LosslessBlock)/2+1000 {
					t.Errorf("n=%d mixed: %d body bytes; zero blocks are not run-length coded", n, body)
				}
			}
		}
	}
}

// NominalBytes returns the lossless bound for n as an int.
func NominalBytes(t *testing.T, n int) int {
	t.Helper()
	return int(MustParse("lossless").NominalBytes(n))
}

func TestLosslessCorruptBlocks(t *testing.T) {
	// Frames with a valid checksum whose exponent section is damaged are
	// rejected before dst is touched.
	r := rand.New(rand.NewPCG(63, 64))
	n := 2*LosslessBlock + 5
	c, _ := New("lossless", n)
	x := losslessInputs(r, n)["gauss"]
	frame, err := c.Compress(nil, x)
	if err != nil {
		t.Fatal(err)
	}
	sec := headerLen + 3*n
	if frame[sec] != expBlocks || frame[sec+1+3]>>6 != expHuff {
		t.Fatalf("gauss exponents use mode %d, want Huffman", frame[sec])
	}
	dst := make([]float32, n)
	for i := range 200 {
		b := slices.Clone(frame)
		switch i % 3 {
		case 0:
			b[sec+1+r.IntN(len(b)-sec-1-trailerLen)] ^= byte(1 << r.IntN(8))
		case 1:
			j := sec + 1 + r.IntN(len(b)-sec-1-trailerLen)
			b[j] = byte(r.Uint32())
		default:
			b = append(b[:len(b)-trailerLen-1-r.IntN(40)], 0, 0, 0, 0)
			putLen(b)
		}
		resealCRC(b)
		for k := range dst {
			dst[k] = 3
		}
		if err := c.Decompress(dst, b); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			for k := range dst {
				if dst[k] != 3 {
					t.Fatalf("rejected frame changed dst[%d]", k)
				}
			}
		}
	}
}

// putLen fixes rawLen and bodyLen of a frame whose length changed.
func putLen(b []byte) {
	body := uint32(len(b) - FrameOverhead)
	for _, off := range []int{28, 32} {
		b[off], b[off+1], b[off+2], b[off+3] = byte(body), byte(body>>8), byte(body>>16), byte(body>>24)
	}
}

// naiveKMeans is the reference of the k-means stage: quantile
// initialisation, then Lloyd iterations over all values (nearest centroid,
// ties to the lower one; means of non-empty clusters) until the assignment
// stops changing or kmeansIters updates ran.
func naiveKMeans(val []float32, k int) []float32 {
	m := len(val)
	if m == 0 {
		return nil
	}
	sorted := slices.Clone(val)
	slices.Sort(sorted)
	kk := min(k, m)
	var cent []float64
	for j := range kk {
		v := float64(sorted[((2*j+1)*m)/(2*kk)])
		if len(cent) == 0 || v > cent[len(cent)-1] {
			cent = append(cent, v)
		}
	}
	assign := func() []int {
		a := make([]int, m)
		for i, v := range val {
			best := 0
			for j := 1; j < len(cent); j++ {
				// v is above the midpoint of cent[j-1] and cent[j].
				if float64(v) > (cent[j-1]+cent[j])/2 {
					best = j
				}
			}
			a[i] = best
		}
		return a
	}
	var prev []int
	a := assign()
	for it := 0; ; it++ {
		if it > 0 && slices.Equal(a, prev) {
			break
		}
		sum := make([]float64, len(cent))
		cnt := make([]int, len(cent))
		// Sum in increasing value order, as the prefix sums do.
		order := make([]int, m)
		for i := range order {
			order[i] = i
		}
		slices.SortStableFunc(order, func(p, q int) int { return cmp.Compare(val[p], val[q]) })
		for _, i := range order {
			sum[a[i]] += float64(val[i])
			cnt[a[i]]++
		}
		var nc []float64
		remap := make([]int, len(cent))
		for j := range cent {
			remap[j] = len(nc)
			if cnt[j] > 0 {
				nc = append(nc, sum[j]/float64(cnt[j]))
			}
		}
		for i := range a {
			a[i] = remap[a[i]]
		}
		cent = nc
		prev = a
		if it+1 >= kmeansIters {
			break
		}
		a = assign()
	}
	out := make([]float32, m)
	for i := range val {
		out[i] = float32(cent[prev[i]])
	}
	return out
}

func TestKMeansReference(t *testing.T) {
	r := rand.New(rand.NewPCG(65, 66))
	for _, m := range []int{1, 2, 3, 10, 100, 1000, 5000} {
		for _, k := range []int{1, 2, 3, 8, 16, 256} {
			for trial := range 3 {
				val := make([]float32, m)
				for i := range val {
					switch trial {
					case 0:
						val[i] = float32(r.NormFloat64())
					case 1: // top-k like: two tails
						v := 2 + math.Abs(r.NormFloat64())
						if r.IntN(2) == 0 {
							v = -v
						}
						val[i] = float32(v)
					default: // few distinct values, ties
						val[i] = float32(r.IntN(5)) - 2
					}
				}
				want := naiveKMeans(val, k)
				km := newKMeans(k)
				got := slices.Clone(val)
				c, err := km.cluster(got)
				if err != nil {
					t.Fatal(err)
				}
				if c > min(k, m) {
					t.Fatalf("m=%d k=%d: %d centroids", m, k, c)
				}
				for i := range got {
					if math.Abs(float64(got[i]-want[i])) > 1e-5*(1+math.Abs(float64(want[i]))) {
						t.Fatalf("m=%d k=%d trial %d: value %d (%v) quantised to %v, reference %v", m, k, trial, i, val[i], got[i], want[i])
					}
					if got[i] != km.c32[km.label[i]] {
						t.Fatalf("label of value %d does not give its value", i)
					}
				}
			}
		}
	}
}

func TestKMeansNonFinite(t *testing.T) {
	c, _ := New("topk:0.5+kmeans:4", 8)
	x := []float32{1, 2, float32(math.Inf(1)), 3, 0, 0, 0, 0}
	if _, err := c.Compress(nil, x); !errors.Is(err, ErrNonFinite) {
		t.Fatalf("err = %v, want ErrNonFinite", err)
	}
	// A NaN that is not kept does not matter.
	x[2] = 4
	if _, err := c.Compress(nil, x); err != nil {
		t.Fatal(err)
	}
}

func TestKMeansPayload(t *testing.T) {
	// topk:0.01+kmeans:16+zstd carries far fewer bytes than topk:0.01+zstd.
	r := rand.New(rand.NewPCG(67, 68))
	const n = 200_000
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	size := func(rec string) int {
		c, err := New(rec, n)
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Compress(nil, x)
		if err != nil {
			t.Fatal(err)
		}
		return len(b)
	}
	plain, km := size("topk:0.01"), size("topk:0.01+kmeans:16+zstd")
	if 2*km > plain {
		t.Errorf("kmeans frame %d bytes, topk %d: want less than half", km, plain)
	}
	if nb := MustParse("topk:0.01+kmeans:16").NominalBytes(n); int64(size("topk:0.01+kmeans:16")) > nb {
		t.Errorf("above NominalBytes %d", nb)
	}
}

func TestPipelineAllocs(t *testing.T) {
	r := rand.New(rand.NewPCG(69, 70))
	const n = 3*LosslessBlock + 11
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	for _, rec := range []string{"topk:0.01+kmeans:16+zstd", "topk:0.01+kmeans:16", "dgc:0.01+kmeans:4+zstd", "lossless"} {
		c, err := New(rec, n)
		if err != nil {
			t.Fatal(err)
		}
		checkStepAllocs(t, rec, c, x)
	}
}

func TestCRC32Combine(t *testing.T) {
	r := rand.New(rand.NewPCG(73, 74))
	for _, la := range []int{0, 1, 36, 100} {
		for _, lb := range []int{0, 1, 3, 64, 1000, 100_003} {
			a, b := make([]byte, la), make([]byte, lb)
			for i := range a {
				a[i] = byte(r.Uint32())
			}
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			want := crc32c(append(slices.Clone(a), b...))
			if got := crc32Combine(crc32c(a), crc32c(b), int64(lb)); got != want {
				t.Fatalf("combine(%d, %d) = %#x, want %#x", la, lb, got, want)
			}
		}
	}
}
