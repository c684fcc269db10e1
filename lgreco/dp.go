package lgreco

import (
	"fmt"
	"math"
)

// DefaultBuckets is the number of error buckets of the dynamic program (specs
// §4.2: B = 10,000).
const DefaultBuckets = 10000

// Table is the input of Solve: for every layer l and candidate c, the
// compression error Err[l][c] (an L2 norm, not squared) and the cost
// Cost[l][c] to minimise (wire bytes, or modelled seconds for the link-aware
// objective). Default[l] is the index of the uniform default candidate of
// layer l. Err and Cost must have one row per layer and equal row lengths.
type Table struct {
	Err     [][]float64
	Cost    [][]float64
	Default []int
}

// Solution is the result of Solve.
type Solution struct {
	// Choice holds the chosen candidate index of every layer. When
	// Feasible is false it is nil: the caller keeps its previous choice.
	Choice []int
	// Feasible reports whether some configuration met the budget.
	Feasible bool
	// Cost and Err are Σ Cost[l][Choice[l]] and Σ Err[l][Choice[l]]
	// (float64, summed in layer order); DefaultCost and DefaultErr are the
	// same sums for the uniform default.
	Cost, Err               float64
	DefaultCost, DefaultErr float64
	// Budget is α·DefaultErr.
	Budget float64
	// FromDefault reports that the uniform default itself was returned
	// because it was at least as cheap as the DP's configuration (which can
	// happen because rounding errors up to whole buckets is conservative).
	FromDefault bool
}

// Solve runs L-GreCo's dynamic program (docs/algorithms.md §4.2): it minimises
// Σ_l Cost[l][c_l] subject to Σ_l Err[l][c_l] ≤ α·Σ_l Err[l][Default[l]].
//
// The budget E is split into buckets of width w = E/buckets and every error is
// rounded up to whole buckets, ê = ceil(err/w), so any configuration the DP
// accepts (Σ ê ≤ buckets) meets the real budget; an exactly zero error takes
// no bucket. The DP table holds, per layer and bucket count b, the least cost
// of the layers so far using at most b buckets, with float64 sums; ties go to
// the lower candidate index and, at the end, to the fewest buckets (least
// error). Backtracking recovers the choice. Time O(L·|C|·buckets), memory
// O(L·buckets).
//
// A candidate whose error or cost is NaN or ±Inf, or whose error alone
// exceeds E, is infeasible and never chosen (docs/algorithms.md §4.2 pitfall 1: the
// reference's NaN guard is a no-op). If the default's own errors are not
// finite the budget is undefined and nothing is feasible. When the uniform
// default meets the budget (always for α ≥ 1) and costs no more than the DP's
// configuration, the default is returned, so L-GreCo never costs more than
// the uniform default. If E is 0 (e.g. all-zero gradients) only zero-error
// candidates are feasible. When nothing is feasible, Feasible is false and
// Choice nil: keep the previous configuration.
//
// Errors (malformed tables, alpha or buckets out of range, negative costs)
// are programmer errors reported as errors wrapping ErrTable.
func Solve(t Table, alpha float64, buckets int) (Solution, error) {
	L := len(t.Err)
	if len(t.Cost) != L || len(t.Default) != L {
		return Solution{}, fmt.Errorf("%w: %d error rows, %d cost rows, %d defaults", ErrTable, L, len(t.Cost), len(t.Default))
	}
	if !(alpha > 0) || math.IsInf(alpha, 0) {
		return Solution{}, fmt.Errorf("%w: alpha %v must be positive and finite", ErrTable, alpha)
	}
	if buckets < 1 || buckets > 1<<24 {
		return Solution{}, fmt.Errorf("%w: buckets %d out of [1, 2^24]", ErrTable, buckets)
	}
	for l := range L {
		nc := len(t.Err[l])
		if nc == 0 || len(t.Cost[l]) != nc {
			return Solution{}, fmt.Errorf("%w: layer %d has %d errors and %d costs", ErrTable, l, nc, len(t.Cost[l]))
		}
		if nc > math.MaxInt32 {
			return Solution{}, fmt.Errorf("%w: layer %d has too many candidates", ErrTable, l)
		}
		if d := t.Default[l]; d < 0 || d >= nc {
			return Solution{}, fmt.Errorf("%w: layer %d default %d out of range [0,%d)", ErrTable, l, d, nc)
		}
		for c, s := range t.Cost[l] {
			if s < 0 {
				return Solution{}, fmt.Errorf("%w: layer %d candidate %d has negative cost %v", ErrTable, l, c, s)
			}
		}
	}
	var sol Solution
	def := t.Default
	sol.DefaultErr, sol.DefaultCost = sums(t, def)
	sol.Budget = alpha * sol.DefaultErr
	E := sol.Budget
	if L == 0 {
		sol.Choice, sol.Feasible = []int{}, true
		return sol, nil
	}
	if math.IsNaN(E) || math.IsInf(E, 0) {
		return sol, nil // the budget itself is undefined: keep the previous choice
	}
	defOK := finite(sol.DefaultCost) && sol.DefaultErr <= E

	var choice []int
	if E <= 0 {
		choice = zeroBudget(t)
	} else {
		choice = dp(t, E, buckets)
	}
	if choice != nil {
		sol.Err, sol.Cost = sums(t, choice)
		// Guard against float rounding at the edge of the budget: the
		// invariant Σ err ≤ E is checked on the real errors.
		if !(sol.Err <= E) || !finite(sol.Cost) {
			choice = nil
		}
	}
	if defOK && (choice == nil || sol.DefaultCost <= sol.Cost) {
		choice = append([]int(nil), def...)
		sol.FromDefault = true
		sol.Err, sol.Cost = sol.DefaultErr, sol.DefaultCost
	}
	if choice == nil {
		sol.Err, sol.Cost = 0, 0
		return sol, nil
	}
	sol.Choice, sol.Feasible = choice, true
	return sol, nil
}

