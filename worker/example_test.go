package worker_test

import (
	"context"
	"fmt"
	"sync"

	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/worker"
)

// Two ranks in one process average their gradients of two layers; the
// larger layer is sent top-1% with error feedback.
func Example() {
	g, _ := mem.NewGroup(2)
	defer g.Close()
	var wg sync.WaitGroup
	out := make([]string, 2)
	for r := 0; r < 2; r++ {
		wg.Go(func() {
			ctx := context.Background()
			w, err := worker.New(ctx, g.Conn(r), worker.WithSeed(1))
			if err != nil {
				panic(err)
			}
			defer w.Close()
			w.Register("fc.weight", []int{100, 10}, worker.WithCodec("topk:0.01"), worker.WithErrorFeedback("ef14"))
			w.Register("fc.bias", []int{10})
			weight := make([]float32, 1000)
			bias := make([]float32, 10)
			for i := range bias {
				bias[i] = float32(r + i)
			}
			weight[7] = float32(10 * (r + 1)) // the largest entry: sent by top-k
			led, err := w.Step(ctx, [][]float32{weight, bias})
			if err != nil {
				panic(err)
			}
			out[r] = fmt.Sprintf("rank %d: bias[0]=%v weight[7]=%v, sent %d of %d baseline bytes", r, bias[0], weight[7], led.SentBytes(), led.BaselineBytes())
		})
	}
	wg.Wait()
	fmt.Println(out[0])
	fmt.Println(out[1])
	// Output:
	// rank 0: bias[0]=0.5 weight[7]=15, sent 160 of 4040 baseline bytes
	// rank 1: bias[0]=0.5 weight[7]=15, sent 160 of 4040 baseline bytes
}
