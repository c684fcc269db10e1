package worker

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/lgreco"
)

// spectraGrads returns a generator of gradients grads[rank][layer] for a
// synthetic problem whose layers have uneven spectra: for PowerSGD, layer 0
// is a rank-1 signal plus faint noise and layer 1 a full-rank Gaussian
// matrix; for top-k, layer 0 has a few large entries at fixed positions and
// layer 1 is dense Gaussian. Layer 2 is a dense bias. Every rank adds its own
// noise; the stream is seeded.
func spectraGrads(n int, layers []layerDef, lowRank bool, seed uint64) func() [][][]float32 {
	rng := rand.New(rand.NewPCG(seed, 1))
	rows, cols := layers[0].shape[0], layers[0].elems()/layers[0].shape[0]
	u, v := make([]float64, rows), make([]float64, cols)
	for i := range u {
		u[i] = rng.NormFloat64()
	}
	for j := range v {
		v[j] = rng.NormFloat64()
	}
	spikes := rng.Perm(layers[0].elems())[:layers[0].elems()/100]
	return func() [][][]float32 {
		scale := 1 + rng.Float64()
		g := make([][][]float32, n)
		for r := range g {
			g[r] = make([][]float32, len(layers))
			for l, ld := range layers {
				x := make([]float32, ld.elems())
				for i := range x {
					x[i] = float32(rng.NormFloat64())
				}
				if l == 0 {
					for i := range x {
						x[i] *= 0.01
					}
					if lowRank {
						for i := range rows {
							for j := range cols {
								x[i*cols+j] += float32(scale * u[i] * v[j])
							}
						}
					} else {
						for _, i := range spikes {
							x[i] += float32(10 * scale)
						}
					}
				}
				g[r][l] = x
			}
		}
		return g
	}
}

// lgLayers is the synthetic model: two tunable weight matrices and a bias.
func lgLayers(codec string) []layerDef {
	return []layerDef{
		{name: "w0", shape: []int{48, 40}, codec: codec, ef: "ef14"},
		{name: "w1", shape: []int{48, 40}, codec: codec, ef: "ef14"},
		{name: "b", shape: []int{40}, codec: "none"},
	}
}

