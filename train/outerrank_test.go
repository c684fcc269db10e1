package train

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/lgreco"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/worker"
	"github.com/slimgrad/slimgrad/workload"
)

// TestRunRankOuterMatchesRunOuter: N RunRankOuter ranks over real workers
// (transport/mem, one connection per fragment) end with RunOuter's global
// model over the simulator bit for bit, step losses and bytes included, for
// DiLoCo, Streaming DiLoCo (two fragments, delay, mix) and a SparseLoCo
// recipe (top-k + 2-bit k-means values, EF14, identity outer step), and
// for a streaming SparseLoCo whose fragments each run L-GreCo (simulator:
// SimConfig.LGreCo per fragment exchanger; real: worker.WithLGreCo on each
// fragment's worker), whose levels change during the run in every fragment.
func TestRunRankOuterMatchesRunOuter(t *testing.T) {
	ctx := context.Background()
	task, err := LoadTask("logistic", "", 4)
	if err != nil {
		t.Fatal(err)
	}
	n := 3
	cfg := Config{Workers: n, Batch: 8, Steps: 23, Seed: 4, Split: workload.NonIID, EvalEvery: 10}
	inner := newSGD(0.1)
	topo := sim.Homogeneous(n, sim.Gbps, time.Microsecond)
	// L-GreCo needs several compressible layers of different sizes per
	// fragment: a deeper model on the same data, biases compressed too.
	deep := task
	if deep.Model, err = workload.NewMLP([]int{workload.DefaultSynthetic().Dim, 16, 8, 2}, workload.CrossEntropy, 4); err != nil {
		t.Fatal(err)
	}
	sched := lgreco.WithSchedule(0, 3, 2, 1) // counted in syncs of the fragment
	for _, tc := range []struct {
		name string
		plan Plan
		o    Outer
		lg   bool
	}{
		{"diloco", Plan{}, Outer{H: 5, Optim: nesterov(0.7, 0.9)}, false},
		{"streaming", Plan{}, Outer{H: 6, Optim: nesterov(0.7, 0.9), Fragments: 2, Delay: 2, Mix: 0.5}, false},
		{"sparseloco", Plan{Compress: "topk:0.1+kmeans:4", EF: "ef14", Seed: 4}, Outer{H: 4, Optim: newSGD(1)}, false},
		{"streaming-sparseloco-lgreco", Plan{Compress: "topk:0.25", EF: "ef14", Seed: 4, CompressVectors: true}, Outer{H: 2, Optim: newSGD(1), Fragments: 2, Delay: 1}, true},
	} {
		task := task
		scfg := SimConfig{Topology: topo}
		wopts := WorkerOptions(cfg.Seed, nil)
		if tc.lg {
			task = deep
			scfg.LGreCo, scfg.LGreCoOptions = true, []lgreco.Option{sched}
			wopts = append(wopts, worker.WithLGreCo(sched))
		}
		units := Units(task.Model, false)
		newSim := func(_ context.Context, us []Layer) (Exchanger, error) {
			return NewSim(ctx, n, us, tc.plan, scfg)
		}
		sx, err := newSim(ctx, units)
		if err != nil {
			t.Fatal(err)
		}
		want, err := RunOuter(ctx, cfg, task, sx, newSim, inner, tc.o, nil)
		if err != nil {
			t.Fatalf("%s: RunOuter: %v", tc.name, err)
		}
		nf := tc.o.fragments()
		wk := make([][]*worker.Worker, n) // [rank][fragment]
		for range nf {
			for r, c := range memConns(t, n) {
				w, err := worker.New(ctx, c, wopts...)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				wk[r] = append(wk[r], w)
			}
		}
		results := make([]*Result, n)
		errs := make(chan error, n)
		for r := range n {
			go func() {
				var err error
				results[r], err = RunRankOuter(ctx, RankConfig{Config: cfg, Rank: r, World: n}, task, wk[r], tc.plan, "", inner, tc.o, nil)
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
		}
		ref := want.Model.Flat()
		for r := range n {
			for j, v := range results[r].Model.Flat() {
				if math.Float32bits(v) != math.Float32bits(ref[j]) {
					t.Fatalf("%s rank %d: θ_g[%d] = %g, RunOuter %g", tc.name, r, j, v, ref[j])
				}
			}
			if results[r].Final != want.Final {
				t.Errorf("%s rank %d: final %+v, RunOuter %+v", tc.name, r, results[r].Final, want.Final)
			}
		}
		var syncs int
		for s := range cfg.Steps {
			w := want.Records[s]
			var mean float64
			var wire int64
			for r := range n {
				got := results[r].Records[s]
				mean += got.Loss
				wire += got.WireBytes / int64(n) // without Combine: own bytes × World
				if got.Synced != w.Synced || got.DenseBytes != w.DenseBytes || got.World != n {
					t.Fatalf("%s rank %d step %d: synced %d dense %d world %d, RunOuter %d %d %d", tc.name, r, s, got.Synced, got.DenseBytes, got.World, w.Synced, w.DenseBytes, w.World)
				}
			}
			if mean /= float64(n); math.Abs(mean-w.Loss) > 1e-12 {
				t.Fatalf("%s step %d: mean loss over ranks %g, RunOuter %g", tc.name, s, mean, w.Loss)
			}
			if wire != w.WireBytes {
				t.Errorf("%s step %d: wire %d, RunOuter %d", tc.name, s, wire, w.WireBytes)
			}
			syncs += w.Synced
		}
		if min := cfg.Steps / tc.o.H * nf; syncs < min {
			t.Errorf("%s: %d fragment syncs, want at least %d", tc.name, syncs, min)
		}
		if tc.lg {
			// Every fragment's exchanger ran its own L-GreCo: each
			// fragment's levels changed at some sync.
			for p, us := range tc.o.frags(len(units)) {
				var first []string
				changed := false
				for _, rec := range want.Records {
					if rec.Recipes == nil || rec.Recipes[us[0]] == "" {
						continue
					}
					cur := make([]string, len(us))
					for i, u := range us {
						cur[i] = rec.Recipes[u]
					}
					if first == nil {
						first = cur
					} else if !slices.Equal(first, cur) {
						changed = true
					}
				}
				if !changed {
					t.Errorf("%s: fragment %d kept its levels %v all run", tc.name, p, first)
				}
			}
		}
	}
}

// The ranks' shares of the dense baseline sum to the job's exactly.
func TestDenseShare(t *testing.T) {
	for world := 1; world <= 9; world++ {
		for _, size := range []int{1, 7, 100, 7850} {
			var s int64
			for r := range world {
				s += denseShare(world, r, size)
			}
			if want := DenseRingBytes(world, size); s != want {
				t.Errorf("world %d size %d: shares sum to %d, want %d", world, size, s, want)
			}
		}
	}
}

func TestRunRankOuterRejects(t *testing.T) {
	ctx := context.Background()
	task := quadTask(t)
	conns := memConns(t, 2)
	w, err := worker.New(ctx, conns[0], WorkerOptions(1, nil)...)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cfg := RankConfig{Config: Config{Workers: 2, Batch: 2, Steps: 4, Seed: 1}, Rank: 0, World: 2}
	o := Outer{H: 2, Optim: newSGD(1), Fragments: 2}
	if _, err := RunRankOuter(ctx, cfg, task, []*worker.Worker{w}, Plan{}, "", newSGD(0.5), o, nil); err == nil {
		t.Error("one worker for two fragments accepted")
	}
	cfg.Rank = 1
	o.Fragments = 1
	if _, err := RunRankOuter(ctx, cfg, task, []*worker.Worker{w}, Plan{}, "", newSGD(0.5), o, nil); err == nil {
		t.Error("a rank-0 worker accepted as rank 1")
	}
}

// nanAfter is an inner optimizer that writes NaN into its parameters from
// its k-th step on (a replica that diverges).
type nanAfter struct {
	optim.Optimizer
	k int
}

func (o *nanAfter) Step(params, agg []float32) error {
	if err := o.Optimizer.Step(params, agg); err != nil {
		return err
	}
	if o.Steps() >= o.k {
		for i := range params {
			params[i] = float32(math.NaN())
		}
	}
	return nil
}

// TestRunRankOuterDivergenceStopsAll: when one rank's loss turns NaN it
// stops with ErrDiverged and the other ranks stop at once with the workers'
// *worker.NonFiniteError naming it (not at a timeout), with or without a
// Combine that gathers the figures at rank 0 every step, whether the next
// sync is due right after the step of the divergence or steps later.
func TestRunRankOuterDivergenceStopsAll(t *testing.T) {
	task, err := LoadTask("logistic", "", 4)
	if err != nil {
		t.Fatal(err)
	}
	const n, bad = 3, 1
	cfg := Config{Workers: n, Batch: 8, Steps: 23, Seed: 4}
	// Syncs after steps 3, 11, 19 (fragment 1) and 7, 15 (fragment 0):
	// rank bad's loss is NaN from step k on; the next sync is due after
	// that very step (k 7) or one or two steps later (k 5, 9).
	o := Outer{H: 8, Optim: nesterov(0.7, 0.9), Fragments: 2, Delay: 1}
	for _, tc := range []struct {
		k       int // rank bad's parameters are NaN after its k-th inner step
		combine bool
	}{{7, false}, {5, false}, {5, true}, {9, true}} {
		// A timeout far beyond the test's: a rank that waited for it would
		// fail the deadline below.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		wk := make([][]*worker.Worker, n)
		for range o.Fragments {
			for r, c := range memConns(t, n) {
				w, err := worker.New(ctx, c, append(WorkerOptions(cfg.Seed, nil), worker.WithTimeout(time.Minute))...)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				wk[r] = append(wk[r], w)
			}
		}
		figs := memConns(t, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := time.Now()
		for r := range n {
			inner := newSGD(0.1)
			if r == bad {
				inner.New = func(m int) (optim.Optimizer, error) {
					opt, err := optim.NewSGD(m, 0.1, 0)
					return &nanAfter{opt, tc.k}, err
				}
			}
			rc := RankConfig{Config: cfg, Rank: r, World: n}
			if tc.combine {
				conn := figs[r]
				rc.Combine = func(ctx context.Context, step int, loss float64, st Stats) (float64, Stats, error) {
					if r != 0 {
						return loss, st, conn.Send(ctx, 0, uint64(step), binary.LittleEndian.AppendUint64(nil, math.Float64bits(loss)))
					}
					for p := 1; p < n; p++ {
						b, err := conn.Recv(ctx, p, uint64(step))
						if err != nil {
							return 0, st, err
						}
						loss += math.Float64frombits(binary.LittleEndian.Uint64(b))
					}
					return loss / n, st, nil
				}
			}
			wg.Go(func() {
				_, errs[r] = RunRankOuter(ctx, rc, task, wk[r], Plan{}, "", inner, o, nil)
			})
		}
		wg.Wait()
		cancel()
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("k %d combine %v: the ranks stopped after %v", tc.k, tc.combine, d)
		}
		for r, err := range errs {
			var nf *worker.NonFiniteError
			switch {
			case r == bad && !errors.Is(err, ErrDiverged):
				t.Errorf("k %d combine %v: diverged rank: %v, want ErrDiverged (and the sync's NonFiniteError)", tc.k, tc.combine, err)
			case !errors.As(err, &nf) || !slices.Contains(nf.Ranks, bad):
				t.Errorf("k %d combine %v: rank %d: %v, want a NonFiniteError naming rank %d", tc.k, tc.combine, r, err, bad)
			}
		}
	}
}
