package workload

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/slimgrad/slimgrad/internal/kernels"
)

// Loss selects the output loss of an MLP.
type Loss uint8

const (
	// CrossEntropy is softmax cross-entropy over the outputs (classification).
	CrossEntropy Loss = iota
	// Squared is 0.5·(output − target)² for a single output (regression).
	Squared
)

func (l Loss) String() string {
	switch l {
	case CrossEntropy:
		return "cross-entropy"
	case Squared:
		return "squared"
	}
	return fmt.Sprintf("Loss(%d)", uint8(l))
}

// MLP is a fully connected network: Sizes[0] inputs, ReLU hidden layers of
// Sizes[1..L-1] units, Sizes[L] outputs, and a softmax cross-entropy or squared
// loss. With no hidden layer it is a linear model: multinomial logistic
// regression (CrossEntropy) or least squares (Squared, one output).
//
// Parameters are "fc{i}.weight" with Shape [Sizes[i+1], Sizes[i]] (row-major,
// [out, in]) and "fc{i}.bias" with Shape [Sizes[i+1]], in layer order.
type MLP struct {
	sizes  []int
	loss   Loss
	params []Param
	flat   []float32
	eval   *mlpWorkspace
}

// total returns the number of parameters of an MLP with these sizes.
func total(sizes []int) int {
	n := 0
	for i := 0; i+1 < len(sizes); i++ {
		n += sizes[i+1]*sizes[i] + sizes[i+1]
	}
	return n
}

// carve cuts flat into the parameter tensors of sizes.
func carve(sizes []int, flat []float32) []Param {
	var ps []Param
	off := 0
	for i := 0; i+1 < len(sizes); i++ {
		in, out := sizes[i], sizes[i+1]
		ps = append(ps,
			Param{Name: fmt.Sprintf("fc%d.weight", i), Shape: []int{out, in}, Data: flat[off : off+out*in : off+out*in]},
			Param{Name: fmt.Sprintf("fc%d.bias", i), Shape: []int{out}, Data: flat[off+out*in : off+out*in+out : off+out*in+out]})
		off += out*in + out
	}
	return ps
}

// MaxParams bounds the parameters of a model built by NewMLP (2^28 float32,
// 1 GiB per replica), so that a mistyped layer size is an ErrShape error
// rather than an out-of-memory crash or an overflowing allocation.
const MaxParams = 1 << 28

// NewMLP returns an MLP with PyTorch's default initialisation of Linear layers
// (weights and biases uniform in ±1/√in) from a PCG seeded with seed. It
// returns an ErrShape error for fewer than two sizes, a non-positive size,
// more than MaxParams parameters, or squared loss with more than one output.
func NewMLP(sizes []int, loss Loss, seed uint64) (*MLP, error) {
	if len(sizes) < 2 {
		return nil, fmt.Errorf("%w: MLP needs at least input and output sizes, got %v", ErrShape, sizes)
	}
	params := 0
	for i, s := range sizes {
		if s <= 0 || s > MaxParams {
			return nil, fmt.Errorf("%w: MLP layer size %d in %v", ErrShape, s, sizes)
		}
		if i > 0 {
			// Both factors are at most MaxParams (2^28), so the product
			// cannot overflow before the check.
			params += sizes[i-1]*s + s
			if params > MaxParams {
				return nil, fmt.Errorf("%w: MLP %v has more than %d parameters", ErrShape, sizes, MaxParams)
			}
		}
	}
	if loss == Squared && sizes[len(sizes)-1] != 1 {
		return nil, fmt.Errorf("%w: squared loss needs one output, got %d", ErrShape, sizes[len(sizes)-1])
	}
	m := &MLP{sizes: append([]int(nil), sizes...), loss: loss, flat: make([]float32, total(sizes))}
	m.params = carve(m.sizes, m.flat)
	rng := rand.New(rand.NewPCG(seed, 0x6d6c70))
	for i := 0; i+1 < len(sizes); i++ {
		bound := 1 / math.Sqrt(float64(sizes[i]))
		for _, p := range m.params[2*i : 2*i+2] {
			for j := range p.Data {
				p.Data[j] = float32((2*rng.Float64() - 1) * bound)
			}
		}
	}
	return m, nil
}

// Sizes returns the layer sizes.
func (m *MLP) Sizes() []int { return append([]int(nil), m.sizes...) }

// Params implements Model.
func (m *MLP) Params() []Param { return m.params }

// Flat implements Model.
func (m *MLP) Flat() []float32 { return m.flat }

