package worker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"sync"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/binding"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/lgreco"
)

// lgState is the Worker's L-GreCo state (Config.LGreCo).
type lgState struct {
	plan     *lgreco.Plan
	ctrl     *lgreco.Controller
	settings string // the signature's L-GreCo part

	mu sync.Mutex // serializes Controller.Observe from the bucket goroutines

	// Set by the boundary of the coming step (lgBoundary), read by the
	// step: whether rank 0 observes it, the layers switched at its start
	// and the decision made at its start.
	collecting bool
	switched   []int
	decision   *lgreco.Decision

	// tamper, if set (tests only), alters the received decision before
	// Schedule: a way to force a desynchronised rank.
	tamper func(*lgreco.Decision)
}

// newLGState builds the plan of L-GreCo over the registered layers: one
// lgreco.LayerOf per layer with its resolved recipe (a scheduled layer's
// last stage) as the default (layers whose codec has no levels to choose,
// such as none, fp16 or sign, are not tuned). Rank 0 observes every step
// from L-GreCo's start if some layer is lgreco.Plan.Replayable: a top-k,
// random-k, QSGD or PowerSGD layer under EF14 (the observer passes its
// residual) then has its errors measured by replaying error feedback for
// every candidate, unless lgreco.WithOneShot is given; that costs rank 0 one
// EF14 step per candidate per step (about 9 ms for a 512×784 layer). The
// plan gets lgreco.WithRanks(world size) before the caller's options, and
// its seed is Config.Seed, so that before the first adjustment every layer
// is seeded exactly as without L-GreCo.
func (w *Worker) newLGState() (*lgState, error) {
	layers := make([]lgreco.Layer, len(w.layers))
	for i, s := range w.layers {
		r := s.Codec
		if n := len(s.Stages); n > 0 {
			r = s.Stages[n-1].Codec // the codec after the schedule
		}
		layers[i] = lgreco.LayerOf(s.Name, s.Shape, r)
	}
	// The world size first, so that the caller's options can override it.
	opts := append([]lgreco.Option{lgreco.WithRanks(w.conn.Size())}, w.cfg.LGreCoOptions...)
	opts = append(opts, lgreco.WithSeed(w.cfg.Seed))
	if f := w.cfg.LGreCoCost; f != nil {
		cost, err := f(w.conn.Size(), layers)
		if err != nil {
			return nil, fmt.Errorf("cost function: %w", err)
		}
		opts = append(opts, lgreco.WithCost(cost))
	}
	if w.cfg.LGreCoLinkAware {
		m := w.cfg.CostModel
		if m == (allreduce.Model{}) {
			m = allreduce.DefaultModel()
		}
		opts = append(opts, lgreco.WithCost(lgreco.ModelCost(m, w.conn.Size(), layers)))
	}
	plan, err := lgreco.NewPlan(layers, opts...)
	if err != nil {
		return nil, err
	}
	c := plan.Config()
	// The plan hash covers layers, candidates, alpha and buckets; the
	// schedule, the error method and every candidate's cost (a link-aware
	// objective's values included) must agree as well.
	h := fnv.New64a()
	var b [8]byte
	for l := 0; l < plan.Layers(); l++ {
		for k := range plan.Candidates(l) {
			binary.LittleEndian.PutUint64(b[:], math.Float64bits(plan.Cost(l, k)))
			h.Write(b[:])
		}
	}
	g := &lgState{plan: plan, ctrl: lgreco.NewController(plan)}
	g.settings = fmt.Sprintf("lgreco plan=%016x start=%d adjust=%d acc=%d delay=%d alpha=%g buckets=%d method=%v iters=%d linkaware=%t costs=%016x",
		plan.Hash(), c.Start, c.Adjust, c.AccIter, c.Delay, c.Alpha, c.Buckets, c.ErrorMethod, c.PowerIters, c.Cost != nil, h.Sum64())
	return g, nil
}

// checkTuned verifies that every tuned layer has a bucket of its own (the
// grids never leave a codec's aggregation, and only element-wise codecs are
// fused, which have no levels; this guards that invariant).
func (w *Worker) checkTuned() error {
	for l := range w.layers {
		if w.lg.plan.Tuned(l) && w.buckets[w.layerBucket[l]].Fused() {
			return fmt.Errorf("worker: L-GreCo: layer %q is tuned but fused into a bucket", w.layers[l].Name)
		}
	}
	return nil
}

