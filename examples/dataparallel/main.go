// Command dataparallel is a short data-parallel training loop that links
// slimgrad as a library: four ranks (goroutines here, processes or hosts in a
// real job) train replicas of a small MLP on their own shards of a synthetic
// non-IID classification problem, exchange gradients through a
// worker.Worker (top-3% with EControl error feedback on weight matrices,
// dense fp32 for biases) and apply momentum SGD from package optim. Each
// step's Ledger says how many bytes were sent against a dense fp32 ring.
//
//	go run ./examples/dataparallel
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/worker"
	"github.com/slimgrad/slimgrad/workload"
)

func main() {
	steps := flag.Int("steps", 200, "training steps")
	flag.Parse()
	if err := train(context.Background(), 4, *steps, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// train runs world ranks for steps steps and prints rank 0's progress.
func train(ctx context.Context, world, steps int, out io.Writer) error {
	data, test, err := workload.Logistic(workload.DefaultSynthetic())
	if err != nil {
		return err
	}
	shards, err := workload.Shard(data, world, workload.IID, 1)
	if err != nil {
		return err
	}
	// Any transport.Conn works here: transport/nats or transport/libp2p
	// connect ranks in different processes.
	group, err := mem.NewGroup(world)
	if err != nil {
		return err
	}
	defer group.Close()

	errs := make([]error, world)
	var wg sync.WaitGroup
	for rank := range world {
		wg.Go(func() { errs[rank] = rankLoop(ctx, group.Conn(rank), data, test, shards[rank], steps, out) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func rankLoop(ctx context.Context, conn transport.Conn, data, test *workload.Dataset, shard []int, steps int, out io.Writer) error {
	rank := conn.Rank()
	// Every rank starts from the same model (same seed).
	model, err := workload.NewMLP([]int{data.Dim, 32, 2}, workload.CrossEntropy, 7)
	if err != nil {
		return err
	}
	w, err := worker.New(ctx, conn, worker.WithSeed(1))
	if err != nil {
		return err
	}
	defer w.Close() // after an error; a finished run calls Shutdown below
	var opts []*optim.Momentum
	for _, p := range model.Params() {
		layer := []worker.LayerOption{}
		if len(p.Shape) == 2 { // weight matrices: top-3% with EControl
			layer = append(layer, worker.WithCodec("topk:0.03"), worker.WithErrorFeedback("econtrol:0.03"))
		}
		if _, err := w.Register(p.Name, p.Shape, layer...); err != nil {
			return err
		}
		o, err := optim.NewMomentum(p.Size(), 0.1, 0.9, 0, false)
		if err != nil {
			return err
		}
		opts = append(opts, o)
	}

	ws := model.NewWorkspace(32)
	sampler := workload.NewSampler(shard, 1, rank)
	var sent, baseline int64
	for step := range steps {
		loss, err := ws.Gradient(data, sampler.Next(32))
		if err != nil {
			return err
		}
		grads := ws.Grads()
		for i, o := range opts {
			if grads[i], _, err = o.Prepare(grads[i]); err != nil { // momentum SGD sends the gradient itself
				return err
			}
		}
		led, err := w.Step(ctx, grads) // grads now hold the averaged update
		if err != nil {
			return err
		}
		for i, p := range model.Params() {
			if err := opts[i].Step(p.Data, grads[i]); err != nil {
				return err
			}
		}
		sent += led.SentBytes()
		baseline += led.BaselineBytes()
		if rank == 0 && (step%50 == 0 || step == steps-1) {
			fmt.Fprintf(out, "step %3d  loss %.4f  sent %6d B  (dense ring %6d B, %.1f× fewer)\n",
				step, loss, led.SentBytes(), led.BaselineBytes(), led.Ratio())
		}
	}
	// Wait for every rank to finish before the conn closes: closing right
	// after the last step could drop messages a slower peer still needs.
	if err := w.Shutdown(ctx); err != nil {
		return err
	}
	if rank == 0 {
		met, err := model.Evaluate(test, nil)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "rank 0: test accuracy %.1f%%, sent %d B in total, %.1f× fewer than a dense fp32 ring\n",
			100*met.Accuracy, sent, float64(baseline)/float64(sent))
	}
	return nil
}
