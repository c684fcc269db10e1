// Package eftest is a test kit for error feedback: the least-squares problems
// of docs/algorithms.md §3.4 (T1, T2), an in-process exchange that runs N ranks'
// error-feedback states as a collective would (decoded payloads summed in
// rank order), and a trainer on top of both. Package errorfeedback's tests
// and the experiments use it.
package eftest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
)

// Feedback is the part of errorfeedback.Feedback that Exchange uses;
// errorfeedback.Feedback satisfies it.
type Feedback interface {
	// Encode compensates g, compresses it into dst[:0] and returns the payload.
	Encode(dst []byte, g []float32) ([]byte, error)
	// Compressor is the codec whose payloads Encode returns.
	Compressor() compressors.Compressor
	// Finish takes the aggregated update and completes the step.
	Finish(avg []float32)
}

// TopK returns the real exact top-k codec ("topk:k/n") and panics unless it
// keeps exactly k of n elements (ties by lower index).
func TopK(n, k int) compressors.Compressor {
	c, err := compressors.New(fmt.Sprintf("topk:%v", float64(k)/float64(n)), n)
	if err != nil {
		panic(err)
	}
	if sp, ok := c.(compressors.Sparse); ok {
		src := make([]float32, n)
		for i := range src {
			src[i] = float32(i + 1)
		}
		if _, err := c.Compress(nil, src); err != nil {
			panic(err)
		}
		if idx, _ := sp.Selected(); len(idx) != k {
			panic(fmt.Sprintf("eftest: topk for n=%d keeps %d, want %d", n, len(idx), k))
		}
	}
	return c
}

// Dense returns the uncompressed fp32 codec ("none", Reduce aggregation).
func Dense(n int) compressors.Compressor {
	c, err := compressors.New("none", n)
	if err != nil {
		panic(err)
	}
	return c
}

// NewBufs returns n payload buffers (nil, grown by Encode) and n direction
// vectors of length d, for Exchange.
func NewBufs(n, d int) ([][]byte, [][]float32) {
	bufs := make([][]byte, n)
	dirs := make([][]float32, n)
	for r := range dirs {
		dirs[r] = make([]float32, d)
	}
	return bufs, dirs
}

// Exchange runs one step of N = len(fbs) ranks in process: rank r encodes
// grads[r] into bufs[r]; the payloads are decoded with rank 0's codec and
// summed in rank order 0..N−1, then scaled by 1/N; every dirs[r] receives
// that mean and every rank Finishes with it. It fails tb on an error or if
// the ranks' directions are not bit-identical after Finish.
func Exchange[F Feedback](tb testing.TB, fbs []F, grads [][]float32, bufs [][]byte, dirs [][]float32) {
	tb.Helper()
	n := len(fbs)
	for r, fb := range fbs {
		p, err := fb.Encode(bufs[r], grads[r])
		if err != nil {
			tb.Fatalf("rank %d: %v", r, err)
		}
		bufs[r] = p
	}
	avg := dirs[0]
	clear(avg)
	c := fbs[0].Compressor()
	for r := 0; r < n; r++ {
		if err := c.DecompressAdd(avg, bufs[r]); err != nil {
			tb.Fatal(err)
		}
	}
	inv := float32(1 / float64(n))
	for j := range avg {
		avg[j] *= inv
	}
	for r := 1; r < n; r++ {
		copy(dirs[r], avg)
	}
	for r, fb := range fbs {
		fb.Finish(dirs[r])
	}
	for r := 1; r < n; r++ {
		for j := range dirs[r] {
			if math.Float32bits(dirs[r][j]) != math.Float32bits(dirs[0][j]) {
				tb.Fatalf("rank %d direction[%d] = %v, rank 0 has %v", r, j, dirs[r][j], dirs[0][j])
			}
		}
	}
}

// Run trains x (from 0) with N = p.Workers() in-process ranks for steps
// steps of x −= γ·direction, where rank i's gradient at x is written into g
// by grad (which draws any randomness from rng, seeded by seed and shared
// by the ranks in rank order), each rank's state comes from mk, and the
// direction is Exchange's mean. It returns the relative error
// ‖x − x*‖/‖x*‖ after every step.
func Run[F Feedback](tb testing.TB, p *LSQ, mk func() F, gamma float64, steps int, seed uint64,
	grad func(i int, x, g []float32, rng *rand.Rand)) []float64 {
	tb.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	fbs := make([]F, p.n)
	grads := make([][]float32, p.n)
	for i := range fbs {
		fbs[i] = mk()
		grads[i] = make([]float32, p.d)
	}
	bufs, dirs := NewBufs(p.n, p.d)
	x := make([]float32, p.d)
	errs := make([]float64, steps)
	g32 := float32(gamma)
	for s := 0; s < steps; s++ {
		for i := range grads {
			grad(i, x, grads[i], rng)
		}
		Exchange(tb, fbs, grads, bufs, dirs)
		for j := range x {
			x[j] -= g32 * dirs[0][j]
		}
		errs[s] = p.RelErr(x)
	}
	return errs
}
