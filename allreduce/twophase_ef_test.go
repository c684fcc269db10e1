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
	w *errorfeedback.WorkerError
	s *errorfeedback.ServerError
}

func (h efTwoPhase) WorkerCompress(dst []byte, m []float32) ([]byte, float32) {
	return h.w.Compress(dst, m)
}

func (h efTwoPhase) ServerStep(dst []byte, recv [][]byte, scales []float32) ([]byte, float32, error) {
	return h.s.Step(dst, recv, scales)
}

// TestTwoPhaseStateMatchesErrorFeedback: the package's own TwoPhaseState
// and errorfeedback's errors give the same bits, step after step.
func TestTwoPhaseStateMatchesErrorFeedback(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	for _, n := range []int{1, 3, 4} {
		d := 50 + rng.IntN(200)
		progs := genAll(t, allreduce.AlgTwoPhaseSign, allreduce.Params{World: n, Elems: d})
		own := make([]*allreduce.TwoPhaseState, n)
		ef := make([]efTwoPhase, n)
		for r := range own {
			own[r] = allreduce.NewTwoPhaseState(d, n)
			ef[r] = efTwoPhase{errorfeedback.NewWorkerError(d, n), errorfeedback.NewServerError(d, n)}
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
						t.Fatalf("n=%d step %d rank %d [%d]: TwoPhaseState %v, errorfeedback %v", n, step, r, i, outs[0][r][i], outs[1][r][i])
					}
				}
				for i, v := range own[r].ServerError() {
					if math.Float32bits(v) != math.Float32bits(ef[r].s.Error()[i]) {
						t.Fatalf("n=%d step %d rank %d: server errors differ at %d", n, step, r, i)
					}
				}
			}
		}
	}
}
