package lgreco

import (
	"math"
	"math/rand/v2"
	"slices"

	"gonum.org/v1/gonum/mat"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/internal/kernels"
)

// Errors returns err_l(c) = ‖G − C_c(G)‖₂ (the L2 norm, not squared) for
// every candidate c of layer l, where G is g (Rows·Cols elements, row-major),
// typically the average error-compensated gradient of the last AccIter steps.
// Values are computed in float64 on float32(g), as the codecs see it:
//
//	none           0
//	fp16, bf16     exact rounding error
//	topk, dgc      exact: the norm of all but the k largest magnitudes (dgc's
//	               sampled threshold is approximated by exact top-k)
//	randomk        sqrt of the expected squared error, sqrt((n/k − 1)·‖G‖²)
//	sign           exact: ‖G − RMS(G)·sign(G)‖
//	qsgd           sqrt of the expected squared error of the stochastic
//	               rounding: Σ_buckets (‖G_B‖/s)²·Σ_j p_j(1−p_j), p_j the
//	               fractional part of s·|G_j|/‖G_B‖ (deterministic, no draw)
//	powersgd       rank r: ErrorSVD gives sqrt(Σ_{i>r} σ_i²) exactly; ErrorPower
//	               runs PowerIters power iterations from a Gaussian Q seeded by
//	               (Seed, l, r) and returns ‖G − P̂P̂ᵀG‖; r > min(Rows,Cols)
//	               is the true rank's error (0)
//
// If g holds NaN or Inf every error is NaN, which the DP treats as infeasible.
// It panics if len(g) != Rows·Cols. Safe for concurrent use (it allocates its
// scratch).
func (p *Plan) Errors(l int, g []float64) []float64 {
	pl := &p.layers[l]
	n := pl.Elems()
	if len(g) != n {
		panic("lgreco: gradient length does not match the layer")
	}
	out := make([]float64, len(pl.cands))
	x := make([]float32, n)
	for i, v := range g {
		x[i] = float32(v)
		if math.IsNaN(v) || math.IsInf(v, 0) || math.IsInf(float64(x[i]), 0) {
			for c := range out {
				out[c] = math.NaN()
			}
			return out
		}
	}
	var tail []float64  // tail[k]: Σ of all but the k largest squares
	var sigma []float64 // singular values, descending
	svdOK := true
	method := p.cfg.ErrorMethod
	if method == ErrorAuto {
		method = ErrorPower
		if min(pl.Rows, pl.Cols) <= 512 {
			method = ErrorSVD
		}
	}
	for c, cand := range pl.cands {
		r := cand.Recipe
		switch r.Codec {
		case compressors.CodecNone:
			out[c] = 0
		case compressors.CodecFP16, compressors.CodecBF16:
			out[c] = roundErr(x, r.Codec == compressors.CodecBF16)
		case compressors.CodecTopK, compressors.CodecDGC:
			if tail == nil {
				tail = sortedTail(x)
			}
			out[c] = math.Sqrt(tail[r.K(n)])
		case compressors.CodecRandomK:
			k := r.K(n)
			if k == 0 {
				out[c] = math.Sqrt(kernels.SumSq(x))
			} else {
				out[c] = math.Sqrt((float64(n)/float64(k) - 1) * kernels.SumSq(x))
			}
		case compressors.CodecSign:
			out[c] = signErr(x)
		case compressors.CodecQSGD:
			out[c] = qsgdErr(x, r.Levels)
		case compressors.CodecPowerSGD:
			rk := min(r.Rank, pl.Rows, pl.Cols)
			if method == ErrorSVD {
				if sigma == nil && svdOK {
					sigma, svdOK = singularValues(x, pl.Rows, pl.Cols)
				}
				if !svdOK {
					out[c] = math.NaN()
					continue
				}
				var s float64
				for _, v := range sigma[rk:] {
					s += v * v
				}
				out[c] = math.Sqrt(s)
			} else {
				out[c] = powerErr(x, pl.Rows, pl.Cols, rk, p.cfg.PowerIters, p.cfg.Seed, uint64(l))
			}
		default:
			out[c] = math.NaN()
		}
	}
	return out
}

// sortedTail returns tail with tail[k] = the sum of all but the k largest
// squared magnitudes of x (len n+1), in float64: the squares sorted ascending
// and summed from the smallest up, which keeps the sums accurate.
func sortedTail(x []float32) (tail []float64) {
	sq := make([]float64, len(x))
	for i, v := range x {
		sq[i] = float64(v) * float64(v)
	}
	slices.Sort(sq)
	n := len(x)
	tail = make([]float64, n+1)
	// tail[n-i-1] = Σ of the i+1 smallest.
	var s float64
	for i, v := range sq {
		s += v
		tail[n-i-1] = s
	}
	return tail
}

