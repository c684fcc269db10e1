// Package compressortest is the conformance suite of compressors.Compressor
// implementations: Run checks round trips against naive references (for the
// k-means stage: the sent support, values that are the means of their
// clusters and an order-preserving quantiser; for lossless: the exact
// bits), the contraction bound of biased codecs, unbiasedness of random-k
// and QSGD (a statistical test with fixed seeds), determinism, exact byte
// counts, the bit layout of sign frames, and that corrupt or mismatched
// frames give errors, never panics or partial writes.
//
// The suite also runs against a codec added with compressors.Register, as
// long as its frames are written with compressors.Frame (the suite parses
// their headers and corrupts them): Run(t, FromRecipe("mycodec:ARGS")).
// For such a codec it checks what the Compressor contract and its
// CodecSpec promise: round trips that Decompress and DecompressAdd agree
// on, ‖D(C(x))−x‖ ≤ ‖x‖ if it is Biased, unbiasedness (against the sample
// variance) if not, determinism across instances and ranks, frames no
// larger than NominalBytes, and the handling of corrupt, mismatched and
// non-finite input.
package compressortest

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/internal/kernels"
)

// Layer describes the layer a Factory builds a compressor for.
type Layer struct {
	N          int    // elements
	Rows, Cols int    // shape (Rows*Cols == N) for matrix codecs, else 0
	Seed       uint64 // seed shared by all ranks
	Rank       int    // this rank's index
}

// Factory builds a fresh compressor for a layer. Compressors built for the
// same layer and seed must interoperate (one's frames decode on another).
type Factory func(l Layer) (compressors.Compressor, error)

// FromRecipe returns a Factory that calls compressors.New with the layer's
// shape (if any), seed and rank.
func FromRecipe(recipe string) Factory {
	return func(l Layer) (compressors.Compressor, error) {
		opts := []compressors.Option{compressors.WithSeed(l.Seed), compressors.WithRank(l.Rank)}
		if l.Rows > 0 {
			opts = append(opts, compressors.WithShape(l.Rows, l.Cols))
		}
		return compressors.New(recipe, l.N, opts...)
	}
}

type suite struct {
	t      *testing.T
	f      Factory
	recipe compressors.Recipe
}

// Run runs the conformance suite against the compressors f builds. The codec
// (and so the expected behaviour) is read from the compressor's String(),
// which must be a recipe that compressors.Parse accepts.
func Run(t *testing.T, f Factory) {
	t.Helper()
	probe, err := f(Layer{N: 16, Rows: 4, Cols: 4, Seed: 1})
	if err != nil {
		t.Fatalf("factory: %v", err)
	}
	rec, err := compressors.Parse(probe.String())
	if err != nil {
		t.Fatalf("String() %q is not a recipe: %v", probe.String(), err)
	}
	if got, want := probe.Aggregation(), rec.Aggregation(); got != want {
		t.Fatalf("Aggregation() = %v, recipe says %v", got, want)
	}
	s := &suite{t: t, f: f, recipe: rec}
	t.Run("RoundTrip", s.roundTrip)
	t.Run("DecompressAdd", s.decompressAdd)
	t.Run("Contraction", s.contraction)
	t.Run("Unbiased", s.unbiased)
	t.Run("Determinism", s.determinism)
	t.Run("Bytes", s.bytes)
	t.Run("SignLayout", s.signLayout)
	t.Run("Corrupt", s.corrupt)
	t.Run("Lengths", s.lengths)
	t.Run("NonFinite", s.nonFinite)
	t.Run("Independent", s.independent)
}

func (s *suite) isMatrix() bool { return s.recipe.Codec == compressors.CodecPowerSGD }

func (s *suite) layers() []Layer {
	if s.isMatrix() {
		return []Layer{{Rows: 1, Cols: 1}, {Rows: 1, Cols: 9}, {Rows: 5, Cols: 3}, {Rows: 16, Cols: 16}, {Rows: 40, Cols: 24}, {Rows: 7, Cols: 100}}
	}
	return []Layer{{N: 0}, {N: 1}, {N: 7}, {N: 8}, {N: 9}, {N: 64}, {N: 1000}, {N: 4099}}
}

func (s *suite) build(t *testing.T, l Layer) compressors.Compressor {
	t.Helper()
	if l.Rows > 0 {
		l.N = l.Rows * l.Cols
	}
	if l.Seed == 0 {
		l.Seed = 0x5eed
	}
	c, err := s.f(l)
	if err != nil {
		t.Fatalf("factory(%+v): %v", l, err)
	}
	if c.Len() != l.N {
		t.Fatalf("Len() = %d, want %d", c.Len(), l.N)
	}
	return c
}

