package errorfeedback

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback/eftest"
)

func TestParse(t *testing.T) {
	good := []struct {
		in   string
		want Recipe
		str  string
	}{
		{"none", Recipe{Kind: KindNone}, "none"},
		{"ef14", Recipe{Kind: KindEF14}, "ef14"},
		{"EF21", Recipe{Kind: KindEF21}, "ef21"},
		{" econtrol:0.1 ", Recipe{Kind: KindEControl, Eta: 0.1}, "econtrol:0.1"},
		{"econtrol:0", Recipe{Kind: KindEControl}, "econtrol:0"},
		{"dgc:0.9", Recipe{Kind: KindDGC, Momentum: 0.9}, "dgc:0.9"},
		{"dgc:0", Recipe{Kind: KindDGC}, "dgc:0"},
		{"dgc-nesterov:0.9", Recipe{Kind: KindDGC, Momentum: 0.9, Nesterov: true}, "dgc-nesterov:0.9"},
	}
	for _, tc := range good {
		got, err := Parse(tc.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want || got.String() != tc.str {
			t.Errorf("Parse(%q) = %+v (%q), want %+v (%q)", tc.in, got, got.String(), tc.want, tc.str)
		}
		again, err := Parse(got.String())
		if err != nil || again != got {
			t.Errorf("round trip of %q: %+v, %v", tc.in, again, err)
		}
	}
	bad := []string{"", "ef22", "econtrol", "econtrol:", "econtrol:-1", "econtrol:x", "econtrol:NaN",
		"econtrol:Inf", "dgc", "dgc:1", "dgc:-0.1", "none:1", "ef21:0.5", "topk:0.01"}
	for _, in := range bad {
		if r, err := Parse(in); !errors.Is(err, ErrRecipe) {
			t.Errorf("Parse(%q) = %+v, %v; want ErrRecipe", in, r, err)
		}
	}
}

func TestRecipeNew(t *testing.T) {
	c := newExactTopK(100, 5)
	for _, s := range []string{"none", "ef14", "ef21", "econtrol:0.1", "dgc:0.9", "dgc-nesterov:0.5"} {
		r, err := Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		fb, err := r.New(c, WithWorld(4), WithClipNorm(1))
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if fb.String() != s || fb.Len() != 100 || fb.Compressor() != c {
			t.Errorf("%s: String %q Len %d", s, fb.String(), fb.Len())
		}
	}
	if _, err := (Recipe{Kind: KindEF14}).New(nil); !errors.Is(err, ErrConfig) {
		t.Errorf("nil compressor: %v", err)
	}
	if _, err := (Recipe{Kind: KindDGC}).New(c, WithWorld(0)); !errors.Is(err, ErrConfig) {
		t.Errorf("world 0: %v", err)
	}
	if _, err := NewDGC(c, DGCConfig{Momentum: 1}); !errors.Is(err, ErrConfig) {
		t.Errorf("momentum 1: %v", err)
	}
	if _, err := NewEControl(c, -0.5); !errors.Is(err, ErrConfig) {
		t.Errorf("eta < 0: %v", err)
	}
	if _, err := NewEControl(nil, 0.1); !errors.Is(err, ErrConfig) {
		t.Errorf("econtrol, nil compressor: %v", err)
	}
	if _, err := NewDGC(nil, DGCConfig{Momentum: 0.9}); !errors.Is(err, ErrConfig) {
		t.Errorf("dgc, nil compressor: %v", err)
	}
}

func randVec(r *rand.Rand, n int, s float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * s)
	}
	return v
}

