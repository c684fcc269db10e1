package workload

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/slimgrad/slimgrad/internal/kernels"
)

// CNN is a small convolutional network for 28×28 single-channel images
// (MNIST): a 5×5 valid convolution with Filters output channels, ReLU, 2×2
// max pooling, and a fully connected layer to Classes outputs with softmax
// cross-entropy, with hand-written forward and backward passes.
//
// Parameters, in order: "conv.weight" [Filters, 25] (each filter a row, so
// PowerSGD sees a matrix), "conv.bias" [Filters], "fc.weight" [Classes,
// Filters·144], "fc.bias" [Classes].
type CNN struct {
	filters, classes int
	params           []Param
	flat             []float32
	eval             *cnnWorkspace
}

const (
	cnnSide   = 28
	cnnK      = 5
	cnnConv   = cnnSide - cnnK + 1 // 24
	cnnPool   = cnnConv / 2        // 12
	cnnPixels = cnnSide * cnnSide
)

// NewCNN returns a CNN with PyTorch's default initialisation (uniform in
// ±1/√fan_in) from a PCG seeded with seed.
func NewCNN(filters, classes int, seed uint64) (*CNN, error) {
	if filters < 1 || classes < 2 {
		return nil, fmt.Errorf("%w: CNN with %d filters and %d classes", ErrShape, filters, classes)
	}
	c := &CNN{filters: filters, classes: classes}
	c.flat = make([]float32, c.size())
	c.params = c.carve(c.flat)
	rng := rand.New(rand.NewPCG(seed, 0x636e6e))
	fans := []int{cnnK * cnnK, cnnK * cnnK, filters * cnnPool * cnnPool, filters * cnnPool * cnnPool}
	for i, p := range c.params {
		bound := 1 / math.Sqrt(float64(fans[i]))
		for j := range p.Data {
			p.Data[j] = float32((2*rng.Float64() - 1) * bound)
		}
	}
	return c, nil
}

func (c *CNN) hidden() int { return c.filters * cnnPool * cnnPool }

func (c *CNN) size() int {
	return c.filters*cnnK*cnnK + c.filters + c.classes*c.hidden() + c.classes
}

func (c *CNN) carve(flat []float32) []Param {
	shapes := []struct {
		name  string
		shape []int
	}{
		{"conv.weight", []int{c.filters, cnnK * cnnK}}, {"conv.bias", []int{c.filters}},
		{"fc.weight", []int{c.classes, c.hidden()}}, {"fc.bias", []int{c.classes}},
	}
	var ps []Param
	off := 0
	for _, s := range shapes {
		p := Param{Name: s.name, Shape: s.shape}
		n := p.Size()
		p.Data = flat[off : off+n : off+n]
		off += n
		ps = append(ps, p)
	}
	return ps
}

// Params implements Model.
func (c *CNN) Params() []Param { return c.params }

// Flat implements Model.
func (c *CNN) Flat() []float32 { return c.flat }

// TrainFLOPs is the floating-point work of one sample's forward and backward
// pass: the convolution applies every filter weight at all 576 positions
// (2 FLOP per multiply-add forward, as much again for the weight gradient),
// the fully connected layer 6 FLOP per weight.
func (c *CNN) TrainFLOPs() float64 {
	conv := float64(c.filters * cnnK * cnnK * cnnConv * cnnConv)
	return 4*conv + 6*float64(c.classes*c.hidden())
}

// Clone implements Model.
func (c *CNN) Clone() Model {
	d := &CNN{filters: c.filters, classes: c.classes, flat: append([]float32(nil), c.flat...)}
	d.params = d.carve(d.flat)
	return d
}

// NewWorkspace implements Model.
func (c *CNN) NewWorkspace(maxBatch int) Workspace { return c.newWorkspace(maxBatch) }

