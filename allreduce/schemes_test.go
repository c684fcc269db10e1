package allreduce_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/errorfeedback"
)

func sgn(x float32) float32 {
	if x >= 0 {
		return 1
	}
	return -1
}

func rmsOf(x []float32) float32 {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	return float32(math.Sqrt(ss / float64(len(x))))
}

// twoPhaseReference is docs/algorithms.md §2.5's reference simulation from zero errors:
// a_c = s_w(a)·sgn(a); worker_err = a − a_c; avg = mean(a_c); chunk c of avg
// → s_c·sgn(chunk c); server_err(r) = chunk_r − s_r·sgn(chunk_r). It works
// on padded vectors.
func twoPhaseReference(in [][]float32, n int) (out []float32, werr [][]float32, serr [][]float32, avg []float32) {
	d := len(in[0])
	dp := allreduce.TwoPhasePaddedLen(d, n)
	avg = make([]float32, dp)
	werr = make([][]float32, n)
	for r := range in {
		a := make([]float32, dp)
		copy(a, in[r])
		s := rmsOf(a)
		werr[r] = make([]float32, dp)
		for i, v := range a {
			ac := s * sgn(v)
			werr[r][i] = v - ac
			avg[i] += ac / float32(n)
		}
	}
	L := dp / n
	out = make([]float32, dp)
	serr = make([][]float32, n)
	for c := 0; c < n; c++ {
		ch := avg[c*L : (c+1)*L]
		s := rmsOf(ch)
		serr[c] = make([]float32, L)
		for i, v := range ch {
			out[c*L+i] = s * sgn(v)
			serr[c][i] = v - s*sgn(v)
		}
	}
	return out[:d], werr, serr, avg
}

func close32(a, b float32, rel float64) bool {
	return math.Abs(float64(a-b)) <= rel*(math.Abs(float64(b))+1e-30)+1e-7
}

func TestTwoPhaseSignMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 18))
	for _, n := range []int{1, 2, 3, 5, 8, 13} {
		for _, d := range []int{1, 7, 100, 1000, 4099} {
			in := make([][]float32, n)
			for r := range in {
				in[r] = make([]float32, d)
				for i := range in[r] {
					in[r][i] = float32(rng.NormFloat64()) + 0.01*float32(r) // DeepSpeed's offset
				}
			}
			orig := make([][]float32, n)
			for r := range in {
				orig[r] = append([]float32(nil), in[r]...)
			}
			wantOut, wantW, wantS, avg := twoPhaseReference(orig, n)
			states := make([]*errorfeedback.TwoPhase, n)
			progs := genAll(t, allreduce.AlgTwoPhaseSign, allreduce.Params{World: n, Elems: d})
			if err := allreduce.Check(progs); err != nil {
				t.Fatal(err)
			}
			execs := make([]allreduce.Executor, n)
			for r := range execs {
				states[r] = mustTwoPhase(t, d, n, r)
				e, err := allreduce.NewExec(progs[r], in[r], allreduce.WithTwoPhase(states[r]))
				if err != nil {
					t.Fatal(err)
				}
				execs[r] = e
			}
			if _, err := runAll(progs, execs, rng.Uint64()); err != nil {
				t.Fatal(err)
			}
			dp := allreduce.TwoPhasePaddedLen(d, n)
			if dp%(8*n) != 0 || dp < d || dp%(n*(8*n/gcd(n, 8))) != 0 {
				t.Fatalf("n=%d d=%d: padded length %d", n, d, dp)
			}
			L := dp / n
			for r := 0; r < n; r++ {
				for i := 0; i < d; i++ {
					if math.Float32bits(in[r][i]) != math.Float32bits(in[0][i]) {
						t.Fatalf("n=%d d=%d: rank %d [%d] differs from rank 0", n, d, r, i)
					}
					if math.Abs(float64(avg[i])) < 1e-6 {
						continue
					}
					if !close32(in[r][i], wantOut[i], 1e-5) {
						t.Fatalf("n=%d d=%d: rank %d out[%d] = %v, reference %v", n, d, r, i, in[r][i], wantOut[i])
					}
				}
				for i, v := range states[r].W.Error() {
					if !close32(v, wantW[r][i], 1e-5) {
						t.Fatalf("n=%d d=%d: rank %d worker error [%d] = %v, reference %v", n, d, r, i, v, wantW[r][i])
					}
				}
				for i, v := range states[r].S.Error() {
					if math.Abs(float64(avg[r*L+i])) < 1e-6 {
						continue
					}
					if !close32(v, wantS[r][i], 1e-4) {
						t.Fatalf("n=%d d=%d: rank %d server error [%d] = %v, reference %v", n, d, r, i, v, wantS[r][i])
					}
				}
			}
			if n == 1 {
				// Not idempotent: the output is s·sgn(input), not the input.
				same := true
				s := rmsOf(append(append([]float32(nil), orig[0]...), make([]float32, dp-d)...))
				for i := range orig[0] {
					if in[0][i] != orig[0][i] {
						same = false
					}
					if !close32(in[0][i], s*sgn(orig[0][i]), 1e-6) {
						t.Fatalf("n=1 d=%d: out[%d] = %v, want %v", d, i, in[0][i], s*sgn(orig[0][i]))
					}
				}
				if same {
					t.Fatalf("n=1 d=%d: output equals input", d)
				}
			}
		}
	}
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func TestTwoPhasePaddedLen(t *testing.T) {
	for _, tc := range []struct{ d, n, want int }{
		{1, 1, 8}, {8, 1, 8}, {9, 1, 16}, {1, 3, 72}, {72, 3, 72}, {73, 3, 144},
		{1, 5, 200}, {1, 8, 64}, {65, 8, 128}, {0, 4, 0}, {1, 2, 16}, {1, 4, 32},
	} {
		if got := allreduce.TwoPhasePaddedLen(tc.d, tc.n); got != tc.want {
			t.Errorf("TwoPhasePaddedLen(%d, %d) = %d, want %d", tc.d, tc.n, got, tc.want)
		}
	}
}