// TestEControlVirtualIterate: x̃ = x − γ·mean eᵢ follows uncompressed SGD on
// the same gradient sequence, for any η (docs/algorithms.md §3.2).
func TestEControlVirtualIterate(t *testing.T) {
	const n, d, steps = 4, 200, 300
	const gamma = 0.05
	for _, eta := range []float64{0, 0.05, 0.5, 1} {
		rng := rand.New(rand.NewPCG(1, uint64(eta*1000)))
		// A quadratic per worker, so the gradients depend on x.
		centers := make([][]float32, n)
		for i := range centers {
			centers[i] = randVec(rng, d, 1)
		}
		fbs := make([]Feedback, n)
		for i := range fbs {
			f, err := NewEControl(newExactTopK(d, 5), eta)
			if err != nil {
				t.Fatal(err)
			}
			fbs[i] = f
		}
		bufs, dirs := eftest.NewBufs(n, d)
		x := make([]float32, d)
		sgd := make([]float64, d) // x̃ by uncompressed SGD: x̃ -= γ·ḡ
		grads := make([][]float32, n)
		for i := range grads {
			grads[i] = make([]float32, d)
		}
		for s := 0; s < steps; s++ {
			for i := range grads {
				for j := range x {
					grads[i][j] = x[j] - centers[i][j] + float32(0.1*rng.NormFloat64())
				}
			}
			for j := range sgd {
				var gm float64
				for i := range grads {
					gm += float64(grads[i][j])
				}
				sgd[j] -= gamma * gm / n
			}
			eftest.Exchange(t, fbs, grads, bufs, dirs)
			for j := range x {
				x[j] -= gamma * dirs[0][j]
			}
		}
		var maxDiff, scale float64
		for j := range x {
			var ebar float64
			for _, fb := range fbs {
				ebar += float64(fb.(*EControl).Error()[j])
			}
			virt := float64(x[j]) - gamma*ebar/n
			maxDiff = max(maxDiff, math.Abs(virt-sgd[j]))
			scale = max(scale, math.Abs(sgd[j]))
		}
		if maxDiff > 1e-5*scale+1e-6 {
			t.Errorf("η=%v: |x̃ − x_sgd|∞ = %.3g (scale %.3g)", eta, maxDiff, scale)
		}
		// A non-trivial run: the compressed iterate differs from SGD.
		var dx float64
		for j := range x {
			dx = max(dx, math.Abs(float64(x[j])-sgd[j]))
		}
		if dx < 1e-3 {
			t.Errorf("η=%v: x equals SGD (%.3g); compression had no effect?", eta, dx)
		}
	}
}

// TestEControlZeroIsEF21: EControl(0) produces the payloads, states and
// directions of EF21 bit for bit.
func TestEControlZeroIsEF21(t *testing.T) {
	const n, d, steps = 3, 300, 100
	rng := rand.New(rand.NewPCG(2, 3))
	a := make([]Feedback, n)
	b := make([]Feedback, n)
	for i := range a {
		a[i] = NewEF21(newExactTopK(d, 7))
		f, err := NewEControl(newExactTopK(d, 7), 0)
		if err != nil {
			t.Fatal(err)
		}
		b[i] = f
	}
	bufA, dirA := eftest.NewBufs(n, d)
	bufB, dirB := eftest.NewBufs(n, d)
	grads := make([][]float32, n)
	for s := 0; s < steps; s++ {
		for i := range grads {
			grads[i] = randVec(rng, d, 1+float64(i))
			if s%7 == 0 {
				grads[i][s%d] = 0
				grads[i][(s+1)%d] = float32(math.Copysign(0, -1))
			}
		}
		eftest.Exchange(t, a, grads, bufA, dirA)
		eftest.Exchange(t, b, grads, bufB, dirB)
		for i := range a {
			if !bytes.Equal(bufA[i], bufB[i]) {
				t.Fatalf("step %d rank %d: payloads differ", s, i)
			}
			ea, eb := a[i].(*EControl), b[i].(*EControl)
			sameBits(t, "h_i", ea.Local(), eb.Local())
			sameBits(t, "h", ea.Shared(), eb.Shared())
			sameBits(t, "direction", dirA[i], dirB[i])
		}
	}
}

func sameBits(t *testing.T, what string, x, y []float32) {
	t.Helper()
	for j := range x {
		if math.Float32bits(x[j]) != math.Float32bits(y[j]) {
			t.Fatalf("%s[%d]: %v vs %v", what, j, x[j], y[j])
		}
	}
}

