package train

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/workload"
)

// quad is a two-tensor model with the loss ½‖θ − c‖² per sample, c_j =
// target + j mod 3: its gradient on a batch is θ_j − mean(target) − j mod 3,
// so with small integer targets, a batch of 2 and power-of-two learning
// rates every float32 operation of a few steps is exact.
type quad struct{ flat []float32 }

func newQuad() *quad {
	q := &quad{flat: make([]float32, 9)}
	for j := range q.flat {
		q.flat[j] = float32(j%4) - 1
	}
	return q
}

func (q *quad) Params() []workload.Param {
	return []workload.Param{{Name: "w", Shape: []int{2, 3}, Data: q.flat[:6]}, {Name: "b", Shape: []int{3}, Data: q.flat[6:]}}
}
func (q *quad) Flat() []float32 { return q.flat }
func (q *quad) NewWorkspace(int) workload.Workspace {
	return &quadWS{q: q, g: make([]float32, len(q.flat))}
}
func (q *quad) Evaluate(ds *workload.Dataset, idx []int) (workload.Metrics, error) {
	var s float64
	for _, v := range q.flat {
		s += float64(v) * float64(v)
	}
	return workload.Metrics{Loss: s}, nil
}
func (q *quad) Clone() workload.Model {
	return &quad{flat: append([]float32(nil), q.flat...)}
}

type quadWS struct {
	q *quad
	g []float32
}

// target is the mean target of the batch, the reference's too.
func target(ds *workload.Dataset, idx []int) float32 {
	var t float32
	for _, i := range idx {
		t += ds.Targets[i]
	}
	return t / float32(len(idx))
}

func (w *quadWS) Gradient(ds *workload.Dataset, idx []int) (float64, error) {
	t := target(ds, idx)
	var loss float64
	for j, v := range w.q.flat {
		w.g[j] = v - t - float32(j%3)
		loss += 0.5 * float64(w.g[j]) * float64(w.g[j])
	}
	return loss, nil
}
func (w *quadWS) Grads() [][]float32   { return [][]float32{w.g[:6], w.g[6:]} }
func (w *quadWS) FlatGrads() []float32 { return w.g }

func quadTask(t *testing.T) Task {
	t.Helper()
	const n = 64
	targets := make([]float32, n)
	for i := range targets {
		targets[i] = float32(i % 4)
	}
	ds, err := workload.NewDataset("quad", n, 1, 0, make([]float32, n), nil, targets, nil)
	if err != nil {
		t.Fatal(err)
	}
	return Task{Name: "quad", Model: newQuad(), Train: ds, Test: ds}
}

func nesterov(lr, m float64) OptimSpec {
	return OptimSpec{Name: "nesterov", New: func(n int) (optim.Optimizer, error) { return optim.NewMomentum(n, lr, m, 0, true) }}
}

