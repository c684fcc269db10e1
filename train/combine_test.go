package train

import (
	"context"
	"encoding/binary"
	"math"
	"testing"
	"testing/synctest"
	"time"

	"github.com/slimgrad/slimgrad/optim"
)

// TestRunRankCombineOffCriticalPath: RunRank runs a step's Combine beside
// the next step's exchange. Rank 0's Combine of step s returns only once
// rank 1 has called its Combine of step s+1, which rank 1 does after step
// s+1's exchange, which needs rank 0: a RunRank that waited for Combine
// before its next step would deadlock (in the bubble: the context's
// timeout). The records still carry the job's figures, in step order: the
// mean of the ranks' losses, the sum of their bytes.
func TestRunRankCombineOffCriticalPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, steps = 3, 6
		task, err := LoadTask("logistic", "", 5)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		cfg := Config{Workers: n, Batch: 8, Steps: steps, Seed: 5}
		opt := OptimSpec{Name: "sgd", New: func(n int) (optim.Optimizer, error) { return optim.NewSGD(n, 0.1, 0) }}
		conns, figs := memConns(t, n), memConns(t, n)
		var called [n][steps]chan struct{}
		var losses [n][steps]float64
		var wire [n][steps]int64
		for r := range n {
			for s := range steps {
				called[r][s] = make(chan struct{})
			}
		}
		var got []Record
		errs := make(chan error, n)
		for r := range n {
			rc := RankConfig{Config: cfg, Rank: r, World: n}
			rc.Combine = func(ctx context.Context, step int, loss float64, st Stats) (float64, Stats, error) {
				losses[r][step], wire[r][step] = loss, st.WireBytes
				close(called[r][step])
				if r != 0 {
					b := binary.LittleEndian.AppendUint64(nil, math.Float64bits(loss))
					return loss, st, figs[r].Send(ctx, 0, uint64(step), binary.LittleEndian.AppendUint64(b, uint64(st.WireBytes)))
				}
				if step < steps-1 {
					select {
					case <-called[1][step+1]:
					case <-ctx.Done():
						return 0, st, ctx.Err()
					}
				}
				for p := 1; p < n; p++ {
					b, err := figs[0].Recv(ctx, p, uint64(step))
					if err != nil {
						return 0, st, err
					}
					loss += math.Float64frombits(binary.LittleEndian.Uint64(b))
					st.WireBytes += int64(binary.LittleEndian.Uint64(b[8:]))
				}
				return loss / n, st, nil
			}
			var onStep func(Record)
			if r == 0 {
				onStep = func(rec Record) { got = append(got, rec) }
			}
			go func() {
				_, err := runWorkerRank(ctx, conns[r], rc, task, Plan{Compress: "none", EF: "none"}, opt, onStep)
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if len(got) != steps {
			t.Fatalf("rank 0 recorded %d steps, want %d", len(got), steps)
		}
		for s, rec := range got {
			var loss float64
			var bytes int64
			for r := range n {
				loss += losses[r][s]
				bytes += wire[r][s]
			}
			if rec.Step != s || rec.Loss != loss/n || rec.WireBytes != bytes {
				t.Errorf("record %d: step %d, loss %g, wire bytes %d; want step %d, loss %g (mean of %v), %d bytes", s, rec.Step, rec.Loss, rec.WireBytes, s, loss/n, losses[0][s], bytes)
			}
		}
	})
}
