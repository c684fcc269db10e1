package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/slimgrad/slimgrad/internal/kernels"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/train"
	"github.com/slimgrad/slimgrad/workload"
)

// Grad measures the local compute of a worker's step for each named
// workload (train.NewModel names: "mnist", "mnist-deep", "mnist-cnn",
// "logistic", "leastsquares", "mnist-mlp:..."), in the calling goroutine,
// each for at least minTime:
//
//   - the gradient: one forward and backward pass of a batch of batch
//     samples of the workload's training data (train.LoadTask with the
//     default data directory). The time depends on the data: the MLP's
//     backward pass skips zero inputs, about 80% of MNIST's pixels. MNIST
//     models whose data files are not found get random inputs of MNIST's
//     shape, which cost more; Extra["training_data"] says which (1 or 0).
//     Result Group "grad", Key "grad_s/WORKLOAD", Extra["sample_s"]: the
//     seconds per sample (time per batch / batch), Calibration.Grad.
//   - the rest of the step's local work on the gradient, one optimizer
//     per parameter tensor as the worker runs it: the default optimizer's
//     (momentum SGD) Prepare, the finite check of what it sends and its
//     Step. Group "grad", Key "local_s/WORKLOAD", Extra["step_s"]: seconds
//     per step, Calibration.Local.
//
// Bytes is the model's parameter bytes.
func Grad(ctx context.Context, workloads []string, batch int, minTime time.Duration) ([]Result, error) {
	if batch < 1 {
		return nil, fmt.Errorf("bench: gradient batch %d: want at least 1", batch)
	}
	var out []Result
	for _, name := range workloads {
		m, ds, real, err := gradTask(name, batch)
		if err != nil {
			return out, fmt.Errorf("bench: gradient of %s: %w", name, err)
		}
		ws := m.NewWorkspace(batch)
		rng := rand.New(rand.NewPCG(1, uint64(batch)))
		idx := make([]int, batch)
		ops, d, allocs, spread, err := measure(ctx, minTime, func() error {
			for i := range idx {
				idx[i] = rng.IntN(ds.N)
			}
			_, err := ws.Gradient(ds, idx)
			return err
		})
		if err != nil {
			return out, fmt.Errorf("bench: gradient of %s: %w", name, err)
		}
		r := Result{Group: "grad", Name: fmt.Sprintf("grad/workload=%s/batch=%d", name, batch), Key: "grad_s/" + name,
			Bytes: 4 * int64(len(m.Flat())), Ops: ops, Elapsed: d, Allocs: allocs, Spread: spread}
		r.Extra = map[string]float64{"sample_s": r.PerOp().Seconds() / float64(batch), "training_data": 0}
		if real {
			r.Extra["training_data"] = 1
		}
		out = append(out, r)
		l, err := localStep(ctx, name, m, ws, minTime)
		if err != nil {
			return out, fmt.Errorf("bench: local step of %s: %w", name, err)
		}
		out = append(out, l)
	}
	return out, nil
}

// localStep measures what a worker does per step with workspace ws's
// gradient of m besides computing it: per parameter tensor, momentum SGD's
// Prepare, the finite check of what it sends and its Step.
func localStep(ctx context.Context, name string, m workload.Model, ws workload.Workspace, minTime time.Duration) (Result, error) {
	params, grads := m.Params(), ws.Grads()
	if len(params) != len(grads) {
		return Result{}, fmt.Errorf("%d parameter tensors, %d gradients", len(params), len(grads))
	}
	opts := make([]optim.Optimizer, len(params))
	for u := range params {
		var err error
		if opts[u], err = optim.NewMomentum(len(params[u].Data), 0.1, 0.9, 0, false); err != nil {
			return Result{}, err
		}
	}
	ops, d, allocs, spread, err := measure(ctx, minTime, func() error {
		for u := range params {
			send, _, err := opts[u].Prepare(grads[u])
			if err != nil {
				return err
			}
			if !kernels.AllFinite(send) {
				return fmt.Errorf("non-finite gradient of tensor %d", u)
			}
			if err := opts[u].Step(params[u].Data, send); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Result{}, err
	}
	r := Result{Group: "grad", Name: fmt.Sprintf("local/workload=%s/optim=momentum", name), Key: "local_s/" + name,
		Bytes: 4 * int64(len(m.Flat())), Ops: ops, Elapsed: d, Allocs: allocs, Spread: spread}
	r.Extra = map[string]float64{"step_s": r.PerOp().Seconds()}
	return r, nil
}

// gradTask returns the model of workload name and a dataset to draw its
// batches from: its training data (real true), or for an MNIST model whose
// data files are missing random inputs of MNIST's shape.
func gradTask(name string, batch int) (workload.Model, *workload.Dataset, bool, error) {
	task, err := train.LoadTask(name, "", 1)
	if err == nil {
		return task.Model, task.Train, true, nil
	}
	switch {
	case name == "mnist", name == "mnist-deep", name == "mnist-cnn", strings.HasPrefix(name, "mnist-mlp:"):
		m, err := train.NewModel(name, 1)
		if err != nil {
			return nil, nil, false, err
		}
		const dim, classes = 28 * 28, 10
		n := max(batch, 256)
		rng := rand.New(rand.NewPCG(2, 0))
		x := make([]float32, n*dim)
		for i := range x {
			x[i] = rng.Float32()
		}
		labels := make([]int32, n)
		for i := range labels {
			labels[i] = int32(rng.IntN(classes))
		}
		ds, err := workload.NewDataset("random-mnist", n, dim, classes, x, labels, nil, nil)
		return m, ds, false, err
	}
	return nil, nil, false, err
}