func nOf(l Layer) int {
	if l.Rows > 0 {
		return l.Rows * l.Cols
	}
	return l.N
}

// gradient returns a test vector: Gaussian with a few exact zeros, negative
// zeros and repeated magnitudes (ties).
func gradient(r *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	for i := 0; i < n/10; i++ {
		switch i % 3 {
		case 0:
			x[r.IntN(n)] = 0
		case 1:
			x[r.IntN(n)] = float32(math.Copysign(0, -1))
		default:
			j, k := r.IntN(n), r.IntN(n)
			x[j] = -x[k]
		}
	}
	return x
}

func (s *suite) compress(t *testing.T, c compressors.Compressor, x []float32) []byte {
	t.Helper()
	b, err := c.Compress(nil, x)
	if err != nil {
		t.Fatalf("%v Compress(n=%d): %v", c, len(x), err)
	}
	return b
}

func (s *suite) decompress(t *testing.T, c compressors.Compressor, b []byte) []float32 {
	t.Helper()
	y := make([]float32, c.Len())
	for i := range y {
		y[i] = 12345 // must be overwritten
	}
	if err := c.Decompress(y, b); err != nil {
		t.Fatalf("%v Decompress(n=%d): %v", c, c.Len(), err)
	}
	return y
}

func header(t *testing.T, b []byte) compressors.Header {
	t.Helper()
	h, _, err := compressors.ParseHeader(b)
	if err != nil {
		t.Fatalf("ParseHeader of a fresh frame: %v", err)
	}
	return h
}

// naiveTopK returns the k indices of largest |x| (ties by lower index).
func naiveTopK(x []float32, k int) map[int]bool {
	idx := make([]int, len(x))
	for i := range idx {
		idx[i] = i
	}
	key := func(v float32) uint32 { return math.Float32bits(v) & 0x7fffffff }
	slices.SortStableFunc(idx, func(a, b int) int {
		ka, kb := key(x[a]), key(x[b])
		switch {
		case ka > kb:
			return -1
		case ka < kb:
			return 1
		}
		return a - b
	})
	m := make(map[int]bool, k)
	for _, j := range idx[:k] {
		m[j] = true
	}
	return m
}

func same(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) }

// selection is a copy of what a compressors.Sparse reported after Compress.
type selection struct {
	ok  bool
	idx []uint32
	val []float32
}

func selected(c compressors.Compressor) selection {
	sp, ok := c.(compressors.Sparse)
	if !ok {
		return selection{}
	}
	idx, val := sp.Selected()
	return selection{true, slices.Clone(idx), slices.Clone(val)}
}