// L-GreCo over PowerSGD and over top-k on three ranks over transport/mem:
// every rank switches the same layers at the same step (the decision's
// ApplyAt), the updates stay bit-identical across ranks at every step, the
// decision meets the error budget, and the run sends fewer bytes than the
// uniform default on the same gradients.
func TestLGreCoSwitchesTogetherAndSaves(t *testing.T) {
	const n, steps = 3, 14
	for _, tc := range []struct {
		codec   string
		lowRank bool
	}{{"powersgd:4", true}, {"topk:0.25", false}} {
		t.Run(tc.codec, func(t *testing.T) {
			layers := lgLayers(tc.codec)
			run := func(tune bool) (sent []int64, leds [][]*Ledger, upd [][][]float32) {
				opts := []Option{WithSeed(7)}
				if tune {
					opts = append(opts, WithLGreCo(lgreco.WithSchedule(0, 4, 2, 1)))
				}
				ws := startWorkers(t, newGroup(t, n).Conns(), layers, opts...)
				next := spectraGrads(n, layers, tc.lowRank, 11)
				for range steps {
					g := next()
					ls := mustStep(t, ws, g)
					checkIdentical(t, g)
					sent = append(sent, ls[0].SentBytes())
					leds = append(leds, ls)
					upd = append(upd, g[0])
				}
				return sent, leds, upd
			}
			uni, _, updUni := run(false)
			got, leds, upd := run(true)
			// Until the first switch, L-GreCo runs exactly the uniform
			// default (same seeds): the updates are bit-identical.
			for step := range 5 {
				checkIdentical(t, [][][]float32{updUni[step], upd[step]})
			}

			// Decisions at steps 4, 8, 12 (the same on every rank), applied
			// one step later.
			var switches []int64
			for step, ls := range leds {
				d0 := ls[0].Decision
				if (step%4 == 0 && step > 0) != (d0 != nil) {
					t.Fatalf("step %d: decision %v", step, d0)
				}
				for r, l := range ls {
					if !slices.Equal(l.Switched, ls[0].Switched) {
						t.Fatalf("step %d: rank %d switched %v, rank 0 %v", step, r, l.Switched, ls[0].Switched)
					}
					for i := range l.Layers {
						if l.Layers[i].Codec != ls[0].Layers[i].Codec {
							t.Fatalf("step %d layer %d: rank %d runs %s, rank 0 %s", step, i, r, l.Layers[i].Codec, ls[0].Layers[i].Codec)
						}
					}
					if d0 != nil && (l.Decision == nil || !slices.Equal(l.Decision.Choice, d0.Choice) || l.Decision.ApplyAt != d0.ApplyAt) {
						t.Fatalf("step %d: rank %d decision %+v, rank 0 %+v", step, r, l.Decision, d0)
					}
				}
				if d0 != nil {
					if d0.Kept {
						t.Fatalf("step %d: no feasible configuration (%+v)", step, d0)
					}
					if d0.ApplyAt != int64(step)+1 {
						t.Fatalf("step %d: applies at %d", step, d0.ApplyAt)
					}
					if d0.Err > d0.Budget {
						t.Errorf("step %d: error %g over the budget %g", step, d0.Err, d0.Budget)
					}
					if d0.Cost > d0.DefaultCost {
						t.Errorf("step %d: cost %g above the uniform default's %g", step, d0.Cost, d0.DefaultCost)
					}
				}
				if len(ls[0].Switched) > 0 {
					switches = append(switches, int64(step))
					if leds[step-1][0].Decision == nil {
						t.Errorf("step %d: switched without a decision at the step before", step)
					}
				}
				if ls[0].Layers[2].Codec != "none" {
					t.Errorf("the dense bias was tuned: %s", ls[0].Layers[2].Codec)
				}
			}
			if len(switches) == 0 {
				t.Fatal("L-GreCo never switched")
			}
			var su, sg int64
			for i := range uni {
				su += uni[i]
				sg += got[i]
				if i < 5 && uni[i] != got[i] {
					t.Errorf("step %d (before the first switch): sent %d, uniform %d", i, got[i], uni[i])
				}
			}
			last := leds[steps-1][0]
			t.Logf("%s: sent %d B vs uniform %d B (%.2f×), switches at %v, last recipes %s / %s", tc.codec, sg, su,
				float64(su)/float64(sg), switches, last.Layers[0].Codec, last.Layers[1].Codec)
			if sg >= su {
				t.Errorf("L-GreCo sent %d bytes, not fewer than the uniform default's %d", sg, su)
			}
		})
	}
}

// A rank that would apply another configuration is caught at the boundary:
// every rank's next call fails with an error naming the rank (a
// *lgreco.DesyncError) instead of hanging in collectives whose sizes differ.
// Rank 1's received decision is altered in two ways: a later switch step
// (accepted locally, caught by the comparison) and a skipped version
// (refused locally; rank 1 still takes part in the comparison).
func TestLGreCoDesyncDetected(t *testing.T) {
	const n = 3
	for _, tc := range []struct {
		name   string
		tamper func(*lgreco.Decision)
		local  error // rank 1's own error
	}{
		{"later switch", func(d *lgreco.Decision) { d.ApplyAt++ }, nil},
		{"skipped version", func(d *lgreco.Decision) { d.Version++ }, lgreco.ErrMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			layers := lgLayers("powersgd:4")
			ws := startWorkers(t, newGroup(t, n).Conns(), layers, WithLGreCo(lgreco.WithSchedule(0, 2, 1, 1)))
			ws[1].lg.tamper = tc.tamper
			next := spectraGrads(n, layers, true, 3)
			for range 2 { // steps 0 and 1; the boundary of step 2 fails
				mustStep(t, ws, next())
			}
			_, errs := stepAll(ws, next())
			for r, err := range errs {
				var de *lgreco.DesyncError
				if !errors.Is(err, ErrBroken) || !errors.As(err, &de) || !slices.Equal(de.Ranks, []int{1}) || de.Step != 2 {
					t.Errorf("rank %d: got %v, want ErrBroken with a DesyncError for rank 1 at step 2", r, err)
				}
				if r == 1 && tc.local != nil && !errors.Is(err, tc.local) {
					t.Errorf("rank 1: got %v, want it to wrap %v", err, tc.local)
				}
			}
		})
	}
}

