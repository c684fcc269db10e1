package lgreco

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/internal/kernels"
)

func TestReplayPlan(t *testing.T) {
	topk := Layer{Name: "w", Rows: 20, Cols: 30, Default: compressors.MustParse("topk:0.05")}
	for _, tc := range []struct {
		name string
		l    Layer
		opts []Option
		want bool
	}{
		{"topk with EF", topk, nil, true},
		{"randomk with EF", Layer{Name: "w", Rows: 20, Cols: 30, Default: compressors.MustParse("randomk:0.05")}, nil, true},
		{"qsgd with EF", Layer{Name: "w", Rows: 20, Cols: 30, Default: compressors.MustParse("qsgd:4")}, nil, true},
		{"one-shot option", topk, []Option{WithOneShot(true)}, false},
		{"powersgd", Layer{Name: "w", Rows: 20, Cols: 30, Default: compressors.MustParse("powersgd:2")}, nil, true},
		{"powersgd one-shot", Layer{Name: "w", Rows: 20, Cols: 30, Default: compressors.MustParse("powersgd:2")}, []Option{WithOneShot(true)}, false},
		{"dgc", Layer{Name: "w", Rows: 20, Cols: 30, Default: compressors.MustParse("dgc:0.05")}, nil, false},
		{"mixed with dgc", Layer{Name: "w", Rows: 20, Cols: 30, Default: compressors.MustParse("topk:0.05"),
			Candidates: []compressors.Recipe{compressors.MustParse("dgc:0.1")}}, nil, false},
		{"untuned", Layer{Name: "b", Rows: 20, Cols: 1, Default: compressors.MustParse("none")}, nil, false},
	} {
		p, err := NewPlan([]Layer{tc.l}, tc.opts...)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := p.Replayable(0); got != tc.want {
			t.Errorf("%s: Replayed = %v, want %v", tc.name, got, tc.want)
		}
		if c := NewController(p); c.Collecting(0) != tc.want {
			// Schedule (0, 100, 10, 1): step 0 is outside the window.
			t.Errorf("%s: Collecting(0) = %v, want %v", tc.name, c.Collecting(0), tc.want)
		}
	}
}

// driftStream returns a generator of gradients g = μ + σ·ξ with a fixed drift
// μ (what error feedback must eventually deliver) and fresh noise ξ.
func driftStream(seed uint64, n int, sigma float64) func() []float32 {
	rng := rand.New(rand.NewPCG(seed, 7))
	mu := make([]float64, n)
	for i := range mu {
		mu[i] = rng.NormFloat64()
	}
	return func() []float32 {
		g := make([]float32, n)
		for i := range g {
			g[i] = float32(mu[i] + sigma*rng.NormFloat64())
		}
		return g
	}
}

// TestReplayMatchesEF14 checks the replayed errors against EF14 run directly
// over every candidate's codec (top-k; PowerSGD's single-rank Compress, from
// the layer's shared seed), from Start, averaged over the window, and that a
// candidate is offered only once its residual had time to fill; with
// Config.Squared (the default) the DP's table holds their squares.
func TestReplayMatchesEF14(t *testing.T) {
	density := func(r compressors.Recipe) int64 { return int64(math.Ceil(1 / r.Density)) }
	one := func(compressors.Recipe) int64 { return 1 }
	for _, tc := range []struct {
		def     string
		squared bool
		ranks   int
		beta    float64                        // the moving average the reference runs on (0: raw)
		fill    func(compressors.Recipe) int64 // steps to fill
	}{
		// topk:0.25 of 600: densities 0.0625..1, filled after 16..1 steps;
		// raw gradients at any Ranks (each rank compresses its own).
		{"topk:0.25", false, 1, 0, density},
		{"topk:0.25", true, 4, 0, density},
		// powersgd:2 of 20×30: ranks 1..4, one step; Ranks 4 smooths
		// with β = 3/5, Ranks 64 with N capped at 2·AccIter+1 = 9.
		{"powersgd:2", true, 1, 0, one},
		{"powersgd:2", true, 4, 3.0 / 5, one},
		{"powersgd:2", false, 64, 8.0 / 10, one},
	} {
		t.Run(fmt.Sprintf("%s/squared=%v/ranks=%d", tc.def, tc.squared, tc.ranks), func(t *testing.T) {
			testReplayMatchesEF14(t, tc.def, tc.squared, tc.ranks, tc.beta, tc.fill)
		})
	}
}