// TestEF14Telescopes: the sum of decoded messages plus the final residual
// equals the sum of gradients.
func TestEF14Telescopes(t *testing.T) {
	const d, steps = 100, 50
	rng := rand.New(rand.NewPCG(4, 5))
	c := newExactTopK(d, 3)
	f := NewEF14(c)
	sumG := make([]float64, d)
	sumD := make([]float64, d)
	dec := make([]float32, d)
	var buf []byte
	for s := 0; s < steps; s++ {
		g := randVec(rng, d, 1)
		p, err := f.Encode(buf, g)
		if err != nil {
			t.Fatal(err)
		}
		buf = p
		if err := c.Decompress(dec, p); err != nil {
			t.Fatal(err)
		}
		for j := range g {
			sumG[j] += float64(g[j])
			sumD[j] += float64(dec[j])
		}
	}
	for j := range sumG {
		if got := sumD[j] + float64(f.Residual()[j]); math.Abs(got-sumG[j]) > 1e-4 {
			t.Fatalf("[%d] Σ D(Δ) + e = %v, Σ g = %v", j, got, sumG[j])
		}
	}
}

// dgcRef is a naive DGC reference (docs/algorithms.md §1.2) in float32, with exact top-k.
type dgcRef struct {
	m          float32
	k          int
	nesterov   bool
	mask       bool
	u, v       []float32
	lastSent   []int
	lastValues []float32
}

func (r *dgcRef) step(g []float32) {
	for j := range g {
		if r.nesterov {
			r.u[j] = r.m * (r.u[j] + g[j])
			r.v[j] += r.u[j] + g[j]
		} else {
			r.u[j] = r.m*r.u[j] + g[j]
			r.v[j] += r.u[j]
		}
	}
	// exact top-k, ties by lower index, naive O(n·k)
	taken := make([]bool, len(g))
	r.lastSent = r.lastSent[:0]
	r.lastValues = r.lastValues[:0]
	for q := 0; q < r.k; q++ {
		best := -1
		for j := range r.v {
			if !taken[j] && (best < 0 || abs(r.v[j]) > abs(r.v[best])) {
				best = j
			}
		}
		taken[best] = true
	}
	for j := range taken {
		if taken[j] {
			r.lastSent = append(r.lastSent, j)
			r.lastValues = append(r.lastValues, r.v[j])
			r.v[j] = 0
			if r.mask {
				r.u[j] = 0
			}
		}
	}
}

// TestDGCMasking: after each step, u and v are zero at the sent indices and
// match the naive reference everywhere; without masking, u is kept.
func TestDGCMasking(t *testing.T) {
	const d, k, steps = 500, 10, 40
	for _, tc := range []struct {
		name     string
		nesterov bool
		mask     bool
		hide     bool // hide compressors.Sparse: masks from the decoded payload
	}{{"plain", false, true, false}, {"nesterov", true, true, false}, {"nomask", false, false, false},
		{"decoded", false, true, true}, {"decoded-nomask", true, false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(6, 7))
			c := newExactTopK(d, k)
			if tc.hide {
				c = hideSparse{c}
			}
			cfg := DGCConfig{Momentum: 0.9, Nesterov: tc.nesterov}
			cfg.NoMasking = !tc.mask
			f, err := NewDGC(c, cfg)
			if err != nil {
				t.Fatal(err)
			}
			ref := &dgcRef{m: 0.9, k: k, nesterov: tc.nesterov, mask: tc.mask,
				u: make([]float32, d), v: make([]float32, d)}
			dec := make([]float32, d)
			var buf []byte
			sawMomentumAtSent := false
			for s := 0; s < steps; s++ {
				g := randVec(rng, d, 1)
				p, err := f.Encode(buf, g)
				if err != nil {
					t.Fatal(err)
				}
				buf = p
				ref.step(g)
				if err := c.Decompress(dec, p); err != nil {
					t.Fatal(err)
				}
				sent := 0
				for j, x := range dec {
					if x == 0 {
						continue
					}
					sent++
					if f.Velocity()[j] != 0 {
						t.Fatalf("step %d: v[%d] = %v after sending", s, j, f.Velocity()[j])
					}
					if tc.mask && f.Momentum()[j] != 0 {
						t.Fatalf("step %d: u[%d] = %v after sending (masking)", s, j, f.Momentum()[j])
					}
					if !tc.mask && f.Momentum()[j] != 0 {
						sawMomentumAtSent = true
					}
				}
				if sent != k {
					t.Fatalf("step %d: %d sent, want %d", s, sent, k)
				}
				for q, j := range ref.lastSent {
					if dec[j] != ref.lastValues[q] {
						t.Fatalf("step %d: sent[%d] = %v, reference %v", s, j, dec[j], ref.lastValues[q])
					}
				}
				sameBits(t, "u", f.Momentum(), ref.u)
				sameBits(t, "v", f.Velocity(), ref.v)
			}
			if !tc.mask && !sawMomentumAtSent {
				t.Error("without masking, u should survive at sent indices")
			}
		})
	}
}

