package allreduce_test

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/allreduce/allreducetest"
)

func genAll(t testing.TB, alg allreduce.Algorithm, p allreduce.Params) []*allreduce.Program {
	t.Helper()
	progs := make([]*allreduce.Program, p.World)
	for r := range progs {
		p.Rank = r
		prog, err := allreduce.Generate(alg, p)
		if err != nil {
			t.Fatalf("%v %+v: %v", alg, p, err)
		}
		progs[r] = prog
	}
	return progs
}

// runDense runs alg over inputs (one vector per rank, modified in place) and
// returns the run's error.
func runDense(t testing.TB, alg allreduce.Algorithm, p allreduce.Params, in [][]float32, seed uint64, opts ...allreduce.ExecOption) error {
	t.Helper()
	progs := genAll(t, alg, p)
	execs := make([]allreduce.Executor, p.World)
	for r := range execs {
		e, err := allreduce.NewExec(progs[r], in[r], opts...)
		if err != nil {
			t.Fatal(err)
		}
		execs[r] = e
	}
	_, err := allreducetest.Run(progs, execs, allreducetest.Options{Seed: seed})
	return err
}

func randInputs(rng *rand.Rand, n, elems int, ints bool) [][]float32 {
	in := make([][]float32, n)
	for r := range in {
		in[r] = make([]float32, elems)
		for i := range in[r] {
			if ints {
				in[r][i] = float32(rng.IntN(17) - 8)
			} else {
				in[r][i] = float32(rng.NormFloat64()) * float32(math.Exp(rng.NormFloat64()))
			}
		}
	}
	return in
}

func naiveSum(in [][]float32) []float32 {
	out := make([]float32, len(in[0]))
	for _, x := range in {
		for i, v := range x {
			out[i] += v
		}
	}
	return out
}

// randSize returns sizes that stress the layouts: 0, smaller than n, not
// divisible by n, and random.
func randSize(rng *rand.Rand, n int) int {
	switch rng.IntN(6) {
	case 0:
		return rng.IntN(n + 1)
	case 1:
		return n*rng.IntN(5) + 1 + rng.IntN(max(n-1, 1))
	case 2:
		return rng.IntN(3)
	default:
		return rng.IntN(400)
	}
}

var reducers = []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgTree, allreduce.AlgHalvingDoubling}

func TestAllReduceMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < iters(300); iter++ {
		n := 1 + rng.IntN(16)
		elems := randSize(rng, n)
		segs := 1 + rng.IntN(3)
		avg := rng.IntN(2) == 0
		seed := rng.Uint64() * uint64(rng.IntN(2)) // half lock-step, half random order
		alg := reducers[iter%len(reducers)]
		p := allreduce.Params{World: n, Elems: elems, Segments: segs, Average: avg}
		in := randInputs(rng, n, elems, true)
		want := naiveSum(in)
		if avg {
			for i := range want {
				want[i] *= 1 / float32(n)
			}
		}
		if err := runDense(t, alg, p, in, seed); err != nil {
			t.Fatalf("%v n=%d elems=%d segs=%d: %v", alg, n, elems, segs, err)
		}
		for r := range in {
			for i := range want {
				if in[r][i] != want[i] {
					t.Fatalf("%v n=%d elems=%d segs=%d avg=%v seed=%d: rank %d [%d] = %v, want %v", alg, n, elems, segs, avg, seed, r, i, in[r][i], want[i])
				}
			}
		}
	}
}

func TestAllReduceBitIdentical(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for iter := 0; iter < iters(150); iter++ {
		n := 1 + rng.IntN(16)
		elems := randSize(rng, n)
		alg := reducers[iter%len(reducers)]
		p := allreduce.Params{World: n, Elems: elems, Segments: 1 + rng.IntN(3), Average: rng.IntN(2) == 0}
		in := randInputs(rng, n, elems, false)
		want := naiveSum(in)
		var opts []allreduce.ExecOption
		lossy := iter%3 == 0
		if lossy {
			opts = append(opts, allreduce.WithElementCodec(bf16{}))
			p.ElemBytes = 2
		}
		if err := runDense(t, alg, p, in, rng.Uint64(), opts...); err != nil {
			t.Fatalf("%v n=%d elems=%d: %v", alg, n, elems, err)
		}
		for r := 1; r < n; r++ {
			for i := range in[r] {
				if math.Float32bits(in[r][i]) != math.Float32bits(in[0][i]) {
					t.Fatalf("%v n=%d elems=%d lossy=%v: rank %d [%d] = %v, rank 0 has %v", alg, n, elems, lossy, r, i, in[r][i], in[0][i])
				}
			}
		}
		if p.Average {
			for i := range want {
				want[i] /= float32(n)
			}
		}
		tol := 1e-4
		if lossy {
			tol = 0.05
		}
		for i := range want {
			if d := math.Abs(float64(in[0][i] - want[i])); d > tol*(1+math.Abs(float64(want[i])))*float64(n) {
				t.Fatalf("%v n=%d: [%d] = %v, naive %v", alg, n, i, in[0][i], want[i])
			}
		}
	}
}

// bf16 is a lossy test codec: bfloat16 by truncation.
type bf16 struct{}

func (bf16) BytesPerElem() int { return 2 }
func (bf16) EncodeElems(dst []byte, src []float32) []byte {
	for _, v := range src {
		u := math.Float32bits(v) >> 16
		dst = append(dst, byte(u), byte(u>>8))
	}
	return dst
}
func (bf16) DecodeElems(dst []float32, b []byte) error {
	if len(b) != 2*len(dst) {
		return fmt.Errorf("bf16: %d bytes for %d elements", len(b), len(dst))
	}
	for i := range dst {
		dst[i] = math.Float32frombits(uint32(b[2*i])<<16 | uint32(b[2*i+1])<<24)
	}
	return nil
}
func (bf16) DecodeAddElems(dst []float32, b []byte) error {
	if len(b) != 2*len(dst) {
		return fmt.Errorf("bf16: %d bytes for %d elements", len(b), len(dst))
	}
	for i := range dst {
		dst[i] += math.Float32frombits(uint32(b[2*i])<<16 | uint32(b[2*i+1])<<24)
	}
	return nil
}

func runAll(progs []*allreduce.Program, execs []allreduce.Executor, seed uint64) (allreducetest.Stats, error) {
	return allreducetest.Run(progs, execs, allreducetest.Options{Seed: seed})
}

func randSource() *rand.Rand { return rand.New(rand.NewPCG(42, 43)) }

// soak multiplies the iteration count of every property test, for a long
// search after a change to the programs or the executor:
//
//	go test -run . ./allreduce -args -soak 20
var soak = flag.Int("soak", 1, "multiply the property tests' iterations by this")

// iters scales a property test's iteration count by -soak (ignored with
// -short).
func iters(n int) int {
	if !testing.Short() && *soak > 1 {
		return *soak * n
	}
	return n
}