func roundErr(x []float32, bf bool) float64 {
	var s float64
	for _, v := range x {
		var y float32
		if bf {
			y = kernels.BF16ToF32(kernels.F32ToBF16(v))
		} else {
			y = kernels.F16ToF32(kernels.F32ToF16(v))
		}
		d := float64(y) - float64(v)
		s += d * d
	}
	return math.Sqrt(s)
}

func signErr(x []float32) float64 {
	sc := float64(compressors.RMS(x))
	var s float64
	for _, v := range x {
		y := sc
		if v < 0 {
			y = -sc
		}
		d := float64(v) - y
		s += d * d
	}
	return math.Sqrt(s)
}

// qsgdErr is sqrt(E‖Q(x) − x‖²) for QSGD with s levels and buckets of
// compressors.QSGDBucket: element j of bucket B is decoded as
// ‖x_B‖/s·(l or l+1) with P(l+1) = p_j, so its variance is (‖x_B‖/s)²·p_j(1−p_j).
func qsgdErr(x []float32, s int) float64 {
	var total float64
	for b := 0; b < len(x); b += compressors.QSGDBucket {
		xb := x[b:min(b+compressors.QSGDBucket, len(x))]
		norm := float64(float32(math.Sqrt(kernels.SumSq(xb))))
		if norm == 0 {
			continue
		}
		sc := float64(s) / norm
		var v float64
		for _, e := range xb {
			a := math.Abs(float64(e)) * sc
			if a >= float64(s) {
				continue
			}
			f := a - math.Floor(a)
			v += f * (1 - f)
		}
		total += v * (norm / float64(s)) * (norm / float64(s))
	}
	return math.Sqrt(total)
}

// singularValues returns the singular values of the rows×cols matrix x in
// descending order; false if the factorization failed.
func singularValues(x []float32, rows, cols int) ([]float64, bool) {
	d := make([]float64, len(x))
	for i, v := range x {
		d[i] = float64(v)
	}
	var svd mat.SVD
	if !svd.Factorize(mat.NewDense(rows, cols, d), mat.SVDNone) {
		return nil, false
	}
	return svd.Values(nil), true
}

// powerErr estimates the rank-r PowerSGD error with iters power iterations
// from a seeded Gaussian Q, as the reference's 'Power' method: orthogonalize
// Q, P = G·Q, orthogonalize P, Q = Gᵀ·P; then ‖G − P·Qᵀ‖² = ‖G‖² − ‖Q‖²
// because P has orthonormal (or zero) columns.
func powerErr(x []float32, rows, cols, r, iters int, seed, layer uint64) float64 {
	if r == 0 {
		return math.Sqrt(kernels.SumSq(x))
	}
	d := make([]float64, len(x))
	var norm2 float64
	for i, v := range x {
		d[i] = float64(v)
		norm2 += d[i] * d[i]
	}
	g := mat.NewDense(rows, cols, d)
	rng := rand.New(rand.NewPCG(seed^0x6c677265636f, layer<<16|uint64(r)))
	qd := make([]float64, cols*r)
	for i := range qd {
		qd[i] = rng.NormFloat64()
	}
	q := mat.NewDense(cols, r, qd)
	pm := mat.NewDense(rows, r, nil)
	for range iters {
		orthonormalize(q)
		pm.Mul(g, q)
		orthonormalize(pm)
		q.Mul(g.T(), pm)
	}
	var qn float64
	for _, v := range q.RawMatrix().Data {
		qn += v * v
	}
	return math.Sqrt(max(0, norm2-qn))
}

// orthonormalize runs modified Gram–Schmidt on the columns of m in place;
// a (numerically) zero column becomes zero, never NaN.
func orthonormalize(m *mat.Dense) {
	rows, cols := m.Dims()
	raw := m.RawMatrix()
	at := func(i, j int) *float64 { return &raw.Data[i*raw.Stride+j] }
	for j := range cols {
		var n0 float64
		for i := range rows {
			n0 += *at(i, j) * *at(i, j)
		}
		for k := range j {
			var dot float64
			for i := range rows {
				dot += *at(i, j) * *at(i, k)
			}
			for i := range rows {
				*at(i, j) -= dot * *at(i, k)
			}
		}
		var n float64
		for i := range rows {
			n += *at(i, j) * *at(i, j)
		}
		// A column that projection cancelled (to rounding noise) is dependent
		// on the previous ones: zero it rather than blow up the noise.
		if n <= 1e-24*n0 || n == 0 {
			for i := range rows {
				*at(i, j) = 0
			}
			continue
		}
		n = math.Sqrt(n)
		for i := range rows {
			*at(i, j) /= n
		}
	}
}
