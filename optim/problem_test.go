package optim

import (
	"math"
	"math/rand/v2"
)

// softmaxProblem is multinomial logistic regression on a Gaussian mixture:
// K classes with means μ_k ~ N(0, a²I) in F dimensions, x = μ_y + N(0, I).
// Parameters: W (K×F, row-major) at [0, K·F), then the bias b (K) at
// [K·F, K·F+K). Each worker draws fresh samples from its own seeded stream
// (IID data parallelism).
type softmaxProblem struct {
	k, f   int
	mu     []float32 // K×F
	evalX  []float32 // E×F
	evalY  []int
	x      []float32 // scratch sample
	logits []float64
	noise  []float32 // pool of poolN N(0, 1) scalars, drawn once
	poolN  int       // a power of two
}

func newSoftmaxProblem(seed uint64, k, f, evalN int, a float64) *softmaxProblem {
	rng := rand.New(rand.NewPCG(seed, 1))
	p := &softmaxProblem{k: k, f: f, mu: make([]float32, k*f), x: make([]float32, f), logits: make([]float64, k)}
	for i := range p.mu {
		p.mu[i] = float32(a * rng.NormFloat64())
	}
	p.poolN = 1 << 18
	p.noise = make([]float32, p.poolN)
	for i := range p.noise {
		p.noise[i] = float32(rng.NormFloat64())
	}
	p.evalX = make([]float32, evalN*f)
	p.evalY = make([]int, evalN)
	for s := 0; s < evalN; s++ { // fresh noise for the evaluation set
		y := rng.IntN(k)
		p.evalY[s] = y
		x := p.evalX[s*f : (s+1)*f]
		for j := range x {
			x[j] = p.mu[y*f+j] + float32(rng.NormFloat64())
		}
	}
	return p
}

// dim is the number of parameters.
func (p *softmaxProblem) dim() int { return p.k*p.f + p.k }

// draw fills x with a training sample and returns its class: a random class
// mean plus noise read from the scalar pool at a random offset (a window of
// a long Gaussian sequence, with a random sign: cheap, effectively fresh
// samples that span all F dimensions).
func (p *softmaxProblem) draw(rng *rand.Rand, x []float32) int {
	y := rng.IntN(p.k)
	mu := p.mu[y*p.f : (y+1)*p.f]
	q := rng.Uint64()
	o, mask := int(q>>1)&(p.poolN-1), p.poolN-1
	sign := float32(1)
	if q&1 == 1 {
		sign = -1
	}
	for j := range x {
		x[j] = mu[j] + sign*p.noise[(o+j)&mask]
	}
	return y
}

// probs fills p.logits with softmax probabilities of x and returns −log p_y.
func (p *softmaxProblem) probs(params, x []float32, y int) float64 {
	w, b := params[:p.k*p.f], params[p.k*p.f:]
	mx := math.Inf(-1)
	for c := 0; c < p.k; c++ {
		s := float64(b[c])
		row := w[c*p.f : (c+1)*p.f]
		for j, xj := range x {
			s += float64(row[j]) * float64(xj)
		}
		p.logits[c] = s
		mx = max(mx, s)
	}
	var z float64
	for c := range p.logits {
		p.logits[c] = math.Exp(p.logits[c] - mx)
		z += p.logits[c]
	}
	for c := range p.logits {
		p.logits[c] /= z
	}
	return -math.Log(max(p.logits[y], 1e-300))
}

// grad sets grad to the mean cross-entropy gradient over batch fresh samples.
func (p *softmaxProblem) grad(rng *rand.Rand, params, grad []float32, batch int) {
	clear(grad)
	w, b := grad[:p.k*p.f], grad[p.k*p.f:]
	inv := 1 / float64(batch)
	for s := 0; s < batch; s++ {
		y := p.draw(rng, p.x)
		p.probs(params, p.x, y)
		for c := 0; c < p.k; c++ {
			d := p.logits[c]
			if c == y {
				d--
			}
			d *= inv
			b[c] += float32(d)
			row := w[c*p.f : (c+1)*p.f]
			df := float32(d)
			for j, xj := range p.x {
				row[j] += df * xj
			}
		}
	}
}

// loss is the mean cross-entropy on the fixed evaluation set.
func (p *softmaxProblem) loss(params []float32) float64 {
	var s float64
	for i, y := range p.evalY {
		s += p.probs(params, p.evalX[i*p.f:(i+1)*p.f], y)
	}
	return s / float64(len(p.evalY))
}
