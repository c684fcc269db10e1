// Command gorgonia trains a small MLP defined in Gorgonia (pure-Go tensors
// and automatic differentiation) data-parallel, with slimgrad doing the
// gradient exchange: four ranks (goroutines here, processes or hosts in a
// real job) build the same Gorgonia graph, take their gradients from its
// autodiff, average them through a worker.Worker over transport/mem and
// apply plain SGD themselves (no Gorgonia solver).
//
// The weight matrices travel with a codec that this module defines and
// registers, not one of slimgrad's: TernGrad (terngrad.go), ternary
// stochastic rounding, 2 bits per element. After compressors.Register the
// recipe "terngrad:64" is accepted wherever slimgrad takes a recipe string.
// Biases go dense (fp32).
//
// It is its own Go module so that slimgrad does not depend on Gorgonia:
//
//	cd examples/gorgonia && go run .
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"sync"

	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/worker"
	"github.com/slimgrad/slimgrad/workload"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

func init() {
	// Register once per process, before any recipe names the codec.
	if err := registerTernGrad(); err != nil {
		panic(err)
	}
}

// Config is one training run.
type Config struct {
	World, Steps, Batch, Hidden int
	LR                          float32
	Codec                       string // recipe of the weight matrices
	Seed                        uint64
}

// DefaultConfig is what `go run .` trains.
func DefaultConfig() Config {
	return Config{World: 4, Steps: 300, Batch: 32, Hidden: 64, LR: 0.1, Codec: "terngrad:64", Seed: 7}
}

// Result is what rank 0 measured.
type Result struct {
	FirstLoss, LastLoss float64 // mean training loss of the first and last 20 steps
	Accuracy            float64 // on the held-out test set
	// Bytes rank 0 sent for the weight matrices, and what a dense fp32
	// ring all-reduce of them would have sent.
	MatrixSent, MatrixDense int64
	Sent, Dense             int64 // the same for all layers
}

