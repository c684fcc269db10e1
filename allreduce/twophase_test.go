package allreduce_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/errorfeedback"
)

// twoPhaseBlockReference is the two-phase scheme computed directly (specs
// §2.2 with scale blocks): per block of the padded vector, a worker scale;
// per block ∩ chunk, a server scale. block 0 is one block.
func twoPhaseBlockReference(in [][]float32, n, block int) (out []float32, werr [][]float32, serr [][]float32, avg []float32) {
	d := len(in[0])
	dp := allreduce.TwoPhasePaddedLen(d, n)
	B := block
	if B == 0 {
		B = max(dp, 1)
	}
	avg = make([]float32, dp)
	werr = make([][]float32, n)
	for r := range in {
		a := make([]float32, dp)
		copy(a, in[r])
		werr[r] = make([]float32, dp)
		for lo := 0; lo < dp; lo += B {
			hi := min(lo+B, dp)
			s := rmsOf(a[lo:hi])
			for i := lo; i < hi; i++ {
				ac := s * sgn(a[i])
				werr[r][i] = a[i] - ac
				avg[i] += ac / float32(n)
			}
		}
	}
	L := dp / n
	out = make([]float32, dp)
	serr = make([][]float32, n)
	for c := 0; c < n; c++ {
		serr[c] = make([]float32, L)
		for lo := c * L; lo < (c+1)*L; {
			hi := min((lo/B+1)*B, (c+1)*L) // the end of lo's block, or of the chunk
			s := rmsOf(avg[lo:hi])
			for i := lo; i < hi; i++ {
				out[i] = s * sgn(avg[i])
				serr[c][i-c*L] = avg[i] - out[i]
			}
			lo = hi
		}
	}
	return out[:d], werr, serr, avg
}

// TestTwoPhaseBlocksMatchReference extends the two-phase reference test to
// several scales per message: inputs whose regions differ by up to 10^6 in
// magnitude, scale blocks that cut chunks and chunks that cut blocks.
func TestTwoPhaseBlocksMatchReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(71, 72))
	for _, n := range []int{1, 2, 3, 8} {
		for _, d := range []int{7, 100, 1000, 4099} {
			for _, block := range []int{0, 8, 24, 64, 1000} {
				in := make([][]float32, n)
				for r := range in {
					in[r] = make([]float32, d)
					for i := range in[r] {
						mag := []float32{1000, 1, 1e-3}[(i/37)%3] // regions of very different scale
						in[r][i] = mag * (float32(rng.NormFloat64()) + 0.01*float32(r))
					}
				}
				orig := make([][]float32, n)
				for r := range in {
					orig[r] = append([]float32(nil), in[r]...)
				}
				wantOut, wantW, wantS, avg := twoPhaseBlockReference(orig, n, block)
				progs := genAll(t, allreduce.AlgTwoPhaseSign, allreduce.Params{World: n, Elems: d, SignBlock: block})
				if err := allreduce.Check(progs); err != nil {
					t.Fatal(err)
				}
				states := make([]*errorfeedback.TwoPhase, n)
				execs := make([]allreduce.Executor, n)
				for r := range execs {
					var err error
					if states[r], err = errorfeedback.NewTwoPhase(d, n, r, block); err != nil {
						t.Fatal(err)
					}
					if execs[r], err = allreduce.NewExec(progs[r], in[r], allreduce.WithTwoPhase(states[r])); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := runAll(progs, execs, rng.Uint64()); err != nil {
					t.Fatal(err)
				}
				L := allreduce.TwoPhasePaddedLen(d, n) / n
				for r := 0; r < n; r++ {
					for i := 0; i < d; i++ {
						if math.Float32bits(in[r][i]) != math.Float32bits(in[0][i]) {
							t.Fatalf("n=%d d=%d block %d: rank %d [%d] differs from rank 0", n, d, block, r, i)
						}
						if math.Abs(float64(avg[i])) < 1e-6*math.Abs(float64(wantOut[i]))+1e-9 {
							continue // sign flips are possible
						}
						if !close32(in[r][i], wantOut[i], 1e-5) {
							t.Fatalf("n=%d d=%d block %d: rank %d out[%d] = %v, reference %v", n, d, block, r, i, in[r][i], wantOut[i])
						}
					}
					for i, v := range states[r].W.Error() {
						if !close32(v, wantW[r][i], 1e-5) {
							t.Fatalf("n=%d d=%d block %d: rank %d worker error [%d] = %v, reference %v", n, d, block, r, i, v, wantW[r][i])
						}
					}
					for i, v := range states[r].S.Error() {
						a := math.Abs(float64(avg[r*L+i]))
						if a < 1e-6 {
							continue
						}
						// c − s·sgn(c) cancels: bound the error by c's magnitude.
						if math.Abs(float64(v-wantS[r][i])) > 1e-5*(a+math.Abs(float64(wantS[r][i])))+1e-7 {
							t.Fatalf("n=%d d=%d block %d: rank %d server error [%d] = %v, reference %v", n, d, block, r, i, v, wantS[r][i])
						}
					}
				}
			}
		}
	}
}

