package compressors

import (
	"errors"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	good := []struct{ in, want string }{
		{"none", "none"}, {"fp32", "none"}, {"fp16", "fp16"}, {"bf16", "bf16"},
		{"topk:0.001", "topk:0.001"}, {" topk:1e-3 ", "topk:0.001"}, {"topk:1", "topk:1"},
		{"dgc:0.001+zstd", "dgc:0.001+zstd"}, {"randomk:0.01", "randomk:0.01"},
		{"sign", "sign"}, {"sign+zstd", "sign+zstd"}, {"sign:4096", "sign:4096"}, {"sign:64+zstd", "sign:64+zstd"}, {"qsgd:4", "qsgd:4"}, {"qsgd:127+zstd", "qsgd:127+zstd"},
		{"powersgd:4", "powersgd:4"}, {"lossless", "lossless"},
		{"topk:0.01+kmeans:16+zstd", "topk:0.01+kmeans:16+zstd"}, {"dgc:0.01+kmeans:1", "dgc:0.01+kmeans:1"},
		{"topk:1+kmeans:256", "topk:1+kmeans:256"},
	}
	for _, g := range good {
		r, err := Parse(g.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", g.in, err)
			continue
		}
		if got := r.String(); got != g.want {
			t.Errorf("Parse(%q).String() = %q, want %q", g.in, got, g.want)
		}
		if r2, err := Parse(r.String()); err != nil || r2 != r {
			t.Errorf("canonical %q does not round-trip: %v %v", r.String(), r2, err)
		}
	}
	bad := []struct{ in, want string }{
		{"topk:2", `compressors: recipe "topk:2": density must be in (0,1]`},
		{"topk:0", `compressors: recipe "topk:0": density must be in (0,1]`},
		{"topk:-0.1", `compressors: recipe "topk:-0.1": density must be in (0,1]`},
		{"topk:NaN", `compressors: recipe "topk:NaN": density must be in (0,1]`},
		{"topk", `compressors: recipe "topk": topk needs a density, e.g. "topk:0.001"`},
		{"topk:abc", `compressors: recipe "topk:abc": density "abc" is not a number`},
		{"qsgd:0", `compressors: recipe "qsgd:0": levels must be in [1,127]`},
		{"qsgd:128", `compressors: recipe "qsgd:128": levels must be in [1,127]`},
		{"qsgd:1.5", `compressors: recipe "qsgd:1.5": levels "1.5" is not an integer`},
		{"powersgd:0", `compressors: recipe "powersgd:0": rank must be in [1,65536]`},
		{"sign:3", `compressors: recipe "sign:3": scale block must be a multiple of 8 in [8,1073741824] (or plain "sign": one scale per vector)`},
		{"sign:x", `compressors: recipe "sign:x": scale block "x" is not an integer (sign:B, B elements per scale)`},
		{"", `compressors: recipe "": empty codec name`},
		{"topk:0.1+gzip", `compressors: recipe "topk:0.1+gzip": unknown stage "gzip" (want "+kmeans:K" or "+zstd")`},
		{"kmeans:16", `compressors: recipe "kmeans:16": kmeans is a stage after a sparsifier, e.g. "topk:0.01+kmeans:16"`},
		{"fp16+kmeans:16", `compressors: recipe "fp16+kmeans:16": +kmeans clusters the values kept by a sparsifier: it follows topk or dgc only`},
		{"randomk:0.1+kmeans:4", `compressors: recipe "randomk:0.1+kmeans:4": +kmeans clusters the values kept by a sparsifier: it follows topk or dgc only`},
		{"topk:0.01+kmeans:0", `compressors: recipe "topk:0.01+kmeans:0": centroids must be in [1,256]`},
		{"topk:0.01+kmeans:257", `compressors: recipe "topk:0.01+kmeans:257": centroids must be in [1,256]`},
		{"topk:0.01+kmeans", `compressors: recipe "topk:0.01+kmeans": kmeans needs a number of centroids, e.g. "+kmeans:16"`},
		{"topk:0.01+kmeans:x", `compressors: recipe "topk:0.01+kmeans:x": centroids "x" is not an integer`},
		{"topk:0.01+zstd+kmeans:16", `compressors: recipe "topk:0.01+zstd+kmeans:16": +kmeans must come before +zstd (zstd is the last stage)`},
		{"topk:0.01+kmeans:4+kmeans:4", `compressors: recipe "topk:0.01+kmeans:4+kmeans:4": +kmeans given twice`},
		{"topk:0.01+zstd+zstd", `compressors: recipe "topk:0.01+zstd+zstd": +zstd given twice`},
		{"topk:0.01+", `compressors: recipe "topk:0.01+": empty stage`},
		{"lossless+zstd", `compressors: recipe "lossless+zstd": +zstd applies to topk, dgc, randomk, sign and qsgd only`},
		{"lossless:3", `compressors: recipe "lossless:3": lossless takes no parameter`},
		{"fp16+zstd", `compressors: recipe "fp16+zstd": +zstd applies to topk, dgc, randomk, sign and qsgd only`},
		{"powersgd:4+zstd", `compressors: recipe "powersgd:4+zstd": +zstd applies to topk, dgc, randomk, sign and qsgd only`},
	}
	// The unknown-codec error lists the registry; other tests of this
	// binary may have registered user codecs after the built-ins.
	names := Codecs()
	if !slices.Equal(names[:10], strings.Fields("none fp16 bf16 topk dgc randomk sign qsgd powersgd lossless")) {
		t.Errorf("Codecs() = %v", names)
	}
	bad = append(bad, struct{ in, want string }{"zip", `compressors: recipe "zip": unknown codec "zip" (want ` +
		strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1] + ")"})
	for _, b := range bad {
		_, err := Parse(b.in)
		if err == nil {
			t.Errorf("Parse(%q) succeeded", b.in)
			continue
		}
		if err.Error() != b.want {
			t.Errorf("Parse(%q) error = %q, want %q", b.in, err, b.want)
		}
		var re *RecipeError
		if !errors.Is(err, ErrRecipe) || !errors.As(err, &re) {
			t.Errorf("Parse(%q) error %v is not a *RecipeError wrapping ErrRecipe", b.in, err)
		}
	}
}