func testReplayMatchesEF14(t *testing.T, def string, squared bool, ranks int, beta float64, fill func(compressors.Recipe) int64) {
	l := Layer{Name: "w", Rows: 20, Cols: 30, Default: compressors.MustParse(def)}
	p, err := NewPlan([]Layer{l}, WithSchedule(3, 10, 4, 1), WithSeed(9), WithSquared(squared), WithRanks(ranks))
	if err != nil {
		t.Fatal(err)
	}
	c := NewController(p)
	next := driftStream(1, l.Elems(), 3)
	cands := p.Candidates(0)
	refs := make([]*errorfeedback.EF14, len(cands))
	for k, cand := range cands {
		comp, err := cand.Recipe.New(l.Elems(), compressors.WithShape(l.Rows, l.Cols), compressors.WithSeed(LayerSeed(9, -1, 0)))
		if err != nil {
			t.Fatal(err)
		}
		refs[k] = errorfeedback.NewEF14(comp)
	}
	want := make([]float64, len(cands))
	var collecting []int64
	var ema []float32
	decisions, unfilled := 0, 0
	for s := int64(0); s < 24; s++ {
		if c.Due(s) {
			decisions++
			d := c.Decide(s)
			if d.Kept {
				t.Fatalf("decision at %d kept", s)
			}
			got := c.LastTable().Err[0]
			for k, cand := range cands {
				want[k] /= 4
				if squared {
					want[k] *= want[k]
				}
				if s-3 < fill(cand.Recipe) && k != p.Default()[0] {
					want[k] = math.NaN() // not filled yet
					unfilled++
				}
			}
			if !slices.EqualFunc(got, want, func(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) }) {
				t.Fatalf("step %d: replayed errors\n got %v\nwant %v", s, got, want)
			}
			// Fewer kept elements leave a larger residual.
			for k := 1; k < len(got); k++ {
				if !(got[k] < got[k-1]) && !math.IsNaN(got[k-1]) {
					t.Fatalf("errors not decreasing with size: %v", got)
				}
			}
			if err := c.Schedule(d); err != nil {
				t.Fatal(err)
			}
			clear(want)
		}
		if _, err := c.Advance(s); err != nil {
			t.Fatal(err)
		}
		g := next()
		if c.Collecting(s) {
			collecting = append(collecting, s)
			c.Observe(0, g, make([]float32, len(g))) // a residual: replay
		}
		if s >= 3 {
			in := g
			if beta > 0 {
				if ema == nil {
					ema = slices.Clone(g)
				} else {
					kernels.Scale(ema, float32(beta))
					kernels.Axpy(ema, float32(1-beta), g)
				}
				in = ema
			}
			for k, ef := range refs {
				if _, err := ef.Encode(nil, in); err != nil {
					t.Fatal(err)
				}
				if (s-3)%10 >= 6 {
					want[k] += math.Sqrt(kernels.SumSq(ef.Residual()))
				}
			}
		}
	}
	if decisions != 2 || len(collecting) != 21 || collecting[0] != 3 {
		t.Fatalf("%d decisions, collecting at %v, want 2 and every step from Start", decisions, collecting)
	}
	if l.Default.Codec == compressors.CodecTopK && unfilled == 0 {
		t.Fatal("no top-k candidate was held back while its residual filled")
	}
}

