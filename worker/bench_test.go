package worker

import (
	"context"
	"fmt"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/transport"
)

// reportBus reports bus bandwidth, 2(N−1)/N·S/t, the NCCL convention that
// makes all-reduce numbers comparable across world sizes.
func reportBus(b *testing.B, n int, size int64) {
	if n > 1 {
		sec := b.Elapsed().Seconds() / float64(b.N)
		b.ReportMetric(float64(2*(n-1))/float64(n)*float64(size)/sec/1e9, "busGB/s")
	}
}

// BenchmarkRun is one dense fp32 all-reduce run by the driver with
// allreduce.Exec over transport/mem (no Worker around it).
func BenchmarkRun(b *testing.B) {
	for _, alg := range []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgTree} {
		for _, n := range []int{2, 4} {
			for _, size := range []int{1 << 20, 64 << 20} {
				b.Run(fmt.Sprintf("alg=%v/n=%d/size=%dMiB", alg, n, size>>20), func(b *testing.B) {
					conns := newGroup(b, n).Conns()
					elems := size / 4
					segs := max(1, size/n/(1<<20))
					progs := make([]*allreduce.Program, n)
					execs := make([]*allreduce.Exec, n)
					for r := 0; r < n; r++ {
						var err error
						progs[r], err = allreduce.Generate(alg, allreduce.Params{World: n, Rank: r, Elems: elems, Segments: segs, Average: true})
						if err != nil {
							b.Fatal(err)
						}
						data := make([]float32, elems)
						for i := range data {
							data[i] = float32(i % 7)
						}
						if execs[r], err = allreduce.NewExec(progs[r], data); err != nil {
							b.Fatal(err)
						}
					}
					drivers := make([]driver, n)
					b.SetBytes(int64(size))
					b.ReportAllocs()
					id := uint32(0)
					for b.Loop() {
						id++
						errs := runAll(n, func(r int) error {
							_, err := drivers[r].run(context.Background(), conns[r], id, progs[r], execs[r], RunOptions{SendsPerPeer: 2})
							return err
						})
						for _, err := range errs {
							if err != nil {
								b.Fatal(err)
							}
						}
					}
					reportBus(b, n, int64(size))
				})
			}
		}
	}
}

// BenchmarkStep is a whole Worker step (non-finite check and flag
// exchange included) of one dense fp32 layer over transport/mem.
func BenchmarkStep(b *testing.B) {
	for _, codec := range []string{"none", "fp16", "topk:0.01"} {
		for _, n := range []int{2, 4} {
			for _, size := range []int{1 << 20, 64 << 20} {
				if codec != "none" && size > 1<<20 && testing.Short() {
					continue
				}
				b.Run(fmt.Sprintf("codec=%s/n=%d/size=%dMiB", codec, n, size>>20), func(b *testing.B) {
					var conns []transport.Conn = newGroup(b, n).Conns()
					layers := []layerDef{{name: "w", shape: []int{size / 4}, codec: codec}}
					ws := startWorkers(b, conns, layers, WithAlgorithm("ring"))
					grads := make([][][]float32, n)
					for r := range grads {
						g := make([]float32, size/4)
						for i := range g {
							g[i] = float32(i%13) - 6
						}
						grads[r] = [][]float32{g}
					}
					b.SetBytes(int64(size))
					b.ReportAllocs()
					for b.Loop() {
						_, errs := stepAll(ws, grads)
						for _, err := range errs {
							if err != nil {
								b.Fatal(err)
							}
						}
					}
					reportBus(b, n, int64(size))
				})
			}
		}
	}
}