func TestNewErrors(t *testing.T) {
	cases := []struct {
		recipe string
		n      int
		opts   []Option
		want   string
	}{
		{"powersgd:4", 12, nil, `compressors: recipe "powersgd:4": powersgd needs the layer's shape (WithShape)`},
		{"powersgd:4", 12, []Option{WithShape(5, 3)}, `compressors: recipe "powersgd:4": shape 5x3 does not hold 12 elements`},
		{"powersgd:4", 0, []Option{WithShape(1<<32, 1<<32)}, `compressors: recipe "powersgd:4": shape 4294967296x4294967296 does not hold 0 elements`},
		{"none", 12, []Option{WithShape(0, 3)}, `compressors: recipe "none": shape 0x3 must be positive`},
		{"none", -1, nil, `compressors: recipe "none": layer length -1 out of range [0,1073741823]`},
		{"dgc:0.1", 12, []Option{WithRank(-2)}, `compressors: recipe "dgc:0.1": rank -2 is negative`},
	}
	for _, c := range cases {
		_, err := New(c.recipe, c.n, c.opts...)
		if err == nil || err.Error() != c.want || !errors.Is(err, ErrRecipe) {
			t.Errorf("New(%q, %d): err = %v, want %q", c.recipe, c.n, err, c.want)
		}
	}
}

func TestAggregation(t *testing.T) {
	want := map[string]Aggregation{"none": Reduce, "fp16": Reduce, "bf16": Reduce, "topk:0.1": Gather,
		"dgc:0.1": Gather, "randomk:0.1": Gather, "qsgd:4": Gather, "sign": TwoPhase, "powersgd:2": LowRank}
	for r, a := range want {
		if got := MustParse(r).Aggregation(); got != a {
			t.Errorf("%s: Aggregation = %v, want %v", r, got, a)
		}
		c, err := New(r, 16, WithShape(4, 4))
		if err != nil {
			t.Fatal(err)
		}
		_, isElem := AsElementCodec(c)
		if isElem != (a == Reduce) {
			t.Errorf("%s: AsElementCodec ok = %v", r, isElem)
		}
	}
}

func TestKFor(t *testing.T) {
	for _, c := range []struct {
		d    float64
		n, k int
	}{{0.001, 25_000_000, 25_000}, {0.001, 1000, 1}, {0.001, 1001, 2}, {0.1, 7, 1}, {1, 7, 7}, {0.5, 0, 0}, {0.3, 10, 3}, {0.01, 100, 1}} {
		if got := kFor(c.d, c.n); got != c.k {
			t.Errorf("kFor(%v, %d) = %d, want %d", c.d, c.n, got, c.k)
		}
	}
}

