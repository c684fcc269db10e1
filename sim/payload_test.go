package sim

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/allreduce/allreducetest"
)

func randVectors(rng *rand.Rand, n, elems int) [][]float32 {
	in := make([][]float32, n)
	for r := range in {
		in[r] = make([]float32, elems)
		for i := range in[r] {
			in[r][i] = float32(rng.NormFloat64()) * float32(math.Exp(rng.NormFloat64()))
		}
	}
	return in
}

func cloneVectors(in [][]float32) [][]float32 {
	out := make([][]float32, len(in))
	for i := range in {
		out[i] = append([]float32(nil), in[i]...)
	}
	return out
}

func execsFor(t testing.TB, progs []*allreduce.Program, data [][]float32) []allreduce.Executor {
	t.Helper()
	execs := make([]allreduce.Executor, len(progs))
	for r := range progs {
		e, err := allreduce.NewExec(progs[r], data[r])
		if err != nil {
			t.Fatal(err)
		}
		execs[r] = e
	}
	return execs
}

// TestPayloadMatchesLockStep runs the dense all-reduces with real executors
// in the simulator, on heterogeneous and jittered topologies, and checks the
// results are bit-identical to allreducetest's lock-step run of the same
// programs, and that the simulated bytes are the real payload bytes.
func TestPayloadMatchesLockStep(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	topos := func(n int) []*Topology {
		slow := OneSlow(n, 10*Gbps, 10, 3*time.Microsecond)
		racks := Racks(2, (n+1)/2, 25*Gbps, 4, time.Microsecond, 5*time.Microsecond)
		return []*Topology{Homogeneous(n, 10*Gbps, 5*time.Microsecond), slow, racks}
	}
	for iter := 0; iter < 24; iter++ {
		n := 2 + rng.IntN(11)
		elems := rng.IntN(3000)
		alg := []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgTree, allreduce.AlgHalvingDoubling}[iter%3]
		p := allreduce.Params{World: n, Elems: elems, Segments: 1 + rng.IntN(3), Average: iter%2 == 0}
		name := fmt.Sprintf("%v/n=%d/elems=%d/segs=%d", alg, n, elems, p.Segments)
		progs := mustPrograms(t, alg, p)
		in := randVectors(rng, n, elems)

		want := cloneVectors(in)
		st, err := allreducetest.Run(progs, execsFor(t, progs, want), allreducetest.Options{})
		if err != nil {
			t.Fatalf("%s: lock-step: %v", name, err)
		}
		for ti, topo := range topos(n) {
			got := cloneVectors(in)
			opts := &Options{Seed: uint64(iter), LatencyJitter: 0.5 * float64(ti), ComputeJitter: 0.3 * float64(ti)}
			res, err := Run(context.Background(), topo, []Collective{{Programs: progs, Executors: execsFor(t, progs, got)}}, opts)
			if err != nil {
				t.Fatalf("%s topo %d: %v", name, ti, err)
			}
			for r := range got {
				for i := range got[r] {
					if math.Float32bits(got[r][i]) != math.Float32bits(want[r][i]) {
						t.Fatalf("%s topo %d: rank %d [%d] = %v, lock-step %v", name, ti, r, i, got[r][i], want[r][i])
					}
				}
				if res.Ranks[r].BytesSent != st.SentBytes[r] || res.Ranks[r].BytesIn != st.RecvBytes[r] {
					t.Fatalf("%s topo %d: rank %d bytes %d/%d, lock-step %d/%d", name, ti, r, res.Ranks[r].BytesSent, res.Ranks[r].BytesIn, st.SentBytes[r], st.RecvBytes[r])
				}
			}
			if res.Messages != int64(st.Msgs) {
				t.Fatalf("%s: %d messages, lock-step %d", name, res.Messages, st.Msgs)
			}
		}
	}
}

// TestLiveCompute times compute ops by the executor's wall time: results
// are unchanged and the reduce time is measured (positive).
func TestLiveCompute(t *testing.T) {
	const n, elems = 4, 1 << 16
	progs := mustPrograms(t, allreduce.AlgRing, allreduce.Params{World: n, Elems: elems, Average: true})
	in := randVectors(rand.New(rand.NewPCG(1, 1)), n, elems)
	want, got := cloneVectors(in), cloneVectors(in)
	topo := Homogeneous(n, 10*Gbps, 5*time.Microsecond)
	if _, err := Run(context.Background(), topo, []Collective{{Programs: progs, Executors: execsFor(t, progs, want)}}, &Options{FreeCompute: true}); err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), topo, []Collective{{Programs: progs, Executors: execsFor(t, progs, got)}}, &Options{FreeCompute: true, LiveCompute: true})
	if err != nil {
		t.Fatal(err)
	}
	for r := range got {
		for i := range got[r] {
			if math.Float32bits(got[r][i]) != math.Float32bits(want[r][i]) {
				t.Fatalf("rank %d [%d]: %v, want %v", r, i, got[r][i], want[r][i])
			}
		}
	}
	if !(res.Compute > 0) {
		t.Errorf("live compute time %v", res.Compute)
	}
}
