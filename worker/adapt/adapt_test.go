package adapt_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/allreduce/allreducetest"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/worker/adapt"
)

func spec(t *testing.T, codec, ef string, elems, world, rank int) adapt.Spec {
	t.Helper()
	c, err := compressors.Parse(codec)
	if err != nil {
		t.Fatal(err)
	}
	e, err := errorfeedback.Parse(ef)
	if err != nil {
		t.Fatal(err)
	}
	return adapt.Spec{Codec: c, EF: e, Elems: elems, World: world, Rank: rank, Seed: 3, Algorithm: allreduce.AlgRing}
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    func() adapt.Spec
	}{
		{"powersgd without shape", func() adapt.Spec { return spec(t, "powersgd:2", "none", 100, 2, 0) }},
		{"sign with ef14", func() adapt.Spec { return spec(t, "sign", "ef14", 100, 2, 0) }},
		{"powersgd with ef21", func() adapt.Spec {
			s := spec(t, "powersgd:2", "ef21", 100, 2, 0)
			s.Rows, s.Cols = 10, 10
			return s
		}},
		{"dense with a gather algorithm", func() adapt.Spec {
			s := spec(t, "none", "none", 100, 2, 0)
			s.Algorithm = allreduce.AlgSparseGather
			return s
		}},
		{"rank out of range", func() adapt.Spec { return spec(t, "none", "none", 100, 2, 2) }},
	} {
		if _, err := adapt.New(tc.s()); !errors.Is(err, adapt.ErrSpec) {
			t.Errorf("%s: got %v, want ErrSpec", tc.name, err)
		}
	}
}

// Layers of every aggregation run in allreduce's lock-step harness (no
// transport): the results are bit-identical across ranks and the schemes are
// the ones the aggregation calls for.
func TestLayersInLockStep(t *testing.T) {
	const n, rows, cols = 3, 12, 10
	for _, tc := range []struct{ codec, ef, scheme string }{
		{"none", "none", "ring"}, {"fp16", "ef14", "ring"}, {"topk:0.1", "ef21", "sparse-gather"},
		{"sign", "none", "two-phase-sign"}, {"powersgd:2", "ef14", "low-rank"},
	} {
		t.Run(tc.codec, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			layers := make([]*adapt.Layer, n)
			data := make([][]float32, n)
			for r := range layers {
				s := spec(t, tc.codec, tc.ef, rows*cols, n, r)
				s.Rows, s.Cols = rows, cols
				var err error
				if layers[r], err = adapt.New(s); err != nil {
					t.Fatal(err)
				}
				if got := layers[r].Scheme(); got != tc.scheme {
					t.Fatalf("scheme %q, want %q", got, tc.scheme)
				}
			}
			for step := 0; step < 2; step++ {
				progs := make([]*allreduce.Program, n)
				execs := make([]allreduce.Executor, n)
				for r := range layers {
					data[r] = make([]float32, rows*cols)
					for i := range data[r] {
						data[r][i] = float32(rng.NormFloat64())
					}
					if err := layers[r].Begin(data[r]); err != nil {
						t.Fatal(err)
					}
					progs[r], execs[r] = layers[r].Program(), layers[r].Exec()
				}
				if _, err := allreducetest.Run(progs, execs, allreducetest.Options{}); err != nil {
					t.Fatal(err)
				}
				for r := range layers {
					layers[r].End(data[r])
					layers[r].Finish(data[r])
					if _, _, p := layers[r].Stats(); p <= 0 {
						t.Errorf("rank %d: payload %d bytes", r, p)
					}
				}
				for r := 1; r < n; r++ {
					for i := range data[r] {
						if math.Float32bits(data[r][i]) != math.Float32bits(data[0][i]) {
							t.Fatalf("step %d rank %d elem %d differs", step, r, i)
						}
					}
				}
			}
		})
	}
}