// naiveRank returns all indices ordered by |x| descending, ties by lower
// index; its first k, sorted, are the reference top-k.
func naiveRank(x []float32) []uint32 {
	idx := make([]uint32, len(x))
	for i := range idx {
		idx[i] = uint32(i)
	}
	key := func(i uint32) uint32 { return math.Float32bits(x[i]) & absMask }
	sort.SliceStable(idx, func(a, b int) bool {
		ka, kb := key(idx[a]), key(idx[b])
		if ka != kb {
			return ka > kb
		}
		return idx[a] < idx[b]
	})
	return idx
}

func TestExactTopK(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	gens := map[string]func(n int) []float32{
		"gauss": func(n int) []float32 {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(r.NormFloat64())
			}
			return x
		},
		"zeros": func(n int) []float32 { return make([]float32, n) },
		"fewvalues": func(n int) []float32 {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(r.IntN(5) - 2)
			}
			return x
		},
		"stridepeaks": func(n int) []float32 { // big values exactly where the sampler looks
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(r.NormFloat64()) * 0.01
				if i%64 == 32 {
					x[i] = 100 + float32(i%7)
				}
			}
			return x
		},
		"specials": func(n int) []float32 {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(r.NormFloat64())
			}
			for range 3 {
				x[r.IntN(n)] = float32(math.Inf(-1))
				x[r.IntN(n)] = math.Float32frombits(1) // subnormal
				x[r.IntN(n)] = float32(math.Copysign(0, -1))
			}
			return x
		},
	}
	var s selector
	for name, gen := range gens {
		for _, n := range []int{1, 2, 17, 1000, 70_000, 200_003} {
			x := gen(n)
			rank := naiveRank(x)
			for _, k := range []int{0, 1, 2, n / 1000, n / 100, n / 17, n / 2, n - 1, n} {
				if k < 0 || k > n {
					continue
				}
				idx := make([]uint32, max(k, 1))
				val := make([]float32, max(k, 1))
				got := s.exactTopK(idx, val, x, k)
				if got != k {
					t.Fatalf("%s n=%d k=%d: selected %d", name, n, k, got)
				}
				want := slices.Clone(rank[:k])
				slices.Sort(want)
				if !slices.Equal(idx[:got], want) {
					t.Fatalf("%s n=%d k=%d: indices differ from the naive reference", name, n, k)
				}
				for i, j := range idx[:got] {
					if math.Float32bits(val[i]) != math.Float32bits(x[j]) {
						t.Fatalf("%s n=%d k=%d: val[%d] = %v, want x[%d] = %v", name, n, k, i, val[i], j, x[j])
					}
				}
			}
		}
	}
}

func TestDGCPlan(t *testing.T) {
	// Numbers from the reference setup (docs/algorithms.md §1.2) worked by hand.
	cases := []struct {
		n                       int
		ratio                   float64
		stride, ns, kSamp, kSel int
	}{
		{25_000_000, 0.001, 97, 257731, 258, 25000},
		{1000, 0.001, 1, 1000, 1, 1},        // n <= cpr = 2000: exact
		{100_000, 0.01, 97, 1030, 11, 1000}, // pct 1000, cpr 200: ceil(100/32)*32+1 = 129 -> 775 < 1000 -> 121,113,105,97
	}
	for _, c := range cases {
		st, ns, ks, sel := dgcPlan(c.n, c.ratio, 0.01)
		if st != c.stride || ns != c.ns || ks != c.kSamp || sel != c.kSel {
			t.Errorf("dgcPlan(%d, %v) = %d %d %d %d, want %d %d %d %d", c.n, c.ratio, st, ns, ks, sel, c.stride, c.ns, c.kSamp, c.kSel)
		}
	}
}

