package worker

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/transport"
)

// runProgram runs alg on every rank over conns with allreduce.Exec and
// returns the executors. data[r] is rank r's BufData (nil where unused);
// slots[r], if set, is rank r's own AllGatherV payload.
func runProgram(t testing.TB, conns []transport.Conn, alg allreduce.Algorithm, p allreduce.Params, data [][]float32, slots [][]byte) ([]*allreduce.Program, []*allreduce.Exec) {
	t.Helper()
	n := len(conns)
	progs := make([]*allreduce.Program, n)
	execs := make([]*allreduce.Exec, n)
	for r := 0; r < n; r++ {
		q := p
		q.World, q.Rank = n, r
		var err error
		if progs[r], err = allreduce.Generate(alg, q); err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
		if execs[r], err = allreduce.NewExec(progs[r], data[r]); err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
		if slots != nil {
			execs[r].SetSlot(r, slots[r])
		}
	}
	errs := runAll(n, func(r int) error {
		_, err := Run(t.Context(), conns[r], 3, progs[r], execs[r], RunOptions{Timeout: 20 * time.Second, SendsPerPeer: 2})
		return err
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("%v rank %d of %d: %v", alg, r, n, err)
		}
	}
	return progs, execs
}

func intVectors(rng *rand.Rand, n, elems int) [][]float32 {
	out := make([][]float32, n)
	for r := range out {
		out[r] = make([]float32, elems)
		for i := range out[r] {
			out[r][i] = float32(rng.IntN(41) - 20)
		}
	}
	return out
}

func equalBits(a, b []float32) int {
	if len(a) != len(b) {
		return 0
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

// Every collective of package allreduce, run by this package's driver over
// transport/mem for random N in 1..16 and random sizes (including sizes
// smaller than N and not divisible by N), gives the naive result on every
// rank: reductions equal the naive sum (small integers, so any order is
// exact), gathers and exchanges move the right blocks.
func TestRunEveryAlgorithm(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	for trial := 0; trial < 20; trial++ {
		n := 1 + rng.IntN(16)
		elems := []int{0, 1, max(n-1, 1), n*(1+rng.IntN(9)) + 1 + rng.IntN(n), rng.IntN(5000)}[trial%5]
		segs := 1 + rng.IntN(3)
		avg := rng.IntN(2) == 0
		t.Run(fmt.Sprintf("n=%d/elems=%d/segs=%d/avg=%v", n, elems, segs, avg), func(t *testing.T) {
			conns := newGroup(t, n).Conns()
			base := allreduce.Params{Elems: elems, Segments: segs, Average: avg}
			in := intVectors(rng, n, elems)
			sum := make([]float32, elems)
			for r := range in {
				for i, v := range in[r] {
					sum[i] += v
				}
			}
			want := slices.Clone(sum)
			if avg {
				for i := range want {
					want[i] *= 1 / float32(n)
				}
			}
			for _, alg := range []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgTree, allreduce.AlgHalvingDoubling} {
				data := intVectorsClone(in)
				runProgram(t, conns, alg, base, data, nil)
				for r := range data {
					if i := equalBits(data[r], want); i >= 0 {
						t.Fatalf("%v rank %d elem %d: got %v, want %v", alg, r, i, data[r][i], want[i])
					}
				}
			}
			// Reduce-scatter: block r of rank r holds the (averaged) sum.
			data := intVectorsClone(in)
			progs, _ := runProgram(t, conns, allreduce.AlgReduceScatter, base, data, nil)
			for r := range data {
				s := progs[r].Layout.Chunks() / n
				lo, hi := progs[r].Layout.Region(r*s, s)
				if i := equalBits(data[r][lo:hi], want[lo:hi]); i >= 0 {
					t.Fatalf("reduce-scatter rank %d elem %d: got %v, want %v", r, lo+i, data[r][lo+i], want[lo+i])
				}
			}
			// All-gather: block r comes from rank r.
			data = intVectorsClone(in)
			progs, _ = runProgram(t, conns, allreduce.AlgAllGather, base, data, nil)
			s := progs[0].Layout.Chunks() / n
			gathered := make([]float32, elems)
			for j := 0; j < n; j++ {
				lo, hi := progs[0].Layout.Region(j*s, s)
				copy(gathered[lo:hi], in[j][lo:hi])
			}
			for r := range data {
				if i := equalBits(data[r], gathered); i >= 0 {
					t.Fatalf("all-gather rank %d elem %d: got %v, want %v", r, i, data[r][i], gathered[i])
				}
			}
			// All-gather-v of random byte payloads, some empty.
			payloads := make([][]byte, n)
			for r := range payloads {
				payloads[r] = make([]byte, rng.IntN(3)*rng.IntN(700))
				for i := range payloads[r] {
					payloads[r][i] = byte(rng.Uint32())
				}
			}
			_, execs := runProgram(t, conns, allreduce.AlgAllGatherV, allreduce.Params{}, make([][]float32, n), payloads)
			for r := range execs {
				for j := 0; j < n; j++ {
					if !bytes.Equal(execs[r].Slot(j), payloads[j]) {
						t.Fatalf("all-gather-v rank %d slot %d: %d bytes, want %d", r, j, len(execs[r].Slot(j)), len(payloads[j]))
					}
				}
			}
			// All-to-all: chunk j of rank r ends as chunk r of rank j.
			k := elems / n
			a2a := allreduce.Params{Elems: k * n}
			data = make([][]float32, n)
			for r := range data {
				data[r] = slices.Clone(in[r][:k*n])
			}
			runProgram(t, conns, allreduce.AlgAllToAll, a2a, data, nil)
			for r := range data {
				for j := 0; j < n; j++ {
					if i := equalBits(data[r][j*k:(j+1)*k], in[j][r*k:(r+1)*k]); i >= 0 {
						t.Fatalf("all-to-all rank %d chunk %d elem %d", r, j, i)
					}
				}
			}
			// Broadcast from a random root.
			root := rng.IntN(n)
			data = intVectorsClone(in)
			runProgram(t, conns, allreduce.AlgBroadcast, allreduce.Params{Elems: elems, Segments: segs, Root: root}, data, nil)
			for r := range data {
				if i := equalBits(data[r], in[root]); i >= 0 {
					t.Fatalf("broadcast from %d: rank %d elem %d", root, r, i)
				}
			}
			runProgram(t, conns, allreduce.AlgBarrier, allreduce.Params{}, make([][]float32, n), nil)
		})
	}
}

func intVectorsClone(in [][]float32) [][]float32 {
	out := make([][]float32, len(in))
	for r := range in {
		out[r] = slices.Clone(in[r])
	}
	return out
}
