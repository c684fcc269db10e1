package errorfeedback

import (
	"math"
	"math/rand/v2"
	"testing"
)

// lsq is the heterogeneous least-squares problem of specs §3.4 T1:
// f_i(x) = ½‖A_i x − b_i‖² with Gaussian A_i (entries N(0, 1/m)) and
// b_i = A_i x_i* for a distinct x_i* per worker; f = (1/n) Σ f_i.
type lsq struct {
	n, d, m int
	a       [][]float64 // a[i] is m×d row-major
	b       [][]float64
	xstar   []float64
	r       []float64 // scratch residual
}

func newLSQ(seed uint64, n, d, m int) *lsq { return newLSQShared(seed, n, d, m, false) }

// newLSQShared is newLSQ; with shared, every worker has the same A (so the
// Hessian of f does not depend on n) and only the x_i* differ.
func newLSQShared(seed uint64, n, d, m int, shared bool) *lsq {
	rng := rand.New(rand.NewPCG(seed, 99))
	p := &lsq{n: n, d: d, m: m, r: make([]float64, m)}
	s := 1 / math.Sqrt(float64(m))
	h := make([]float64, d*d) // Σ A_iᵀA_i
	rhs := make([]float64, d) // Σ A_iᵀb_i
	for i := 0; i < n; i++ {
		a := make([]float64, m*d)
		if shared && i > 0 {
			a = p.a[0]
		} else {
			for k := range a {
				a[k] = rng.NormFloat64() * s
			}
		}
		xi := make([]float64, d)
		for j := range xi {
			xi[j] = rng.NormFloat64()
		}
		b := make([]float64, m)
		for r := 0; r < m; r++ {
			for j := 0; j < d; j++ {
				b[r] += a[r*d+j] * xi[j]
			}
		}
		for r := 0; r < m; r++ {
			row := a[r*d : (r+1)*d]
			for j := 0; j < d; j++ {
				rhs[j] += row[j] * b[r]
				for k := 0; k < d; k++ {
					h[j*d+k] += row[j] * row[k]
				}
			}
		}
		p.a = append(p.a, a)
		p.b = append(p.b, b)
	}
	p.xstar = solve(h, rhs, d)
	return p
}

// solve solves the symmetric positive definite system h·x = rhs by Gaussian
// elimination with partial pivoting (h and rhs are overwritten).
func solve(h, rhs []float64, d int) []float64 {
	for c := 0; c < d; c++ {
		piv := c
		for r := c + 1; r < d; r++ {
			if math.Abs(h[r*d+c]) > math.Abs(h[piv*d+c]) {
				piv = r
			}
		}
		if piv != c {
			for k := 0; k < d; k++ {
				h[c*d+k], h[piv*d+k] = h[piv*d+k], h[c*d+k]
			}
			rhs[c], rhs[piv] = rhs[piv], rhs[c]
		}
		for r := c + 1; r < d; r++ {
			f := h[r*d+c] / h[c*d+c]
			for k := c; k < d; k++ {
				h[r*d+k] -= f * h[c*d+k]
			}
			rhs[r] -= f * rhs[c]
		}
	}
	x := make([]float64, d)
	for r := d - 1; r >= 0; r-- {
		s := rhs[r]
		for k := r + 1; k < d; k++ {
			s -= h[r*d+k] * x[k]
		}
		x[r] = s / h[r*d+r]
	}
	return x
}

// grad writes ∇f_i(x) + σ·ξ into g (computed in float64, rounded once).
func (p *lsq) grad(i int, x []float32, g []float32, sigma float64, rng *rand.Rand) {
	a, b, d := p.a[i], p.b[i], p.d
	for r := 0; r < p.m; r++ {
		row := a[r*d : (r+1)*d]
		s := -b[r]
		for j, x := range x {
			s += row[j] * float64(x)
		}
		p.r[r] = s
	}
	for j := 0; j < d; j++ {
		var s float64
		for r := 0; r < p.m; r++ {
			s += a[r*d+j] * p.r[r]
		}
		if sigma > 0 {
			s += sigma * rng.NormFloat64()
		}
		g[j] = float32(s)
	}
}