// hideSparse hides the Selected method of a sparse codec.
type hideSparse struct{ compressors.Compressor }

// TestDGCSampled: with DGC's sampled-threshold codec, u and v are zero at
// exactly the indices the codec reports as sent.
func TestDGCSampled(t *testing.T) {
	const d, world = 20000, 4
	rng := rand.New(rand.NewPCG(14, 15))
	for r := 0; r < world; r++ {
		c, err := compressors.New("dgc:0.001", d, compressors.WithRank(r), compressors.WithSeed(1))
		if err != nil {
			t.Fatal(err)
		}
		f, err := NewDGC(c, DGCConfig{Momentum: 0.9, Config: Config{World: world}})
		if err != nil {
			t.Fatal(err)
		}
		var buf []byte
		for s := 0; s < 5; s++ {
			g := randVec(rng, d, 1)
			if buf, err = f.Encode(buf, g); err != nil {
				t.Fatal(err)
			}
			idx, _ := c.(compressors.Sparse).Selected()
			if len(idx) == 0 || len(idx) > 20 {
				t.Fatalf("rank %d step %d: %d sent, want 1..20", r, s, len(idx))
			}
			sent := map[uint32]bool{}
			for _, j := range idx {
				sent[j] = true
				if f.Velocity()[j] != 0 || f.Momentum()[j] != 0 {
					t.Fatalf("u, v at sent %d: %v, %v", j, f.Momentum()[j], f.Velocity()[j])
				}
			}
			for j, x := range f.Velocity() {
				if !sent[uint32(j)] && (x == 0 || f.Momentum()[j] == 0) {
					t.Fatalf("unsent %d zeroed", j)
				}
			}
		}
	}
}

// TestDGCDense: a Reduce codec takes the dense path, momentum after averaging.
func TestDGCDense(t *testing.T) {
	const d = 64
	for _, nesterov := range []bool{false, true} {
		f, err := NewDGC(newDense(d), DGCConfig{Momentum: 0.9, Nesterov: nesterov})
		if err != nil {
			t.Fatal(err)
		}
		if !f.Dense() || f.Velocity() != nil {
			t.Fatal("dense codec should take the dense path")
		}
		rng := rand.New(rand.NewPCG(8, 9))
		u := make([]float32, d)
		dec := make([]float32, d)
		for s := 0; s < 10; s++ {
			g := randVec(rng, d, 1)
			p, err := f.Encode(nil, g)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Compressor().Decompress(dec, p); err != nil {
				t.Fatal(err)
			}
			sameBits(t, "dense payload", dec, g) // no momentum before averaging
			avg := randVec(rng, d, 1)
			want := make([]float32, d)
			for j := range avg {
				if nesterov {
					u[j] = 0.9 * (u[j] + avg[j])
					want[j] = u[j] + avg[j]
				} else {
					u[j] = 0.9*u[j] + avg[j]
					want[j] = u[j]
				}
			}
			f.Finish(avg)
			sameBits(t, "dense direction", avg, want)
		}
	}
	if f, _ := NewDGC(newDense(4), DGCConfig{}); f.SetCompressor(newExactTopK(4, 1)) == nil {
		t.Error("switching a dense layer to a sparse codec should fail")
	}
	f, _ := NewDGC(newExactTopK(4, 1), DGCConfig{})
	if err := f.SetCompressor(newExactTopK(4, 2)); err != nil {
		t.Error(err)
	}
	if err := f.SetCompressor(newExactTopK(5, 2)); !errors.Is(err, ErrLength) {
		t.Errorf("length change: %v", err)
	}
}

