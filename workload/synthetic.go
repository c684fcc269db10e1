package workload

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// SyntheticConfig describes a synthetic dataset: Samples samples of Dim
// features drawn from Clusters Gaussian clusters. Each cluster has its own
// feature mean (spread Shift) and its own perturbation (Drift) of the true
// weights, so that sharding by cluster (NonIID) gives workers genuinely
// different local objectives.
type SyntheticConfig struct {
	Samples  int
	Dim      int
	Clusters int
	Shift    float64 // standard deviation of cluster means
	Drift    float64 // relative perturbation of each cluster's true weights
	Noise    float64 // label / target noise
	Seed     uint64
}

// DefaultSynthetic returns the configuration used by the CLI's synthetic
// workloads: 8192 samples, 64 features, 8 clusters.
func DefaultSynthetic() SyntheticConfig {
	return SyntheticConfig{Samples: 8192, Dim: 64, Clusters: 8, Shift: 1, Drift: 0.3, Noise: 0.1, Seed: 1}
}

func (c SyntheticConfig) validate() error {
	if c.Samples <= 0 || c.Dim <= 0 || c.Clusters <= 0 || c.Shift < 0 || c.Drift < 0 || c.Noise < 0 {
		return fmt.Errorf("%w: invalid synthetic config %+v", ErrShape, c)
	}
	return nil
}

// synth draws features and per-sample linear scores x·w_c + b_c.
func synth(c SyntheticConfig) (x []float32, score []float64, groups []int32) {
	rng := rand.New(rand.NewPCG(c.Seed, 0x73796e))
	w := make([]float64, c.Dim)
	for j := range w {
		w[j] = rng.NormFloat64() / math.Sqrt(float64(c.Dim))
	}
	means := make([][]float64, c.Clusters)
	ws := make([][]float64, c.Clusters)
	for k := range means {
		means[k] = make([]float64, c.Dim)
		ws[k] = make([]float64, c.Dim)
		for j := range means[k] {
			means[k][j] = c.Shift * rng.NormFloat64()
			ws[k][j] = w[j] + c.Drift*rng.NormFloat64()/math.Sqrt(float64(c.Dim))
		}
	}
	x = make([]float32, c.Samples*c.Dim)
	score = make([]float64, c.Samples)
	groups = make([]int32, c.Samples)
	for i := range c.Samples {
		k := rng.IntN(c.Clusters)
		groups[i] = int32(k)
		var s float64
		for j := range c.Dim {
			v := means[k][j] + rng.NormFloat64()
			x[i*c.Dim+j] = float32(v)
			s += v * ws[k][j]
		}
		score[i] = s + c.Noise*rng.NormFloat64()
	}
	return x, score, groups
}

// LeastSquares returns a regression dataset y = x·w_c + noise (train and a
// held-out test set drawn from the same clusters). Train it with
// NewMLP([]int{Dim, 1}, Squared, seed).
func LeastSquares(c SyntheticConfig) (train, test *Dataset, err error) {
	if err := c.validate(); err != nil {
		return nil, nil, err
	}
	n := c.Samples
	c.Samples = n + n/4
	x, score, groups := synth(c)
	y := make([]float32, len(score))
	for i, s := range score {
		y[i] = float32(s)
	}
	return split("leastsquares", n, c.Dim, 0, x, nil, y, groups)
}

// Logistic returns a binary classification dataset with labels drawn from
// sigmoid(x·w_c). Train it with NewMLP([]int{Dim, 2}, CrossEntropy, seed)
// (multinomial logistic regression over two classes).
func Logistic(c SyntheticConfig) (train, test *Dataset, err error) {
	if err := c.validate(); err != nil {
		return nil, nil, err
	}
	n := c.Samples
	c.Samples = n + n/4
	x, score, groups := synth(c)
	rng := rand.New(rand.NewPCG(c.Seed, 0x6c6f67))
	lab := make([]int32, len(score))
	for i, s := range score {
		if rng.Float64() < 1/(1+math.Exp(-4*s)) {
			lab[i] = 1
		}
	}
	return split("logistic", n, c.Dim, 2, x, lab, nil, groups)
}

func split(name string, n, dim, classes int, x []float32, lab []int32, y []float32, groups []int32) (*Dataset, *Dataset, error) {
	cut := func(lo, hi int) ([]int32, []float32) {
		var l []int32
		var t []float32
		if lab != nil {
			l = lab[lo:hi]
		}
		if y != nil {
			t = y[lo:hi]
		}
		return l, t
	}
	total := len(groups)
	l, t := cut(0, n)
	train, err := NewDataset(name+"-train", n, dim, classes, x[:n*dim], l, t, groups[:n])
	if err != nil {
		return nil, nil, err
	}
	l, t = cut(n, total)
	test, err := NewDataset(name+"-test", total-n, dim, classes, x[n*dim:], l, t, groups[n:])
	if err != nil {
		return nil, nil, err
	}
	return train, test, nil
}