func (c *CNN) newWorkspace(maxBatch int) *cnnWorkspace {
	if maxBatch <= 0 {
		panic("workload: NewWorkspace: maxBatch must be positive")
	}
	ws := &cnnWorkspace{c: c, batch: maxBatch,
		x:      make([]float32, maxBatch*cnnPixels),
		cols:   make([]float32, cnnConv*cnnConv*cnnK*cnnK),
		conv:   make([]float32, c.filters*cnnConv*cnnConv),
		h:      make([]float32, maxBatch*c.hidden()),
		arg:    make([]int32, maxBatch*c.hidden()),
		logits: make([]float32, c.classes), dlogits: make([]float32, c.classes),
		dh:    make([]float32, c.hidden()),
		dconv: make([]float32, c.filters*cnnConv*cnnConv),
		flat:  make([]float32, len(c.flat)),
	}
	for _, p := range c.carve(ws.flat) {
		ws.grads = append(ws.grads, p.Data)
	}
	return ws
}

type cnnWorkspace struct {
	c       *CNN
	batch   int
	x       []float32 // input batch
	cols    []float32 // im2col of one sample: [576][25]
	conv    []float32 // ReLU(conv) of one sample: [filters][576]
	h       []float32 // pooled activations per sample: [batch][filters·144]
	arg     []int32   // index in conv of each pooled maximum
	logits  []float32
	dlogits []float32
	dh      []float32
	dconv   []float32
	grads   [][]float32
	flat    []float32
}

func (ws *cnnWorkspace) Grads() [][]float32   { return ws.grads }
func (ws *cnnWorkspace) FlatGrads() []float32 { return ws.flat }

func (ws *cnnWorkspace) check(ds *Dataset, idx []int) error {
	if ds.Dim != cnnPixels {
		return fmt.Errorf("%w: dataset %q has %d features, the CNN expects %d (28×28)", ErrShape, ds.Name, ds.Dim, cnnPixels)
	}
	if ds.Classes != ws.c.classes {
		return fmt.Errorf("%w: dataset %q has %d classes, the CNN %d", ErrShape, ds.Name, ds.Classes, ws.c.classes)
	}
	if len(idx) == 0 || len(idx) > ws.batch {
		return fmt.Errorf("%w: batch of %d samples, workspace holds 1..%d", ErrShape, len(idx), ws.batch)
	}
	return nil
}

// im2col fills cols with the 5×5 patch of every output position of img.
func (ws *cnnWorkspace) im2col(img []float32) {
	kk := cnnK * cnnK
	for y := range cnnConv {
		for x := range cnnConv {
			dst := ws.cols[(y*cnnConv+x)*kk : (y*cnnConv+x+1)*kk]
			for ky := range cnnK {
				copy(dst[ky*cnnK:(ky+1)*cnnK], img[(y+ky)*cnnSide+x:(y+ky)*cnnSide+x+cnnK])
			}
		}
	}
}

// sample runs the forward pass of sample r (x already loaded): conv, ReLU,
// pooling into h[r], logits into ws.logits. It leaves cols and conv for the
// backward pass.
func (ws *cnnWorkspace) sample(r int) {
	c := ws.c
	kk, pos := cnnK*cnnK, cnnConv*cnnConv
	ws.im2col(ws.x[r*cnnPixels : (r+1)*cnnPixels])
	w, b := c.params[0].Data, c.params[1].Data
	for f := range c.filters {
		wf := w[f*kk : (f+1)*kk]
		out := ws.conv[f*pos : (f+1)*pos]
		for p := range pos {
			v := b[f] + float32(kernels.Dot(wf, ws.cols[p*kk:(p+1)*kk]))
			out[p] = max(v, 0)
		}
	}
	hid := c.hidden()
	h, arg := ws.h[r*hid:(r+1)*hid], ws.arg[r*hid:(r+1)*hid]
	for f := range c.filters {
		for y := range cnnPool {
			for x := range cnnPool {
				best := int32(f*pos + 2*y*cnnConv + 2*x)
				bi := best
				for _, d := range [4]int32{0, 1, cnnConv, cnnConv + 1} {
					if ws.conv[best+d] > ws.conv[bi] {
						bi = best + d
					}
				}
				o := f*cnnPool*cnnPool + y*cnnPool + x
				h[o], arg[o] = ws.conv[bi], bi
			}
		}
	}
	fw, fb := c.params[2].Data, c.params[3].Data
	for k := range c.classes {
		ws.logits[k] = fb[k] + float32(kernels.Dot(fw[k*hid:(k+1)*hid], h))
	}
}