// TestDGCClip: local clipping at ClipNorm/√World before accumulation.
func TestDGCClip(t *testing.T) {
	const d = 16
	f, err := NewDGC(newExactTopK(d, d), DGCConfig{Momentum: 0.5, Config: Config{World: 4, ClipNorm: 2}})
	if err != nil {
		t.Fatal(err)
	}
	g := make([]float32, d)
	for j := range g {
		g[j] = 3 // ‖g‖ = 12 > 2/√4 = 1
	}
	if _, err := f.Encode(nil, g); err != nil {
		t.Fatal(err)
	}
	// Everything was sent (k = d); u keeps nothing (masked), so check the
	// payload: each entry 3·(1/(12+1e-6)).
	dec := make([]float32, d)
	p, _ := f.Encode(nil, make([]float32, d))
	_ = p
	f.Reset()
	p, _ = f.Encode(nil, g)
	if err := f.Compressor().Decompress(dec, p); err != nil {
		t.Fatal(err)
	}
	var ss float64
	for _, x := range dec {
		ss += float64(x) * float64(x)
	}
	if n := math.Sqrt(ss); math.Abs(n-1) > 1e-5 {
		t.Errorf("clipped norm %v, want 1", n)
	}
	// Below the threshold: untouched.
	f.Reset()
	small := []float32{0.1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	p, _ = f.Encode(nil, small)
	if err := f.Compressor().Decompress(dec, p); err != nil || dec[0] != 0.1 {
		t.Errorf("unclipped: %v %v", dec[0], err)
	}
}

// TestNonFinite: NaN or Inf is rejected before any state changes.
func TestNonFinite(t *testing.T) {
	const d = 32
	mk := func() []Feedback {
		e, _ := NewEControl(newExactTopK(d, 2), 0.3)
		g, _ := NewDGC(newExactTopK(d, 2), DGCConfig{Momentum: 0.9})
		return []Feedback{NewNone(newExactTopK(d, 2)), NewEF14(newExactTopK(d, 2)), NewEF21(newExactTopK(d, 2)), e, g}
	}
	rng := rand.New(rand.NewPCG(10, 11))
	for _, f := range mk() {
		g := randVec(rng, d, 1)
		if _, err := f.Encode(nil, g); err != nil {
			t.Fatal(err)
		}
		p1, _ := f.Encode(nil, g)
		for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
			gb := append([]float32(nil), g...)
			gb[5] = bad
			if _, err := f.Encode(nil, gb); !errors.Is(err, ErrNonFinite) {
				t.Errorf("%s: %v", f, err)
			}
		}
		if _, err := f.Encode(nil, g[:d-1]); !errors.Is(err, ErrLength) {
			t.Errorf("%s short: %v", f, err)
		}
		_ = p1
	}
	// State untouched: two identical feedbacks, one sees a NaN in between.
	a, b := mk(), mk()
	g1, g2 := randVec(rng, d, 1), randVec(rng, d, 1)
	nan := append([]float32(nil), g1...)
	nan[0] = float32(math.NaN())
	for i := range a {
		pa, _ := a[i].Encode(nil, g1)
		pb, _ := b[i].Encode(nil, g1)
		_, _ = b[i].Encode(nil, nan)
		pa, _ = a[i].Encode(pa, g2)
		pb, _ = b[i].Encode(pb, g2)
		if !bytes.Equal(pa, pb) {
			t.Errorf("%s: a rejected NaN gradient changed the state", a[i])
		}
	}
}