// checkKMeans verifies a frame of a sparsifier with the k-means stage: the
// decoded vector is the reported selection (the top k for topk), the
// values take at most c distinct values, each the mean of the kept values
// mapped to it, and the quantiser preserves order.
func (s *suite) checkKMeans(t *testing.T, x, y []float32, frame []byte, sel selection) {
	t.Helper()
	rec := s.recipe
	n := len(x)
	h := header(t, frame)
	if !sel.ok {
		t.Fatalf("%v is not a compressors.Sparse", rec)
	}
	k := len(sel.idx)
	if int(h.Count) != k || k > rec.K(n) || (rec.Codec == compressors.CodecTopK && k != rec.K(n)) {
		t.Fatalf("%v n=%d: %d pairs in the header, %d selected, k=%d", rec, n, h.Count, k, rec.K(n))
	}
	if kk, c := int(h.Aux>>32), int(uint32(h.Aux)); kk != rec.KMeans || c > min(kk, k) || (k > 0 && c == 0) {
		t.Fatalf("%v n=%d: aux %#x (K=%d, c=%d) for %d values", rec, n, h.Aux, kk, c, k)
	}
	var top map[int]bool
	if rec.Codec == compressors.CodecTopK {
		top = naiveTopK(x, k)
	}
	kept := make(map[int]bool, k)
	for i, j := range sel.idx {
		if i > 0 && j <= sel.idx[i-1] {
			t.Fatalf("%v: selected indices not increasing", rec)
		}
		if top != nil && !top[int(j)] {
			t.Fatalf("%v n=%d: index %d sent but not in the reference top %d", rec, n, j, k)
		}
		kept[int(j)] = true
		if !same(y[j], sel.val[i]) {
			t.Fatalf("%v: y[%d] = %v, Selected says %v", rec, j, y[j], sel.val[i])
		}
	}
	for j := range y {
		if !kept[j] && y[j] != 0 {
			t.Fatalf("%v: y[%d] = %v outside the selection", rec, j, y[j])
		}
	}
	// Group the kept values by their quantised value.
	type group struct {
		sum, maxAbs float64
		n           int
	}
	groups := map[uint32]*group{}
	for i, j := range sel.idx {
		g := groups[math.Float32bits(sel.val[i])]
		if g == nil {
			g = &group{}
			groups[math.Float32bits(sel.val[i])] = g
		}
		g.sum += float64(x[j])
		g.maxAbs = max(g.maxAbs, math.Abs(float64(x[j])))
		g.n++
	}
	if c := int(uint32(h.Aux)); len(groups) > c {
		t.Fatalf("%v: %d distinct values for %d centroids", rec, len(groups), c)
	}
	for b, g := range groups {
		v := float64(math.Float32frombits(b))
		if mean := g.sum / float64(g.n); math.Abs(mean-v) > 1e-5*g.maxAbs+1e-30 {
			t.Fatalf("%v: %d values quantised to %v, their mean is %v", rec, g.n, v, mean)
		}
	}
	order := slices.Clone(sel.idx)
	slices.SortFunc(order, func(a, b uint32) int { return cmp.Compare(x[a], x[b]) })
	for i := 1; i < len(order); i++ {
		if x[order[i]] > x[order[i-1]] && y[order[i]] < y[order[i-1]] {
			t.Fatalf("%v: %v < %v quantised to %v > %v", rec, x[order[i-1]], x[order[i]], y[order[i-1]], y[order[i]])
		}
	}
}

// checkDecoded verifies y = D(C(x)) against the codec's definition; sel is
// what the compressor reported by Selected right after Compress.
func (s *suite) checkDecoded(t *testing.T, l Layer, x, y []float32, frame []byte, sel selection) {
	t.Helper()
	n := len(x)
	rec := s.recipe
	h := header(t, frame)
	if rec.KMeans != 0 {
		s.checkKMeans(t, x, y, frame, sel)
		return
	}
	switch rec.Codec {
	case compressors.CodecNone, compressors.CodecLossless:
		for i := range x {
			if !same(x[i], y[i]) {
				t.Fatalf("%v: y[%d] = %v, want %v", rec, i, y[i], x[i])
			}
		}
	case compressors.CodecFP16:
		for i := range x {
			if w := kernels.F16ToF32(kernels.F32ToF16(x[i])); !same(w, y[i]) {
				t.Fatalf("fp16: y[%d] = %v, want %v", i, y[i], w)
			}
		}
	case compressors.CodecBF16:
		for i := range x {
			if w := kernels.BF16ToF32(kernels.F32ToBF16(x[i])); !same(w, y[i]) {
				t.Fatalf("bf16: y[%d] = %v, want %v", i, y[i], w)
			}
		}
	case compressors.CodecTopK:
		k := rec.K(n)
		if int(h.Count) != k {
			t.Fatalf("topk: %d pairs, want %d", h.Count, k)
		}
		top := naiveTopK(x, k)
		for i := range x {
			w := float32(0)
			if top[i] {
				w = x[i]
			}
			if !same(w, y[i]) && !(w == 0 && y[i] == 0) {
				t.Fatalf("topk n=%d k=%d: y[%d] = %v, want %v (reference top-k)", n, k, i, y[i], w)
			}
		}
	case compressors.CodecDGC:
		k := rec.K(n)
		if int(h.Count) > k {
			t.Fatalf("dgc: %d pairs, more than k=%d", h.Count, k)
		}
		for i := range x {
			if y[i] != 0 && !same(y[i], x[i]) {
				t.Fatalf("dgc: y[%d] = %v, want 0 or %v", i, y[i], x[i])
			}
		}
	case compressors.CodecRandomK:
		k := rec.K(n)
		if int(h.Count) != k {
			t.Fatalf("randomk: %d values, want %d", h.Count, k)
		}
		sc := float32(float64(n) / float64(k))
		nz := 0
		for i := range x {
			if y[i] != 0 {
				nz++
				if !same(y[i], sc*x[i]) {
					t.Fatalf("randomk: y[%d] = %v, want %v·%v", i, y[i], sc, x[i])
				}
			}
		}
		if nz > k {
			t.Fatalf("randomk: %d nonzeros, more than k=%d", nz, k)
		}
	case compressors.CodecSign:
		rms := compressors.RMS(x)
		for i := range x {
			w := rms
			if !(x[i] >= 0) {
				w = -rms
			}
			if !same(w, y[i]) {
				t.Fatalf("sign: y[%d] = %v, want %v", i, y[i], w)
			}
		}
	case compressors.CodecQSGD:
		for b := 0; b < n; b += compressors.QSGDBucket {
			xb := x[b:min(b+compressors.QSGDBucket, n)]
			norm := float32(math.Sqrt(kernels.SumSq(xb)))
			unit := norm / float32(rec.Levels)
			for i, v := range xb {
				got := y[b+i]
				if norm == 0 {
					if got != 0 {
						t.Fatalf("qsgd: zero bucket decodes to %v", got)
					}
					continue
				}
				l := math.Abs(float64(got)) / float64(unit)
				if math.Abs(l-math.Round(l)) > 1e-3 || math.Round(l) > float64(rec.Levels) {
					t.Fatalf("qsgd: y[%d] = %v is not a level of %v", b+i, got, unit)
				}
				if got != 0 && (got < 0) != (v < 0) {
					t.Fatalf("qsgd: y[%d] = %v has the wrong sign for %v", b+i, got, v)
				}
				if math.Abs(float64(got-v)) > float64(unit)*(1+1e-5) {
					t.Fatalf("qsgd: y[%d] = %v more than one level from %v", b+i, got, v)
				}
			}
		}
	case compressors.CodecPowerSGD:
		if min(l.Rows, l.Cols) <= rec.Rank {
			// Full rank: P̂·P̂ᵀ·M = M.
			var e, nx float64
			for i := range x {
				d := float64(y[i] - x[i])
				e += d * d
				nx += float64(x[i]) * float64(x[i])
			}
			if e > 1e-8*nx {
				t.Fatalf("powersgd full rank %dx%d: ‖y−x‖²/‖x‖² = %g", l.Rows, l.Cols, e/nx)
			}
		}
	}
}