// wantSettingsMismatch checks that every rank's Start failed with a
// SignatureError about the settings (Index -1) that names rank bad.
func wantSettingsMismatch(t *testing.T, errs []error, bad int) {
	t.Helper()
	for r, err := range errs {
		var se *SignatureError
		if !errors.As(err, &se) || se.Index != -1 || se.Rank != bad {
			t.Errorf("rank %d: got %v, want a settings SignatureError naming rank %d", r, err, bad)
		}
	}
}

// L-GreCo's settings are part of the start-up signature: a rank with another
// schedule fails Start on every rank with a *SignatureError on the settings.
func TestLGreCoSettingsInSignature(t *testing.T) {
	const n = 3
	g := newGroup(t, n)
	conns := g.Conns()
	ws := make([]*Worker, n)
	errs := runAll(n, func(r int) error {
		adjust := int64(10)
		if r == 2 {
			adjust = 20
		}
		w, err := New(t.Context(), conns[r], WithLGreCo(lgreco.WithSchedule(0, adjust, 2, 1)))
		if err != nil {
			return err
		}
		ws[r] = w
		if _, err := w.Register("w", []int{32, 32}, WithCodec("powersgd:2")); err != nil {
			return err
		}
		return w.Start(t.Context())
	})
	wantSettingsMismatch(t, errs, 2)
	for _, w := range ws {
		if w != nil {
			w.Close()
		}
	}
}

// The link-aware objective (modelled collective time under the cost model)
// decides within the error budget and never above the uniform default's
// modelled time; the ranks stay bit-identical.
func TestLGreCoLinkAware(t *testing.T) {
	const n = 3
	layers := lgLayers("topk:0.25")
	ws := startWorkers(t, newGroup(t, n).Conns(), layers, WithLGreCoLinkAware(lgreco.WithSchedule(0, 3, 2, 0)))
	next := spectraGrads(n, layers, false, 5)
	var decided bool
	for step := range 5 {
		g := next()
		ls := mustStep(t, ws, g)
		checkIdentical(t, g)
		if d := ls[0].Decision; d != nil {
			decided = true
			if d.Kept || d.Err > d.Budget || d.Cost > d.DefaultCost || d.ApplyAt != int64(step) {
				t.Fatalf("step %d: decision %+v", step, d)
			}
			if d.Cost >= 1 || d.Cost <= 0 {
				t.Errorf("step %d: cost %g is not a modelled time in seconds", step, d.Cost)
			}
		}
	}
	if !decided {
		t.Fatal("no decision")
	}
}