// TestTwoPhaseSteps runs several steps with the state carried over: errors
// accumulate and every rank stays bit-identical.
func TestTwoPhaseSteps(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 20))
	n, d := 6, 333
	progs := genAll(t, allreduce.AlgTwoPhaseSign, allreduce.Params{World: n, Elems: d})
	states := make([]*errorfeedback.TwoPhase, n)
	for r := range states {
		states[r] = mustTwoPhase(t, d, n, r)
	}
	g := make([]float32, d) // a fixed "gradient" seen by all ranks
	for i := range g {
		g[i] = float32(rng.NormFloat64())
	}
	sum := make([]float32, d)
	const steps = 40
	for step := 0; step < steps; step++ {
		in := make([][]float32, n)
		execs := make([]allreduce.Executor, n)
		for r := range in {
			in[r] = append([]float32(nil), g...)
			e, err := allreduce.NewExec(progs[r], in[r], allreduce.WithTwoPhase(states[r]))
			if err != nil {
				t.Fatal(err)
			}
			execs[r] = e
		}
		if _, err := runAll(progs, execs, uint64(step+1)); err != nil {
			t.Fatal(err)
		}
		for r := 1; r < n; r++ {
			for i := range in[r] {
				if in[r][i] != in[0][i] {
					t.Fatalf("step %d: rank %d differs", step, r)
				}
			}
		}
		for i := range sum {
			sum[i] += in[0][i]
		}
	}
	// Error feedback: the running mean of the compressed outputs tracks g.
	var errSq, gSq float64
	for i := range g {
		e := float64(sum[i]/steps - g[i])
		errSq += e * e
		gSq += float64(g[i]) * float64(g[i])
	}
	if errSq > 0.05*gSq {
		t.Fatalf("error feedback does not track the input: relative error %v", math.Sqrt(errSq/gSq))
	}
}

// powerSGD is a naive LowRankHook for tests.
type powerSGD struct {
	rows, cols, rank int
	q                []float32
}

func newPowerSGD(rows, cols, rank int, seed uint64) *powerSGD {
	rng := rand.New(rand.NewPCG(seed, 1))
	q := make([]float32, cols*rank)
	for i := range q {
		q[i] = float32(rng.NormFloat64())
	}
	return &powerSGD{rows, cols, rank, q}
}