func (s *suite) roundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, l := range s.layers() {
		c := s.build(t, l)
		twin := s.build(t, l) // same history, but compresses into a reused buffer
		reused := make([]byte, 0, 16)
		for range 3 {
			x := gradient(r, nOf(l))
			b := s.compress(t, c, x)
			sel := selected(c)
			y := s.decompress(t, c, b)
			s.checkDecoded(t, l, x, y, b, sel)
			var err error
			if reused, err = twin.Compress(reused, x); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(reused, b) {
				t.Fatalf("%v n=%d: Compress into a reused buffer gives different bytes", c, nOf(l))
			}
		}
		// An all-zero gradient decodes to zeros.
		z := make([]float32, nOf(l))
		y := s.decompress(t, c, s.compress(t, c, z))
		for i, v := range y {
			if v != 0 {
				t.Fatalf("%v: zero gradient decodes to y[%d] = %v", c, i, v)
			}
		}
	}
}

func (s *suite) decompressAdd(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, l := range s.layers() {
		c := s.build(t, l)
		x := gradient(r, nOf(l))
		b := s.compress(t, c, x)
		y := s.decompress(t, c, b)
		base := gradient(r, nOf(l))
		acc := slices.Clone(base)
		if err := c.DecompressAdd(acc, b); err != nil {
			t.Fatalf("DecompressAdd: %v", err)
		}
		for i := range acc {
			w := base[i] + y[i]
			if s.isMatrix() {
				if math.Abs(float64(acc[i]-w)) > 1e-5*(1+math.Abs(float64(w))) {
					t.Fatalf("DecompressAdd[%d] = %v, want ≈ %v", i, acc[i], w)
				}
			} else if !same(acc[i], w) && !(acc[i] == 0 && w == 0) { // a sparse scatter-add keeps -0
				t.Fatalf("DecompressAdd[%d] = %v, want %v + %v", i, acc[i], base[i], y[i])
			}
		}
	}
}

func sqDist(a, b []float32) (d, na float64) {
	for i := range a {
		e := float64(a[i]) - float64(b[i])
		d += e * e
		na += float64(a[i]) * float64(a[i])
	}
	return d, na
}