func TestDGCBehaviour(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	const n = 200_000
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	c, err := New("dgc:0.001", n, WithSeed(1), WithRank(3))
	if err != nil {
		t.Fatal(err)
	}
	d := c.(*DGC)
	k := d.numSelects
	for step := range 20 {
		if _, err := d.Compress(nil, x); err != nil {
			t.Fatal(err)
		}
		idx, val := d.Selected()
		if len(idx) > k || float64(len(idx)) < 0.6*float64(k) { // Gaussian data stays near k
			t.Fatalf("step %d: %d selected for k=%d", step, len(idx), k)
		}
		// Everything selected is at least as large as the k-th largest
		// element scaled by the adaptation bounds.
		if !slices.IsSorted(idx) {
			t.Fatalf("step %d: indices not increasing", step)
		}
		for i, j := range idx {
			if val[i] != x[j] {
				t.Fatalf("step %d: val mismatch", step)
			}
		}
	}
	// Constant magnitudes: every element passes the threshold (>= 1.3k), so
	// the exact resample keeps the k lowest indices.
	for i := range x {
		x[i] = float32(1 - 2*(i%2))
	}
	if _, err := d.Compress(nil, x); err != nil {
		t.Fatal(err)
	}
	idx, _ := d.Selected()
	if len(idx) != k || idx[0] != 0 || idx[k-1] != uint32(k-1) {
		t.Fatalf("constant input: selected %d, first %d, last %d; want 0..%d", len(idx), idx[0], idx[len(idx)-1], k-1)
	}
	// Without resample the threshold moves instead; the count stays <= k.
	c2, _ := New("dgc:0.001", n, WithResample(false))
	if _, err := c2.Compress(nil, x); err != nil {
		t.Fatal(err)
	}
	if idx, _ := c2.(*DGC).Selected(); len(idx) > k {
		t.Fatalf("no resample: %d selected, more than k=%d", len(idx), k)
	}
	// Thresholds above every element give an empty, valid frame.
	z := make([]float32, n)
	b, err := c2.Compress(nil, z)
	if err != nil {
		t.Fatal(err)
	}
	y := make([]float32, n)
	if err := c2.Decompress(y, b); err != nil {
		t.Fatal(err)
	}
}

func TestRandomKIndices(t *testing.T) {
	c, _ := New("randomk:0.01", 100_000, WithSeed(42))
	rk := c.(*RandomK)
	a := slices.Clone(rk.indices(7))
	b := slices.Clone(rk.indices(7))
	d := slices.Clone(rk.indices(8))
	if len(a) != 1000 || !slices.Equal(a, b) {
		t.Fatalf("indices of step 7 not reproducible (len %d)", len(a))
	}
	if slices.Equal(a, d) {
		t.Fatal("steps 7 and 8 chose the same indices")
	}
	for i := 1; i < len(a); i++ {
		if a[i] <= a[i-1] || a[i] >= 100_000 {
			t.Fatalf("indices not strictly increasing in range at %d", i)
		}
	}
	other, _ := New("randomk:0.01", 100_000, WithSeed(43))
	if slices.Equal(a, other.(*RandomK).indices(7)) {
		t.Fatal("different seeds chose the same indices")
	}
	// Frames decode only with the header's step: a receiver that is at
	// another step still decodes correctly.
	x := make([]float32, 100_000)
	for i := range x {
		x[i] = float32(i)
	}
	rk.SetStep(1000)
	frame, _ := rk.Compress(nil, x)
	recv, _ := New("randomk:0.01", 100_000, WithSeed(42))
	y := make([]float32, len(x))
	if err := recv.Decompress(y, frame); err != nil {
		t.Fatal(err)
	}
	idx, _ := rk.Selected()
	for _, j := range idx {
		if y[j] != x[j]*100 {
			t.Fatalf("y[%d] = %v, want %v", j, y[j], x[j]*100)
		}
	}
}