func (h *powerSGD) Rows() int { return h.rows }
func (h *powerSGD) Cols() int { return h.cols }
func (h *powerSGD) Rank() int { return h.rank }
func (h *powerSGD) ComputeP(p, m []float32) {
	for i := 0; i < h.rows; i++ {
		for k := 0; k < h.rank; k++ {
			var s float32
			for j := 0; j < h.cols; j++ {
				s += m[i*h.cols+j] * h.q[j*h.rank+k]
			}
			p[i*h.rank+k] = s
		}
	}
}
func (h *powerSGD) Orthogonalize(p []float32) {
	for k := 0; k < h.rank; k++ {
		for l := 0; l < k; l++ {
			var dot float32
			for i := 0; i < h.rows; i++ {
				dot += p[i*h.rank+k] * p[i*h.rank+l]
			}
			for i := 0; i < h.rows; i++ {
				p[i*h.rank+k] -= dot * p[i*h.rank+l]
			}
		}
		var nn float32
		for i := 0; i < h.rows; i++ {
			nn += p[i*h.rank+k] * p[i*h.rank+k]
		}
		nn = float32(math.Sqrt(float64(nn))) + 1e-8
		for i := 0; i < h.rows; i++ {
			p[i*h.rank+k] /= nn
		}
	}
}
func (h *powerSGD) ComputeQ(q, m, p []float32) {
	for j := 0; j < h.cols; j++ {
		for k := 0; k < h.rank; k++ {
			var s float32
			for i := 0; i < h.rows; i++ {
				s += m[i*h.cols+j] * p[i*h.rank+k]
			}
			q[j*h.rank+k] = s
		}
	}
}
func (h *powerSGD) Reconstruct(dst, p, q []float32) {
	for i := 0; i < h.rows; i++ {
		for j := 0; j < h.cols; j++ {
			var s float32
			for k := 0; k < h.rank; k++ {
				s += p[i*h.rank+k] * q[j*h.rank+k]
			}
			dst[i*h.cols+j] = s
		}
	}
}
func (h *powerSGD) SetQ(q []float32) { copy(h.q, q) }

func TestLowRank(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	for iter := 0; iter < iters(30); iter++ {
		n := 1 + rng.IntN(10)
		rows, cols := 1+rng.IntN(12), 1+rng.IntN(12)
		rank := 1 + rng.IntN(min(3, rows, cols)) // well-conditioned orthogonalization
		p := allreduce.Params{World: n, Elems: rows * cols, Rows: rows, Cols: cols, Components: rank, Segments: 1 + rng.IntN(2)}
		progs := genAll(t, allreduce.AlgLowRank, p)
		in := randInputs(rng, n, rows*cols, false)
		// Reference: centralised PowerSGD step on the same Q.
		ref := newPowerSGD(rows, cols, rank, 99)
		P := make([]float32, rows*rank)
		tmp := make([]float32, rows*rank)
		for r := 0; r < n; r++ {
			ref.ComputeP(tmp, in[r])
			for i := range P {
				P[i] += tmp[i] / float32(n)
			}
		}
		ref.Orthogonalize(P)
		Q := make([]float32, cols*rank)
		tq := make([]float32, cols*rank)
		for r := 0; r < n; r++ {
			ref.ComputeQ(tq, in[r], P)
			for i := range Q {
				Q[i] += tq[i] / float32(n)
			}
		}
		want := make([]float32, rows*cols)
		ref.Reconstruct(want, P, Q)

		execs := make([]allreduce.Executor, n)
		hooks := make([]*powerSGD, n)
		for r := range execs {
			hooks[r] = newPowerSGD(rows, cols, rank, 99)
			e, err := allreduce.NewExec(progs[r], in[r], allreduce.WithLowRank(hooks[r]))
			if err != nil {
				t.Fatal(err)
			}
			execs[r] = e
		}
		if _, err := runAll(progs, execs, rng.Uint64()); err != nil {
			t.Fatal(err)
		}
		var scale float64
		for _, v := range want {
			scale = math.Max(scale, math.Abs(float64(v)))
		}
		for r := 0; r < n; r++ {
			for i := range want {
				if in[r][i] != in[0][i] {
					t.Fatalf("n=%d: rank %d [%d] differs from rank 0", n, r, i)
				}
				if math.Abs(float64(in[r][i]-want[i])) > 1e-3*(scale+1) {
					t.Fatalf("n=%d %d×%d r=%d: [%d] = %v, reference %v", n, rows, cols, rank, i, in[r][i], want[i])
				}
			}
			for i := range Q {
				if hooks[r].q[i] != hooks[0].q[i] || math.Abs(float64(hooks[r].q[i]-Q[i])) > 1e-3*(1+math.Abs(float64(Q[i]))) {
					t.Fatalf("n=%d: rank %d warm-start Q[%d] = %v, reference %v", n, r, i, hooks[r].q[i], Q[i])
				}
			}
		}
	}
}