func (s *suite) contraction(t *testing.T) {
	rec := s.recipe
	if !rec.Biased() {
		t.Skipf("%v is unbiased", rec)
	}
	r := rand.New(rand.NewPCG(5, 6))
	for _, l := range s.layers() {
		n := nOf(l)
		if n == 0 {
			continue
		}
		c := s.build(t, l)
		for range 3 {
			x := gradient(r, n)
			b := s.compress(t, c, x)
			y := s.decompress(t, c, b)
			err2, nx := sqDist(x, y)
			if nx == 0 {
				continue
			}
			var delta float64
			codec := rec.Codec
			if rec.KMeans != 0 {
				codec = compressors.CodecPowerSGD // the same Pythagorean bound below
			}
			switch codec {
			case compressors.CodecTopK:
				delta = float64(rec.K(n)) / float64(n)
			case compressors.CodecDGC:
				delta = float64(header(t, b).Count) / float64(n)
			case compressors.CodecFP16:
				delta = 1 - math.Ldexp(1, -22)
			case compressors.CodecBF16:
				delta = 1 - math.Ldexp(1, -16)
			case compressors.CodecSign:
				// RMS scaling gives exactly ‖C(x)−x‖² = 2(1−√δ₁)‖x‖² with
				// δ₁ = ‖x‖₁²/(n‖x‖₂²); it is contractive only where that is
				// below 1 (the ‖x‖₁/n scale would give 1−δ₁).
				var l1 float64
				for _, v := range x {
					l1 += math.Abs(float64(v))
				}
				d1 := l1 * l1 / (float64(n) * nx)
				want := 2 * (1 - math.Sqrt(d1)) * nx
				if math.Abs(err2-want) > 1e-5*nx {
					t.Fatalf("sign n=%d: ‖C(x)−x‖² = %g, want 2(1−√δ)‖x‖² = %g", n, err2, want)
				}
				continue
			case compressors.CodecPowerSGD:
				// An orthogonal projection: ‖C(x)−x‖² = ‖x‖² − ‖C(x)‖², δ = ‖C(x)‖²/‖x‖² > 0.
				var ny float64
				for _, v := range y {
					ny += float64(v) * float64(v)
				}
				delta = ny / nx
				if !(delta > 0) && rec.KMeans == 0 {
					t.Fatalf("powersgd %dx%d: projection kept nothing", l.Rows, l.Cols)
				}
				delta *= 1 - 1e-4
			}
			if err2 > (1-delta)*nx*(1+1e-6) {
				t.Fatalf("%v n=%d: ‖C(x)−x‖² = %g > (1−δ)‖x‖² = %g (δ=%g)", rec, n, err2, (1-delta)*nx, delta)
			}
		}
	}
}

// user reports whether the codec was added with compressors.Register.
func (s *suite) user() bool { return s.recipe.Codec >= compressors.MinUserCodec }

func (s *suite) unbiased(t *testing.T) {
	rec := s.recipe
	if s.user() && rec.Biased() || !s.user() && rec.Codec != compressors.CodecRandomK && rec.Codec != compressors.CodecQSGD {
		t.Skipf("%v is biased", rec)
	}
	r := rand.New(rand.NewPCG(7, 8))
	const n, trials = 40, 4000
	c := s.build(t, Layer{N: n, Seed: 99})
	x := gradient(r, n)
	sum, sumSq := make([]float64, n), make([]float64, n)
	y := make([]float32, n)
	var buf []byte
	for range trials {
		var err error
		if buf, err = c.Compress(buf, x); err != nil {
			t.Fatal(err)
		}
		if err := c.Decompress(y, buf); err != nil {
			t.Fatal(err)
		}
		for i, v := range y {
			sum[i] += float64(v)
			sumSq[i] += float64(v) * float64(v)
		}
	}
	// Per-element variance of one draw: the codec's for the built-in
	// codecs, the sample variance for a user codec.
	vari := make([]float64, n)
	switch rec.Codec {
	default:
		for i := range vari {
			m := sum[i] / trials
			vari[i] = max(sumSq[i]/trials-m*m, 0) * trials / (trials - 1)
		}
	case compressors.CodecRandomK:
		k := rec.K(n)
		for i, v := range x {
			vari[i] = float64(v) * float64(v) * (float64(n)/float64(k) - 1)
		}
	case compressors.CodecQSGD:
		norm := math.Sqrt(kernels.SumSq(x))
		unit := norm / float64(rec.Levels)
		for i, v := range x {
			q := math.Abs(float64(v)) / unit
			p := q - math.Floor(q)
			vari[i] = unit * unit * p * (1 - p)
		}
	}
	var chi float64
	var dof int
	for i := range x {
		mean := sum[i] / trials
		d := mean - float64(x[i])
		sd := math.Sqrt(vari[i] / trials)
		if sd == 0 {
			if math.Abs(d) > 1e-5*(1+math.Abs(float64(x[i]))) {
				t.Fatalf("%v: element %d has no variance but mean %v != %v", rec, i, mean, x[i])
			}
			continue
		}
		if math.Abs(d) > 5*sd+1e-6 {
			t.Fatalf("%v: element %d: mean %v, want %v ± %v (5σ)", rec, i, mean, x[i], 5*sd)
		}
		chi += d * d / (sd * sd)
		dof++
	}
	// χ² with dof degrees of freedom: mean dof, sd √(2·dof).
	if lim := float64(dof) + 5*math.Sqrt(2*float64(dof)); chi > lim {
		t.Fatalf("%v: χ² = %.1f over %d elements, above %.1f: biased", rec, chi, dof, lim)
	}
}

