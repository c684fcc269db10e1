package allreduce_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/errorfeedback"
)

// efTwoPhase adapts errorfeedback's worker and server errors (what package
// worker uses) to allreduce.TwoPhaseHook.
type efTwoPhase struct {
	lay allreduce.TwoPhaseLayout
	w   *errorfeedback.WorkerError
	s   *errorfeedback.ServerError
}

func newEFTwoPhase(t *testing.T, d, n, rank, block int) efTwoPhase {
	t.Helper()
	lay, err := allreduce.NewTwoPhaseLayout(d, n, block)
	if err != nil {
		t.Fatal(err)
	}
	return efTwoPhase{lay, errorfeedback.NewBlockWorkerError(d, n, block), errorfeedback.NewBlockServerError(d, n, rank, block)}
}

func (h efTwoPhase) TwoPhaseLayout() allreduce.TwoPhaseLayout { return h.lay }

func (h efTwoPhase) WorkerCompress(dst []byte, scales, m []float32) ([]byte, []float32) {
	return h.w.CompressBlocks(dst, scales, m)
}

func (h efTwoPhase) ServerStep(dst []byte, sscales []float32, _ int, recv [][]byte, scales [][]float32) ([]byte, []float32, error) {
	return h.s.StepBlocks(dst, sscales, recv, scales)
}

// TestTwoPhaseStateMatchesErrorFeedback: the package's own TwoPhaseState
// and errorfeedback's errors give the same bits, step after step, with one
// scale per vector and with scale blocks.
func TestTwoPhaseStateMatchesErrorFeedback(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	for _, n := range []int{1, 3, 4} {
		for _, block := range []int{0, 16, 40} {
			d := 50 + rng.IntN(200)
			progs := genAll(t, allreduce.AlgTwoPhaseSign, allreduce.Params{World: n, Elems: d, SignBlock: block})
			own := make([]*allreduce.TwoPhaseState, n)
			ef := make([]efTwoPhase, n)
			for r := range own {
				var err error
				if own[r], err = allreduce.NewTwoPhaseBlockState(d, n, block); err != nil {
					t.Fatal(err)
				}
				ef[r] = newEFTwoPhase(t, d, n, r, block)
			}
			for step := 0; step < 5; step++ {
				in := randInputs(rng, n, d, false)
				var outs [2][][]float32
				for k := range outs {
					outs[k] = make([][]float32, n)
					execs := make([]allreduce.Executor, n)
					for r := range execs {
						outs[k][r] = append([]float32(nil), in[r]...)
						var h allreduce.TwoPhaseHook = own[r]
						if k == 1 {
							h = ef[r]
						}
						e, err := allreduce.NewExec(progs[r], outs[k][r], allreduce.WithTwoPhase(h))
						if err != nil {
							t.Fatal(err)
						}
						execs[r] = e
					}
					if _, err := runAll(progs, execs, rng.Uint64()); err != nil {
						t.Fatal(err)
					}
				}
				for r := 0; r < n; r++ {
					for i := range outs[0][r] {
						if math.Float32bits(outs[0][r][i]) != math.Float32bits(outs[1][r][i]) {
							t.Fatalf("n=%d block %d step %d rank %d [%d]: TwoPhaseState %v, errorfeedback %v", n, block, step, r, i, outs[0][r][i], outs[1][r][i])
						}
					}
					for i, v := range own[r].ServerError() {
						if math.Float32bits(v) != math.Float32bits(ef[r].s.Error()[i]) {
							t.Fatalf("n=%d block %d step %d rank %d: server errors differ at %d", n, block, step, r, i)
						}
					}
				}
			}
		}
	}
}
