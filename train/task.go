package train

import (
	"fmt"

	"github.com/slimgrad/slimgrad/workload"
)

// Workloads lists the names LoadTask accepts.
var Workloads = []string{"mnist", "mnist-cnn", "logistic", "leastsquares"}

// LoadTask builds a named workload: "mnist" (the 784-256-10 MLP on MNIST,
// files from dataDir or the GoMNIST module cache; see workload.MNISTDir),
// "mnist-cnn" (a small CNN on MNIST: 8 5×5 filters, 2×2 max pooling, a
// fully connected layer),
// "logistic" or "leastsquares" (synthetic, clustered for non-IID sharding).
// The model's initial parameters come from seed.
func LoadTask(name, dataDir string, seed uint64) (Task, error) {
	switch name {
	case "mnist":
		tr, te, err := workload.LoadMNIST(dataDir)
		if err != nil {
			return Task{}, err
		}
		m, err := workload.NewMLP([]int{784, 256, 10}, workload.CrossEntropy, seed)
		if err != nil {
			return Task{}, err
		}
		return Task{Name: "mnist-mlp", Model: m, Train: tr, Test: te}, nil
	case "mnist-cnn":
		tr, te, err := workload.LoadMNIST(dataDir)
		if err != nil {
			return Task{}, err
		}
		m, err := workload.NewCNN(8, 10, seed)
		if err != nil {
			return Task{}, err
		}
		return Task{Name: "mnist-cnn", Model: m, Train: tr, Test: te}, nil
	case "logistic", "leastsquares":
		cfg := workload.DefaultSynthetic()
		cfg.Seed = seed + 1
		var tr, te *workload.Dataset
		var m *workload.MLP
		var err error
		if name == "logistic" {
			tr, te, err = workload.Logistic(cfg)
			if err == nil {
				m, err = workload.NewMLP([]int{cfg.Dim, 2}, workload.CrossEntropy, seed)
			}
		} else {
			tr, te, err = workload.LeastSquares(cfg)
			if err == nil {
				m, err = workload.NewMLP([]int{cfg.Dim, 1}, workload.Squared, seed)
			}
		}
		if err != nil {
			return Task{}, err
		}
		return Task{Name: name, Model: m, Train: tr, Test: te}, nil
	}
	return Task{}, fmt.Errorf("train: unknown workload %q (want one of %v)", name, Workloads)
}