func (s *suite) determinism(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, l := range s.layers() {
		a, b := s.build(t, l), s.build(t, l)
		other := l
		other.Rank = 1
		o := s.build(t, other)
		for step := range 3 {
			x := gradient(r, nOf(l))
			fa, fb := s.compress(t, a, x), s.compress(t, b, x)
			if !slices.Equal(fa, fb) {
				t.Fatalf("%v n=%d step %d: two compressors with the same seed differ", a, nOf(l), step)
			}
			ya := s.decompress(t, a, fa)
			yo := s.decompress(t, o, fa) // another rank decodes the same frame
			for i := range ya {
				if !same(ya[i], yo[i]) {
					t.Fatalf("%v n=%d: rank 1 decodes y[%d] = %v, rank 0 %v", a, nOf(l), i, yo[i], ya[i])
				}
			}
			if _, err := o.Compress(nil, x); err != nil { // keep o in step
				t.Fatal(err)
			}
		}
	}
}

func (s *suite) bytes(t *testing.T) {
	rec := s.recipe
	r := rand.New(rand.NewPCG(11, 12))
	for _, l := range s.layers() {
		c := s.build(t, l)
		n := nOf(l)
		x := gradient(r, n)
		b := s.compress(t, c, x)
		h := header(t, b)
		if got := len(b); got != compressors.FrameOverhead+int(h.BodyLen) {
			t.Fatalf("frame of %d bytes, header says %d", got, compressors.FrameOverhead+int(h.BodyLen))
		}
		var opts []compressors.Option
		if l.Rows > 0 {
			opts = append(opts, compressors.WithShape(l.Rows, l.Cols))
		}
		nominal := rec.NominalBytes(n, opts...)
		switch {
		case rec.Zstd, rec.KMeans != 0, rec.Codec == compressors.CodecLossless, s.user():
			if int64(len(b)) > nominal {
				t.Fatalf("%v n=%d: %d bytes, more than the bound %d", rec, n, len(b), nominal)
			}
		case rec.Codec == compressors.CodecDGC:
			if want := compressors.FrameOverhead + 8*int(h.Count); len(b) != want || int64(len(b)) > nominal {
				t.Fatalf("dgc n=%d: %d bytes for %d pairs (want %d, at most %d)", n, len(b), h.Count, want, nominal)
			}
		default:
			if int64(len(b)) != nominal {
				t.Fatalf("%v n=%d: %d bytes, NominalBytes says %d", rec, n, len(b), nominal)
			}
		}
		// The body length in bytes follows the codec's definition.
		var body int
		switch rec.Codec {
		default: // a user codec: the size is its own
			body = int(h.RawLen)
		case compressors.CodecNone:
			body = 4 * n
		case compressors.CodecFP16, compressors.CodecBF16:
			body = 2 * n
		case compressors.CodecTopK, compressors.CodecDGC:
			body = 8 * int(h.Count)
			if rec.KMeans != 0 {
				m, c := int(h.Count), int(uint32(h.Aux))
				w := 0
				for 1<<w < c {
					w++
				}
				body = 4*m + 4*c + (m*w+7)/8
			}
		case compressors.CodecLossless:
			body = int(h.RawLen) // data-dependent; bounded above
			if z := int(h.Count); z > n || body < 3*(n-z)+1 {
				t.Fatalf("lossless n=%d: body of %d bytes, less than the %d of the raw words (%d elided)", n, body, 3*(n-z)+1, z)
			}
		case compressors.CodecRandomK:
			body = 4 * rec.K(n)
		case compressors.CodecSign:
			body = 4 + (n+7)/8
		case compressors.CodecQSGD:
			w := 1
			for 1<<(w-1) <= rec.Levels {
				w++
			}
			body = 4*((n+compressors.QSGDBucket-1)/compressors.QSGDBucket) + (n*w+7)/8
		case compressors.CodecPowerSGD:
			body = 4 * min(rec.Rank, l.Rows, l.Cols) * (l.Rows + l.Cols)
		}
		if !rec.Zstd && int(h.RawLen) != body {
			t.Fatalf("%v n=%d: body of %d bytes, want %d", rec, n, h.RawLen, body)
		}
	}
}

