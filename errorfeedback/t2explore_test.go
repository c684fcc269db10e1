package errorfeedback

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
)

// TestT2Explore tunes γ per method and per n for specs §3.4 T2 (T2's
// problem, σ = 3, top-k 5 of 50) and logs the floor E‖x − x*‖² over the last
// 10% of the run, averaged over 2 seeds, for every γ of the grid:
//
//	SLIMGRAD_EXPLORE=t2 go test -run T2Explore -v -timeout 30m ./errorfeedback
//
// (T2SMALL=1: γ ∈ {0.00125, 0.0025, 0.005} over 8000 steps.)
func TestT2Explore(t *testing.T) {
	if os.Getenv("SLIMGRAD_EXPLORE") != "t2" {
		t.Skip("set SLIMGRAD_EXPLORE=t2")
	}
	const d, m, k = 50, 200, 5
	sigma := 3.0
	steps := 3000
	gammas := []float64{0.005, 0.01, 0.02, 0.04, 0.08, 0.16}
	if os.Getenv("T2SMALL") != "" { // the small-γ end, with a longer run
		steps, gammas = 8000, []float64{0.00125, 0.0025, 0.005}
	}
	mks := map[string]func() Feedback{
		"ef21":     func() Feedback { return NewEF21(newExactTopK(d, k)) },
		"econtrol": func() Feedback { f, _ := NewEControl(newExactTopK(d, k), 0.1); return f },
		"sgd":      func() Feedback { return NewNone(newDense(d)) },
	}
	for _, n := range []int{1, 4, 16} {
		p := newLSQShared(2, n, d, m, true)
		for _, name := range []string{"ef21", "econtrol", "sgd"} {
			var row []string
			best, bestG := 1e300, 0.0
			for _, g := range gammas {
				var f float64
				for seed := uint64(1); seed <= 2; seed++ {
					errs := runLSQ(t, p, mks[name], g, sigma, steps, seed)
					f += floor(p, errs[len(errs)*4/5:]) / 2 // last 10%
				}
				row = append(row, fmt.Sprintf("γ=%v:%.3g", g, f))
				if f < best {
					best, bestG = f, g
				}
			}
			t.Logf("n=%2d %-9s best %.3g at γ=%v | %s", n, name, best, bestG, strings.Join(row, " "))
		}
	}
}

// TestT2ExploreMinibatch is T2 with the natural stochastic gradient of least
// squares instead of additive Gaussian noise: worker i's gradient is
// (m/B)·Σ_{r∈S} a_r(a_rᵀx − b_r) over B rows S of A_i drawn uniformly
// (with replacement). Fixed γ, floors as in TestConvergenceT2:
//
//	SLIMGRAD_EXPLORE=t2mb go test -run T2ExploreMinibatch -v ./errorfeedback
func TestT2ExploreMinibatch(t *testing.T) {
	if os.Getenv("SLIMGRAD_EXPLORE") != "t2mb" {
		t.Skip("set SLIMGRAD_EXPLORE=t2mb")
	}
	const d, m, k, steps, batch = 50, 200, 5, 3000, 4
	for _, gamma := range []float64{0.005, 0.02} {
		for _, n := range []int{1, 4, 16} {
			p := newLSQShared(2, n, d, m, true)
			var row []string
			for _, c := range []struct {
				name string
				mk   func() Feedback
			}{
				{"ef21", func() Feedback { return NewEF21(newExactTopK(d, k)) }},
				{"econtrol", func() Feedback { f, _ := NewEControl(newExactTopK(d, k), 0.1); return f }},
				{"sgd", func() Feedback { return NewNone(newDense(d)) }},
			} {
				var fl float64
				for seed := uint64(1); seed <= 2; seed++ {
					fl += floor(p, runLSQMinibatch(t, p, c.mk, gamma, batch, steps, seed)) / 2
				}
				row = append(row, fmt.Sprintf("%s %.3g", c.name, fl))
			}
			t.Logf("γ=%v n=%2d floor E‖x−x*‖²: %s", gamma, n, strings.Join(row, "  "))
		}
	}
}

// runLSQMinibatch is runLSQ with mini-batch row sampling (see
// TestT2ExploreMinibatch).
func runLSQMinibatch(t testing.TB, p *lsq, mk func() Feedback, gamma float64, batch, steps int, seed uint64) []float64 {
	g64 := make([]float64, p.d)
	return runLSQGrad(t, p, mk, gamma, steps, seed, func(i int, x, g []float32, rng *rand.Rand) {
		clear(g64)
		a, b := p.a[i], p.b[i]
		for range batch {
			r := rng.IntN(p.m)
			row := a[r*p.d : (r+1)*p.d]
			res := -b[r]
			for j, xj := range x {
				res += row[j] * float64(xj)
			}
			for j := range g64 {
				g64[j] += row[j] * res
			}
		}
		for j := range g64 {
			g[j] = float32(g64[j] * float64(p.m) / float64(batch))
		}
	})
}

// TestT2ExploreHeterogeneous is TestConvergenceT2's protocol on T1's own
// problem (every worker its own design matrix A_i, as specs §3.4 T2 says:
// "same as T1 plus noise"), for two fixed γ:
//
//	SLIMGRAD_EXPLORE=t2het go test -run T2ExploreHeterogeneous -v ./errorfeedback
//
// Measured (E‖x − x*‖² floors at n = 1 / 4 / 16): γ = 0.02: EF21 54.1 / 8.58
// / 2.06, EControl 12.0 / 2.51 / 0.577, SGD 5.86 / 1.26 / 0.287; γ = 0.005:
// EF21 13.3 / 2.22 / 0.532, EControl 2.36 / 0.467 / 0.101, SGD 1.91 / 0.364
// / 0.0764. EF21's floor falls as 1/n here too.
func TestT2ExploreHeterogeneous(t *testing.T) {
	if os.Getenv("SLIMGRAD_EXPLORE") != "t2het" {
		t.Skip("set SLIMGRAD_EXPLORE=t2het")
	}
	const d, m, k, steps = 50, 200, 5, 1500
	const sigma, eta = 3, 0.1
	for _, gamma := range []float64{0.02, 0.005} {
		for _, n := range []int{1, 4, 16} {
			p := newLSQ(2, n, d, m)
			ef21, ec, sgd := t2Floors(t, p, k, gamma, sigma, eta, steps)
			t.Logf("γ=%g n=%2d  floor E‖x−x*‖²: ef21 %.3g  econtrol:%v %.3g  sgd %.3g", gamma, n, ef21, eta, ec, sgd)
		}
	}
}
