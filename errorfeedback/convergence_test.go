package errorfeedback

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/errorfeedback/eftest"
)

// runLSQ trains with n in-process workers on full gradients plus Gaussian
// noise σ and returns the relative error after every step.
func runLSQ(t testing.TB, p *eftest.LSQ, mk func() Feedback, gamma, sigma float64, steps int, seed uint64) []float64 {
	return eftest.Run(t, p, mk, gamma, steps, seed, func(i int, x, g []float32, rng *rand.Rand) {
		p.Grad(i, x, g, sigma, rng)
	})
}

// TestConvergenceT1 is docs/algorithms.md §3.4 T1: n = 10 heterogeneous workers, full
// gradients, top-k with k/d = 0.1. Compressed SGD without error feedback
// stalls at a large error; EF21 and EControl converge linearly to ≤ 1e-6.
func TestConvergenceT1(t *testing.T) {
	const n, d, m, k = 10, 50, 100, 5
	const steps = 1500
	p := eftest.NewLSQ(1, n, d, m, false)
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

// t2Floors runs EF21, EControl(η) and uncompressed SGD over top-k of k
// coordinates on p and returns their floors (see LSQ.Floor).
func t2Floors(t *testing.T, p *eftest.LSQ, k int, gamma, sigma, eta float64, steps int) (ef21, econtrol, sgd float64) {
	t.Helper()
	d := p.Dim()
	ef21 = p.Floor(runLSQ(t, p, func() Feedback { return NewEF21(newExactTopK(d, k)) }, gamma, sigma, steps, 1))
	econtrol = p.Floor(runLSQ(t, p, func() Feedback {
		f, _ := NewEControl(newExactTopK(d, k), eta)
		return f
	}, gamma, sigma, steps, 1))
	sgd = p.Floor(runLSQ(t, p, func() Feedback { return NewNone(newDense(d)) }, gamma, sigma, steps, 1))
	return ef21, econtrol, sgd
}

// TestConvergenceT2 is docs/algorithms.md §3.4 T2: T1's problem (here with a design
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
		p := eftest.NewLSQ(2, n, d, m, true)
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