// sums returns Σ Err and Σ Cost of a choice, in layer order.
func sums(t Table, choice []int) (e, c float64) {
	for l, k := range choice {
		e += t.Err[l][k]
		c += t.Cost[l][k]
	}
	return e, c
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// zeroBudget handles E = 0: per layer the cheapest zero-error candidate.
func zeroBudget(t Table) []int {
	choice := make([]int, len(t.Err))
	for l := range t.Err {
		best := -1
		for c, e := range t.Err[l] {
			if e == 0 && finite(t.Cost[l][c]) && (best < 0 || t.Cost[l][c] < t.Cost[l][best]) {
				best = c
			}
		}
		if best < 0 {
			return nil
		}
		choice[l] = best
	}
	return choice
}

// dp is the bucketed dynamic program for E > 0; nil if nothing is feasible.
func dp(t Table, E float64, B int) []int {
	L := len(t.Err)
	w := E / float64(B)
	// ê[l][c], or -1 for an infeasible candidate.
	eh := make([][]int32, L)
	for l := range L {
		eh[l] = make([]int32, len(t.Err[l]))
		for c, e := range t.Err[l] {
			eh[l][c] = -1
			if !finite(e) || e < 0 || !finite(t.Cost[l][c]) || e > E {
				continue
			}
			q := math.Ceil(e / w)
			if q*w < e { // division rounded down across an integer
				q++
			}
			if q > float64(B) {
				continue
			}
			eh[l][c] = int32(q)
		}
	}
	inf := math.Inf(1)
	prev := make([]float64, B+1)
	cur := make([]float64, B+1)
	pd := make([][]int32, L) // pd[l][b]: argmin candidate, -1 if unreachable
	for l := range L {
		pd[l] = make([]int32, B+1)
		row := pd[l]
		for b := range cur {
			cur[b] = inf
			row[b] = -1
		}
		for c, e := range eh[l] {
			if e < 0 {
				continue
			}
			s := t.Cost[l][c]
			if l == 0 {
				// At most b buckets: every b ≥ ê.
				for b := int(e); b <= B; b++ {
					if s < cur[b] {
						cur[b], row[b] = s, int32(c)
					}
				}
				continue
			}
			for b := int(e); b <= B; b++ {
				if p := prev[b-int(e)]; p != inf {
					if v := p + s; v < cur[b] {
						cur[b], row[b] = v, int32(c)
					}
				}
			}
		}
		prev, cur = cur, prev
	}
	best := -1
	for b, v := range prev {
		if v != inf && (best < 0 || v < prev[best]) {
			best = b
		}
	}
	if best < 0 {
		return nil
	}
	choice := make([]int, L)
	b := best
	for l := L - 1; l >= 0; l-- {
		c := pd[l][b]
		if c < 0 {
			panic("lgreco: internal error: broken backtrack")
		}
		choice[l] = int(c)
		if l > 0 {
			b -= int(eh[l][c])
		}
	}
	return choice
}
