package lgreco

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/mem"
)

func testLayers() []Layer {
	return []Layer{
		{Name: "fc1.weight", Rows: 48, Cols: 96, Default: compressors.MustParse("powersgd:4")},
		{Name: "fc1.bias", Rows: 48, Cols: 1, Default: compressors.MustParse("none")},
		{Name: "fc2.weight", Rows: 32, Cols: 48, Default: compressors.MustParse("powersgd:4")},
		{Name: "fc3.weight", Rows: 10, Cols: 32, Default: compressors.MustParse("topk:0.05")},
	}
}

func TestDecisionRoundTrip(t *testing.T) {
	p, err := NewPlan(testLayers())
	if err != nil {
		t.Fatal(err)
	}
	d := &Decision{Version: 3, Step: 200, ApplyAt: 201, PlanHash: p.Hash(), Choice: []int{1, 0, 4, 8},
		Cost: 1234, Err: 5.5, Budget: 6, DefaultCost: 2000, DefaultErr: 6}
	b, err := d.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != decisionFixed+1+4+4 {
		t.Fatalf("encoding is %d bytes", len(b))
	}
	b2, _ := d.MarshalBinary()
	if !bytes.Equal(b, b2) {
		t.Fatal("encoding not deterministic")
	}
	got, err := p.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != d.Version || got.Step != d.Step || got.ApplyAt != d.ApplyAt || got.PlanHash != d.PlanHash ||
		!slices.Equal(got.Choice, d.Choice) || got.Cost != d.Cost || got.Err != d.Err || got.Budget != d.Budget ||
		got.DefaultCost != d.DefaultCost || got.DefaultErr != d.DefaultErr || got.Kept != d.Kept {
		t.Fatalf("round trip: got %+v, want %+v", got, d)
	}
	d.Kept = true
	b, _ = d.MarshalBinary()
	if got, err := p.Decode(b); err != nil || !got.Kept {
		t.Fatalf("kept flag lost: %v %v", got, err)
	}

	// Every flipped bit and every truncation is caught.
	for i := range len(b) * 8 {
		c := slices.Clone(b)
		c[i/8] ^= 1 << (i % 8)
		if _, err := p.Decode(c); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("bit %d flipped: err = %v, want ErrCorrupt", i, err)
		}
	}
	for n := range len(b) {
		if _, err := p.Decode(b[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d: err = %v, want ErrCorrupt", n, err)
		}
	}
	if _, err := p.Decode(append(slices.Clone(b), 0)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("trailing byte: err = %v", err)
	}

	// Well-formed but wrong for this plan.
	mismatch := []*Decision{
		{Version: 1, ApplyAt: 1, PlanHash: p.Hash() + 1, Choice: []int{0, 0, 0, 0}},
		{Version: 1, ApplyAt: 1, PlanHash: p.Hash(), Choice: []int{0, 0, 0}},
		{Version: 1, ApplyAt: 1, PlanHash: p.Hash(), Choice: []int{0, 1, 0, 0}}, // layer 1 has one candidate
		{Version: 1, ApplyAt: 1, PlanHash: p.Hash(), Choice: []int{0, 0, 0, 99}},
	}
	for i, m := range mismatch {
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Decode(b); !errors.Is(err, ErrMismatch) {
			t.Errorf("mismatch %d: err = %v, want ErrMismatch", i, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	p, err := NewPlan(testLayers())
	if err != nil {
		f.Fatal(err)
	}
	d := &Decision{Version: 1, Step: 10, ApplyAt: 11, PlanHash: p.Hash(), Choice: []int{1, 0, 2, 3}}
	b, _ := d.MarshalBinary()
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := p.Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes and fits the plan.
		again, err := d.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs: %v", err)
		}
		_ = p.Recipes(d.Choice)
	})
}

// observeAll feeds one step of synthetic error-compensated gradients.
func observeAll(c *Controller, rng *rand.Rand) {
	p := c.Plan()
	for l := range p.Layers() {
		ly := p.Layer(l)
		g := lowRankish(rng, ly.Rows, ly.Cols)
		g32 := make([]float32, len(g))
		e := make([]float32, len(g))
		for i, v := range g {
			g32[i] = float32(v)
			e[i] = float32(0.01 * rng.NormFloat64())
		}
		c.Observe(l, g32, e)
	}
}