func runOuterLocal(t *testing.T, cfg Config, task Task, plan Plan, inner OptimSpec, o Outer) *Result {
	t.Helper()
	units := Units(task.Model, inner.Flat)
	ex, err := NewLocal(cfg.Workers, units, plan)
	if err != nil {
		t.Fatal(err)
	}
	newEx := func(_ context.Context, us []Layer) (Exchanger, error) { return NewLocal(cfg.Workers, us, plan) }
	res, err := RunOuter(context.Background(), cfg, task, ex, newEx, inner, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// H = 1 with the identity outer optimizer (SGD at lr 1) is per-step data
// parallelism on averaged parameter updates: bit for bit where float32
// arithmetic is exact (quad), within rounding elsewhere (logistic), since
// (θ − (θ − lr·g)) is lr·g only up to the rounding of θ − lr·g.
func TestOuterH1IdentityEqualsDataParallel(t *testing.T) {
	ctx := context.Background()
	cfg := Config{Workers: 4, Batch: 2, Steps: 5, Seed: 7, CheckReplicas: true}
	task := quadTask(t)
	ex, _ := NewLocal(cfg.Workers, LayersOf(task.Model), Plan{})
	dp, err := Run(ctx, cfg, task, ex, newSGD(0.25), nil)
	if err != nil {
		t.Fatal(err)
	}
	out := runOuterLocal(t, cfg, task, Plan{}, newSGD(0.25), Outer{H: 1, Optim: newSGD(1)})
	for j, want := range dp.Model.Flat() {
		if got := out.Model.Flat()[j]; math.Float32bits(got) != math.Float32bits(want) {
			t.Errorf("quad param %d: outer %g, data parallel %g", j, got, want)
		}
	}
	if task.Model.Flat()[0] != -1 {
		t.Error("RunOuter modified task.Model")
	}

	task, err = LoadTask("logistic", "", 3)
	if err != nil {
		t.Fatal(err)
	}
	cfg = Config{Workers: 4, Batch: 16, Steps: 40, Seed: 3, CheckReplicas: true}
	ex, _ = NewLocal(cfg.Workers, LayersOf(task.Model), Plan{})
	if dp, err = Run(ctx, cfg, task, ex, newSGD(0.1), nil); err != nil {
		t.Fatal(err)
	}
	out = runOuterLocal(t, cfg, task, Plan{}, newSGD(0.1), Outer{H: 1, Optim: newSGD(1)})
	var diff, norm float64
	for j, want := range dp.Model.Flat() {
		d := float64(out.Model.Flat()[j] - want)
		diff, norm = diff+d*d, norm+float64(want)*float64(want)
	}
	if rel := math.Sqrt(diff / norm); rel > 1e-5 {
		t.Errorf("logistic: relative distance to data parallel %g, want rounding only (< 1e-5)", rel)
	}
	if a, b := out.Final.Accuracy, dp.Final.Accuracy; math.Abs(a-b) > 0.01 {
		t.Errorf("logistic accuracy: outer %.4f, data parallel %.4f", a, b)
	}
}

// refOuter is an independent float32 reference of the outer loop with inner
// SGD (lr) on quad, the Local exchanger's dense mean (sum in rank order, then
// · 1/N) and the outer Nesterov momentum of PyTorch (DiLoCo's), fragment
// p = unit mod F synced after the steps where (t+1−off_p) mod H == 0, off_p =
// p·H/F (H for p = 0), applied τ steps later with mix α, everything
// flushed at the last step.
func refOuter(task Task, cfg Config, lr float32, H, F, tau int, alpha, olr, om float32) []float32 {
	shards, _ := workload.Shard(task.Train, cfg.Workers, cfg.Split, cfg.Seed)
	n := cfg.Workers
	units := [][2]int{{0, 6}, {6, 9}}
	theta := make([][]float32, n)
	samplers := make([]*workload.Sampler, n)
	for w := range n {
		theta[w] = append([]float32(nil), task.Model.Flat()...)
		samplers[w] = workload.NewSampler(shards[w], cfg.Seed, w)
	}
	global := append([]float32(nil), task.Model.Flat()...)
	buf := make([]float32, 9)
	avg := make([]float32, 9)
	firstOuter := []bool{true, true}
	pending := []int{-1, -1}
	applyFrag := func(p int) {
		for u, r := range units {
			if u%F != p {
				continue
			}
			for j := r[0]; j < r[1]; j++ {
				d := avg[j]
				if firstOuter[u] {
					buf[j] = d
				} else {
					buf[j] = om*buf[j] + d
				}
				d += om * buf[j]
				global[j] -= olr * d
				for w := range n {
					if alpha == 1 {
						theta[w][j] = global[j]
					} else {
						theta[w][j] = alpha*global[j] + (1-alpha)*theta[w][j]
					}
				}
			}
			firstOuter[u] = false
		}
		pending[p] = -1
	}
	for step := range cfg.Steps {
		for w := range n {
			tg := target(task.Train, samplers[w].Next(cfg.Batch))
			for j := range theta[w] {
				theta[w][j] -= lr * (theta[w][j] - tg - float32(j%3))
			}
		}
		last := step == cfg.Steps-1
		for p := range F {
			off := p * H / F
			if off == 0 {
				off = H
			}
			due := step+1 >= off && (step+1-off)%H == 0
			if !due && !last {
				continue
			}
			if pending[p] >= 0 {
				applyFrag(p)
			}
			for u, r := range units {
				if u%F != p {
					continue
				}
				for j := r[0]; j < r[1]; j++ {
					var s float32
					for w := range n {
						s += global[j] - theta[w][j]
					}
					avg[j] = s * (1 / float32(n))
				}
			}
			pending[p] = step + tau
			if last {
				pending[p] = step
			}
		}
		for p := range F {
			if pending[p] == step {
				applyFrag(p)
			}
		}
	}
	return global
}

// The outer loop, DiLoCo's Nesterov outer step and Streaming DiLoCo's
// staggered, delayed, mixed fragments equal the reference computation bit
// for bit; τ = 0 is the blocking (non-streamed) schedule.
func TestOuterMatchesReference(t *testing.T) {
	task := quadTask(t)
	for _, tc := range []struct {
		name          string
		H, F, tau     int
		alpha         float32
		steps         int
		olr, om, inlr float32
	}{
		{"diloco", 3, 1, 0, 1, 9, 0.7, 0.9, 0.125},
		{"diloco-flush", 4, 1, 0, 1, 10, 0.7, 0.9, 0.125},
		{"fragments-tau0", 4, 2, 0, 1, 12, 0.7, 0.9, 0.125},
		{"streaming", 4, 2, 2, 0.5, 13, 0.5, 0.8, 0.25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Workers: 3, Batch: 2, Steps: tc.steps, Seed: 5, CheckReplicas: true}
			o := Outer{H: tc.H, Fragments: tc.F, Delay: tc.tau, Mix: float64(tc.alpha), Optim: nesterov(float64(tc.olr), float64(tc.om))}
			got := runOuterLocal(t, cfg, task, Plan{}, newSGD(float64(tc.inlr)), o).Model.Flat()
			want := refOuter(task, cfg, tc.inlr, tc.H, tc.F, tc.tau, tc.alpha, tc.olr, tc.om)
			for j := range want {
				if math.Float32bits(got[j]) != math.Float32bits(want[j]) {
					t.Fatalf("param %d: %g, reference %g", j, got[j], want[j])
				}
			}
		})
	}
}