func (s *suite) signLayout(t *testing.T) {
	if s.recipe.Codec != compressors.CodecSign {
		t.Skip("not a sign codec")
	}
	negz := float32(math.Copysign(0, -1))
	x := []float32{1, -1, 0, negz, -2, 3, -4, -0.5, // 1011 0100
		-1, -1, -1, -1, -1, -1, -1, 5, // 0000 0001
		7, -7, 7} // 101 + zero padding
	c := s.build(t, Layer{N: len(x)})
	b := s.compress(t, c, x)
	_, body, err := compressors.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	want := binary.LittleEndian.AppendUint32(nil, math.Float32bits(compressors.RMS(x)))
	want = append(want, 0xb4, 0x01, 0xa0)
	if !slices.Equal(body, want) {
		t.Fatalf("sign body = % x, want % x", body, want)
	}
	if got := compressors.PackSigns(nil, x); !slices.Equal(got, want[4:]) {
		t.Fatalf("PackSigns = % x, want % x", got, want[4:])
	}
}

// reseal recomputes the trailing CRC-32C of a frame.
func reseal(b []byte) []byte {
	end := len(b) - 4
	binary.LittleEndian.PutUint32(b[end:], crc32.Checksum(b[:end], crc32.MakeTable(crc32.Castagnoli)))
	return b
}

func (s *suite) expectErr(t *testing.T, c compressors.Compressor, frame []byte, what string) {
	t.Helper()
	dst := make([]float32, c.Len())
	for i := range dst {
		dst[i] = float32(i)
	}
	if err := c.Decompress(dst, frame); err == nil {
		t.Fatalf("%v: Decompress accepted %s", c, what)
	} else if !errors.Is(err, compressors.ErrCorrupt) && !errors.Is(err, compressors.ErrMismatch) {
		t.Fatalf("%v: %s: error %v wraps neither ErrCorrupt nor ErrMismatch", c, what, err)
	}
	if err := c.DecompressAdd(dst, frame); err == nil {
		t.Fatalf("%v: DecompressAdd accepted %s", c, what)
	}
	for i := range dst {
		if dst[i] != float32(i) {
			t.Fatalf("%v: a rejected frame (%s) changed dst[%d]", c, what, i)
		}
	}
}

