package errorfeedback

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/slimgrad/slimgrad/allreduce"
)

// TestWorkerErrorPacking: known bytes, MSB first, bit 1 for x >= 0 (−0 too).
func TestWorkerErrorPacking(t *testing.T) {
	w := NewWorkerError(10, 1) // d′ = 16
	m := []float32{1, -1, 0, float32(math.Copysign(0, -1)), -2, 2, -3, 3, 4, -4}
	bits, s := w.Compress(nil, m)
	// elements 0..7: + - + + - + - +  -> 1011 0101 = 0xB5
	// elements 8..15: + - then padding zeros (+) -> 10 111111 = 0xBF
	if len(bits) != 2 || bits[0] != 0xB5 || bits[1] != 0xBF {
		t.Fatalf("bits % x, want b5 bf", bits)
	}
	var ss float64
	for _, x := range m {
		ss += float64(x) * float64(x)
	}
	if want := float32(math.Sqrt(ss / 16)); s != want {
		t.Errorf("scale %v, want %v", s, want)
	}
	for j, e := range w.Error() {
		var x float32
		if j < len(m) {
			x = m[j]
		}
		want := x - s
		if !(x >= 0) {
			want = x + s
		}
		if e != want {
			t.Errorf("error[%d] = %v, want %v", j, e, want)
		}
	}
}

