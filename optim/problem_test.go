package optim

import (
	"math"
	"math/rand/v2"

	"github.com/slimgrad/slimgrad/internal/kernels"
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
	// The first strong features are multiplied by strongScale (means and
	// noise alike): high-curvature coordinates (see newStrongSoftmaxProblem).
	strong      int
	strongScale float32
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

// newSparseSoftmaxProblem is newSoftmaxProblem with class means that are
// non-zero (N(0, a²)) on only `informative` randomly chosen features per
// class: the remaining features are pure noise, so the optimal W is sparse
// and most gradient coordinates are noise that averages out over steps.
func newSparseSoftmaxProblem(seed uint64, k, f, informative, evalN int, a float64) *softmaxProblem {
	p := newSoftmaxProblem(seed, k, f, evalN, 0)
	rng := rand.New(rand.NewPCG(seed, 5))
	for c := 0; c < k; c++ {
		for _, j := range rng.Perm(f)[:informative] {
			p.mu[c*f+j] = float32(a * rng.NormFloat64())
		}
	}
	for s, y := range p.evalY { // the evaluation set was drawn with zero means
		x := p.evalX[s*f : (s+1)*f]
		for j := range x {
			x[j] += p.mu[y*f+j]
		}
	}
	return p
}

// newStrongSoftmaxProblem is newSoftmaxProblem with the first strong
// features scaled by scale: their weights have scale² times the curvature of
// the others, and their gradients are large, so DGC sends them often.
func newStrongSoftmaxProblem(seed uint64, k, f, evalN int, a float64, strong int, scale float32) *softmaxProblem {
	p := newSoftmaxProblem(seed, k, f, evalN, a)
	p.strong, p.strongScale = strong, scale
	for s := range p.evalY {
		for j := range p.evalX[s*f : s*f+strong] {
			p.evalX[s*f+j] *= scale
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
	for j := range x[:p.strong] {
		x[j] *= p.strongScale
	}
	return y
}

// probs fills p.logits with softmax probabilities of x and returns −log p_y.
func (p *softmaxProblem) probs(params, x []float32, y int) float64 {
	w, b := params[:p.k*p.f], params[p.k*p.f:]
	mx := math.Inf(-1)
	for c := 0; c < p.k; c++ {
		s := float64(b[c]) + kernels.Dot(w[c*p.f:(c+1)*p.f], x)
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
			kernels.Axpy(w[c*p.f:(c+1)*p.f], float32(d), p.x)
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

// model is a training problem for the multi-rank tests.
type model interface {
	dim() int
	// parts lists the layers as (offset, length, compressed): weight
	// matrices are compressed, biases take the dense path.
	parts() []layerSpec
	init() []float32
	grad(rng *rand.Rand, params, grad []float32, batch int)
	loss(params []float32) float64
}

func (p *softmaxProblem) parts() []layerSpec {
	return []layerSpec{{off: 0, n: p.k * p.f, codec: "w"}, {off: p.k * p.f, n: p.k, codec: "b"}}
}
func (p *softmaxProblem) init() []float32 { return make([]float32, p.dim()) }

// mlpProblem is a teacher-student classification task for a one-hidden-layer
// ReLU MLP: x ~ N(0, I_in), y = argmax T2·relu(T1·x) for a random teacher; the
// student has W1 (h×in), b1 (h), W2 (c×h), b2 (c), in that order.
type mlpProblem struct {
	in, h, c int
	t1, t2   []float64
	evalX    []float32
	evalY    []int
	x        []float32
	hid, pre []float64
	out      []float64
	dh       []float64
	th       []float64 // teacher hidden scratch
	seed     uint64
}

func newMLPProblem(seed uint64, in, h, c, th, evalN int) *mlpProblem {
	rng := rand.New(rand.NewPCG(seed, 2))
	p := &mlpProblem{in: in, h: h, c: c, x: make([]float32, in), hid: make([]float64, h), pre: make([]float64, h),
		out: make([]float64, c), dh: make([]float64, h), th: make([]float64, th), seed: seed}
	p.t1 = make([]float64, th*in)
	p.t2 = make([]float64, c*th)
	for i := range p.t1 {
		p.t1[i] = rng.NormFloat64()
	}
	for i := range p.t2 {
		p.t2[i] = rng.NormFloat64()
	}
	p.evalX = make([]float32, evalN*in)
	p.evalY = make([]int, evalN)
	for s := range p.evalY {
		p.evalY[s] = p.draw(rng, p.evalX[s*in:(s+1)*in])
	}
	return p
}

func (p *mlpProblem) dim() int { return p.h*p.in + p.h + p.c*p.h + p.c }

func (p *mlpProblem) parts() []layerSpec {
	o1 := p.h * p.in
	o2 := o1 + p.h
	o3 := o2 + p.c*p.h
	return []layerSpec{{off: 0, n: o1, codec: "w"}, {off: o1, n: p.h, codec: "b"},
		{off: o2, n: p.c * p.h, codec: "w"}, {off: o3, n: p.c, codec: "b"}}
}

func (p *mlpProblem) init() []float32 {
	rng := rand.New(rand.NewPCG(p.seed, 3))
	w := make([]float32, p.dim())
	s1 := math.Sqrt(2 / float64(p.in))
	for i := 0; i < p.h*p.in; i++ {
		w[i] = float32(s1 * rng.NormFloat64())
	}
	s2 := math.Sqrt(1 / float64(p.h))
	o2 := p.h*p.in + p.h
	for i := 0; i < p.c*p.h; i++ {
		w[o2+i] = float32(s2 * rng.NormFloat64())
	}
	return w
}

// draw fills x with a sample and returns the teacher's label.
func (p *mlpProblem) draw(rng *rand.Rand, x []float32) int {
	for j := range x {
		x[j] = float32(rng.NormFloat64())
	}
	th := len(p.t1) / p.in
	for k := 0; k < th; k++ { // teacher hidden layer, once per sample
		var a float64
		row := p.t1[k*p.in : (k+1)*p.in]
		for j, xj := range x {
			a += row[j] * float64(xj)
		}
		p.th[k] = max(a, 0)
	}
	best, arg := math.Inf(-1), 0
	for c := 0; c < p.c; c++ {
		var s float64
		for k, a := range p.th {
			s += p.t2[c*th+k] * a
		}
		if s > best {
			best, arg = s, c
		}
	}
	return arg
}

// forward computes the hidden activations and class probabilities of x and
// returns −log p_y.
func (p *mlpProblem) forward(w []float32, x []float32, y int) float64 {
	o1 := p.h * p.in
	w1, b1 := w[:o1], w[o1:o1+p.h]
	w2, b2 := w[o1+p.h:o1+p.h+p.c*p.h], w[o1+p.h+p.c*p.h:]
	for k := 0; k < p.h; k++ {
		a := b1[k] // float32 accumulation: fast enough for the tests
		row := w1[k*p.in : (k+1)*p.in]
		row = row[:len(x)]
		for j, xj := range x {
			a += row[j] * xj
		}
		p.pre[k] = float64(a)
		p.hid[k] = float64(max(a, 0))
	}
	mx := math.Inf(-1)
	for c := 0; c < p.c; c++ {
		s := float64(b2[c])
		row := w2[c*p.h : (c+1)*p.h]
		for k, hk := range p.hid {
			s += float64(row[k]) * hk
		}
		p.out[c] = s
		mx = max(mx, s)
	}
	var z float64
	for c := range p.out {
		p.out[c] = math.Exp(p.out[c] - mx)
		z += p.out[c]
	}
	for c := range p.out {
		p.out[c] /= z
	}
	return -math.Log(max(p.out[y], 1e-300))
}

func (p *mlpProblem) grad(rng *rand.Rand, w, g []float32, batch int) {
	clear(g)
	o1 := p.h * p.in
	g1, gb1 := g[:o1], g[o1:o1+p.h]
	w2 := w[o1+p.h : o1+p.h+p.c*p.h]
	g2, gb2 := g[o1+p.h:o1+p.h+p.c*p.h], g[o1+p.h+p.c*p.h:]
	inv := 1 / float64(batch)
	for s := 0; s < batch; s++ {
		y := p.draw(rng, p.x)
		p.forward(w, p.x, y)
		clear(p.dh)
		for c := 0; c < p.c; c++ {
			d := p.out[c]
			if c == y {
				d--
			}
			d *= inv
			gb2[c] += float32(d)
			row, grow := w2[c*p.h:(c+1)*p.h], g2[c*p.h:(c+1)*p.h]
			for k, hk := range p.hid {
				grow[k] += float32(d * hk)
				p.dh[k] += d * float64(row[k])
			}
		}
		for k := 0; k < p.h; k++ {
			if p.pre[k] <= 0 {
				continue
			}
			d := p.dh[k]
			gb1[k] += float32(d)
			row := g1[k*p.in : (k+1)*p.in]
			df := float32(d)
			for j, xj := range p.x {
				row[j] += df * xj
			}
		}
	}
}

func (p *mlpProblem) loss(w []float32) float64 {
	var s float64
	for i, y := range p.evalY {
		s += p.forward(w, p.evalX[i*p.in:(i+1)*p.in], y)
	}
	return s / float64(len(p.evalY))
}