func TestPowerSGDSteps(t *testing.T) {
	const rows, cols, rank = 30, 20, 3
	r := rand.New(rand.NewPCG(25, 26))
	// A rank-3 matrix plus a little noise.
	m := make([]float32, rows*cols)
	for c := range rank {
		u, v := make([]float64, rows), make([]float64, cols)
		for i := range u {
			u[i] = r.NormFloat64()
		}
		for j := range v {
			v[j] = r.NormFloat64()
		}
		for i := range rows {
			for j := range cols {
				m[i*cols+j] += float32(u[i] * v[j] * float64(c+1))
			}
		}
	}
	newPS := func() *PowerSGD {
		c, err := New("powersgd:3", rows*cols, WithShape(rows, cols), WithSeed(5))
		if err != nil {
			t.Fatal(err)
		}
		return c.(*PowerSGD)
	}
	a, b := newPS(), newPS()
	if !slices.Equal(a.Q(), b.Q()) {
		t.Fatal("initial Q differs between ranks with the same seed")
	}
	// The exported steps compose to Compress+Decompress.
	frame, err := a.Compress(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	ya := make([]float32, rows*cols)
	if err := a.Decompress(ya, frame); err != nil {
		t.Fatal(err)
	}
	p, q, yb := make([]float32, rows*rank), make([]float32, cols*rank), make([]float32, rows*cols)
	b.ComputeP(p, m)
	b.Orthogonalize(p)
	b.ComputeQ(q, m, p)
	b.Reconstruct(yb, p, q)
	b.SetQ(q)
	if !slices.Equal(ya, yb) || !slices.Equal(a.Q(), b.Q()) {
		t.Fatal("exported steps differ from Compress/Decompress")
	}
	// P̂ has orthonormal columns.
	for c1 := range rank {
		for c2 := range rank {
			var d float64
			for i := range rows {
				d += float64(p[i*rank+c1]) * float64(p[i*rank+c2])
			}
			want := 0.0
			if c1 == c2 {
				want = 1
			}
			if math.Abs(d-want) > 1e-5 {
				t.Fatalf("P̂ columns %d,%d: dot %v, want %v", c1, c2, d, want)
			}
		}
	}
	// A rank-3 matrix is recovered exactly at rank 3.
	var e, nm float64
	for i := range m {
		e += float64(ya[i]-m[i]) * float64(ya[i]-m[i])
		nm += float64(m[i]) * float64(m[i])
	}
	if e > 1e-8*nm {
		t.Fatalf("rank-3 matrix: relative error %g", e/nm)
	}
	// Zero matrix: orthogonalization keeps zeros, no NaN.
	z := make([]float32, rows*cols)
	frame, err = a.Compress(nil, z)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Decompress(ya, frame); err != nil {
		t.Fatal(err)
	}
	for i, v := range ya {
		if v != 0 {
			t.Fatalf("zero matrix decodes to %v at %d", v, i)
		}
	}
	for _, v := range a.Q() {
		if math.IsNaN(float64(v)) {
			t.Fatal("NaN in Q after a zero matrix")
		}
	}
}

func TestPowerSGDWarmStart(t *testing.T) {
	// Power iteration: with warm start the error on a fixed matrix falls
	// towards the best rank-r error.
	const rows, cols = 60, 40
	r := rand.New(rand.NewPCG(27, 28))
	m := make([]float32, rows*cols)
	for i := range m {
		m[i] = float32(r.NormFloat64())
	}
	c, _ := New("powersgd:2", rows*cols, WithShape(rows, cols), WithSeed(9))
	y := make([]float32, len(m))
	var first, last float64
	for step := range 30 {
		e := powerStep(t, c, m, y)
		if step == 0 {
			first = e
		}
		last = e
	}
	if !(last < first) {
		t.Fatalf("warm start did not improve the approximation: %v -> %v", first, last)
	}
}

func TestZstdStage(t *testing.T) {
	// Clustered indices compress well: the reported bytes are the real,
	// smaller frame, and it decodes to the same vector.
	const n = 100_000
	x := make([]float32, n)
	for i := 5000; i < 6000; i++ {
		x[i] = 1
	}
	plain, _ := New("topk:0.01", n)
	z, _ := New("topk:0.01+zstd", n)
	fp, _ := plain.Compress(nil, x)
	fz, _ := z.Compress(nil, x)
	h, _, err := ParseHeader(fz)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Zstd() || len(fz) >= len(fp)/4 {
		t.Fatalf("zstd frame %d bytes (zstd=%v) vs plain %d", len(fz), h.Zstd(), len(fp))
	}
	y1, y2 := make([]float32, n), make([]float32, n)
	if err := plain.Decompress(y1, fp); err != nil {
		t.Fatal(err)
	}
	if err := z.Decompress(y2, fz); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(y1, y2) {
		t.Fatal("zstd and plain frames decode differently")
	}
	// Incompressible values with spread indices: zstd is skipped, but
	// varint indices still shrink the frame.
	r := rand.New(rand.NewPCG(1, 1))
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	fz, _ = z.Compress(fz, x)
	fp, _ = plain.Compress(fp, x)
	if len(fz) >= len(fp) {
		t.Fatalf("varint frame %d bytes, plain %d", len(fz), len(fp))
	}
}

func TestHostileLengthsDoNotAllocate(t *testing.T) {
	c, _ := New("topk:0.01+zstd", 1000)
	x := make([]float32, 1000)
	x[3] = 1
	frame, _ := c.Compress(nil, x)
	hostile := map[string]func(b []byte){
		"huge raw length":  func(b []byte) { b[4] |= flagZstd; b[31] = 0x7f },
		"huge count":       func(b []byte) { b[27] = 0x7f },
		"huge body length": func(b []byte) { b[35] = 0x7f },
	}
	dst := make([]float32, 1000)
	for name, mutate := range hostile {
		b := slices.Clone(frame)
		mutate(b)
		resealCRC(b)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		err := c.Decompress(dst, b)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: err = %v, want ErrCorrupt", name, err)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
			t.Fatalf("%s: rejecting the frame allocated %d bytes", name, d)
		}
	}
	// A zstd bomb: a body that inflates beyond the declared raw length is
	// cut off at that length.
	big := make([]byte, 1<<20)
	enc, _ := zstdCodecs()
	bomb := enc.EncodeAll(big, nil)
	b := slices.Clone(frame[:headerLen])
	b = append(b, bomb...)
	b[4] = flagZstd | flagVarint
	putU32(b[28:], 9*c.(*TopK).kmax)
	putU32(b[32:], len(bomb))
	b = append(b, 0, 0, 0, 0)
	resealCRC(b)
	if err := c.Decompress(dst, b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("zstd bomb: err = %v, want ErrCorrupt", err)
	}
}