// TestAllocs: Encode and Finish allocate nothing in steady state.
func TestAllocs(t *testing.T) {
	const d = 4096
	rng := rand.New(rand.NewPCG(12, 13))
	e, _ := NewEControl(newExactTopK(d, 16), 0.1)
	g1, _ := NewDGC(newExactTopK(d, 16), DGCConfig{Momentum: 0.9, Config: Config{World: 4, ClipNorm: 1}})
	g2, _ := NewDGC(newDense(d), DGCConfig{Momentum: 0.9, Nesterov: true})
	for _, f := range []Feedback{NewNone(newExactTopK(d, 16)), NewEF14(newExactTopK(d, 16)), NewEF21(newExactTopK(d, 16)), e, g1, g2} {
		g := randVec(rng, d, 1)
		avg := make([]float32, d)
		buf := make([]byte, 0, 4*d+64)
		allocs := testing.AllocsPerRun(20, func() {
			p, err := f.Encode(buf, g)
			if err != nil {
				t.Fatal(err)
			}
			buf = p
			f.Finish(avg)
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocs per step", f, allocs)
		}
	}
}

// TestSparseFastPath: reading D(Δ) from compressors.Sparse.Selected gives the
// same messages and states (to float rounding) as decoding the payload.
func TestSparseFastPath(t *testing.T) {
	const d, steps = 2000, 6
	for _, codec := range []string{"topk:0.01", "topk:0.01+zstd", "dgc:0.01", "randomk:0.01"} {
		for _, ef := range []string{"ef14", "ef21", "econtrol:0", "econtrol:0.3", "dgc:0.9"} {
			mk := func(hide bool) Feedback {
				c, err := compressors.New(codec, d, compressors.WithSeed(3), compressors.WithRank(1))
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := c.(compressors.Sparse); !ok {
					t.Fatalf("%s is not sparse", codec)
				}
				if hide {
					c = hideSparse{c}
				}
				r, _ := Parse(ef)
				f, err := r.New(c)
				if err != nil {
					t.Fatal(err)
				}
				return f
			}
			fast, slow := mk(false), mk(true)
			rng := rand.New(rand.NewPCG(20, 21))
			da, db := make([]float32, d), make([]float32, d)
			for s := 0; s < steps; s++ {
				g := randVec(rng, d, 1)
				pa, err := fast.Encode(nil, g)
				if err != nil {
					t.Fatal(err)
				}
				pb, err := slow.Encode(nil, g)
				if err != nil {
					t.Fatal(err)
				}
				if err := fast.Compressor().Decompress(da, pa); err != nil {
					t.Fatal(err)
				}
				if err := slow.Compressor().Decompress(db, pb); err != nil {
					t.Fatal(err)
				}
				for j := range da {
					if math.Abs(float64(da[j]-db[j])) > 1e-5*(1+math.Abs(float64(db[j]))) {
						t.Fatalf("%s/%s step %d: message[%d] %v vs %v", codec, ef, s, j, da[j], db[j])
					}
				}
				sa, sb := stateOf(fast), stateOf(slow)
				for k := range sa {
					for j := range sa[k] {
						if math.Abs(float64(sa[k][j]-sb[k][j])) > 1e-5*(1+math.Abs(float64(sb[k][j]))) {
							t.Fatalf("%s/%s step %d: state %d[%d] %v vs %v", codec, ef, s, k, j, sa[k][j], sb[k][j])
						}
					}
				}
			}
		}
	}
}

func stateOf(f Feedback) [][]float32 {
	switch f := f.(type) {
	case *EF14:
		return [][]float32{f.Residual()}
	case *EControl:
		if f.Error() == nil {
			return [][]float32{f.Local()}
		}
		return [][]float32{f.Local(), f.Error()}
	case *DGC:
		return [][]float32{f.Momentum(), f.Velocity()}
	}
	return nil
}

func TestClipByTotalNorm(t *testing.T) {
	a := []float32{3, 0}
	b := []float32{0, 4}
	if n := ClipByTotalNorm([][]float32{a, b}, 10, 4); n != 5 || a[0] != 3 || b[1] != 4 {
		t.Errorf("below threshold 10/2: norm %v, a %v, b %v", n, a, b)
	}
	if n := ClipByTotalNorm([][]float32{a, b}, 2, 4); n != 5 {
		t.Errorf("norm %v", n)
	}
	got := math.Hypot(float64(a[0]), float64(b[1]))
	if math.Abs(got-1) > 1e-6 || math.Abs(float64(a[0]/b[1])-0.75) > 1e-6 {
		t.Errorf("clipped to %v (a %v, b %v), want norm 1 = 2/√4", got, a, b)
	}
}
