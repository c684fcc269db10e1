package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/slimgrad/slimgrad/train"
	"github.com/slimgrad/slimgrad/workload"
)

// Grad measures the gradient compute of each named workload (train.NewModel
// names: "mnist", "mnist-deep", "mnist-cnn", "logistic", "leastsquares",
// "mnist-mlp:..."): one forward and backward pass of a batch of batch
// samples, repeated for at least minTime, in the calling goroutine. MNIST
// models get random inputs of MNIST's shape (the time does not depend on
// pixel values), so no data files are needed; the synthetic workloads use
// their own data.
//
// Each Result has Group "grad", Key "grad_s/WORKLOAD" and
// Extra["sample_s"], the seconds per sample (time per batch / batch), which
// Calibrate writes into Calibration.Grad. Bytes is the model's parameter
// bytes.
func Grad(ctx context.Context, workloads []string, batch int, minTime time.Duration) ([]Result, error) {
	if batch < 1 {
		return nil, fmt.Errorf("bench: gradient batch %d: want at least 1", batch)
	}
	var out []Result
	for _, name := range workloads {
		m, ds, err := gradTask(name, batch)
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
		r.Extra = map[string]float64{"sample_s": r.PerOp().Seconds() / float64(batch)}
		out = append(out, r)
	}
	return out, nil
}

// gradTask returns the model of workload name and a dataset to draw its
// batches from.
func gradTask(name string, batch int) (workload.Model, *workload.Dataset, error) {
	switch {
	case name == "mnist", name == "mnist-deep", name == "mnist-cnn", strings.HasPrefix(name, "mnist-mlp:"):
		m, err := train.NewModel(name, 1)
		if err != nil {
			return nil, nil, err
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
		return m, ds, err
	}
	task, err := train.LoadTask(name, "", 1)
	if err != nil {
		return nil, nil, err
	}
	return task.Model, task.Train, nil
}