func putU32(b []byte, v int) { b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24) }

func resealCRC(b []byte) {
	end := len(b) - 4
	crc := crc32c(b[:end])
	b[end], b[end+1], b[end+2], b[end+3] = byte(crc), byte(crc>>8), byte(crc>>16), byte(crc>>24)
}

func TestElementCodecs(t *testing.T) {
	x := []float32{1, -2.5, 65504, 1e-8, float32(math.Inf(1))}
	for _, ec := range []ElementCodec{FP32, FP16, BF16} {
		b := ec.EncodeElems([]byte{9}, x)
		if len(b) != 1+ec.BytesPerElem()*len(x) || b[0] != 9 {
			t.Fatalf("EncodeElems did not append: len %d", len(b))
		}
		y := make([]float32, len(x))
		if err := ec.DecodeElems(y, b[1:]); err != nil {
			t.Fatal(err)
		}
		acc := []float32{1, 1, 1, 1, 1}
		if err := ec.DecodeAddElems(acc, b[1:]); err != nil {
			t.Fatal(err)
		}
		for i := range y {
			if acc[i] != 1+y[i] {
				t.Fatalf("DecodeAddElems[%d] = %v, want %v", i, acc[i], 1+y[i])
			}
		}
		if err := ec.DecodeElems(y, b[2:]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("short chunk: err = %v", err)
		}
	}
}