// TestReplaySeesDensity is the reason for replaying: under error feedback a
// sparser level's residual grows until what it sends keeps up with the
// gradient's drift (about 1/density), while the one-shot error of one
// error-compensated gradient hardly depends on the density (the tail of a
// dense vector holds nearly all of its energy). The replayed errors do not
// depend on the active choice either, so the budget stays anchored at the
// uniform default's residual.
func TestReplaySeesDensity(t *testing.T) {
	const n, steps = 4096, 400
	l := Layer{Name: "w", Rows: 64, Cols: 64, Default: compressors.MustParse("topk:0.01")}
	sched := WithSchedule(0, steps, 10, 0)
	replay, _ := NewPlan([]Layer{l}, sched, WithSquared(false))
	oneShot, _ := NewPlan([]Layer{l}, sched, WithOneShot(true), WithSquared(false))
	cr, co := NewController(replay), NewController(oneShot)
	// A second replaying controller whose active choice is the sparsest
	// candidate: its table must not differ.
	cs := NewController(replay)
	if err := cs.Schedule(&Decision{Version: 1, ApplyAt: 0, PlanHash: replay.Hash(), Choice: []int{0}}); err != nil {
		t.Fatal(err)
	}
	def, err := l.Default.New(n)
	if err != nil {
		t.Fatal(err)
	}
	ef := errorfeedback.NewEF14(def) // the uniform default's own residual, for one-shot
	next := driftStream(2, n, 4)
	for s := int64(0); s < steps; s++ {
		for _, c := range []*Controller{cr, co, cs} {
			if _, err := c.Advance(s); err != nil {
				t.Fatal(err)
			}
		}
		g := next()
		e := slices.Clone(ef.Residual())
		cr.Observe(0, g, e)
		cs.Observe(0, g, e)
		if co.Collecting(s) {
			co.Observe(0, g, e)
		}
		if _, err := ef.Encode(nil, g); err != nil {
			t.Fatal(err)
		}
	}
	dr, ds, do := cr.Decide(steps), cs.Decide(steps), co.Decide(steps)
	if dr.Kept || ds.Kept || do.Kept {
		t.Fatal("a decision was kept")
	}
	er, eo := cr.LastTable().Err[0], co.LastTable().Err[0]
	if !slices.Equal(er, cs.LastTable().Err[0]) {
		t.Fatalf("replayed errors depend on the active choice:\n%v\n%v", er, cs.LastTable().Err[0])
	}
	last := len(er) - 1 // densities 0.25× .. 4×
	rr, ro := er[0]/er[last], eo[0]/eo[last]
	t.Logf("err(0.25×)/err(4×): replayed %.2f, one-shot %.3f", rr, ro)
	if rr < 4 || ro > 1.1 {
		t.Fatalf("replayed ratio %.2f (want ≥ 4), one-shot ratio %.3f (want ≤ 1.1)\nreplayed %v\none-shot %v", rr, ro, er, eo)
	}
}