func TestControllerSchedule(t *testing.T) {
	// One-shot: only the window is observed (with replay, every step; see
	// TestReplayPlan).
	p, err := NewPlan(testLayers(), WithSchedule(0, 10, 3, 1), WithOneShot(true))
	if err != nil {
		t.Fatal(err)
	}
	c := NewController(p)
	rng := rand.New(rand.NewPCG(1, 2))
	var due, collecting []int64
	for s := int64(0); s < 25; s++ {
		if c.Due(s) {
			due = append(due, s)
		}
		if c.Collecting(s) {
			collecting = append(collecting, s)
		}
	}
	if !slices.Equal(due, []int64{10, 20}) || !slices.Equal(collecting, []int64{7, 8, 9, 17, 18, 19}) {
		t.Fatalf("due %v collecting %v", due, collecting)
	}

	// No data: the decision keeps the previous (default) choice.
	d0 := c.Decide(10)
	if !d0.Kept || !slices.Equal(d0.Choice, p.Default()) || d0.Version != 1 || d0.ApplyAt != 11 {
		t.Fatalf("decision without data: %+v", d0)
	}

	for s := int64(7); s < 10; s++ {
		if _, err := c.Advance(s); err != nil {
			t.Fatal(err)
		}
		observeAll(c, rng)
	}
	d := c.Decide(10)
	if d.Kept || d.Version != 1 || d.ApplyAt != 11 || d.PlanHash != p.Hash() {
		t.Fatalf("decision: %+v", d)
	}
	sol := c.LastSolution()
	if !(sol.Err <= sol.Budget) || sol.Cost > sol.DefaultCost {
		t.Fatalf("solution breaks the budget or costs more than the default: %+v", sol)
	}
	if got := p.TotalCost(d.Choice); got != sol.Cost+p.Cost(1, 0) {
		t.Fatalf("total cost %v, DP cost %v + untuned %v", got, sol.Cost, p.Cost(1, 0))
	}
	if err := c.Schedule(d); err != nil {
		t.Fatal(err)
	}
	if err := c.Schedule(d); !errors.Is(err, ErrMismatch) {
		t.Fatalf("scheduling a version twice: err = %v", err)
	}
	if ch, err := c.Advance(10); err != nil || ch != nil {
		t.Fatalf("step 10: changed %v err %v; the decision applies at 11", ch, err)
	}
	sigBefore := c.Signature()
	ch, err := c.Advance(11)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Active(), d.Choice) || c.AppliedAt() != 11 || c.Pending() != nil {
		t.Fatalf("after apply: active %v applied %d pending %v", c.Active(), c.AppliedAt(), c.Pending())
	}
	for _, l := range ch {
		if c.Recipe(l) == p.Layer(l).Default {
			t.Errorf("layer %d reported changed but is still the default", l)
		}
	}
	if c.Signature() == sigBefore {
		// The pending decision was already in the signature; applying it
		// changes the applied step and choice.
		t.Fatal("signature unchanged by applying")
	}
	if _, err := c.Advance(11); !errors.Is(err, ErrStep) {
		t.Fatalf("repeated step: err = %v", err)
	}

	// Skipping the apply step is refused.
	for s := int64(17); s < 20; s++ {
		c.Advance(s)
		observeAll(c, rng)
	}
	d2 := c.Decide(20)
	if err := c.Schedule(d2); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Advance(22); !errors.Is(err, ErrStep) {
		t.Fatalf("skipped apply step: err = %v", err)
	}
	// A decision for a step already started is refused.
	c2 := NewController(p)
	c2.Advance(30)
	if err := c2.Schedule(&Decision{Version: 1, Step: 20, ApplyAt: 21, PlanHash: p.Hash(), Choice: p.Default()}); !errors.Is(err, ErrMismatch) {
		t.Fatalf("late decision: err = %v", err)
	}
}

