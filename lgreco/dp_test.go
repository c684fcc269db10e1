package lgreco

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

// bruteForce returns the least cost over all configurations whose real error
// sum is ≤ budget (with the same layer-order float64 sums as Solve), or +Inf.
func bruteForce(t Table, budget float64) (best float64, arg []int) {
	L := len(t.Err)
	best = math.Inf(1)
	choice := make([]int, L)
	var rec func(l int)
	rec = func(l int) {
		if l == L {
			e, c := sums(t, choice)
			if finite(e) && finite(c) && e <= budget && c < best {
				best, arg = c, append([]int(nil), choice...)
			}
			return
		}
		for k := range t.Err[l] {
			choice[l] = k
			rec(l + 1)
		}
	}
	rec(0)
	return best, arg
}

// bruteDiscrete is the optimum of the discretized problem that the DP solves:
// least cost with Σ ceil(err/w) ≤ B, each candidate's err ≤ E and finite.
func bruteDiscrete(t Table, E float64, B int) float64 {
	w := E / float64(B)
	L := len(t.Err)
	best := math.Inf(1)
	choice := make([]int, L)
	var rec func(l int, used int64, cost float64)
	rec = func(l int, used int64, cost float64) {
		if l == L {
			if used <= int64(B) && cost < best {
				best = cost
			}
			return
		}
		for k, e := range t.Err[l] {
			if !finite(e) || e > E || !finite(t.Cost[l][k]) {
				continue
			}
			q := math.Ceil(e / w)
			if q*w < e {
				q++
			}
			choice[l] = k
			rec(l+1, used+int64(q), cost+t.Cost[l][k])
		}
	}
	rec(0, 0, 0)
	return best
}

func randomTable(rng *rand.Rand, L, C int) Table {
	t := Table{Err: make([][]float64, L), Cost: make([][]float64, L), Default: make([]int, L)}
	for l := range L {
		nc := 1 + rng.IntN(C)
		t.Err[l] = make([]float64, nc)
		t.Cost[l] = make([]float64, nc)
		for c := range nc {
			// Errors over a few decades, sometimes exactly zero; costs
			// integer-valued (bytes) or real (seconds).
			switch rng.IntN(10) {
			case 0:
				t.Err[l][c] = 0
			default:
				t.Err[l][c] = math.Exp(rng.NormFloat64() * 1.5)
			}
			if rng.IntN(2) == 0 {
				t.Cost[l][c] = float64(rng.IntN(1000))
			} else {
				t.Cost[l][c] = rng.ExpFloat64()
			}
		}
		t.Default[l] = rng.IntN(nc)
	}
	return t
}

func TestSolveMatchesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 3000 {
		L := 1 + rng.IntN(6)
		tab := randomTable(rng, L, 4)
		alpha := []float64{1, 1, 0.5 + rng.Float64(), 0.3}[rng.IntN(4)]
		B := []int{DefaultBuckets, 100, 10}[rng.IntN(3)]
		sol, err := Solve(tab, alpha, B)
		if err != nil {
			t.Fatal(err)
		}
		defErr, defCost := sums(tab, tab.Default)
		E := alpha * defErr
		bf, _ := bruteForce(tab, E)
		if math.IsInf(bf, 1) {
			if sol.Feasible {
				t.Fatalf("trial %d: brute force finds nothing within budget %v, DP returned %v", trial, E, sol.Choice)
			}
			continue
		}
		if alpha >= 1 && !sol.Feasible {
			t.Fatalf("trial %d: alpha %v ≥ 1 but no solution (default is feasible)", trial, alpha)
		}
		if !sol.Feasible {
			// Allowed only if nothing fits the discretized budget either.
			if d := bruteDiscrete(tab, E, B); !math.IsInf(d, 1) {
				t.Fatalf("trial %d: DP infeasible, discrete optimum %v exists", trial, d)
			}
			continue
		}
		e, c := sums(tab, sol.Choice)
		if e != sol.Err || c != sol.Cost {
			t.Fatalf("trial %d: reported err/cost %v/%v, recomputed %v/%v", trial, sol.Err, sol.Cost, e, c)
		}
		// Every choice meets the real budget ...
		if !(e <= E) {
			t.Fatalf("trial %d: Σerr %v > budget %v", trial, e, E)
		}
		// ... is never costlier than the uniform default (when it is feasible) ...
		if defErr <= E && c > defCost {
			t.Fatalf("trial %d: cost %v > uniform default %v", trial, c, defCost)
		}
		// ... is at least the true optimum ...
		if c < bf {
			t.Fatalf("trial %d: cost %v below brute-force optimum %v: budget violated", trial, c, bf)
		}
		// ... and equals the optimum of the discretized problem (or the
		// default if that is cheaper) ...
		want := bruteDiscrete(tab, E, B)
		if defErr <= E {
			want = min(want, defCost)
		}
		if c != want {
			t.Fatalf("trial %d: cost %v, discretized optimum %v (L=%d B=%d)", trial, c, want, L, B)
		}
		// ... which is within the slack: no worse than the optimum for the
		// budget shrunk by L buckets.
		if slack, _ := bruteForce(tab, E-float64(L)*E/float64(B)); c > slack {
			t.Fatalf("trial %d: cost %v worse than optimum %v at budget E−L·w", trial, c, slack)
		}
	}
}