// A user cost factory (e.g. sim.LinkCost on the job's topology) gets the
// world size and the layers as L-GreCo sees them, drives the decisions, and
// its costs are in the start-up signature: a rank whose costs differ fails
// Start on every rank.
func TestLGreCoCostFactory(t *testing.T) {
	const n = 3
	layers := lgLayers("topk:0.25")
	factory := func(slow float64) LGreCoCostFactory {
		return func(world int, ls []lgreco.Layer) (lgreco.CostFunc, error) {
			if world != n || len(ls) != len(layers) || ls[0].Name != "w0" || ls[0].Rows != 48 || ls[0].Cols != 40 {
				return nil, fmt.Errorf("factory got world %d, layers %+v", world, ls)
			}
			return func(l int, c lgreco.Candidate) float64 {
				if l == 1 {
					return slow * float64(c.Bytes) // layer 1 sits on a slow link
				}
				return float64(c.Bytes)
			}, nil
		}
	}
	decide := func(opt Option) *lgreco.Decision {
		ws := startWorkers(t, newGroup(t, n).Conns(), layers, opt)
		next := spectraGrads(n, layers, false, 5)
		var d *lgreco.Decision
		for range 17 {
			g := next()
			ls := mustStep(t, ws, g)
			checkIdentical(t, g)
			if ls[0].Decision != nil {
				d = ls[0].Decision
			}
		}
		if d == nil || d.Kept || d.Err > d.Budget || d.Cost > d.DefaultCost {
			t.Fatalf("decision %+v", d)
		}
		return d
	}
	// The first decision at step 16, when the sparsest candidate's replayed
	// residual (top-k 0.0625) is filled.
	slow := decide(WithLGreCoCost(factory(10), lgreco.WithSchedule(0, 16, 2, 0)))
	bytes := decide(WithLGreCo(lgreco.WithSchedule(0, 16, 2, 0)))
	// Candidates are sorted by size: with layer 1's bytes ten times dearer,
	// the DP buys its error budget elsewhere.
	if slow.Choice[1] >= bytes.Choice[1] {
		t.Errorf("layer 1 on a slow link gets candidate %d, the byte objective %d: the cost function had no effect", slow.Choice[1], bytes.Choice[1])
	}
	t.Logf("choices: slow link on layer 1 %v, bytes %v", slow.Choice, bytes.Choice)
	_, errs := tryStartWorkers(t, newGroup(t, n).Conns(), func(int) []layerDef { return layers }, WithLGreCoCost(factory(10)))
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	// Ranks whose factories disagree.
	conns := newGroup(t, n).Conns()
	errs = runAll(n, func(r int) error {
		w, err := New(t.Context(), conns[r], WithLGreCoCost(factory(float64(1+r/2))))
		if err != nil {
			return err
		}
		defer w.Close()
		for _, l := range layers {
			ef := l.ef
			if ef == "" {
				ef = "none"
			}
			if _, err := w.Register(l.name, l.shape, WithCodec(l.codec), WithErrorFeedback(ef)); err != nil {
				return err
			}
		}
		return w.Start(t.Context())
	})
	wantSettingsMismatch(t, errs, 2)
	if _, err := New(t.Context(), conns[0], WithLGreCoCost(factory(1)), WithLGreCoLinkAware()); err == nil {
		t.Error("a cost factory and the link-aware objective together were accepted")
	}
}

// L-GreCo with Submit/Wait (layers handed over in backward order from
// several goroutines) and a dense-mode step among the observed ones: the
// ranks still decide and switch together and stay bit-identical.
func TestLGreCoSubmitWaitAndDenseStep(t *testing.T) {
	const n, steps = 3, 9
	layers := lgLayers("powersgd:4")
	ws := startWorkers(t, newGroup(t, n).Conns(), layers, WithLGreCo(lgreco.WithSchedule(0, 3, 2, 1)))
	next := spectraGrads(n, layers, true, 8)
	var switched int
	for step := range steps {
		g := next()
		leds := make([]*Ledger, n)
		errs := runAll(n, func(r int) error {
			mode := ModeCompressed
			if step == 2 {
				mode = ModeDense
			}
			if err := ws[r].SetMode(mode); err != nil {
				return err
			}
			sub := make([]error, len(layers))
			runAll(len(layers), func(l int) error { sub[l] = ws[r].Submit(l, g[r][l]); return nil })
			if err := errors.Join(sub...); err != nil {
				return err
			}
			var err error
			leds[r], err = ws[r].Wait(t.Context())
			return err
		})
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		checkIdentical(t, g)
		for r := range leds {
			if !slices.Equal(leds[r].Switched, leds[0].Switched) {
				t.Fatalf("step %d: rank %d switched %v, rank 0 %v", step, r, leds[r].Switched, leds[0].Switched)
			}
		}
		if (step%3 == 0 && step > 0) != (leds[0].Decision != nil) {
			t.Fatalf("step %d: decision %v", step, leds[0].Decision)
		}
		switched += len(leds[0].Switched)
	}
	if switched == 0 {
		t.Fatal("no layer switched")
	}
	if got := ws[1].Recipes(); !slices.Equal(got, ws[0].Recipes()) {
		t.Fatalf("recipes differ: %v vs %v", got, ws[0].Recipes())
	}
}

