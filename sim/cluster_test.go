package sim

import (
	"context"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/worker"
)

type testLayer struct {
	name       string
	rows, cols int
	codec, ef  string
}

var clusterLayers = []testLayer{
	{"fc1.weight", 48, 40, "topk:0.05", "ef14"},
	{"fc1.bias", 48, 1, "none", "none"},
	{"fc2.weight", 24, 48, "powersgd:2", "ef14"},
	{"fc2.bias", 24, 1, "fp16", "ef21"},
	{"head.weight", 10, 24, "sign", "none"},
	{"head.bias", 10, 1, "randomk:0.5", "ef14"},
}

func clusterSpecs(t testing.TB) []LayerSpec {
	specs := make([]LayerSpec, len(clusterLayers))
	for i, l := range clusterLayers {
		c, err := compressors.Parse(l.codec)
		if err != nil {
			t.Fatal(err)
		}
		e, err := errorfeedback.Parse(l.ef)
		if err != nil {
			t.Fatal(err)
		}
		specs[i] = LayerSpec{Name: l.name, Elems: l.rows * l.cols, Rows: l.rows, Cols: l.cols, Codec: c, EF: e, Algorithm: allreduce.AlgRing, Segments: 1}
	}
	return specs
}

func alloc(world int, specs []LayerSpec) [][][]float32 {
	v := make([][][]float32, world)
	for r := range v {
		v[r] = make([][]float32, len(specs))
		for l, s := range specs {
			v[r][l] = make([]float32, s.Elems)
		}
	}
	return v
}

// TestClusterMatchesWorker runs three training steps of a six-layer model
// with every scheme (dense, fp16, top-k, random-k, sign two-phase, PowerSGD)
// in the simulator (payload mode, heterogeneous topology) and with package
// worker over transport/mem, and checks that every rank's update is
// bit-identical.
func TestClusterMatchesWorker(t *testing.T) {
	const world, seed, steps = 5, 11, 3
	specs := clusterSpecs(t)
	topo, err := LoadTopology("testdata/topologies/mixed-100g-10g.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cl, err := NewCluster(ClusterConfig{Topology: topo, World: world, Layers: specs, Seed: seed, Options: Options{LatencyJitter: 0.3}})
	if err != nil {
		t.Fatal(err)
	}

	grp, err := mem.NewGroup(world)
	if err != nil {
		t.Fatal(err)
	}
	defer grp.Close()
	ctx := context.Background()
	cfg := worker.DefaultConfig()
	cfg.BucketBytes, cfg.Algorithm, cfg.Seed, cfg.SegmentBytes = 0, "ring", seed, 1<<30
	workers := make([]*worker.Worker, world)
	for r := range workers {
		w, err := worker.New(ctx, grp.Conn(r), worker.WithConfig(cfg))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range clusterLayers {
			shape := []int{l.rows, l.cols}
			if l.cols == 1 {
				shape = []int{l.rows}
			}
			if _, err := w.Register(l.name, shape, worker.WithCodec(l.codec), worker.WithErrorFeedback(l.ef)); err != nil {
				t.Fatal(err)
			}
		}
		workers[r] = w
	}

	rng := rand.New(rand.NewPCG(seed, 1))
	in, out := alloc(world, specs), alloc(world, specs)
	for step := 0; step < steps; step++ {
		for r := range in {
			for l := range in[r] {
				for i := range in[r][l] {
					in[r][l][i] = float32(rng.NormFloat64())
				}
			}
		}
		res, err := cl.Step(ctx, in, out)
		if err != nil {
			t.Fatal(err)
		}
		// The same gradients through real workers.
		real := alloc(world, specs)
		var wg sync.WaitGroup
		errs := make([]error, world)
		for r := range workers {
			for l := range in[r] {
				copy(real[r][l], in[r][l])
			}
			wg.Add(1)
			go func(r int) {
				defer wg.Done()
				_, errs[r] = workers[r].Step(ctx, real[r])
			}(r)
		}
		wg.Wait()
		for r, err := range errs {
			if err != nil {
				t.Fatalf("worker %d: %v", r, err)
			}
		}
		for r := range out {
			for l := range out[r] {
				for i := range out[r][l] {
					if math.Float32bits(out[r][l][i]) != math.Float32bits(real[r][l][i]) {
						t.Fatalf("step %d rank %d layer %s [%d]: sim %v, worker %v", step, r, specs[l].Name, i, out[r][l][i], real[r][l][i])
					}
					if math.Float32bits(out[r][l][i]) != math.Float32bits(out[0][l][i]) {
						t.Fatalf("step %d: rank %d differs from rank 0 in layer %s", step, r, specs[l].Name)
					}
				}
			}
		}
		if !(res.Time > 0) || res.Baseline.Time <= 0 || res.Bytes <= 0 || res.Bytes >= res.Baseline.Bytes {
			t.Errorf("step %d: time %v baseline %v bytes %d baseline %d", step, res.Time, res.Baseline.Time, res.Bytes, res.Baseline.Bytes)
		}
		if math.Abs(res.Compute+res.Compress+res.Communicate-res.Time) > 1e-12 || res.Compress <= 0 {
			t.Errorf("step %d: split %v + %v + %v != %v", step, res.Compute, res.Compress, res.Communicate, res.Time)
		}
	}
}

// TestSizeOnlyLayers runs the compressed schemes size-only at a world size
// where payload mode would be costly, with the codecs' nominal sizes.
func TestSizeOnlyLayers(t *testing.T) {
	const world = 256
	specs := clusterSpecs(t)
	colls := make([]Collective, len(specs))
	nominal := make([]int64, len(specs))
	for l, s := range specs {
		c, n, err := SizeOnlyLayer(s, world)
		if err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		colls[l], nominal[l] = c, n
	}
	opts := &Options{SizeHint: func(c, _ int, _ *allreduce.Op) int64 { return nominal[c] }}
	res, err := RunStep(context.Background(), Homogeneous(world, 10*Gbps, 5*time.Microsecond), colls, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !(res.Time > 0) || len(res.Collectives) != len(specs) {
		t.Fatalf("result %+v", res.Result)
	}
	for l, c := range res.Collectives {
		if c.Bytes <= 0 || c.Finish <= 0 {
			t.Errorf("layer %s: %+v", specs[l].Name, c)
		}
	}
	t.Logf("step %.3g ms, dense baseline %.3g ms, bytes %d vs %d", res.Time*1e3, res.Baseline.Time*1e3, res.Bytes, res.Baseline.Bytes)
}