// simulate runs the two-phase scheme over world ranks with the package's
// types and returns the (common) output.
func simulate(t *testing.T, ws []*WorkerError, ss []*ServerError, m [][]float32) []float32 {
	t.Helper()
	world := len(ws)
	bits := make([][]byte, world)
	scales := make([]float32, world)
	for r := range ws {
		bits[r], scales[r] = ws[r].Compress(nil, m[r])
	}
	cb := ws[0].ChunkBytes()
	sbits := make([][]byte, world)
	sscales := make([]float32, world)
	for r := range ss {
		recv := make([][]byte, world)
		for j := range recv {
			recv[j] = bits[j][r*cb : (r+1)*cb]
		}
		var err error
		if sbits[r], sscales[r], err = ss[r].Step(nil, recv, scales); err != nil {
			t.Fatal(err)
		}
	}
	out := make([]float32, len(m[0]))
	if err := DecodeSigns(out, sbits, sscales); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestTwoPhaseMatchesDeepSpeedReference ports DeepSpeed's
// tests/onebit/test_nccl_backend.py: from zero errors, a_c = s_w(a)·sgn(a),
// avg = mean_r a_c, chunk c -> s_c·sgn(chunk), ignoring |avg| < 1e-6.
func TestTwoPhaseMatchesDeepSpeedReference(t *testing.T) {
	for _, world := range []int{1, 3, 5, 8} {
		for _, d := range []int{7, 1001, 4096} {
			rng := rand.New(rand.NewPCG(uint64(world), uint64(d)))
			dp := allreduce.TwoPhasePaddedLen(d, world)
			ws := make([]*WorkerError, world)
			ss := make([]*ServerError, world)
			m := make([][]float32, world)
			avg := make([]float64, dp)
			for r := range ws {
				ws[r], ss[r] = NewWorkerError(d, world), NewServerError(d, world)
				m[r] = randVec(rng, d, 1)
				for j := range m[r] {
					m[r][j] += 0.01 * float32(r)
				}
				var sq float64
				for _, x := range m[r] {
					sq += float64(x) * float64(x)
				}
				sw := math.Sqrt(sq / float64(dp))
				for j := 0; j < dp; j++ {
					x := 0.0
					if j < d {
						x = float64(m[r][j])
					}
					sg := 1.0
					if x < 0 {
						sg = -1
					}
					avg[j] += sw * sg / float64(world)
				}
			}
			out := simulate(t, ws, ss, m)
			chunk := dp / world
			for c := 0; c < world; c++ {
				var sq float64
				for _, x := range avg[c*chunk : (c+1)*chunk] {
					sq += x * x
				}
				sc := math.Sqrt(sq / float64(chunk))
				for j := c * chunk; j < (c+1)*chunk && j < d; j++ {
					if math.Abs(avg[j]) < 1e-6 {
						continue
					}
					want := sc
					if avg[j] < 0 {
						want = -sc
					}
					if math.Abs(float64(out[j])-want) > 1e-5*sc {
						t.Fatalf("N=%d d=%d: out[%d] = %v, want %v", world, d, j, out[j], want)
					}
				}
			}
			// N = 1 is lossy: the output is ±s_s, not the input.
			if world == 1 && d > 7 {
				same := true
				for j := range out {
					if out[j] != m[0][j] {
						same = false
					}
				}
				if same {
					t.Error("N=1 output equals its input; 1-bit compression must be lossy")
				}
			}
		}
	}
}

// TestTwoPhaseErrorFeedback: over many steps of a constant input, the error
// feedback makes the time-average of the outputs converge to the mean input
// (the compression errors telescope).
func TestTwoPhaseErrorFeedback(t *testing.T) {
	const world, d, steps = 4, 100, 2000
	rng := rand.New(rand.NewPCG(9, 9))
	ws := make([]*WorkerError, world)
	ss := make([]*ServerError, world)
	m := make([][]float32, world)
	mean := make([]float64, d)
	for r := range ws {
		ws[r], ss[r] = NewWorkerError(d, world), NewServerError(d, world)
		m[r] = randVec(rng, d, 1)
		for j, x := range m[r] {
			mean[j] += float64(x) / world
		}
	}
	sum := make([]float64, d)
	for s := 0; s < steps; s++ {
		out := simulate(t, ws, ss, m)
		for j, x := range out {
			sum[j] += float64(x)
		}
	}
	for j := range sum {
		if got := sum[j] / steps; math.Abs(got-mean[j]) > 0.02 {
			t.Fatalf("time-average[%d] = %v, mean input %v", j, got, mean[j])
		}
	}
}

func TestTwoPhaseErrors(t *testing.T) {
	s := NewServerError(100, 4) // chunk 32 elements, 4 bytes
	good := [][]byte{make([]byte, 4), make([]byte, 4), make([]byte, 4), make([]byte, 4)}
	sc := []float32{1, 1, 1, 1}
	if _, _, err := s.Step(nil, good[:3], sc[:3]); !errors.Is(err, ErrLength) {
		t.Errorf("3 chunks for world 4: %v", err)
	}
	bad := append([][]byte(nil), good...)
	bad[2] = make([]byte, 5)
	if _, _, err := s.Step(nil, bad, sc); !errors.Is(err, ErrLength) {
		t.Errorf("5-byte chunk: %v", err)
	}
	if _, _, err := s.Step(nil, good, sc); err != nil {
		t.Errorf("good step: %v", err)
	}
	out := make([]float32, 100)
	if err := DecodeSigns(out, good[:2], sc[:2]); !errors.Is(err, ErrLength) {
		t.Errorf("DecodeSigns with 2 chunks of 4 bytes for 100 elements: %v", err)
	}
	if err := DecodeSigns(out, good, sc[:3]); !errors.Is(err, ErrLength) {
		t.Errorf("DecodeSigns scales: %v", err)
	}
	if err := DecodeSigns(out, good, sc); err != nil {
		t.Errorf("DecodeSigns: %v", err)
	}
	// Steady state allocates nothing.
	w := NewWorkerError(100, 4)
	m := make([]float32, 100)
	var bits, sbits []byte
	allocs := testing.AllocsPerRun(10, func() {
		bits, _ = w.Compress(bits, m)
		sbits, _, _ = s.Step(sbits, good, sc)
		_ = DecodeSigns(out, good, sc)
	})
	if allocs != 0 {
		t.Errorf("%v allocs per step", allocs)
	}
}

// TestTwoPhaseBlocks: one scale per block of the padded vector, one server
// scale per group of the chunk; wrong scale counts are errors; the steady
// state allocates nothing.
func TestTwoPhaseBlocks(t *testing.T) {
	const d, world, block = 100, 4, 24 // d′ = 128, chunks of 32: groups cut at 24, 48, 72, 96, 120
	w := NewBlockWorkerError(d, world, block)
	if w.Blocks() != 6 || w.Block() != block {
		t.Fatalf("blocks %d, block %d", w.Blocks(), w.Block())
	}
	m := make([]float32, d)
	for i := range m {
		m[i] = float32(i%7) - 3
		if i >= 48 {
			m[i] *= 1e-4
		}
	}
	bits, scales := w.CompressBlocks(nil, nil, m)
	if len(bits) != 16 || len(scales) != 6 {
		t.Fatalf("%d sign bytes, %d scales", len(bits), len(scales))
	}
	if !(scales[0] > 100*scales[2]) {
		t.Errorf("scales %v: block 2 (from element 48) should be ~1e-4 of block 0", scales)
	}
	wantGroups := []int{2, 2, 2, 2} // chunk c meets blocks ⌊32c/24⌋ .. ⌊(32c+31)/24⌋
	recv := make([][]byte, world)
	sc := make([][]float32, world)
	sbits := make([][]byte, world)
	sscales := make([][]float32, world)
	for c := range world {
		s := NewBlockServerError(d, world, c, block)
		if s.Groups() != wantGroups[c] {
			t.Fatalf("chunk %d: %d groups, want %d", c, s.Groups(), wantGroups[c])
		}
		for j := range world {
			recv[j] = bits[c*4 : (c+1)*4]
			sc[j] = w.ChunkScales(scales, c)
		}
		var err error
		if sbits[c], sscales[c], err = s.StepBlocks(nil, nil, recv, sc); err != nil {
			t.Fatal(err)
		}
		sc[1] = sc[1][:1]
		if _, _, err := s.StepBlocks(nil, nil, recv, sc); !errors.Is(err, ErrLength) {
			t.Errorf("chunk %d: one scale short: %v", c, err)
		}
	}
	out := make([]float32, d)
	if err := DecodeSignBlocks(out, block, sbits, sscales); err != nil {
		t.Fatal(err)
	}
	for i := 48; i < d; i++ {
		if math.Abs(float64(out[i])) > 1e-3 {
			t.Fatalf("out[%d] = %v: the small region kept its own scale", i, out[i])
		}
	}
	if err := DecodeSignBlocks(out, 12, sbits, sscales); !errors.Is(err, ErrLength) {
		t.Errorf("block 12: %v", err)
	}
	s := NewBlockServerError(d, world, 1, block)
	for j := range world {
		sc[j] = w.ChunkScales(scales, 1)
	}
	var sb []byte
	var ss []float32
	allocs := testing.AllocsPerRun(10, func() {
		bits, scales = w.CompressBlocks(bits, scales, m)
		sb, ss, _ = s.StepBlocks(sb, ss, recv, sc)
		_ = DecodeSignBlocks(out, block, sbits, sscales)
	})
	if allocs != 0 {
		t.Errorf("%v allocs per blocked step", allocs)
	}
}
