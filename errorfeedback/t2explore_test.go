package errorfeedback

import (
	"fmt"
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