// Every window of H consecutive steps syncs every fragment exactly once, so
// every unit (parameter) exactly once per round; fragments are staggered.
func TestOuterSchedule(t *testing.T) {
	for H := 1; H <= 12; H++ {
		for F := 1; F <= 6; F++ {
			o := Outer{H: H, Fragments: F}
			units := 7
			for s := 0; s < 3*H; s++ {
				count := make([]int, units)
				for step := s; step < s+H; step++ {
					for p := range F {
						if o.Due(p, step) {
							for u := range units {
								if o.Fragment(u) == p {
									count[u]++
								}
							}
						}
					}
				}
				for u, c := range count {
					if c != 1 {
						t.Fatalf("H=%d F=%d window from step %d: unit %d synced %d times", H, F, s, u, c)
					}
				}
			}
			if F <= H {
				for p := 1; p < F; p++ {
					if o.Offset(p) == o.Offset(p-1) {
						t.Fatalf("H=%d F=%d: fragments %d and %d not staggered", H, F, p-1, p)
					}
				}
			}
		}
	}
}

func TestOuterRejects(t *testing.T) {
	task := quadTask(t)
	cfg := Config{Workers: 2, Batch: 2, Steps: 4, Seed: 1}
	ex, _ := NewLocal(2, LayersOf(task.Model), Plan{})
	for _, o := range []Outer{
		{H: 0, Optim: newSGD(1)},
		{H: 4, Delay: 4, Optim: newSGD(1)},
		{H: 4, Delay: -1, Optim: newSGD(1)},
		{H: 4, Fragments: 3, Optim: newSGD(1)}, // 2 units
		{H: 4, Mix: 1.5, Optim: newSGD(1)},
		{H: 4},
		{H: 4, Fragments: 2, Optim: newSGD(1)}, // no factory
	} {
		if _, err := RunOuter(context.Background(), cfg, task, ex, nil, newSGD(0.1), o, nil); !errors.Is(err, ErrOuter) {
			t.Errorf("%+v: %v, want ErrOuter", o, err)
		}
	}
}

