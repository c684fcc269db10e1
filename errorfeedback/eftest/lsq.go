package eftest

import (
	"math"
	"math/rand/v2"
)

// LSQ is the heterogeneous least-squares problem of docs/algorithms.md §3.4 T1:
// f_i(x) = ½‖A_i x − b_i‖² with Gaussian A_i (entries N(0, 1/m)) and
// b_i = A_i x_i* for a distinct x_i* per worker; f = (1/n) Σ f_i.
type LSQ struct {
	n, d, m int
	a       [][]float64 // a[i] is m×d row-major
	b       [][]float64
	xstar   []float64
	r       []float64 // scratch residual
	g       []float64 // scratch gradient
}

// NewLSQ returns the problem with n workers, d unknowns and m rows per
// worker, drawn from a PCG seeded with seed. With shared, every worker has
// the same A (so the Hessian of f does not depend on n) and only the x_i*
// differ.
func NewLSQ(seed uint64, n, d, m int, shared bool) *LSQ {
	rng := rand.New(rand.NewPCG(seed, 99))
	p := &LSQ{n: n, d: d, m: m, r: make([]float64, m), g: make([]float64, d)}
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

// Grad writes ∇f_i(x) + σ·ξ into g, ξ standard Gaussian from rng (which may
// be nil when σ = 0), computed in float64 and rounded once. Not safe for
// concurrent use (shared scratch).
func (p *LSQ) Grad(i int, x []float32, g []float32, sigma float64, rng *rand.Rand) {
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

// RelErr is ‖x − x*‖/‖x*‖.
func (p *LSQ) RelErr(x []float32) float64 {
	var num, den float64
	for j, xs := range p.xstar {
		num += (float64(x[j]) - xs) * (float64(x[j]) - xs)
		den += xs * xs
	}
	return math.Sqrt(num / den)
}

// Workers is the number of workers n.
func (p *LSQ) Workers() int { return p.n }

// Dim is the number of unknowns d.
func (p *LSQ) Dim() int { return p.d }

// MinibatchGrad writes worker i's natural stochastic gradient at x into g:
// (m/B)·Σ_{r∈S} a_r(a_rᵀx − b_r) over B = batch rows S of A_i drawn
// uniformly with replacement from rng, computed in float64 and rounded
// once. Not safe for concurrent use (shared scratch).
func (p *LSQ) MinibatchGrad(i int, x, g []float32, batch int, rng *rand.Rand) {
	g64 := p.g
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
}

// Floor is the mean squared distance ‖x − x*‖² over the last half of a run
// whose relative errors (RelErr) after every step are errs.
func (p *LSQ) Floor(errs []float64) float64 {
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