// softmaxCE returns the loss of the logits for label y and, if d is not nil,
// writes dLoss/dlogits scaled by inv into d. It reports whether the argmax is y.
func softmaxCE(logits []float32, y int, d []float32, inv float32) (float64, bool) {
	mx, arg := logits[0], 0
	for j, v := range logits {
		if v > mx {
			mx, arg = v, j
		}
	}
	var sum float64
	for _, v := range logits {
		sum += math.Exp(float64(v - mx))
	}
	lse := float64(mx) + math.Log(sum)
	if d != nil {
		for j, v := range logits {
			d[j] = float32(math.Exp(float64(v)-lse)) * inv
		}
		d[y] -= inv
	}
	return lse - float64(logits[y]), arg == y
}

// Gradient implements Workspace.
func (ws *cnnWorkspace) Gradient(ds *Dataset, idx []int) (float64, error) {
	if err := ws.check(ds, idx); err != nil {
		return 0, err
	}
	c := ws.c
	for _, g := range ws.grads {
		clear(g)
	}
	ds.Features(ws.x, idx)
	kk, pos, hid := cnnK*cnnK, cnnConv*cnnConv, c.hidden()
	inv := 1 / float32(len(idx))
	gw, gb, gfw, gfb := ws.grads[0], ws.grads[1], ws.grads[2], ws.grads[3]
	fw := c.params[2].Data
	dl := ws.dlogits
	var lossSum float64
	for r, i := range idx {
		ws.sample(r)
		loss, _ := softmaxCE(ws.logits, int(ds.Labels[i]), dl, inv)
		lossSum += loss
		h := ws.h[r*hid : (r+1)*hid]
		// FC layer.
		clear(ws.dh)
		for k, d := range dl {
			kernels.Axpy(gfw[k*hid:(k+1)*hid], d, h)
			gfb[k] += d
			kernels.Axpy(ws.dh, d, fw[k*hid:(k+1)*hid])
		}
		// Max pooling and ReLU: route dh to the maxima that were positive.
		clear(ws.dconv)
		for o, a := range ws.arg[r*hid : (r+1)*hid] {
			if ws.conv[a] > 0 {
				ws.dconv[a] += ws.dh[o]
			}
		}
		// Convolution: dW[f] += Σ_p dconv[f][p]·cols[p].
		for f := range c.filters {
			df := ws.dconv[f*pos : (f+1)*pos]
			gwf := gw[f*kk : (f+1)*kk]
			for p, d := range df {
				if d != 0 {
					kernels.Axpy(gwf, d, ws.cols[p*kk:(p+1)*kk])
					gb[f] += d
				}
			}
		}
	}
	return lossSum / float64(len(idx)), nil
}

// Evaluate implements Model. It is not safe for concurrent use with itself.
func (c *CNN) Evaluate(ds *Dataset, idx []int) (Metrics, error) {
	const chunk = 64
	if c.eval == nil {
		c.eval = c.newWorkspace(chunk)
	}
	ws := c.eval
	var lossSum float64
	var correct int
	n, err := evalBatches(ds, idx, chunk, func(buf []int) error {
		if err := ws.check(ds, buf); err != nil {
			return err
		}
		ds.Features(ws.x, buf)
		for r, i := range buf {
			ws.sample(r)
			loss, ok := softmaxCE(ws.logits, int(ds.Labels[i]), nil, 0)
			lossSum += loss
			if ok {
				correct++
			}
		}
		return nil
	})
	if err != nil {
		return Metrics{}, err
	}
	return Metrics{Loss: lossSum / float64(n), Accuracy: float64(correct) / float64(n)}, nil
}

var _ Model = (*CNN)(nil)
