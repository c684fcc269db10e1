package optim

import "math/rand/v2"

// Test helpers shared with the external test package optim_test (which can
// import package worker: worker depends on optim's neighbours, not on the
// other way round).

// Softmax is the softmax-regression problem of the tests (see softmaxProblem).
type Softmax = softmaxProblem

// NewSoftmax is newSoftmaxProblem.
var NewSoftmax = newSoftmaxProblem

// Dim is the number of parameters.
func (p *softmaxProblem) Dim() int { return p.dim() }

// Grad is grad (not safe for concurrent use: shared scratch).
func (p *softmaxProblem) Grad(rng *rand.Rand, params, grad []float32, batch int) {
	p.grad(rng, params, grad, batch)
}

// Loss is loss (not safe for concurrent use).
func (p *softmaxProblem) Loss(params []float32) float64 { return p.loss(params) }

// SampleMean and SampleStddev are the sample mean and standard deviation.
var SampleMean, SampleStddev = mean, stddev