// TestTwoPhaseBlocksKeepSmallRegions: with one scale per vector, a region
// 10^6 times smaller than the rest is sent as ±(the large scale), so its
// decoded values are off by about 10^6 relative; with scale blocks that
// separate the regions, they come back at their own magnitude.
func TestTwoPhaseBlocksKeepSmallRegions(t *testing.T) {
	const n, d = 4, 512
	in := make([]float32, d)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range in {
		in[i] = float32(rng.NormFloat64())
		if i >= d/2 {
			in[i] *= 1e-6
		}
	}
	smallMag := func(block int) float64 {
		inputs := make([][]float32, n)
		progs := genAll(t, allreduce.AlgTwoPhaseSign, allreduce.Params{World: n, Elems: d, SignBlock: block})
		execs := make([]allreduce.Executor, n)
		for r := range inputs {
			inputs[r] = append([]float32(nil), in...)
			st, err := errorfeedback.NewTwoPhase(d, n, r, block)
			if err != nil {
				t.Fatal(err)
			}
			if execs[r], err = allreduce.NewExec(progs[r], inputs[r], allreduce.WithTwoPhase(st)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := runAll(progs, execs, 1); err != nil {
			t.Fatal(err)
		}
		var m float64
		for _, v := range inputs[0][d/2:] {
			m = max(m, math.Abs(float64(v)))
		}
		return m
	}
	// d′ = 512, chunks of 128: with one scale per vector the server scales
	// of chunks 2 and 3 come from the mean of ±(whole-vector scale) signs.
	if got := smallMag(0); got < 1e-2 {
		t.Errorf("one scale per vector: small region decoded at %g, want the large scale (~0.5)", got)
	}
	if got := smallMag(64); got > 1e-5 {
		t.Errorf("blocks of 64: small region decoded at %g, want ~1e-6", got)
	}
}

func TestTwoPhaseLayout(t *testing.T) {
	for _, tc := range []struct{ d, n, block, padded, blocks int }{
		{0, 4, 0, 0, 0}, {0, 4, 8, 0, 0},
		{10, 1, 0, 16, 1}, {10, 1, 8, 16, 2},
		{1000, 8, 0, 1024, 1}, {1000, 8, 96, 1024, 11}, {1000, 8, 2048, 1024, 1},
		{4099, 3, 1000, 4104, 5},
	} {
		l, err := allreduce.NewTwoPhaseLayout(tc.d, tc.n, tc.block)
		if err != nil {
			t.Fatal(err)
		}
		if l.Padded() != tc.padded || l.Blocks() != tc.blocks {
			t.Errorf("%+v: padded %d, blocks %d", tc, l.Padded(), l.Blocks())
		}
		// The groups of every chunk tile it in byte-aligned pieces, each
		// inside one block, in block order.
		total := 0
		for c := range tc.n {
			first, k := l.ChunkBlocks(c)
			at := 0
			for g := range k {
				lo, hi := l.Group(c, g)
				blo, bhi := l.BlockRange(first + g)
				base := c * l.ChunkLen()
				if lo != at || hi <= lo || lo%8 != 0 || hi%8 != 0 || base+lo < blo || base+hi > bhi {
					t.Fatalf("%+v: chunk %d group %d = [%d, %d), block [%d, %d)", tc, c, g, lo, hi, blo, bhi)
				}
				at = hi
			}
			if at != l.ChunkLen() {
				t.Fatalf("%+v: chunk %d groups end at %d, chunk has %d", tc, c, at, l.ChunkLen())
			}
			if got, want := l.MessageBytes(c), 4+4*k+l.ChunkLen()/8; got != want {
				t.Errorf("%+v: chunk %d message %d bytes, want %d", tc, c, got, want)
			}
			total += k
		}
		if tc.block == 0 && tc.padded > 0 && total != tc.n {
			t.Errorf("%+v: one block: %d groups, want one per chunk", tc, total)
		}
	}
	for _, block := range []int{-8, 3, 12} {
		if _, err := allreduce.NewTwoPhaseLayout(100, 4, block); !errors.Is(err, allreduce.ErrParams) {
			t.Errorf("block %d: err %v, want ErrParams", block, err)
		}
		if _, err := allreduce.TwoPhaseSign(allreduce.Params{World: 4, Elems: 100, SignBlock: block}); !errors.Is(err, allreduce.ErrParams) {
			t.Errorf("program with block %d: err %v, want ErrParams", block, err)
		}
	}
}

// v1Receiver turns the phase-1 messages its rank receives into the
// version-1 format [scale | signs] (no header, one scale), as a peer running
// an older slimgrad would have sent them.
type v1Receiver struct {
	*allreduce.Exec
	n int
}

func (v v1Receiver) Deliver(op *allreduce.Op, b []byte) error {
	if op.Dst == allreduce.BufPayload && int(op.Chunk) >= v.n && int(op.Chunk) < 2*v.n {
		k := int(b[1]) | int(b[2])<<8 | int(b[3])<<16
		b = append(append([]byte(nil), b[4:8]...), b[4+4*k:]...)
	}
	return v.Exec.Deliver(op, b)
}

// TestTwoPhaseOldVersion: a version-1 message gets an error that says so,
// and a wrong version byte one that names the version.
func TestTwoPhaseOldVersion(t *testing.T) {
	const n, d = 2, 100
	run := func(wrap func(*allreduce.Exec) allreduce.Executor) error {
		progs := genAll(t, allreduce.AlgTwoPhaseSign, allreduce.Params{World: n, Elems: d, SignBlock: 16})
		execs := make([]allreduce.Executor, n)
		for r := range execs {
			st, err := errorfeedback.NewTwoPhase(d, n, r, 16)
			if err != nil {
				t.Fatal(err)
			}
			e, err := allreduce.NewExec(progs[r], make([]float32, d), allreduce.WithTwoPhase(st))
			if err != nil {
				t.Fatal(err)
			}
			execs[r] = e
			if r == 1 {
				execs[r] = wrap(e)
			}
		}
		_, err := runAll(progs, execs, 0)
		return err
	}
	if err := run(func(e *allreduce.Exec) allreduce.Executor { return e }); err != nil {
		t.Fatal(err)
	}
	err := run(func(e *allreduce.Exec) allreduce.Executor { return v1Receiver{e, n} })
	if !errors.Is(err, allreduce.ErrMessage) || !strings.Contains(err.Error(), "version-1 two-phase message") {
		t.Fatalf("v1 message: err %v, want ErrMessage naming version 1", err)
	}
	err = run(func(e *allreduce.Exec) allreduce.Executor { return badVersion{e, n} })
	if !errors.Is(err, allreduce.ErrMessage) || !strings.Contains(err.Error(), "version 7, want 2") {
		t.Fatalf("version 7: err %v", err)
	}
}

type badVersion struct {
	*allreduce.Exec
	n int
}

func (v badVersion) Deliver(op *allreduce.Op, b []byte) error {
	if op.Dst == allreduce.BufPayload && int(op.Chunk) >= v.n && int(op.Chunk) < 2*v.n {
		b = append([]byte(nil), b...)
		b[0] = 7
	}
	return v.Exec.Deliver(op, b)
}

// TestTwoPhaseStateLayoutMismatch: a state built for another block size is
// refused by the executor.
func TestTwoPhaseStateLayoutMismatch(t *testing.T) {
	progs := genAll(t, allreduce.AlgTwoPhaseSign, allreduce.Params{World: 2, Elems: 64, SignBlock: 16})
	st := mustTwoPhase(t, 64, 2, 0)
	if _, err := allreduce.NewExec(progs[0], make([]float32, 64), allreduce.WithTwoPhase(st)); !errors.Is(err, allreduce.ErrExec) {
		t.Fatalf("err %v, want ErrExec", err)
	}
}

// mustTwoPhase is rank's two-phase state (one scale per vector) for a
// d-element vector over n ranks.
func mustTwoPhase(t *testing.T, d, n, rank int) *errorfeedback.TwoPhase {
	t.Helper()
	st, err := errorfeedback.NewTwoPhase(d, n, rank, 0)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