// DiLoCo and a SparseLoCo-like recipe (top-k of the pseudo-gradient with
// 2-bit k-means values and EF14, outer SGD) converge on a small seeded
// problem, with replicas' global copies bit-identical after every step, and
// the bytes follow the schedule.
func TestOuterConverges(t *testing.T) {
	task, err := LoadTask("logistic", "", 3)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := task.Model.Evaluate(task.Test, nil)
	cfg := Config{Workers: 4, Batch: 16, Steps: 100, Seed: 3, Split: workload.NonIID, CheckReplicas: true}
	ex, _ := NewLocal(cfg.Workers, LayersOf(task.Model), Plan{})
	dp, err := Run(context.Background(), cfg, task, ex, newSGD(0.1), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		plan Plan
		o    Outer
	}{
		{"diloco", Plan{}, Outer{H: 5, Optim: nesterov(0.7, 0.9)}},
		{"sparseloco", Plan{Compress: "topk:0.05+kmeans:4", EF: "ef14"}, Outer{H: 5, Optim: newSGD(1)}},
	} {
		var syncs int
		var wire int64
		units := LayersOf(task.Model)
		ex, _ := NewLocal(cfg.Workers, units, tc.plan)
		res, err := RunOuter(context.Background(), cfg, task, ex, nil, newSGD(0.1), tc.o, func(r Record) {
			syncs += r.Synced
			if (r.Synced > 0) != (r.WireBytes > 0) {
				t.Errorf("%s step %d: %d syncs, %d wire bytes", tc.name, r.Step, r.Synced, r.WireBytes)
			}
			wire += r.WireBytes
		})
		if err != nil {
			t.Fatal(err)
		}
		if syncs != cfg.Steps/tc.o.H {
			t.Errorf("%s: %d syncs in %d steps with H=%d", tc.name, syncs, cfg.Steps, tc.o.H)
		}
		if got, want := res.Last.TotalDenseBytes, int64(cfg.Steps)*dp.Last.TotalDenseBytes/int64(cfg.Steps); got != want {
			t.Errorf("%s: dense baseline %d bytes, want %d (per-step data parallelism)", tc.name, got, want)
		}
		if res.Last.Saved() < float64(tc.o.H) {
			t.Errorf("%s: saved %.1f×, want at least H = %d", tc.name, res.Last.Saved(), tc.o.H)
		}
		if res.Final.Loss > 0.7*before.Loss || res.Final.Accuracy < dp.Final.Accuracy-0.03 {
			t.Errorf("%s: loss %g → %g, accuracy %.3f (data parallel %.3f)", tc.name, before.Loss, res.Final.Loss, res.Final.Accuracy, dp.Final.Accuracy)
		}
		t.Logf("%s: acc %.3f (dp %.3f), saved %.1f×", tc.name, res.Final.Accuracy, dp.Final.Accuracy, res.Last.Saved())
	}
}

// The simulator prices local steps at the gradient time and syncs at their
// collectives; a delay overlaps them with the next inner steps.
func TestOuterSimTime(t *testing.T) {
	task := quadTask(t)
	topo := sim.Homogeneous(3, 1e9, 5*time.Millisecond)
	cfg := Config{Workers: 3, Batch: 2, Steps: 8, Seed: 1, CheckReplicas: true}
	units := LayersOf(task.Model)
	scfg := SimConfig{Topology: topo, GradFLOP: 2e7, FLOPS: 1e9} // 20 ms per step
	newEx := func(ctx context.Context, us []Layer) (Exchanger, error) {
		return NewSim(ctx, cfg.Workers, us, Plan{}, scfg)
	}
	total := map[int]float64{}
	for _, tau := range []int{0, 2} {
		ex, err := newEx(context.Background(), units)
		if err != nil {
			t.Fatal(err)
		}
		grad := ex.(*Sim).GradTime()
		res, err := RunOuter(context.Background(), cfg, task, ex, newEx, newSGD(0.25), Outer{H: 4, Fragments: 2, Delay: tau, Optim: newSGD(1)}, func(r Record) {
			if r.Synced == 0 && r.StepTime != grad {
				t.Errorf("τ=%d step %d: local step takes %v, want the gradient time %v", tau, r.Step, r.StepTime, grad)
			}
			if r.BaselineTime <= grad {
				t.Errorf("τ=%d step %d: baseline %v", tau, r.Step, r.BaselineTime)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		total[tau] = res.Last.TotalStepTime.Seconds()
		if min := float64(cfg.Steps) * grad.Seconds(); total[tau] < min {
			t.Errorf("τ=%d: %v, less than the compute alone", tau, res.Last.TotalStepTime)
		}
	}
	if !(total[2] < total[0]) {
		t.Errorf("simulated time with τ=2 %gs, with τ=0 %gs: the delay should hide communication", total[2], total[0])
	}
}