// TrainFLOPs is the floating-point work of one sample's forward and backward
// pass with dense matrices: 2 FLOP per weight forward, 4 backward.
func (m *MLP) TrainFLOPs() float64 { return 6 * float64(len(m.flat)) }

// Clone implements Model.
func (m *MLP) Clone() Model {
	c := &MLP{sizes: append([]int(nil), m.sizes...), loss: m.loss, flat: append([]float32(nil), m.flat...)}
	c.params = carve(c.sizes, c.flat)
	return c
}

// NewWorkspace implements Model.
func (m *MLP) NewWorkspace(maxBatch int) Workspace { return m.newWorkspace(maxBatch) }

func (m *MLP) newWorkspace(maxBatch int) *mlpWorkspace {
	if maxBatch <= 0 {
		panic("workload: NewWorkspace: maxBatch must be positive")
	}
	ws := &mlpWorkspace{m: m, batch: maxBatch}
	for _, s := range m.sizes {
		ws.acts = append(ws.acts, make([]float32, maxBatch*s))
		ws.deltas = append(ws.deltas, make([]float32, maxBatch*s))
	}
	ws.flat = make([]float32, len(m.flat))
	for _, p := range carve(m.sizes, ws.flat) {
		ws.grads = append(ws.grads, p.Data)
	}
	for l := 0; l+1 < len(m.sizes); l++ {
		n := m.sizes[l] * m.sizes[l+1]
		ws.wt = append(ws.wt, make([]float32, n))
		ws.dwt = append(ws.dwt, make([]float32, n))
	}
	return ws
}

// mlpWorkspace computes with transposed weights so that every inner loop is
// an axpy over a row of Wᵀ (or of dWᵀ) scaled by one activation, skipped when
// the activation is 0: MNIST pixels are about 80% zeros and ReLU outputs about
// half, so the sparse-aware loops do a fraction of a dense GEMM's work.
type mlpWorkspace struct {
	m      *MLP
	batch  int
	acts   [][]float32 // acts[0] input, acts[i] post-activation of layer i (logits for the last)
	deltas [][]float32 // dLoss/d(pre-activation) per layer
	grads  [][]float32
	flat   []float32
	wt     [][]float32 // per layer: Wᵀ, [in, out]
	dwt    [][]float32 // per layer: dWᵀ, [in, out]
}

func (ws *mlpWorkspace) Grads() [][]float32 { return ws.grads }

func (ws *mlpWorkspace) FlatGrads() []float32 { return ws.flat }

func (ws *mlpWorkspace) check(ds *Dataset, idx []int) error {
	m := ws.m
	if ds.Dim != m.sizes[0] {
		return fmt.Errorf("%w: dataset %q has %d features, model expects %d", ErrShape, ds.Name, ds.Dim, m.sizes[0])
	}
	if len(idx) > ws.batch || len(idx) == 0 {
		return fmt.Errorf("%w: batch of %d samples, workspace holds 1..%d", ErrShape, len(idx), ws.batch)
	}
	out := m.sizes[len(m.sizes)-1]
	if m.loss == CrossEntropy && ds.Classes != out {
		return fmt.Errorf("%w: dataset %q has %d classes, model has %d outputs", ErrShape, ds.Name, ds.Classes, out)
	}
	if m.loss == Squared && ds.Classes != 0 {
		return fmt.Errorf("%w: squared loss needs a regression dataset, %q has classes", ErrShape, ds.Name)
	}
	return nil
}

// loadWeights refreshes the transposed weights from the model; call it once
// before forward passes over the current parameters.
func (ws *mlpWorkspace) loadWeights() {
	m := ws.m
	for l := 0; l+1 < len(m.sizes); l++ {
		transpose(ws.wt[l], m.params[2*l].Data, m.sizes[l+1], m.sizes[l])
	}
}