func (s *suite) corrupt(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, l := range s.layers() {
		n := nOf(l)
		if n > 1000 {
			continue
		}
		c := s.build(t, l)
		frame := s.compress(t, c, gradient(r, n))
		for cut := range len(frame) {
			s.expectErr(t, c, frame[:cut], "a truncated frame")
		}
		for range 64 {
			b := slices.Clone(frame)
			i := r.IntN(len(b))
			b[i] ^= 1 << r.IntN(8)
			s.expectErr(t, c, b, "a flipped bit")
		}
		// Header fields changed under a valid checksum.
		for _, f := range []struct {
			off  int
			name string
		}{{2, "version"}, {3, "codec"}, {4, "flags"}, {5, "reserved"}, {8, "param"}, {12, "n"}, {24, "count"}, {28, "rawLen"}, {32, "bodyLen"}} {
			for _, delta := range []byte{1, 0x80} {
				b := slices.Clone(frame)
				b[f.off] += delta
				if f.off == 12 || f.off == 24 || f.off == 28 || f.off == 32 {
					b[f.off+3] ^= 0x40 // huge values too
				}
				s.expectErr(t, c, reseal(b), "a changed "+f.name)
			}
		}
		// Extra bytes in the body under a valid checksum.
		b := append(slices.Clone(frame[:len(frame)-4]), 0, 0, 0, 0, 0)
		binary.LittleEndian.PutUint32(b[32:], binary.LittleEndian.Uint32(b[32:])+1)
		s.expectErr(t, c, reseal(b), "a longer body")
		// Random bodies under a valid header and checksum.
		for range 32 {
			b := slices.Clone(frame)
			for j := 36; j < len(b)-4; j++ {
				if r.IntN(4) == 0 {
					b[j] = byte(r.Uint32())
				}
			}
			dst := make([]float32, n)
			_ = c.Decompress(dst, reseal(b)) // must not panic; may succeed
			_ = c.DecompressAdd(dst, b)
		}
		// A frame of another codec for the same layer.
		otherRecipe := "none"
		if s.recipe.Codec == compressors.CodecNone {
			otherRecipe = "fp16"
		}
		other, err := compressors.New(otherRecipe, n)
		if err != nil {
			t.Fatal(err)
		}
		of, err := other.Compress(nil, make([]float32, n))
		if err != nil {
			t.Fatal(err)
		}
		s.expectErr(t, c, of, "a frame of another codec")
	}
	// A frame for a layer of another size.
	if !s.isMatrix() {
		a, b := s.build(t, Layer{N: 64}), s.build(t, Layer{N: 65})
		s.expectErr(t, a, s.compress(t, b, gradient(r, 65)), "a frame of another layer size")
	}
}

func (s *suite) lengths(t *testing.T) {
	for _, l := range s.layers() {
		c := s.build(t, l)
		n := nOf(l)
		if _, err := c.Compress(nil, make([]float32, n+1)); !errors.Is(err, compressors.ErrLength) {
			t.Fatalf("Compress with %d elements for %d: err = %v, want ErrLength", n+1, n, err)
		}
		frame := s.compress(t, c, make([]float32, n))
		if err := c.Decompress(make([]float32, n+1), frame); !errors.Is(err, compressors.ErrLength) {
			t.Fatalf("Decompress into %d elements for %d: err = %v, want ErrLength", n+1, n, err)
		}
		if err := c.DecompressAdd(make([]float32, n+1), frame); !errors.Is(err, compressors.ErrLength) {
			t.Fatalf("DecompressAdd into %d elements for %d: err = %v, want ErrLength", n+1, n, err)
		}
	}
}

func (s *suite) nonFinite(t *testing.T) {
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
		l := Layer{N: 64}
		if s.isMatrix() {
			l = Layer{Rows: 8, Cols: 8}
		}
		c := s.build(t, l)
		x := gradient(rand.New(rand.NewPCG(15, 16)), 64)
		x[5] = bad
		b, err := c.Compress(nil, x)
		if err != nil {
			if !errors.Is(err, compressors.ErrNonFinite) {
				t.Fatalf("%v with %v: error %v does not wrap ErrNonFinite", c, bad, err)
			}
			continue
		}
		y := make([]float32, 64)
		if err := c.Decompress(y, b); err != nil {
			t.Fatalf("%v: frame of an input with %v does not decode: %v", c, bad, err)
		}
		if s.recipe.Codec == compressors.CodecLossless {
			for i := range x {
				if !same(x[i], y[i]) {
					t.Fatalf("lossless: y[%d] bits %#x, want %#x", i, math.Float32bits(y[i]), math.Float32bits(x[i]))
				}
			}
		}
	}
}

// independent runs separate compressors on separate goroutines: instances
// must share no mutable state (run the suite under -race to check), and each
// must produce what it produces alone.
func (s *suite) independent(t *testing.T) {
	l := Layer{N: 1000}
	if s.isMatrix() {
		l = Layer{Rows: 25, Cols: 40}
	}
	x := gradient(rand.New(rand.NewPCG(17, 18)), nOf(l))
	want := s.compress(t, s.build(t, l), x)
	const workers = 4
	var wg sync.WaitGroup
	errs := make(chan string, workers)
	for w := range workers {
		c := s.build(t, l)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			y := make([]float32, nOf(l))
			for i := range 20 {
				var err error
				if buf, err = c.Compress(buf, x); err != nil {
					errs <- err.Error()
					return
				}
				if i == 0 && !slices.Equal(buf, want) {
					errs <- fmt.Sprintf("worker %d: first frame differs from a lone compressor's", w)
					return
				}
				if err := c.DecompressAdd(y, buf); err != nil {
					errs <- err.Error()
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
}
