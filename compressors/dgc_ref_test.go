package compressors

import (
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
)

// refDGC transcribes the _sparsify pseudo-code of docs/algorithms.md §1.2 literally
// (float comparisons, sorting, lists) and returns the selected indices as a
// sorted set.
func refDGC(x []float32, ratio float64, start int, resample bool) []int {
	n := len(x)
	stride, numSamples, topKSamples, numSelects := dgcPlan(n, ratio, 0.01)
	imp := make([]float32, n)
	for i, v := range x {
		imp[i] = float32(math.Abs(float64(v)))
	}
	var samples []float32
	for j := start; j < n; j += stride {
		samples = append(samples, imp[j])
	}
	sorted := slices.Clone(samples)
	sort.Slice(sorted, func(a, b int) bool { return sorted[a] > sorted[b] })
	thr := sorted[min(max(topKSamples, 1), len(sorted))-1]
	sel := func() []int {
		var idx []int
		for j, v := range imp {
			if v >= thr {
				idx = append(idx, j)
			}
		}
		return idx
	}
	idx := sel()
	if n > numSamples {
		for range 10 {
			if len(idx) > numSelects {
				if float64(len(idx)) > 1.3*float64(numSelects) {
					if resample {
						// exact top-numSelects of imp over idx (ties: lower index)
						sort.SliceStable(idx, func(a, b int) bool { return imp[idx[a]] > imp[idx[b]] })
						idx = idx[:numSelects]
						sort.Ints(idx)
						break
					}
					thr *= 1.3
				} else {
					break
				}
			} else if float64(len(idx)) < 0.8*float64(numSelects) {
				thr *= 0.8
			} else {
				break
			}
			idx = sel()
		}
	}
	if len(idx) > numSelects {
		idx = idx[:numSelects]
	}
	return idx
}

func TestDGCMatchesReferencePseudocode(t *testing.T) {
	r := rand.New(rand.NewPCG(45, 46))
	gens := map[string]func(i int) float32{
		"gauss":    func(int) float32 { return float32(r.NormFloat64()) },
		"cauchy":   func(int) float32 { return float32(r.NormFloat64() / (r.NormFloat64() + 1e-3)) },
		"sparse":   func(int) float32 { return float32(r.NormFloat64()) * float32(r.IntN(50)/49) },
		"constant": func(i int) float32 { return float32(1 - 2*(i%2)) },
		"levels":   func(int) float32 { return float32(r.IntN(7) - 3) },
		"ramp":     func(i int) float32 { return float32(i) },
	}
	for name, gen := range gens {
		for _, n := range []int{50, 1999, 20_000, 150_001} {
			x := make([]float32, n)
			for i := range x {
				x[i] = gen(i)
			}
			for _, ratio := range []float64{0.001, 0.01, 0.1} {
				for _, resample := range []bool{true, false} {
					rec := Recipe{Codec: CodecDGC, Density: ratio}
					d := newDGC(rec, n, Config{SampleRatio: 0.01, Resample: resample})
					d.scratch()
					for _, start := range []int{0, d.stride / 2, d.stride - 1} {
						got := d.selectFrom(x, start)
						want := refDGC(x, ratio, start, resample)
						gotIdx := make([]int, got)
						for i, j := range d.idx[:got] {
							gotIdx[i] = int(j)
						}
						if !slices.Equal(gotIdx, want) {
							t.Fatalf("%s n=%d ratio=%v resample=%v start=%d: %d selected, reference %d (first diff at %v)",
								name, n, ratio, resample, start, len(gotIdx), len(want), firstDiff(gotIdx, want))
						}
					}
				}
			}
		}
	}
}

func firstDiff(a, b []int) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