// lgBoundary runs L-GreCo's step boundary before step t (docs/algorithms.md §4.2, and
// lgreco.Controller): at an adjustment step rank 0 decides, every rank
// receives the decision (lgreco.Broadcast) and schedules it; every rank
// advances to t, switching the layers whose decision applies at t; at an
// adjustment step the ranks then compare their configurations
// (lgreco.Agree), so that a rank about to run another configuration is
// caught before any collective depends on it. Each exchange is bounded by
// Config.Timeout. A rank whose decision fails to arrive or to schedule still
// takes part in the comparison, so every rank fails at once with an error
// wrapping lgreco.ErrDesync rather than waiting for a timeout. The changed
// layers are rebuilt (binding.Layer.SetCodec) with the active recipe and the
// controller's layer seed, keeping their error-feedback state.
func (w *Worker) lgBoundary(ctx context.Context, t int64) error {
	g := w.lg
	c := g.ctrl
	g.switched, g.decision, g.collecting = nil, nil, false
	due := c.Due(t)
	var local error
	var id uint32
	if due {
		id = w.nextID
		w.nextID += 2
		var d *lgreco.Decision
		if w.conn.Rank() == 0 {
			t0 := time.Now()
			d = c.Decide(t)
			w.cfg.Logger.DebugContext(ctx, "worker: L-GreCo decision", "step", t, "version", d.Version, "apply", d.ApplyAt,
				"kept", d.Kept, "choice", d.Choice, "cost", d.Cost, "default", d.DefaultCost, "err", d.Err, "budget", d.Budget, "took", time.Since(t0))
		}
		got, err := bounded(ctx, w.cfg.Timeout, func(ctx context.Context) (*lgreco.Decision, error) {
			return lgreco.Broadcast(ctx, w.conn, Tag(id, 0), g.plan, d)
		})
		if err == nil && g.tamper != nil {
			g.tamper(got)
		}
		if err == nil {
			err = c.Schedule(got)
		}
		if err != nil {
			local = fmt.Errorf("worker: L-GreCo decision of step %d: %w", t, err)
		} else {
			g.decision = got
		}
	}
	changed, err := c.Advance(t)
	if err != nil && local == nil {
		local = fmt.Errorf("worker: L-GreCo: %w", err)
	}
	if due {
		_, err := bounded(ctx, w.cfg.Timeout, func(ctx context.Context) (struct{}, error) {
			return struct{}{}, lgreco.Agree(ctx, w.conn, Tag(id+1, 0), t, c.Signature())
		})
		if err != nil {
			err = fmt.Errorf("worker: L-GreCo configurations at step %d: %w", t, err)
			if local != nil {
				return errors.Join(local, err)
			}
			return err
		}
	}
	if local != nil {
		return local
	}
	for _, l := range changed {
		if err := w.switchLayer(l, c.Recipe(l), c.LayerSeed(l), "L-GreCo"); err != nil {
			return err
		}
	}
	g.switched = changed
	g.collecting = w.conn.Rank() == 0 && c.Collecting(t)
	if len(changed) > 0 {
		w.cfg.Logger.DebugContext(ctx, "worker: L-GreCo switched", "rank", w.conn.Rank(), "step", t, "layers", changed)
	}
	return nil
}

// switchLayer rebuilds layer l's collective for recipe r with the shared
// seed, keeping its error-feedback state (binding.Layer.SetCodec): L-GreCo's
// switches and codec schedules (WithCodecSchedule). by names the caller in
// errors.
func (w *Worker) switchLayer(l int, r compressors.Recipe, seed uint64, by string) error {
	s := w.layers[l]
	b := w.buckets[w.layerBucket[l]]
	lc, ok := b.coll.(*layerColl)
	if !ok || b.Fused() {
		return fmt.Errorf("worker: %s: layer %q has no switchable collective", by, s.Name)
	}
	if err := lc.l.SetCodec(r, seed); err != nil {
		return fmt.Errorf("worker: %s: layer %q to %s: %w", by, s.Name, r, err)
	}
	s.Codec, s.codec = r, r.String()
	return nil
}

// scheduleBoundary switches the layers whose codec schedule
// (WithCodecSchedule) has a stage from step t, on every rank alike (the
// schedules agreed at Start).
func (w *Worker) scheduleBoundary(ctx context.Context, t int64) error {
	for l, s := range w.layers {
		r, ok := s.SwitchAt(t)
		if !ok {
			continue
		}
		if err := w.switchLayer(l, r, w.cfg.Seed, "codec schedule"); err != nil {
			return err
		}
		w.cfg.Logger.DebugContext(ctx, "worker: codec schedule switched", "rank", w.conn.Rank(), "step", t, "layer", s.Name, "codec", s.codec)
	}
	return nil
}

// checkSchedules refuses L-GreCo tuning a layer whose codec schedule has a
// stage at or after L-GreCo's start (see WithCodecSchedule).
func (w *Worker) checkSchedules() error {
	start := w.lg.plan.Config().Start
	for l, s := range w.layers {
		if n := len(s.Stages); n > 0 && w.lg.plan.Tuned(l) && s.Stages[n-1].From > start {
			return fmt.Errorf("worker: L-GreCo: layer %q's codec schedule switches at step %d, after L-GreCo's start %d (lgreco.WithSchedule's start must be at least the schedule's last step)",
				s.Name, s.Stages[n-1].From, start)
		}
	}
	return nil
}

// observer returns the hook that feeds layer l's gradient and error-feedback
// residual of a collecting step to the controller (rank 0 only), as
// binding.Layer.Observation gives them.
func (g *lgState) observer(l int) func(*binding.Layer, []float32) {
	return func(al *binding.Layer, data []float32) {
		grad, e := al.Observation(data)
		g.mu.Lock()
		g.ctrl.Observe(l, grad, e)
		g.mu.Unlock()
	}
}

// bounded runs f under ctx limited to timeout (if > 0); when the timeout,
// not ctx, ended it, the error also wraps ErrTimeout.
func bounded[T any](ctx context.Context, timeout time.Duration, f func(context.Context) (T, error)) (T, error) {
	if timeout <= 0 {
		return f(ctx)
	}
	c, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	v, err := f(c)
	if err != nil && c.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		err = fmt.Errorf("%w after %v: %w", ErrTimeout, timeout, err)
	}
	return v, err
}

// Recipes returns the compressor recipe every layer uses now, in
// registration order: the registered one, or L-GreCo's active choice.
func (w *Worker) Recipes() []string {
	out := make([]string, len(w.layers))
	for i, s := range w.layers {
		out[i] = s.codec
	}
	return out
}