// TestReplayNonFinite: a NaN gradient makes the window's errors undefined
// (the decision keeps the previous choice); the replay restarts and the next
// window decides again.
func TestReplayNonFinite(t *testing.T) {
	// The default (k = 30 of 600) fills in 20 steps: decisions at 20, 40
	// and 60; the NaN at step 27 spoils the window of step 40 and restarts
	// the replay, which is filled again by step 60. For PowerSGD replayed on
	// smoothed gradients (Ranks 4) the moving average restarts too, or the
	// NaN would stay in it for good.
	for _, tc := range []struct {
		def   string
		ranks int
	}{{"topk:0.05", 1}, {"powersgd:2", 4}} {
		t.Run(tc.def, func(t *testing.T) {
			l := Layer{Name: "w", Rows: 20, Cols: 30, Default: compressors.MustParse(tc.def)}
			p, err := NewPlan([]Layer{l}, WithSchedule(0, 20, 15, 0), WithRanks(tc.ranks))
			if err != nil {
				t.Fatal(err)
			}
			c := NewController(p)
			next := driftStream(3, l.Elems(), 1)
			zero := make([]float32, l.Elems())
			for s := int64(0); s <= 60; s++ {
				if c.Due(s) {
					d := c.Decide(s)
					if wantKept := s == 40; d.Kept != wantKept {
						t.Fatalf("step %d: kept %v, want %v (errors %v)", s, d.Kept, wantKept, c.LastTable().Err)
					}
					if err := c.Schedule(d); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := c.Advance(s); err != nil {
					t.Fatal(err)
				}
				g := next()
				if s == 27 {
					g[3] = float32(math.NaN())
				}
				c.Observe(0, g, zero)
			}
		})
	}
}

// TestReplayOneShotWindow: in a plan with a replayed layer the deciding rank
// observes every step, and a one-shot layer still averages only the window.
func TestReplayOneShotWindow(t *testing.T) {
	layers := []Layer{
		{Name: "a", Rows: 20, Cols: 30, Default: compressors.MustParse("topk:0.05")},
		{Name: "b", Rows: 24, Cols: 32, Default: compressors.MustParse("powersgd:2")},
	}
	sched := WithSchedule(2, 8, 3, 1)
	pa, _ := NewPlan(layers, sched)
	pb, _ := NewPlan(layers, sched, WithOneShot(true))
	// Both layers are replayable, but layer 1 is observed without a
	// residual (no error feedback), which measures it one-shot.
	if !pa.Replayable(0) || !pa.Replayable(1) {
		t.Fatal("plan a: want both layers replayable")
	}
	ca, cb := NewController(pa), NewController(pb)
	rng := rand.New(rand.NewPCG(4, 5))
	for s := int64(0); s < 10; s++ {
		for _, c := range []*Controller{ca, cb} {
			if _, err := c.Advance(s); err != nil {
				t.Fatal(err)
			}
		}
		if want := s >= 2; ca.Collecting(s) != want {
			t.Fatalf("step %d: Collecting %v", s, ca.Collecting(s))
		}
		gs := make([][]float32, 2)
		for l := range gs {
			gs[l] = make([]float32, layers[l].Elems())
			for i := range gs[l] {
				gs[l][i] = float32(rng.NormFloat64())
			}
		}
		for l, g := range gs {
			if ca.Collecting(s) {
				var e []float32
				if l == 0 {
					e = make([]float32, len(g)) // EF14 over top-k: replayed
				}
				ca.Observe(l, g, e)
			}
			if cb.Collecting(s) {
				cb.Observe(l, g, nil)
			}
		}
	}
	ca.Decide(10)
	cb.Decide(10)
	if a, b := ca.LastTable().Err[1], cb.LastTable().Err[1]; !slices.Equal(a, b) {
		t.Fatalf("one-shot layer's errors differ:\n%v\n%v", a, b)
	}
}

func TestReplayObserveAllocs(t *testing.T) {
	p, err := NewPlan(mlpLayers("topk:0.01"))
	if err != nil {
		t.Fatal(err)
	}
	c := NewController(p)
	next := driftStream(5, 512*784, 1)
	g, e := next(), make([]float32, 512*784)
	c.Observe(0, g, e) // allocates the replay state once
	c.Observe(0, next(), e)
	if n := testing.AllocsPerRun(3, func() { c.Observe(0, g, e) }); n != 0 {
		t.Fatalf("Observe of a replayed layer allocates %v times per call", n)
	}
}

// TestReplayNeedsResidual: a replayable layer observed without a residual (no
// error feedback) is measured one-shot on the window's gradients.
func TestReplayNeedsResidual(t *testing.T) {
	l := Layer{Name: "w", Rows: 20, Cols: 30, Default: compressors.MustParse("topk:0.05")}
	p, err := NewPlan([]Layer{l}, WithSchedule(0, 6, 2, 0), WithSquared(false))
	if err != nil {
		t.Fatal(err)
	}
	c := NewController(p)
	next := driftStream(6, l.Elems(), 1)
	sum := make([]float64, l.Elems())
	for s := int64(0); s < 6; s++ {
		if _, err := c.Advance(s); err != nil {
			t.Fatal(err)
		}
		g := next()
		c.Observe(0, g, nil)
		if s >= 4 {
			for i, v := range g {
				sum[i] += float64(v) / 2
			}
		}
	}
	c.Decide(6)
	if got, want := c.LastTable().Err[0], p.Errors(0, sum); !slices.Equal(got, want) {
		t.Fatalf("errors without a residual\n got %v\nwant the one-shot %v", got, want)
	}
}
