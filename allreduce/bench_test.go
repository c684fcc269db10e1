package allreduce_test

import (
	"fmt"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/allreduce/allreducetest"
)

// BenchmarkGenerate measures generating the programs of all ranks, as the
// simulator does (size-only ring over 1024 ranks, tree over 4096).
func BenchmarkGenerate(b *testing.B) {
	for _, c := range []struct {
		alg   allreduce.Algorithm
		world int
	}{{allreduce.AlgRing, 1024}, {allreduce.AlgTree, 4096}, {allreduce.AlgHalvingDoubling, 1024}} {
		b.Run(fmt.Sprintf("alg=%v/n=%d", c.alg, c.world), func(b *testing.B) {
			progs := make([]allreduce.Program, c.world)
			b.ReportAllocs()
			ops := 0
			for b.Loop() {
				ops = 0
				for r := range progs {
					p := allreduce.Params{World: c.world, Rank: r, Elems: 64 << 20}
					if err := allreduce.GenerateInto(&progs[r], c.alg, p); err != nil {
						b.Fatal(err)
					}
					ops += len(progs[r].Ops)
				}
			}
			b.ReportMetric(float64(ops), "ops")
		})
	}
}

// BenchmarkExec runs a dense ring all-reduce through the lock-step driver and
// the executor (4 ranks in one goroutine): bytes/s is per-rank vector bytes.
func BenchmarkExec(b *testing.B) {
	for _, n := range []int{2, 4} {
		for _, size := range []int{1 << 20, 16 << 20} {
			b.Run(fmt.Sprintf("n=%d/size=%dMiB", n, size>>20), func(b *testing.B) {
				p := allreduce.Params{World: n, Elems: size / 4, Segments: 4}
				progs := genAll(b, allreduce.AlgRing, p)
				data := randInputs(randSource(), n, size/4, true)
				execs := make([]allreduce.Executor, n)
				for r := range execs {
					e, err := allreduce.NewExec(progs[r], data[r])
					if err != nil {
						b.Fatal(err)
					}
					execs[r] = e
				}
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					for r := range execs {
						if err := execs[r].(*allreduce.Exec).Reset(progs[r], data[r]); err != nil {
							b.Fatal(err)
						}
					}
					if _, err := allreducetest.Run(progs, execs, allreducetest.Options{}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestExecAllocs: running a program on a reused executor allocates nothing
// in the executor itself (F32 codec: zero-copy sends, in-place reduces).
func TestExecAllocs(t *testing.T) {
	n := 4
	p := allreduce.Params{World: n, Elems: 4096, Segments: 2}
	progs := genAll(t, allreduce.AlgRing, p)
	data := randInputs(randSource(), n, 4096, true)
	ex := make([]*allreduce.Exec, n)
	for r := range ex {
		e, err := allreduce.NewExec(progs[r], data[r])
		if err != nil {
			t.Fatal(err)
		}
		ex[r] = e
	}
	allocs := testing.AllocsPerRun(20, func() {
		for r, e := range ex {
			if err := e.Reset(progs[r], data[r]); err != nil {
				t.Fatal(err)
			}
		}
		// Pass 1: every send, delivered straight into the peer's staged
		// receive (values do not matter here); pass 2: every compute.
		for r, prog := range progs {
			for i := range prog.Ops {
				o := &prog.Ops[i]
				if o.Kind != allreduce.Send {
					continue
				}
				b, err := ex[r].Payload(o)
				if err != nil {
					t.Fatal(err)
				}
				q := progs[o.Peer]
				for j := range q.Ops {
					qo := &q.Ops[j]
					if qo.Kind == allreduce.Recv && int(qo.Peer) == r && qo.Msg == o.Msg {
						if err := ex[o.Peer].Deliver(qo, b); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
		}
		for r, prog := range progs {
			for i := range prog.Ops {
				if o := &prog.Ops[i]; o.Kind == allreduce.Compute {
					if err := ex[r].Run(o); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("executor allocates %v times per run", allocs)
	}
}

// BenchmarkReduce measures the executor's hot path on one rank: a staged
// fp32 message added into the data (FnReduce), and a received message copied
// into the data (Recv into BufData).
func BenchmarkReduce(b *testing.B) {
	for _, size := range []int{64 << 10, 4 << 20} {
		p := allreduce.Params{World: 2, Rank: 0, Elems: 2 * size / 4}
		prog, err := allreduce.Ring(p)
		if err != nil {
			b.Fatal(err)
		}
		data := make([]float32, p.Elems)
		e, err := allreduce.NewExec(prog, data)
		if err != nil {
			b.Fatal(err)
		}
		// ops: 0 send, 1 recv stage, 2 reduce, 3 send, 4 recv data
		msg := make([]byte, size)
		b.Run(fmt.Sprintf("op=reduce/size=%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if err := e.Deliver(&prog.Ops[1], msg); err != nil {
					b.Fatal(err)
				}
				if err := e.Run(&prog.Ops[2]); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("op=deliver/size=%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if err := e.Deliver(&prog.Ops[4], msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