func TestControllerInfeasibleKeepsPrevious(t *testing.T) {
	// The first decision switches; a second one on NaN gradients (undefined
	// budget) is infeasible and keeps the switched choice. With α = 0.2 no
	// configuration reaches the budget and the default stays.
	layers := []Layer{{Name: "w", Rows: 48, Cols: 96, Default: compressors.MustParse("powersgd:4")}}
	// One-shot errors: this test is about the decision logic, not the measure.
	p, err := NewPlan(layers, WithSchedule(0, 5, 2, 0), WithAlpha(1), WithOneShot(true))
	if err != nil {
		t.Fatal(err)
	}
	c := NewController(p)
	rng := rand.New(rand.NewPCG(3, 4))
	observeAll(c, rng)
	d := c.Decide(5)
	if d.Kept {
		t.Fatal("first decision kept")
	}
	c.Schedule(d)
	c.Advance(5)
	prev := slices.Clone(c.Active())

	// NaN gradients make the default's error undefined: nothing feasible.
	g := make([]float32, 48*96)
	for i := range g {
		g[i] = float32(rng.NormFloat64())
	}
	g[7] = float32(nanF())
	c.Observe(0, g, nil)
	d2 := c.Decide(10)
	if !d2.Kept || !slices.Equal(d2.Choice, prev) || c.LastSolution().Feasible {
		t.Fatalf("NaN gradient: decision %+v, want kept %v", d2, prev)
	}

	// α = 0.2: no configuration of this layer reaches a fifth of the
	// default's error.
	p2, _ := NewPlan(layers, WithSchedule(0, 5, 2, 0), WithAlpha(0.2), WithOneShot(true))
	c2 := NewController(p2)
	observeAll(c2, rng)
	d3 := c2.Decide(5)
	if !d3.Kept || !slices.Equal(d3.Choice, p2.Default()) {
		t.Fatalf("α = 0.2: decision %+v, want the previous (default) choice kept", d3)
	}
}

func nanF() float64 { var z float64; return z / z }