// relErr is ‖x − x*‖/‖x*‖.
func (p *lsq) relErr(x []float32) float64 {
	var num, den float64
	for j, xs := range p.xstar {
		num += (float64(x[j]) - xs) * (float64(x[j]) - xs)
		den += xs * xs
	}
	return math.Sqrt(num / den)
}

// runLSQ trains with n in-process workers on full gradients plus Gaussian
// noise σ and returns the relative error after every step.
func runLSQ(t testing.TB, p *lsq, mk func() Feedback, gamma, sigma float64, steps int, seed uint64) []float64 {
	return runLSQGrad(t, p, mk, gamma, steps, seed, func(i int, x, g []float32, rng *rand.Rand) {
		p.grad(i, x, g, sigma, rng)
	})
}

// runLSQGrad trains with n in-process workers, worker i's gradient at x
// written into g by grad (which draws any randomness from rng, shared by
// the workers in rank order), and returns the relative error after every
// step.
func runLSQGrad(t testing.TB, p *lsq, mk func() Feedback, gamma float64, steps int, seed uint64,
	grad func(i int, x, g []float32, rng *rand.Rand)) []float64 {
	rng := rand.New(rand.NewPCG(seed, 7))
	fbs := make([]Feedback, p.n)
	grads := make([][]float32, p.n)
	for i := range fbs {
		fbs[i] = mk()
		grads[i] = make([]float32, p.d)
	}
	bufs, dirs := newBufs(p.n, p.d)
	x := make([]float32, p.d)
	errs := make([]float64, steps)
	g32 := float32(gamma)
	for s := 0; s < steps; s++ {
		for i := range grads {
			grad(i, x, grads[i], rng)
		}
		exchange(t, fbs, grads, bufs, dirs)
		for j := range x {
			x[j] -= g32 * dirs[0][j]
		}
		errs[s] = p.relErr(x)
	}
	return errs
}

// TestConvergenceT1 is specs §3.4 T1: n = 10 heterogeneous workers, full
// gradients, top-k with k/d = 0.1. Compressed SGD without error feedback
// stalls at a large error; EF21 and EControl converge linearly to ≤ 1e-6.
func TestConvergenceT1(t *testing.T) {
	const n, d, m, k = 10, 50, 100, 5
	const steps = 1500
	p := newLSQ(1, n, d, m)
	type run struct {
		name  string
		mk    func() Feedback
		gamma float64
	}
	runs := []run{
		{"none", func() Feedback { return NewNone(newExactTopK(d, k)) }, 0.5},
		{"ef21", func() Feedback { return NewEF21(newExactTopK(d, k)) }, 0.5},
		{"econtrol:0.1", func() Feedback {
			f, _ := NewEControl(newExactTopK(d, k), 0.1)
			return f
		}, 0.5},
	}
	final := map[string]float64{}
	for _, r := range runs {
		errs := runLSQ(t, p, r.mk, r.gamma, 0, steps, 1)
		final[r.name] = errs[len(errs)-1]
		t.Logf("%-14s γ=%v rel. error after %d steps: %.3g (after %d: %.3g)", r.name, r.gamma, steps, errs[steps-1], steps/2, errs[steps/2-1])
	}
	if e := final["none"]; !(e > 1e-2) && !math.IsNaN(e) {
		t.Errorf("compressed SGD without error feedback reached %.3g; it should stall or diverge", e)
	}
	for _, name := range []string{"ef21", "econtrol:0.1"} {
		if e := final[name]; !(e <= 1e-6) {
			t.Errorf("%s: relative error %.3g, want <= 1e-6", name, e)
		}
	}
}

// floor is the mean squared distance ‖x − x*‖² over the last half of a
// run (errs are relative errors of problem p).
func floor(p *lsq, errs []float64) float64 {
	var s, n2 float64
	for _, x := range p.xstar {
		n2 += x * x
	}
	tail := errs[len(errs)/2:]
	for _, e := range tail {
		s += e * e * n2
	}
	return s / float64(len(tail))
}