// checkStepAllocs fails t if Compress, DecompressAdd and Decompress of x
// with c allocate once their scratch is warm.
func checkStepAllocs(t *testing.T, rec string, c Compressor, x []float32) {
	t.Helper()
	buf, err := c.Compress(nil, x) // warm up scratch
	if err != nil {
		t.Fatal(err)
	}
	y := make([]float32, len(x))
	if err := c.DecompressAdd(y, buf); err != nil {
		t.Fatal(err)
	}
	if err := c.Decompress(y, buf); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(5, func() {
		var err error
		if buf, err = c.Compress(buf, x); err != nil {
			t.Fatal(err)
		}
		if err := c.DecompressAdd(y, buf); err != nil {
			t.Fatal(err)
		}
		if err := c.Decompress(y, buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%s: %v allocations per Compress+DecompressAdd+Decompress, want 0", rec, allocs)
	}
}

func TestZeroAllocs(t *testing.T) {
	const n = 1 << 16
	r := rand.New(rand.NewPCG(29, 30))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	for _, rec := range []string{"none", "fp16", "bf16", "topk:0.01", "dgc:0.01", "randomk:0.01", "sign", "qsgd:4", "qsgd:5"} {
		c, err := New(rec, n, WithSeed(1))
		if err != nil {
			t.Fatal(err)
		}
		checkStepAllocs(t, rec, c, x)
	}
	ps, _ := New("powersgd:4", 64*64, WithShape(64, 64))
	m := x[:64*64]
	buf, _ := ps.Compress(nil, m)
	y := make([]float32, 64*64)
	if a := testing.AllocsPerRun(5, func() {
		buf, _ = ps.Compress(buf, m)
		_ = ps.Decompress(y, buf)
	}); a != 0 {
		t.Errorf("powersgd: %v allocations per step, want 0", a)
	}
	ec := FP16
	chunk := make([]byte, 0, 2*n)
	yn := make([]float32, n)
	if a := testing.AllocsPerRun(5, func() {
		chunk = ec.EncodeElems(chunk[:0], x)
		if err := ec.DecodeAddElems(yn, chunk); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("fp16 element codec: %v allocations, want 0", a)
	}
	bits := make([]byte, 0, n/8)
	if a := testing.AllocsPerRun(5, func() {
		bits = PackSigns(bits[:0], x)
		UnpackSignsAdd(yn, bits, RMS(x))
	}); a != 0 {
		t.Errorf("sign primitives: %v allocations, want 0", a)
	}
}

func TestPerRankRandomness(t *testing.T) {
	// QSGD rounding and DGC sampling differ between ranks (WithRank) and
	// between steps, and repeat for the same (seed, rank, step).
	r := rand.New(rand.NewPCG(49, 50))
	x := make([]float32, 100_000)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	for _, rec := range []string{"qsgd:4", "dgc:0.01"} { // dgc:0.001 here resamples exactly, the same on every rank
		frames := map[int][][]byte{}
		for _, rank := range []int{0, 0, 1} {
			c, _ := New(rec, len(x), WithSeed(5), WithRank(rank))
			var fs [][]byte
			for range 2 {
				b, err := c.Compress(nil, x)
				if err != nil {
					t.Fatal(err)
				}
				fs = append(fs, b)
			}
			if prev, ok := frames[rank]; ok {
				if !slices.Equal(prev[0], fs[0]) || !slices.Equal(prev[1], fs[1]) {
					t.Fatalf("%s rank %d: not reproducible", rec, rank)
				}
			}
			frames[rank] = fs
		}
		if slices.Equal(frames[0][0], frames[0][1]) {
			t.Errorf("%s: steps 0 and 1 gave the same frame", rec)
		}
		if slices.Equal(frames[0][0], frames[1][0]) {
			t.Errorf("%s: ranks 0 and 1 gave the same frame", rec)
		}
	}
}

// A bucket whose norm is so small that s/‖x‖ overflows float32 would make
// 0·Inf = NaN the input of the level rounding of its zero elements, whose
// int32 conversion differs by platform (amd64 gives level s). Such buckets
// must decode to zero, and a normal bucket beside one must be unaffected.
func TestQSGDTinyBucket(t *testing.T) {
	for _, rec := range []string{"qsgd:4", "qsgd:5"} {
		n := QSGDBucket + 4
		c, err := New(rec, n, WithSeed(1))
		if err != nil {
			t.Fatal(err)
		}
		x := make([]float32, n)
		x[3] = 1e-38 // bucket 0: norm 1e-38, s/norm > MaxFloat32
		x[QSGDBucket+1] = 2
		b, err := c.Compress(nil, x)
		if err != nil {
			t.Fatal(err)
		}
		y := make([]float32, n)
		if err := c.Decompress(y, b); err != nil {
			t.Fatal(err)
		}
		for i, v := range y {
			want := float32(0)
			if i == QSGDBucket+1 {
				want = 2 // the bucket's only element is quantized exactly
			}
			if v != want {
				t.Errorf("%s: y[%d] = %v, want %v", rec, i, v, want)
			}
		}
	}
}

// A QSGD Compress that fails (ErrNonFinite) does not advance the rounding
// stream: the next frame is the one a fresh compressor makes.
func TestQSGDFailedCompressKeepsStream(t *testing.T) {
	const n = 1000
	a, _ := New("qsgd:4", n, WithSeed(3))
	b, _ := New("qsgd:4", n, WithSeed(3))
	r := rand.New(rand.NewPCG(5, 6))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	bad := slices.Clone(x)
	bad[n-1] = float32(math.NaN()) // the last bucket: the first ones are quantized
	if _, err := a.Compress(nil, bad); !errors.Is(err, ErrNonFinite) {
		t.Fatalf("NaN input: err = %v, want ErrNonFinite", err)
	}
	fa, err := a.Compress(nil, x)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := b.Compress(nil, x)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(fa, fb) {
		t.Fatal("a failed Compress changed the next frame")
	}
}