// A top-k layer under EF14 has its L-GreCo errors measured by replaying
// error feedback on rank 0 (lgreco.Plan.Replayable): rank 0 feeds the plain
// gradient and its residual at every step from Start, so its decisions are
// exactly those of a standalone lgreco.Controller replaying rank 0's
// gradients. Without error feedback the layer is measured one-shot (no
// residual), which decides differently on the same gradients.
func TestLGreCoReplaysErrorFeedback(t *testing.T) {
	const n, steps = 3, 14
	layers := lgLayers("topk:0.05")
	sched := lgreco.WithSchedule(1, 4, 2, 1)
	ws := startWorkers(t, newGroup(t, n).Conns(), layers, WithSeed(7), WithLGreCo(sched))
	plan := ws[0].lg.plan
	if !plan.Replayable(0) || !plan.Replayable(1) || plan.Replayable(2) {
		t.Fatalf("replayable layers: %v %v %v, want true true false", plan.Replayable(0), plan.Replayable(1), plan.Replayable(2))
	}
	var ll []lgreco.Layer
	for _, ld := range layers {
		ll = append(ll, lgreco.LayerOf(ld.name, ld.shape, compressorsMustParse(t, ld.codec)))
	}
	ref, err := lgreco.NewPlan(ll, sched, lgreco.WithSeed(7))
	if err != nil {
		t.Fatal(err)
	}
	if ref.Hash() != plan.Hash() {
		t.Fatal("the standalone plan differs from the worker's")
	}
	c := lgreco.NewController(ref)
	next := spectraGrads(n, layers, false, 3)
	decisions, first := 0, 0.0
	for s := int64(0); s < steps; s++ {
		g := next()
		g0 := make([][]float32, len(g[0]))
		for l := range g0 {
			g0[l] = slices.Clone(g[0][l])
		}
		var want *lgreco.Decision
		if c.Due(s) {
			want = c.Decide(s)
			if err := c.Schedule(want); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Advance(s); err != nil {
			t.Fatal(err)
		}
		if c.Collecting(s) {
			for l := range g0 {
				if ref.Tuned(l) {
					// Any residual: its presence selects the replay.
					c.Observe(l, g0[l], make([]float32, len(g0[l])))
				}
			}
		}
		got := mustStep(t, ws, g)[0].Decision
		if (want == nil) != (got == nil) {
			t.Fatalf("step %d: decision %v, standalone %v", s, got, want)
		}
		if want != nil {
			if decisions == 0 {
				first = want.DefaultErr
			}
			decisions++
			if got.Kept || !slices.Equal(got.Choice, want.Choice) || got.Err != want.Err || got.DefaultErr != want.DefaultErr {
				t.Fatalf("step %d: worker decided %+v, standalone %+v", s, got, want)
			}
		}
	}
	if decisions != 3 {
		t.Fatalf("%d decisions, want 3", decisions)
	}

	// The same gradients without error feedback: one-shot errors of the
	// plain gradients, another table.
	noEF := lgLayers("topk:0.05")
	for i := range noEF {
		noEF[i].ef = "none"
	}
	ws2 := startWorkers(t, newGroup(t, n).Conns(), noEF, WithSeed(7), WithLGreCo(sched))
	next = spectraGrads(n, layers, false, 3)
	for s := int64(0); s < 6; s++ {
		if d := mustStep(t, ws2, next())[0].Decision; d != nil && d.DefaultErr == first {
			t.Fatalf("step %d: without error feedback the default's error %g equals the replayed one", s, d.DefaultErr)
		}
	}
}

func compressorsMustParse(t *testing.T, s string) compressors.Recipe {
	t.Helper()
	r, err := compressors.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
