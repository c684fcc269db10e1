package worker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/mem"
)

// gatherSumProgram is a small hand-written program for driver tests that do
// not depend on package allreduce's generators: every rank sends its whole
// vector to every other rank, then sums all vectors in rank order 0..N−1.
func gatherSumProgram(world, rank, elems int) *allreduce.Program {
	p := &allreduce.Program{Name: "test-gather-sum", Rank: rank, World: world, Layout: allreduce.EvenLayout(elems, 1)}
	add := func(o allreduce.Op) int32 {
		p.Ops = append(p.Ops, o)
		return int32(len(p.Ops) - 1)
	}
	nodeps := [2]int32{allreduce.NoDep, allreduce.NoDep}
	for q := 0; q < world; q++ {
		if q != rank {
			add(allreduce.Op{Kind: allreduce.Send, Peer: int32(q), Msg: 0, Chunk: -1, Src: allreduce.BufData, Deps: nodeps, Bytes: 4 * int64(elems)})
		}
	}
	recvs := make([]int32, world)
	for q := 0; q < world; q++ {
		recvs[q] = allreduce.NoDep
		if q != rank {
			recvs[q] = add(allreduce.Op{Kind: allreduce.Recv, Peer: int32(q), Msg: 0, Chunk: int32(q), Dst: allreduce.BufPayload, Deps: nodeps, Bytes: 4 * int64(elems)})
		}
	}
	prev := add(allreduce.Op{Kind: allreduce.Compute, Fn: allreduce.FnScale, Scale: 0, Chunk: -1, Dst: allreduce.BufStage, Deps: nodeps})
	for q := 0; q < world; q++ {
		prev = add(allreduce.Op{Kind: allreduce.Compute, Fn: allreduce.FnDecodeAdd, Chunk: int32(q), Src: allreduce.BufPayload, Dst: allreduce.BufStage, Deps: [2]int32{prev, recvs[q]}})
	}
	// Payload encodes BufData when a send is issued (before any compute), so
	// the final copy may overwrite it.
	add(allreduce.Op{Kind: allreduce.Compute, Fn: allreduce.FnCopy, Chunk: -1, Src: allreduce.BufStage, Dst: allreduce.BufData, Deps: [2]int32{prev, allreduce.NoDep}})
	return p
}

// sumExec interprets gatherSumProgram on float32 vectors.
type sumExec struct {
	rank  int
	data  []float32
	stage []float32
	slots [][]byte
	out   []byte
}

// Payload encodes the data once; every send of the run shares the bytes,
// which stay unchanged while sends are in flight.
func (x *sumExec) Payload(op *allreduce.Op) ([]byte, error) {
	if x.out != nil {
		return x.out, nil
	}
	x.out = make([]byte, 0, 4*len(x.data))
	for _, v := range x.data {
		x.out = binary.LittleEndian.AppendUint32(x.out, math.Float32bits(v))
	}
	return x.out, nil
}

func (x *sumExec) Deliver(op *allreduce.Op, b []byte) error {
	if len(b) != 4*len(x.data) {
		return fmt.Errorf("got %d bytes, want %d", len(b), 4*len(x.data))
	}
	x.slots[op.Chunk] = b
	return nil
}

func (x *sumExec) Run(op *allreduce.Op) error {
	switch op.Fn {
	case allreduce.FnScale: // Scale 0: clear
		clear(x.stage)
	case allreduce.FnDecodeAdd:
		if int(op.Chunk) == x.rank {
			for i, v := range x.data {
				x.stage[i] += v
			}
			return nil
		}
		b := x.slots[op.Chunk]
		for i := range x.stage {
			x.stage[i] += math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case allreduce.FnCopy:
		copy(x.data, x.stage)
	case allreduce.FnBarrier:
	default:
		return fmt.Errorf("sumExec: unexpected %v", op.Fn)
	}
	return nil
}

func newSumExec(rank, world int, data []float32) *sumExec {
	return &sumExec{rank: rank, data: data, stage: make([]float32, len(data)), slots: make([][]byte, world)}
}

func newGroup(t testing.TB, n int, opts ...mem.Option) *mem.Group {
	t.Helper()
	g, err := mem.NewGroup(n, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// runAll runs f for every rank concurrently and returns the errors by rank.
func runAll(n int, f func(rank int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := 0; r < n; r++ {
		wg.Go(func() { errs[r] = f(r) })
	}
	wg.Wait()
	return errs
}

func TestRunGatherSum(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 3, 5} {
		for _, elems := range []int{0, 1, 7, 1000} {
			t.Run(fmt.Sprintf("n=%d/elems=%d", n, elems), func(t *testing.T) {
				g := newGroup(t, n)
				in := make([][]float32, n)
				want := make([]float32, elems)
				for r := range in {
					in[r] = make([]float32, elems)
					for i := range in[r] {
						in[r][i] = float32(rng.IntN(201) - 100)
					}
				}
				for i := range want {
					for r := 0; r < n; r++ {
						want[i] += in[r][i]
					}
				}
				stats := make([]RunStats, n)
				errs := runAll(n, func(r int) error {
					var err error
					stats[r], err = Run(t.Context(), g.Conn(r), 7, gatherSumProgram(n, r, elems), newSumExec(r, n, in[r]), RunOptions{Timeout: 10 * time.Second})
					return err
				})
				for r, err := range errs {
					if err != nil {
						t.Fatalf("rank %d: %v", r, err)
					}
					for i := range want {
						if in[r][i] != want[i] {
							t.Fatalf("rank %d elem %d: got %v, want %v", r, i, in[r][i], want[i])
						}
					}
					if got, want := stats[r].SentBytes, int64(4*elems*(n-1)); got != want {
						t.Errorf("rank %d sent %d bytes, want %d", r, got, want)
					}
					if got, want := stats[r].RecvBytes, int64(4*elems*(n-1)); got != want {
						t.Errorf("rank %d received %d bytes, want %d", r, got, want)
					}
				}
			})
		}
	}
}

func TestRunDeadPeer(t *testing.T) {
	const n = 4
	g := newGroup(t, n)
	g.Kill(2)
	errs := runAll(n, func(r int) error {
		if r == 2 {
			return nil
		}
		_, err := Run(t.Context(), g.Conn(r), 1, gatherSumProgram(n, r, 10), newSumExec(r, n, make([]float32, 10)), RunOptions{Timeout: 5 * time.Second})
		return err
	})
	for r, err := range errs {
		if r == 2 {
			continue
		}
		var pe *transport.PeerError
		if !errors.As(err, &pe) || pe.Rank != 2 {
			t.Errorf("rank %d: got %v, want a *transport.PeerError for rank 2", r, err)
		}
	}
}

func TestRunContextCancel(t *testing.T) {
	g := newGroup(t, 2)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := Run(ctx, g.Conn(0), 1, gatherSumProgram(2, 0, 3), newSumExec(0, 2, make([]float32, 3)), RunOptions{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}
