package train

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/binding"
	"github.com/slimgrad/slimgrad/engine"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/worker"
)

// TestSimPlansAsWorker checks that the simulator and the real worker plan
// every bucket alike: for every codec (with an error feedback it takes, and
// a DGC warm-up as a codec schedule), every dense all-reduce and every world
// size from 1 to 16, a Sim and a Worker registered by RegisterUnits under
// WorkerOptions produce the same buckets, each with the same binding.Spec
// (codec, error feedback, algorithm, segments, shape) under the same policy
// (and so the same non-finite flag exchange), and the programs that
// those specs generate for every rank are the ones the drivers run.
func TestSimPlansAsWorker(t *testing.T) {
	units := []Layer{
		{Name: "fc1.w", Shape: []int{256, 784}, Size: 256 * 784}, // pipelined when dense
		{Name: "fc1.b", Shape: []int{256}, Size: 256},
		{Name: "fc2.w", Shape: []int{10, 256}, Size: 10 * 256},
		{Name: "fc2.b", Shape: []int{10}, Size: 10},
	}
	plans := []Plan{
		{Compress: "none"},
		{Compress: "fp16"},
		{Compress: "bf16", EF: "ef14"},
		{Compress: "topk:0.01", EF: "ef14"},
		{Compress: "topk:0.05+kmeans:16+zstd", EF: "econtrol:0.1"},
		{Compress: "dgc:0.01", EF: "dgc:0.9", Warmup: []float64{0.25, 0.0625}, WarmupSteps: 20},
		{Compress: "randomk:0.05", EF: "ef21"},
		{Compress: "qsgd:8", EF: "ef14"},
		{Compress: "sign"},
		{Compress: "sign:64"},
		{Compress: "powersgd:2", EF: "ef14"},
		{Compress: "powersgd:4", CompressVectors: true},
		{Compress: "lossless"},
	}
	algs := []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgTree, allreduce.AlgHalvingDoubling}
	topo := sim.Homogeneous(16, 10*sim.Gbps, 0)
	for _, plan := range plans {
		plan.Seed = 7
		for _, alg := range algs {
			for world := 1; world <= 16; world++ {
				name := fmt.Sprintf("%s+%s/%v/%d", plan.Compress, plan.EF, alg, world)
				s, err := NewSim(t.Context(), world, units, plan, SimConfig{Topology: topo, Dense: alg})
				if err != nil {
					t.Fatalf("%s: NewSim: %v", name, err)
				}
				got := s.Plan()
				want, pol := workerPlan(t, world, units, plan, alg)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("%s: the simulator plans\n%+v\nthe worker\n%+v", name, got, want)
				}
				if !reflect.DeepEqual(s.Policy(), pol) {
					t.Fatalf("%s: the simulator's policy\n%+v\nthe worker's\n%+v", name, s.Policy(), pol)
				}
				// The program of every rank's bucket is the one the spec
				// describes, on both drivers (the Sim's layers are built
				// from the plan; check a rank other than 0 too).
				for _, b := range got {
					u := b.Layers[0]
					for _, r := range []int{0, world - 1} {
						spec := b.Spec
						spec.Rank = r
						a, p, err := binding.SchemeFor(spec)
						if err != nil {
							t.Fatalf("%s: unit %s: %v", name, units[u].Name, err)
						}
						want, err := allreduce.Generate(a, p)
						if err != nil {
							t.Fatalf("%s: unit %s: %v", name, units[u].Name, err)
						}
						if prog := s.layers[r][u].Program(); prog.String() != want.String() {
							t.Fatalf("%s: unit %s rank %d runs\n%s\nits spec says\n%s", name, units[u].Name, r, prog, want)
						}
					}
				}
			}
		}
	}
}

// workerPlan is the plan of rank 0 of a real job of world workers
// registered as RegisterUnits registers a run's units, with alg for dense
// layers.
func workerPlan(t *testing.T, world int, units []Layer, plan Plan, alg allreduce.Algorithm) ([]engine.Bucket, engine.Policy) {
	t.Helper()
	g, err := mem.NewGroup(world)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	opts := append(WorkerOptions(plan.Seed, nil), worker.WithAlgorithm(alg.String()))
	w, err := worker.New(t.Context(), g.Conns()[0], opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := RegisterUnits(w, units, plan, ""); err != nil {
		t.Fatal(err)
	}
	bs, err := w.Plan()
	if err != nil {
		t.Fatal(err)
	}
	pol, err := w.Policy()
	if err != nil {
		t.Fatal(err)
	}
	return bs, pol
}