// t2Floors runs EF21, EControl(η) and uncompressed SGD over top-k of k
// coordinates on p and returns their floors (see floor).
func t2Floors(t *testing.T, p *lsq, k int, gamma, sigma, eta float64, steps int) (ef21, econtrol, sgd float64) {
	t.Helper()
	d := p.d
	ef21 = floor(p, runLSQ(t, p, func() Feedback { return NewEF21(newExactTopK(d, k)) }, gamma, sigma, steps, 1))
	econtrol = floor(p, runLSQ(t, p, func() Feedback {
		f, _ := NewEControl(newExactTopK(d, k), eta)
		return f
	}, gamma, sigma, steps, 1))
	sgd = floor(p, runLSQ(t, p, func() Feedback { return NewNone(newDense(d)) }, gamma, sigma, steps, 1))
	return ef21, econtrol, sgd
}

// TestConvergenceT2 is specs §3.4 T2: T1's problem (here with a design
// matrix shared by all workers, so that the Hessian of f, and hence SGD's
// noise floor, does not change with n; the x_i* stay distinct) plus Gaussian
// gradient noise σ, a fixed γ, n = 1, 4, 16. EControl's floor E‖x − x*‖²
// falls roughly as 1/n and stays within a small factor of uncompressed
// SGD's; EF21-SGD's floor stays several times above EControl's at every n.
//
// The spec's [recalled] expectation that EF21-SGD's floor does NOT fall with
// n is not what this problem shows, so the test does not assert it: EF21's
// floor falls about as 1/n too (fixed γ = 0.02: 54 / 10.9 / 2.55 at n = 1 /
// 4 / 16, against EControl 12 / 2.97 / 0.68 and SGD 5.9 / 1.67 / 0.37), and
// the same holds with γ tuned per method and per n over {0.005 … 0.16}
// (TestT2Explore: best floors EF21 13.2 / 2.91 / 0.61, EControl 2.35 /
// 0.42 / 0.11, SGD 1.90 / 0.34 / 0.086; EF21 is a constant ≈ 7× above SGD,
// EControl ≈ 1.25×; the best γ is the grid's smallest, and at γ = 0.00125
// over 8000 steps: EF21 3.88 / 0.79 / 0.15, EControl 0.39 / 0.11 / 0.032,
// SGD 0.36 / 0.10 / 0.029, so EF21's floor still shrinks with γ and with n),
// and on T1's own heterogeneous problem (TestT2ExploreHeterogeneous: γ =
// 0.02, EF21 54.1 / 8.58 / 2.06, EControl 12.0 / 2.51 / 0.577).
// With independent, zero-mean worker noise the EF21
// estimator errors hᵢ − ∇fᵢ are independent across workers and average out
// in h = mean hᵢ; EF21-SGD's analysis loses the 1/n by bounding
// ‖mean(hᵢ − ∇fᵢ)‖² with mean‖hᵢ − ∇fᵢ‖². What EControl fixes here is the
// constant: EF21 keeps each worker's stale, top-k-selected noise in hᵢ.
func TestConvergenceT2(t *testing.T) {
	const d, m, k, steps = 50, 200, 5, 1500
	const sigma, gamma, eta = 3, 0.02, 0.1
	var prev float64
	for _, n := range []int{1, 4, 16} {
		p := newLSQShared(2, n, d, m, true)
		ef21, ec, sgd := t2Floors(t, p, k, gamma, sigma, eta, steps)
		t.Logf("n=%2d  floor E‖x−x*‖²: ef21 %.3g  econtrol:%v %.3g  sgd %.3g", n, ef21, eta, ec, sgd)
		if !(2.5*ec < ef21) {
			t.Errorf("n=%d: EControl floor %.3g not 2.5× below EF21's %.3g", n, ec, ef21)
		}
		if !(ec < 3*sgd) {
			t.Errorf("n=%d: EControl floor %.3g not within 3× of SGD's %.3g", n, ec, sgd)
		}
		if n > 1 && !(ec < prev/2.5) {
			t.Errorf("n=%d: EControl floor %.3g did not fall enough from %.3g (×4 workers)", n, ec, prev)
		}
		prev = ec
	}
}
