package compressors

import (
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"
)

// TestPowerSGDMatchesSVD checks PowerSGD against an independent reference:
// warm-started power iteration on a fixed matrix converges to the best
// rank-r approximation, whose error gonum's SVD gives exactly
// (sqrt of the sum of the discarded squared singular values).
func TestPowerSGDMatchesSVD(t *testing.T) {
	const rows, cols, rank = 50, 30, 3
	r := rand.New(rand.NewPCG(43, 44))
	// A matrix with a decaying spectrum: Σ_k s_k u_k v_kᵀ, s_k = 2^-k.
	m := make([]float32, rows*cols)
	for k := range cols {
		u, v := make([]float64, rows), make([]float64, cols)
		for i := range u {
			u[i] = r.NormFloat64()
		}
		for j := range v {
			v[j] = r.NormFloat64()
		}
		s := math.Ldexp(1, -k)
		for i := range rows {
			for j := range cols {
				m[i*cols+j] += float32(s * u[i] * v[j])
			}
		}
	}
	dense := mat.NewDense(rows, cols, nil)
	for i := range rows {
		for j := range cols {
			dense.Set(i, j, float64(m[i*cols+j]))
		}
	}
	var svd mat.SVD
	if !svd.Factorize(dense, mat.SVDNone) {
		t.Fatal("SVD failed")
	}
	var best float64
	for _, s := range svd.Values(nil)[rank:] {
		best += s * s
	}
	c, err := New("powersgd:3", rows*cols, WithShape(rows, cols), WithSeed(3))
	if err != nil {
		t.Fatal(err)
	}
	y := make([]float32, len(m))
	var got float64
	for range 40 {
		frame, err := c.Compress(nil, m)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Decompress(y, frame); err != nil {
			t.Fatal(err)
		}
		got = 0
		for i := range m {
			d := float64(y[i]) - float64(m[i])
			got += d * d
		}
	}
	if got > best*1.001+1e-9 {
		t.Fatalf("after 40 warm-started steps ‖M−P̂Qᵀ‖² = %g, best rank-%d (SVD) %g", got, rank, best)
	}
	if got < best*(1-1e-3) {
		t.Fatalf("‖M−P̂Qᵀ‖² = %g is below the SVD optimum %g: impossible", got, best)
	}
}