// forward fills acts for the batch; returns the summed loss and correct
// count. The transposed weights must be current (loadWeights).
func (ws *mlpWorkspace) forward(ds *Dataset, idx []int, wantDelta bool) (lossSum float64, correct int) {
	m := ws.m
	b := len(idx)
	ds.Features(ws.acts[0], idx)
	L := len(m.sizes) - 1
	for l := 0; l < L; l++ {
		in, out := m.sizes[l], m.sizes[l+1]
		wt, bias := ws.wt[l], m.params[2*l+1].Data
		z := ws.acts[l+1][:b*out]
		a := ws.acts[l][:b*in]
		for r := 0; r < b; r++ {
			zr := z[r*out : (r+1)*out]
			copy(zr, bias)
			for i, v := range a[r*in : (r+1)*in] {
				if v != 0 {
					kernels.Axpy(zr, v, wt[i*out:(i+1)*out])
				}
			}
		}
		if l+1 < L {
			for j, v := range z {
				if v < 0 {
					z[j] = 0
				}
			}
		}
	}
	out := m.sizes[L]
	logits := ws.acts[L][:b*out]
	delta := ws.deltas[L][:b*out]
	inv := 1 / float32(b)
	for r, i := range idx {
		row := logits[r*out : (r+1)*out]
		drow := delta[r*out : (r+1)*out]
		switch m.loss {
		case CrossEntropy:
			var d []float32
			if wantDelta {
				d = drow
			}
			loss, ok := softmaxCE(row, int(ds.Labels[i]), d, inv)
			lossSum += loss
			if ok {
				correct++
			}
		case Squared:
			e := row[0] - ds.Targets[i]
			lossSum += 0.5 * float64(e) * float64(e)
			if wantDelta {
				drow[0] = e * inv
			}
		}
	}
	return lossSum, correct
}

// Gradient implements Workspace.
func (ws *mlpWorkspace) Gradient(ds *Dataset, idx []int) (float64, error) {
	if err := ws.check(ds, idx); err != nil {
		return 0, err
	}
	m := ws.m
	b := len(idx)
	ws.loadWeights()
	lossSum, _ := ws.forward(ds, idx, true)
	for l := len(m.sizes) - 2; l >= 0; l-- {
		in, out := m.sizes[l], m.sizes[l+1]
		delta := ws.deltas[l+1][:b*out]
		a := ws.acts[l][:b*in]
		gw, gb, dwt := ws.grads[2*l], ws.grads[2*l+1], ws.dwt[l]
		// dWᵀ[i] = Σ_r a[r][i]·delta[r], then dW = (dWᵀ)ᵀ.
		clear(dwt)
		clear(gb)
		for r := 0; r < b; r++ {
			dr := delta[r*out : (r+1)*out]
			for i, v := range a[r*in : (r+1)*in] {
				if v != 0 {
					kernels.Axpy(dwt[i*out:(i+1)*out], v, dr)
				}
			}
			for j, v := range dr {
				gb[j] += v
			}
		}
		transpose(gw, dwt, in, out)
		if l == 0 {
			break
		}
		// delta_l[r][i] = (delta[r] · Wᵀ[i]) where a[r][i] > 0 (ReLU'), else 0.
		prev := ws.deltas[l][:b*in]
		wt := ws.wt[l]
		for r := 0; r < b; r++ {
			dr := delta[r*out : (r+1)*out]
			pr := prev[r*in : (r+1)*in]
			for i, v := range a[r*in : (r+1)*in] {
				if v > 0 {
					pr[i] = float32(kernels.Dot(dr, wt[i*out:(i+1)*out]))
				} else {
					pr[i] = 0
				}
			}
		}
	}
	return lossSum / float64(b), nil
}

// Evaluate implements Model. It is not safe for concurrent use with itself.
func (m *MLP) Evaluate(ds *Dataset, idx []int) (Metrics, error) {
	const chunk = 256
	if m.eval == nil {
		m.eval = m.newWorkspace(chunk)
	}
	ws := m.eval
	ws.loadWeights()
	var lossSum float64
	var correct int
	n, err := evalBatches(ds, idx, chunk, func(buf []int) error {
		if err := ws.check(ds, buf); err != nil {
			return err
		}
		l, c := ws.forward(ds, buf, false)
		lossSum += l
		correct += c
		return nil
	})
	if err != nil {
		return Metrics{}, err
	}
	met := Metrics{Loss: lossSum / float64(n)}
	if m.loss == CrossEntropy {
		met.Accuracy = float64(correct) / float64(n)
	}
	return met, nil
}

// transpose writes the transpose of src (rows×cols, row-major) into dst
// (cols×rows), in tiles so that reads and writes stay within a few cache
// lines.
func transpose(dst, src []float32, rows, cols int) {
	const tile = 16
	dst, src = dst[:rows*cols], src[:rows*cols]
	for j0 := 0; j0 < cols; j0 += tile {
		j1 := min(j0+tile, cols)
		for i0 := 0; i0 < rows; i0 += tile {
			i1 := min(i0+tile, rows)
			for j := j0; j < j1; j++ {
				d := dst[j*rows+i0 : j*rows+i1]
				for k := range d {
					d[k] = src[(i0+k)*cols+j]
				}
			}
		}
	}
}

var _ Model = (*MLP)(nil)
