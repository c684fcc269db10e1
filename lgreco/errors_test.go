package lgreco

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
)

// lowRankish returns a rows×cols matrix of rank-3 structure plus noise, with a
// few large entries (so that neither family is trivially best).
func lowRankish(rng *rand.Rand, rows, cols int) []float64 {
	g := make([]float64, rows*cols)
	for k := range 3 {
		u := make([]float64, rows)
		v := make([]float64, cols)
		for i := range u {
			u[i] = rng.NormFloat64()
		}
		for j := range v {
			v[j] = rng.NormFloat64() / float64(k+1)
		}
		for i := range rows {
			for j := range cols {
				g[i*cols+j] += u[i] * v[j]
			}
		}
	}
	for i := range g {
		g[i] += 0.3 * rng.NormFloat64()
		if rng.IntN(100) == 0 {
			g[i] *= 20
		}
	}
	return g
}

func recipes(t *testing.T, ss ...string) []compressors.Recipe {
	t.Helper()
	out := make([]compressors.Recipe, len(ss))
	for i, s := range ss {
		r, err := compressors.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = r
	}
	return out
}

// realErr compresses x with the candidate's compressor and measures
// ‖x − D(C(x))‖ and the frame length.
func realErr(t *testing.T, r compressors.Recipe, rows, cols int, x []float32, seed uint64) (float64, int) {
	t.Helper()
	c, err := r.New(len(x), compressors.WithShape(rows, cols), compressors.WithSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	frame, err := c.Compress(nil, x)
	if err != nil {
		t.Fatal(err)
	}
	y := make([]float32, len(x))
	if err := c.Decompress(y, frame); err != nil {
		t.Fatal(err)
	}
	var s float64
	for i := range x {
		d := float64(x[i]) - float64(y[i])
		s += d * d
	}
	return math.Sqrt(s), len(frame)
}

func TestErrorsExactFamiliesMatchCompressors(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	rows, cols := 40, 70
	g := lowRankish(rng, rows, cols)
	x := make([]float32, len(g))
	for i, v := range g {
		x[i] = float32(v)
	}
	cands := recipes(t, "none", "fp16", "bf16", "sign", "topk:0.001", "topk:0.01", "topk:0.1", "topk:0.5", "topk:1")
	p, err := NewPlan([]Layer{{Name: "w", Rows: rows, Cols: cols, Default: cands[5], Candidates: cands}})
	if err != nil {
		t.Fatal(err)
	}
	errs := p.Errors(0, g)
	for c, cand := range p.Candidates(0) {
		got, n := realErr(t, cand.Recipe, rows, cols, x, 1)
		if math.Abs(got-errs[c]) > 1e-5*(1+got) {
			t.Errorf("%s: Errors %v, compressor's error %v", cand.Recipe, errs[c], got)
		}
		if int64(n) != cand.Bytes {
			t.Errorf("%s: Bytes %d, frame is %d bytes", cand.Recipe, cand.Bytes, n)
		}
	}
}

func TestErrorsStochasticFamiliesMatchExpectation(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	rows, cols := 30, 50
	g := lowRankish(rng, rows, cols)
	x := make([]float32, len(g))
	for i, v := range g {
		x[i] = float32(v)
	}
	cands := recipes(t, "qsgd:1", "qsgd:3", "qsgd:4", "qsgd:15", "randomk:0.1", "randomk:0.5")
	p, err := NewPlan([]Layer{{Name: "w", Rows: rows, Cols: cols, Default: cands[2], Candidates: cands}})
	if err != nil {
		t.Fatal(err)
	}
	errs := p.Errors(0, g)
	const draws = 400
	for c, cand := range p.Candidates(0) {
		comp, err := cand.Recipe.New(len(x), compressors.WithSeed(9))
		if err != nil {
			t.Fatal(err)
		}
		var mean float64
		y := make([]float32, len(x))
		for range draws {
			frame, err := comp.Compress(nil, x) // advances the stream
			if err != nil {
				t.Fatal(err)
			}
			if err := comp.Decompress(y, frame); err != nil {
				t.Fatal(err)
			}
			var s float64
			for i := range x {
				d := float64(x[i]) - float64(y[i])
				s += d * d
			}
			mean += s / draws
		}
		want := errs[c] * errs[c]
		if math.Abs(mean-want) > 0.05*want {
			t.Errorf("%s: expected squared error %v, Monte Carlo mean %v", cand.Recipe, want, mean)
		}
		frame, _ := comp.Compress(nil, x)
		if int64(len(frame)) != cand.Bytes {
			t.Errorf("%s: Bytes %d, frame is %d bytes", cand.Recipe, cand.Bytes, len(frame))
		}
	}
}

func TestErrorsPowerSGD(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	rows, cols := 24, 60
	g := lowRankish(rng, rows, cols)
	x := make([]float32, len(g))
	for i, v := range g {
		x[i] = float32(v)
	}
	def := recipes(t, "powersgd:4")[0]
	layers := []Layer{{Name: "w", Rows: rows, Cols: cols, Default: def}}
	svdPlan, err := NewPlan(layers, WithErrorMethod(ErrorSVD))
	if err != nil {
		t.Fatal(err)
	}
	powPlan, err := NewPlan(layers, WithErrorMethod(ErrorPower), WithSeed(3))
	if err != nil {
		t.Fatal(err)
	}
	cands := svdPlan.Candidates(0)
	var ranks []int
	for _, c := range cands {
		ranks = append(ranks, c.Recipe.Rank)
	}
	// (24+60)·r·2 < 24·60 admits r ≤ 8: the full range [2, 8].
	if len(ranks) != 7 || ranks[0] != 2 || ranks[6] != 8 {
		t.Fatalf("ranks %v, want 2..8", ranks)
	}
	es, ep := svdPlan.Errors(0, g), powPlan.Errors(0, g)
	if again := powPlan.Errors(0, g); again[3] != ep[3] {
		t.Fatalf("power errors not deterministic: %v vs %v", again[3], ep[3])
	}
	for c := range cands {
		if c > 0 && !(es[c] < es[c-1]) {
			t.Errorf("SVD errors not decreasing in rank: %v", es)
		}
		// Power iteration estimates the best rank-r error from above.
		if ep[c] < es[c]*(1-1e-9) || ep[c] > es[c]*1.25 {
			t.Errorf("rank %d: power error %v, SVD error %v", ranks[c], ep[c], es[c])
		}
		// The warm-started PowerSGD compressor converges to the SVD error.
		comp, err := cands[c].Recipe.New(len(x), compressors.WithShape(rows, cols), compressors.WithSeed(4))
		if err != nil {
			t.Fatal(err)
		}
		var frame []byte
		for range 60 {
			if frame, err = comp.Compress(frame, x); err != nil {
				t.Fatal(err)
			}
		}
		y := make([]float32, len(x))
		if err := comp.Decompress(y, frame); err != nil {
			t.Fatal(err)
		}
		var s float64
		for i := range x {
			d := float64(x[i]) - float64(y[i])
			s += d * d
		}
		if got := math.Sqrt(s); math.Abs(got-es[c]) > 0.02*es[c] {
			t.Errorf("rank %d: PowerSGD's error after 60 warm steps %v, SVD %v", ranks[c], got, es[c])
		}
		if int64(len(frame)) != cands[c].Bytes {
			t.Errorf("rank %d: Bytes %d, frame %d", ranks[c], cands[c].Bytes, len(frame))
		}
	}
}

func TestErrorsRankAboveMatrixRank(t *testing.T) {
	// A 3×40 layer with ranks up to 8 and the worker's dense rule off.
	rng := rand.New(rand.NewPCG(1, 1))
	g := lowRankish(rng, 3, 40)
	cfg := DefaultConfig()
	cfg.MinCompressionRate = 0
	p, err := NewPlan([]Layer{{Name: "w", Rows: 3, Cols: 40, Default: recipes(t, "powersgd:4")[0]}}, WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	errs := p.Errors(0, g)
	var full int64
	for c, cand := range p.Candidates(0) {
		r := cand.Recipe.Rank
		switch {
		case r == 3:
			full = cand.Bytes
			if errs[c] > 1e-9 {
				t.Errorf("rank 3 of a 3×40 matrix: error %v, want 0", errs[c])
			}
		case r > 3:
			if errs[c] > 1e-9 {
				t.Errorf("rank %d: error %v, want 0", r, errs[c])
			}
		}
	}
	for _, cand := range p.Candidates(0) {
		if cand.Recipe.Rank > 3 && cand.Bytes != full+1 {
			t.Errorf("rank %d: Bytes %d, want the true rank's %d + 1", cand.Recipe.Rank, cand.Bytes, full)
		}
	}
	// The DP picks rank 3, not a larger rank of equal error.
	tab := Table{Err: [][]float64{errs}, Cost: [][]float64{make([]float64, len(errs))}, Default: []int{0}}
	for c := range errs {
		tab.Cost[0][c] = p.Cost(0, c)
		if p.Candidates(0)[c].Recipe.Rank == 4 {
			tab.Default[0] = c
		}
	}
	sol, err := Solve(tab, 1, DefaultBuckets)
	if err != nil {
		t.Fatal(err)
	}
	if r := p.Candidates(0)[sol.Choice[0]].Recipe.Rank; r > 3 {
		t.Errorf("DP chose rank %d > matrix rank 3", r)
	}
}

func TestErrorsNonFinite(t *testing.T) {
	p, err := NewPlan([]Layer{
		{Name: "a", Rows: 8, Cols: 40, Default: recipes(t, "powersgd:2")[0]},
		{Name: "b", Rows: 8, Cols: 40, Default: recipes(t, "topk:0.1")[0]},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []float64{math.NaN(), math.Inf(1), 1e300} {
		g := make([]float64, 320)
		g[17] = bad
		for l := range 2 {
			for c, e := range p.Errors(l, g) {
				if !math.IsNaN(e) {
					t.Errorf("value %v, layer %d candidate %d: error %v, want NaN", bad, l, c, e)
				}
			}
		}
	}
	// An all-zero gradient gives zero errors, never NaN (Gram–Schmidt of a
	// zero column, docs/algorithms.md §4.1 pitfall 2).
	for _, m := range []ErrorMethod{ErrorSVD, ErrorPower} {
		p2, _ := NewPlan([]Layer{{Name: "a", Rows: 8, Cols: 40, Default: recipes(t, "powersgd:2")[0]}}, WithErrorMethod(m))
		for c, e := range p2.Errors(0, make([]float64, 320)) {
			if e != 0 {
				t.Errorf("%v: zero gradient, candidate %d: error %v", m, c, e)
			}
		}
	}
}
