package train

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/slimgrad/slimgrad/workload"
)

// Workloads lists the names LoadTask accepts (besides "mnist-mlp:SIZES").
var Workloads = []string{"mnist", "mnist-deep", "mnist-cnn", "logistic", "leastsquares"}

// DeepMLP is the layer sizes of the "mnist-deep" workload: an MLP whose
// bytes are spread over several layers (L-GreCo's per-layer choice has
// something to trade, unlike 784-256-10 where one layer dominates).
var DeepMLP = []int{784, 512, 256, 128, 10}

// NewModel builds the model of a named workload (see LoadTask) from seed,
// without its data: what size-only simulations and FLOP counts need.
func NewModel(name string, seed uint64) (workload.Model, error) {
	if sizes, ok := strings.CutPrefix(name, "mnist-mlp:"); ok {
		var dims []int
		for f := range strings.SplitSeq(sizes, "-") {
			d, err := strconv.Atoi(f)
			if err != nil || d < 1 {
				return nil, fmt.Errorf("train: workload %q: layer size %q is not a positive integer", name, f)
			}
			dims = append(dims, d)
		}
		if len(dims) < 2 || dims[0] != 784 || dims[len(dims)-1] != 10 {
			return nil, fmt.Errorf("train: workload %q: an MNIST MLP goes from 784 inputs to 10 classes, e.g. mnist-mlp:784-512-256-128-10", name)
		}
		return workload.NewMLP(dims, workload.CrossEntropy, seed)
	}
	switch name {
	case "mnist":
		return workload.NewMLP([]int{784, 256, 10}, workload.CrossEntropy, seed)
	case "mnist-deep":
		return workload.NewMLP(DeepMLP, workload.CrossEntropy, seed)
	case "mnist-cnn":
		return workload.NewCNN(8, 10, seed)
	case "logistic":
		return workload.NewMLP([]int{workload.DefaultSynthetic().Dim, 2}, workload.CrossEntropy, seed)
	case "leastsquares":
		return workload.NewMLP([]int{workload.DefaultSynthetic().Dim, 1}, workload.Squared, seed)
	}
	return nil, fmt.Errorf("train: unknown workload %q (want one of %v or mnist-mlp:784-...-10)", name, Workloads)
}

// TrainFLOPs is the floating-point work of one sample's forward and backward
// pass of m: the model's own count (workload.MLP and workload.CNN have one:
// the CNN's convolutions cost far more than 6 FLOP per parameter), else 6
// FLOP per parameter.
func TrainFLOPs(m workload.Model) float64 {
	if f, ok := m.(interface{ TrainFLOPs() float64 }); ok {
		return f.TrainFLOPs()
	}
	return 6 * float64(len(m.Flat()))
}

// LoadTask builds a named workload: "mnist" (the 784-256-10 MLP on MNIST,
// files from dataDir or the GoMNIST module cache; see workload.MNISTDir),
// "mnist-deep" (the DeepMLP 784-512-256-128-10 on MNIST),
// "mnist-mlp:784-...-10" (an MLP of the given layer sizes on MNIST),
// "mnist-cnn" (a small CNN on MNIST: 8 5×5 filters, 2×2 max pooling, a
// fully connected layer),
// "logistic" or "leastsquares" (synthetic, clustered for non-IID sharding).
// The model's initial parameters come from seed.
func LoadTask(name, dataDir string, seed uint64) (Task, error) {
	m, err := NewModel(name, seed)
	if err != nil {
		return Task{}, err
	}
	switch {
	case name == "mnist", name == "mnist-deep", name == "mnist-cnn", strings.HasPrefix(name, "mnist-mlp:"):
		tr, te, err := workload.LoadMNIST(dataDir)
		if err != nil {
			return Task{}, err
		}
		tn := name
		if name == "mnist" {
			tn = "mnist-mlp"
		}
		return Task{Name: tn, Model: m, Train: tr, Test: te}, nil
	}
	cfg := workload.DefaultSynthetic()
	cfg.Seed = seed + 1
	var tr, te *workload.Dataset
	if name == "logistic" {
		tr, te, err = workload.Logistic(cfg)
	} else {
		tr, te, err = workload.LeastSquares(cfg)
	}
	if err != nil {
		return Task{}, err
	}
	return Task{Name: name, Model: m, Train: tr, Test: te}, nil
}