func main() {
	cfg := DefaultConfig()
	flag.IntVar(&cfg.Steps, "steps", cfg.Steps, "training steps")
	flag.StringVar(&cfg.Codec, "codec", cfg.Codec, "codec of the weight matrices (a slimgrad recipe)")
	flag.Parse()
	res, err := train(context.Background(), cfg, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("rank 0: loss %.4f -> %.4f, test accuracy %.1f%%; weight matrices sent %d B (dense ring %d B, %.1fx fewer), all layers %.1fx fewer\n",
		res.FirstLoss, res.LastLoss, 100*res.Accuracy, res.MatrixSent, res.MatrixDense,
		float64(res.MatrixDense)/float64(res.MatrixSent), float64(res.Dense)/float64(res.Sent))
}

// train runs cfg.World ranks and returns rank 0's result.
func train(ctx context.Context, cfg Config, out io.Writer) (Result, error) {
	data, test, err := workload.Logistic(workload.DefaultSynthetic())
	if err != nil {
		return Result{}, err
	}
	shards, err := workload.Shard(data, cfg.World, workload.IID, 1)
	if err != nil {
		return Result{}, err
	}
	// Any transport.Conn works here: transport/nats or transport/libp2p
	// connect ranks in different processes.
	group, err := mem.NewGroup(cfg.World)
	if err != nil {
		return Result{}, err
	}
	defer group.Close()

	results := make([]Result, cfg.World)
	errs := make([]error, cfg.World)
	var wg sync.WaitGroup
	for rank := range cfg.World {
		wg.Go(func() {
			results[rank], errs[rank] = rankLoop(ctx, cfg, group.Conn(rank), data, test, shards[rank], out)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return Result{}, err
		}
	}
	return results[0], nil
}

// mlp is a two-layer perceptron in Gorgonia: softmax(relu(x·W1+b1)·W2+b2)
// with the mean cross-entropy as cost.
type mlp struct {
	g      *G.ExprGraph
	x, y   *G.Node   // inputs: batch×dim features, batch×classes one-hot labels
	params []*G.Node // W1, b1, W2, b2
	logits *G.Node
	cost   *G.Node
	vm     G.VM
}

// newMLP builds the graph for batches of batch samples. Every rank passes
// the same seed, so the replicas start equal.
func newMLP(batch, dim, hidden, classes int, seed uint64, train bool) (*mlp, error) {
	rng := rand.New(rand.NewPCG(seed, 1))
	glorot := func(rows, cols int) tensor.Tensor {
		lim := math.Sqrt(6 / float64(rows+cols))
		w := make([]float32, rows*cols)
		for i := range w {
			w[i] = float32((2*rng.Float64() - 1) * lim)
		}
		return tensor.New(tensor.WithShape(rows, cols), tensor.WithBacking(w))
	}
	zeros := func(n int) tensor.Tensor {
		return tensor.New(tensor.WithShape(n), tensor.WithBacking(make([]float32, n)))
	}
	m := &mlp{g: G.NewGraph()}
	m.x = G.NewMatrix(m.g, tensor.Float32, G.WithShape(batch, dim), G.WithName("x"))
	m.y = G.NewMatrix(m.g, tensor.Float32, G.WithShape(batch, classes), G.WithName("y"))
	w1 := G.NewMatrix(m.g, tensor.Float32, G.WithShape(dim, hidden), G.WithName("w1"), G.WithValue(glorot(dim, hidden)))
	b1 := G.NewVector(m.g, tensor.Float32, G.WithShape(hidden), G.WithName("b1"), G.WithValue(zeros(hidden)))
	w2 := G.NewMatrix(m.g, tensor.Float32, G.WithShape(hidden, classes), G.WithName("w2"), G.WithValue(glorot(hidden, classes)))
	b2 := G.NewVector(m.g, tensor.Float32, G.WithShape(classes), G.WithName("b2"), G.WithValue(zeros(classes)))
	m.params = []*G.Node{w1, b1, w2, b2}

	var err error
	must := func(n *G.Node, e error) *G.Node {
		if err == nil {
			err = e
		}
		return n
	}
	h := must(G.Rectify(must(G.BroadcastAdd(must(G.Mul(m.x, w1)), b1, nil, []byte{0}))))
	m.logits = must(G.BroadcastAdd(must(G.Mul(h, w2)), b2, nil, []byte{0}))
	logp := must(G.LogSoftMax(m.logits))
	nll := must(G.Neg(must(G.Sum(must(G.HadamardProd(logp, m.y))))))
	m.cost = must(G.Div(nll, G.NewConstant(float32(batch))))
	if err != nil {
		return nil, err
	}
	if train {
		if _, err := G.Grad(m.cost, m.params...); err != nil {
			return nil, err
		}
		m.vm = G.NewTapeMachine(m.g, G.BindDualValues(m.params...))
	} else {
		m.vm = G.NewTapeMachine(m.g)
	}
	return m, nil
}

// data returns a node's value as a float32 slice (shared, not copied).
func data(v G.Value) []float32 { return v.Data().([]float32) }

// setBatch loads samples idx of ds into the x and y inputs.
func (m *mlp) setBatch(ds *workload.Dataset, idx []int, x, y []float32) error {
	ds.Features(x, idx)
	clear(y)
	for i, j := range idx {
		y[i*ds.Classes+int(ds.Labels[j])] = 1
	}
	batch := len(idx)
	if err := G.Let(m.x, tensor.New(tensor.WithShape(batch, ds.Dim), tensor.WithBacking(x))); err != nil {
		return err
	}
	return G.Let(m.y, tensor.New(tensor.WithShape(batch, ds.Classes), tensor.WithBacking(y)))
}

func rankLoop(ctx context.Context, cfg Config, conn transport.Conn, ds, test *workload.Dataset, shard []int, out io.Writer) (Result, error) {
	rank := conn.Rank()
	m, err := newMLP(cfg.Batch, ds.Dim, cfg.Hidden, ds.Classes, cfg.Seed, true)
	if err != nil {
		return Result{}, err
	}
	defer m.vm.Close()

	w, err := worker.New(ctx, conn, worker.WithSeed(cfg.Seed))
	if err != nil {
		return Result{}, err
	}
	defer w.Close() // after an error; a finished run calls Shutdown below
	grads := make([][]float32, len(m.params))
	matrix := map[string]bool{}
	for i, p := range m.params {
		var opts []worker.LayerOption
		if len(p.Shape()) == 2 { // weight matrices: the user codec
			opts = append(opts, worker.WithCodec(cfg.Codec), worker.WithErrorFeedback("none"))
			matrix[p.Name()] = true
		}
		if _, err := w.Register(p.Name(), p.Shape(), opts...); err != nil {
			return Result{}, err
		}
		grads[i] = make([]float32, p.Shape().TotalSize())
	}

	x := make([]float32, cfg.Batch*ds.Dim)
	y := make([]float32, cfg.Batch*ds.Classes)
	sampler := workload.NewSampler(shard, cfg.Seed, rank)
	var res Result
	const window = 20
	for step := range cfg.Steps {
		if err := m.setBatch(ds, sampler.Next(cfg.Batch), x, y); err != nil {
			return Result{}, err
		}
		if err := m.vm.RunAll(); err != nil {
			return Result{}, err
		}
		loss := float64(m.cost.Value().Data().(float32))
		for i, p := range m.params {
			g, err := p.Grad()
			if err != nil {
				return Result{}, err
			}
			copy(grads[i], data(g))
			clear(data(g))
		}
		m.vm.Reset()

		led, err := w.Step(ctx, grads) // grads now hold the averaged gradients
		if err != nil {
			return Result{}, err
		}
		for i, p := range m.params { // SGD: W -= lr·avg
			wv := data(p.Value())
			for j, g := range grads[i] {
				wv[j] -= cfg.LR * g
			}
		}

		for _, l := range led.Layers {
			if matrix[l.Name] {
				res.MatrixSent += l.SentBytes
				res.MatrixDense += l.BaselineBytes
			}
		}
		res.Sent += led.SentBytes()
		res.Dense += led.BaselineBytes()
		if step < window {
			res.FirstLoss += loss / window
		}
		if step >= cfg.Steps-window {
			res.LastLoss += loss / window
		}
		if rank == 0 && out != nil && (step%50 == 0 || step == cfg.Steps-1) {
			fmt.Fprintf(out, "step %3d  loss %.4f  sent %5d B  (dense ring %5d B)\n", step, loss, led.SentBytes(), led.BaselineBytes())
		}
	}
	// Wait for every rank to finish before the conn closes: closing right
	// after the last step could drop messages a slower peer still needs.
	if err := w.Shutdown(ctx); err != nil {
		return Result{}, err
	}
	if res.Accuracy, err = accuracy(m, test, cfg); err != nil {
		return Result{}, err
	}
	return res, nil
}

// accuracy evaluates the trained weights on the whole test set with a
// forward-only graph of the same model.
func accuracy(trained *mlp, test *workload.Dataset, cfg Config) (float64, error) {
	m, err := newMLP(test.N, test.Dim, cfg.Hidden, test.Classes, cfg.Seed, false)
	if err != nil {
		return 0, err
	}
	defer m.vm.Close()
	for i, p := range m.params {
		copy(data(p.Value()), data(trained.params[i].Value()))
	}
	idx := make([]int, test.N)
	for i := range idx {
		idx[i] = i
	}
	if err := m.setBatch(test, idx, make([]float32, test.N*test.Dim), make([]float32, test.N*test.Classes)); err != nil {
		return 0, err
	}
	if err := m.vm.RunAll(); err != nil {
		return 0, err
	}
	logits := data(m.logits.Value())
	correct := 0
	for i := range test.N {
		row := logits[i*test.Classes : (i+1)*test.Classes]
		best := 0
		for c := range row {
			if row[c] > row[best] {
				best = c
			}
		}
		if best == int(test.Labels[i]) {
			correct++
		}
	}
	return float64(correct) / float64(test.N), nil
}