func TestSolveNonFinite(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	tests := []struct {
		name     string
		tab      Table
		feasible bool
		want     []int
	}{
		{
			// Candidate 0 is the cheapest but its error is NaN.
			name: "nan error never chosen",
			tab: Table{
				Err:     [][]float64{{nan, 1, 2}, {0, 1}},
				Cost:    [][]float64{{1, 10, 5}, {3, 4}},
				Default: []int{1, 1},
			},
			feasible: true, want: []int{2, 0},
		},
		{
			name: "inf error never chosen",
			tab: Table{
				Err:     [][]float64{{inf, 1}, {-inf, 1}},
				Cost:    [][]float64{{1, 10}, {1, 10}},
				Default: []int{1, 1},
			},
			feasible: true, want: []int{1, 1},
		},
		{
			name: "nan or inf cost never chosen",
			tab: Table{
				Err:     [][]float64{{0.5, 1}, {0.5, 1}},
				Cost:    [][]float64{{nan, 10}, {inf, 10}},
				Default: []int{1, 1},
			},
			feasible: true, want: []int{1, 1},
		},
		{
			name: "nan default error: budget undefined",
			tab: Table{
				Err:     [][]float64{{0.5, nan}, {0.5, 1}},
				Cost:    [][]float64{{1, 10}, {1, 10}},
				Default: []int{1, 1},
			},
		},
		{
			name: "inf default error: budget undefined",
			tab: Table{
				Err:     [][]float64{{0.5, inf}},
				Cost:    [][]float64{{1, 10}},
				Default: []int{1},
			},
		},
		{
			name: "zero budget: cheapest exact candidates",
			tab: Table{
				Err:     [][]float64{{0, 0, 1}, {0, 1}},
				Cost:    [][]float64{{5, 3, 1}, {7, 1}},
				Default: []int{0, 0},
			},
			feasible: true, want: []int{1, 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sol, err := Solve(tt.tab, 1, DefaultBuckets)
			if err != nil {
				t.Fatal(err)
			}
			if sol.Feasible != tt.feasible {
				t.Fatalf("feasible = %v, want %v (choice %v)", sol.Feasible, tt.feasible, sol.Choice)
			}
			if !tt.feasible {
				if sol.Choice != nil {
					t.Fatalf("infeasible solution has choice %v", sol.Choice)
				}
				return
			}
			for l := range tt.want {
				if sol.Choice[l] != tt.want[l] {
					t.Fatalf("choice %v, want %v", sol.Choice, tt.want)
				}
			}
		})
	}
}

func TestSolveInfeasibleAlpha(t *testing.T) {
	// α = 0.5 and no layer can halve its error: nothing is feasible.
	tab := Table{
		Err:     [][]float64{{3, 2}, {3, 2}},
		Cost:    [][]float64{{1, 2}, {1, 2}},
		Default: []int{0, 0},
	}
	sol, err := Solve(tab, 0.5, DefaultBuckets)
	if err != nil {
		t.Fatal(err)
	}
	if sol.Feasible || sol.Choice != nil {
		t.Fatalf("got feasible %v choice %v, want infeasible", sol.Feasible, sol.Choice)
	}
	if sol.Budget != 3 {
		t.Fatalf("budget %v, want 3", sol.Budget)
	}
}

func TestSolveBadTables(t *testing.T) {
	good := Table{Err: [][]float64{{1}}, Cost: [][]float64{{1}}, Default: []int{0}}
	tests := []struct {
		name    string
		tab     Table
		alpha   float64
		buckets int
	}{
		{"rows", Table{Err: [][]float64{{1}}, Cost: nil, Default: []int{0}}, 1, 10},
		{"empty layer", Table{Err: [][]float64{{}}, Cost: [][]float64{{}}, Default: []int{0}}, 1, 10},
		{"ragged", Table{Err: [][]float64{{1, 2}}, Cost: [][]float64{{1}}, Default: []int{0}}, 1, 10},
		{"default", Table{Err: [][]float64{{1}}, Cost: [][]float64{{1}}, Default: []int{1}}, 1, 10},
		{"negative cost", Table{Err: [][]float64{{1}}, Cost: [][]float64{{-1}}, Default: []int{0}}, 1, 10},
		{"alpha", good, 0, 10},
		{"alpha nan", good, math.NaN(), 10},
		{"buckets", good, 1, 0},
	}
	for _, tt := range tests {
		if _, err := Solve(tt.tab, tt.alpha, tt.buckets); !errors.Is(err, ErrTable) {
			t.Errorf("%s: err = %v, want ErrTable", tt.name, err)
		}
	}
}

func BenchmarkSolve(b *testing.B) {
	for _, L := range []int{50, 150} {
		rng := rand.New(rand.NewPCG(3, 4))
		tab := randomTable(rng, L, 1)
		for l := range tab.Err {
			tab.Err[l] = make([]float64, 7)
			tab.Cost[l] = make([]float64, 7)
			for c := range 7 {
				tab.Err[l][c] = float64(7-c) * (1 + rng.Float64())
				tab.Cost[l][c] = float64(c+1) * 1000
			}
			tab.Default[l] = 3
		}
		b.Run("L="+itoa(L)+"/C=7/B=10000", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Solve(tab, 1, DefaultBuckets); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}