// runRanks runs fn on every rank of an in-memory group concurrently.
func runRanks(t *testing.T, n int, fn func(ctx context.Context, conn transport.Conn) error) []error {
	t.Helper()
	g, err := mem.NewGroup(n)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	// The deadline is only a guard: every path below returns at once.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r, conn := range g.Conns() {
		wg.Go(func() { errs[r] = fn(ctx, conn) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("ranks hung until the guard deadline")
	}
	return errs
}

// TestRanksSwitchTogether drives 4 ranks through three adjustments over the
// in-memory transport: rank 0 decides from its gradients, broadcasts, every
// rank schedules, advances and agrees; all apply the same choice at the same
// step, and rebuilt PowerSGD compressors hold identical Q on every rank.
func TestRanksSwitchTogether(t *testing.T) {
	const world, steps = 4, 32
	p, err := NewPlan(testLayers(), WithSchedule(0, 10, 4, 1), WithSeed(77))
	if err != nil {
		t.Fatal(err)
	}
	type rankLog struct {
		applied []int64
		choices [][]int
		q       [][]float32 // Q of layer 0 after each switch
	}
	logs := make([]rankLog, world)
	errs := runRanks(t, world, func(ctx context.Context, conn transport.Conn) error {
		c := NewController(p)
		rng := rand.New(rand.NewPCG(9, uint64(conn.Rank())))
		lg := &logs[conn.Rank()]
		for s := int64(0); s < steps; s++ {
			if c.Due(s) {
				var d *Decision
				if conn.Rank() == 0 {
					d = c.Decide(s)
				}
				d, err := Broadcast(ctx, conn, 1, p, d)
				if err != nil {
					return err
				}
				if err := c.Schedule(d); err != nil {
					return err
				}
			}
			changed, err := c.Advance(s)
			if err != nil {
				return err
			}
			if err := Agree(ctx, conn, 2, s, c.Signature()); err != nil {
				return err
			}
			if changed != nil {
				lg.applied = append(lg.applied, s)
				lg.choices = append(lg.choices, slices.Clone(c.Active()))
				comp, err := c.NewCompressor(0, compressors.WithRank(conn.Rank()))
				if err != nil {
					return err
				}
				ps, ok := comp.(*compressors.PowerSGD)
				if !ok {
					return errors.New("layer 0 is not PowerSGD")
				}
				lg.q = append(lg.q, slices.Clone(ps.Q()))
			}
			if conn.Rank() == 0 && c.Collecting(s) {
				observeAll(c, rng)
			}
		}
		return nil
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	if len(logs[0].applied) == 0 {
		t.Fatal("no configuration change happened")
	}
	for r := 1; r < world; r++ {
		if !slices.Equal(logs[r].applied, logs[0].applied) {
			t.Fatalf("rank %d switched at %v, rank 0 at %v", r, logs[r].applied, logs[0].applied)
		}
		for i := range logs[0].choices {
			if !slices.Equal(logs[r].choices[i], logs[0].choices[i]) {
				t.Fatalf("rank %d choice %v, rank 0 %v", r, logs[r].choices[i], logs[0].choices[i])
			}
			if !slices.Equal(logs[r].q[i], logs[0].q[i]) {
				t.Fatalf("rank %d: PowerSGD Q differs from rank 0's after switch %d", r, i)
			}
		}
	}
	for _, a := range logs[0].applied {
		if a%10 != 1 {
			t.Errorf("switch at step %d, want a boundary + 1", a)
		}
	}
	t.Logf("switches at %v: %v", logs[0].applied, p.Recipes(logs[0].choices[len(logs[0].choices)-1]))
}

// TestDesyncDetected forces one rank to apply another choice, or the same
// choice one step late: every rank's Agree returns the same *DesyncError
// naming that rank, at the first boundary where they differ, and nobody hangs.
func TestDesyncDetected(t *testing.T) {
	const world, bad = 4, 2
	p, err := NewPlan(testLayers(), WithSchedule(0, 10, 4, 1))
	if err != nil {
		t.Fatal(err)
	}
	tamper := []struct {
		name string
		fn   func(d *Decision)
	}{
		{"other choice", func(d *Decision) { d.Choice[0] = (d.Choice[0] + 1) % len(p.Candidates(0)) }},
		{"later step", func(d *Decision) { d.ApplyAt++ }},
	}
	for _, tt := range tamper {
		tm := tt.fn
		t.Run(tt.name, func(t *testing.T) {
			errs := runRanks(t, world, func(ctx context.Context, conn transport.Conn) error {
				c := NewController(p)
				rng := rand.New(rand.NewPCG(5, 5))
				for s := int64(0); s < 20; s++ {
					if c.Due(s) {
						var d *Decision
						if conn.Rank() == 0 {
							d = c.Decide(s)
						}
						d, err := Broadcast(ctx, conn, 1, p, d)
						if err != nil {
							return err
						}
						if conn.Rank() == bad {
							tm(d) // a bug on this rank: re-encoded, so the checksum is fine
						}
						if err := c.Schedule(d); err != nil {
							return err
						}
					}
					if _, err := c.Advance(s); err != nil {
						return err
					}
					if err := Agree(ctx, conn, 2, s, c.Signature()); err != nil {
						return err
					}
					if conn.Rank() == 0 && c.Collecting(s) {
						observeAll(c, rng)
					}
				}
				return nil
			})
			for r, err := range errs {
				var de *DesyncError
				if !errors.As(err, &de) || !errors.Is(err, ErrDesync) {
					t.Fatalf("rank %d: err = %v, want *DesyncError", r, err)
				}
				if !slices.Equal(de.Ranks, []int{bad}) || de.Step != 10 {
					t.Fatalf("rank %d: desync at step %d ranks %v, want step 10 ranks [%d]", r, de.Step, de.Ranks, bad)
				}
				if r == 0 {
					t.Logf("error: %v", err)
				}
			}
		})
	}
}

// CheckSignatures reports exactly the differing ranks, and a DesyncError
// built by hand without ranks formats without panicking.
func TestCheckSignatures(t *testing.T) {
	if err := CheckSignatures(3, []uint64{7, 7, 7}); err != nil {
		t.Fatalf("equal signatures: %v", err)
	}
	err := CheckSignatures(3, []uint64{7, 8, 7, 9})
	var de *DesyncError
	if !errors.As(err, &de) || !slices.Equal(de.Ranks, []int{1, 3}) || de.Step != 3 {
		t.Fatalf("err = %v, want ranks [1 3] at step 3", err)
	}
	if msg := (&DesyncError{Step: 5}).Error(); msg == "" {
		t.Fatal("empty message")
	}
}

// TestDelayBelowAdjust: a schedule whose decisions would apply at or after
// the next decision is refused when the plan is made (with adjust 1 and
// delay 1, the second decision used to arrive while the first was pending
// and every run failed at step 2).
func TestDelayBelowAdjust(t *testing.T) {
	for _, s := range [][2]int64{{1, 1}, {2, 2}, {3, 5}} {
		if _, err := NewPlan(testLayers(), WithSchedule(0, s[0], 1, s[1])); err == nil || !strings.Contains(err.Error(), "delay") {
			t.Errorf("adjust %d, delay %d: %v; want an error naming the delay", s[0], s[1], err)
		}
	}
	if _, err := NewPlan(testLayers(), WithSchedule(0, 2, 1, 1)); err != nil {
		t.Errorf("adjust 2, delay 1: %v", err)
	}
}
