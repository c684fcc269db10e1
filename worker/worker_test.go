package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/transport/mem"
)

type layerDef struct {
	name  string
	shape []int
	codec string
	ef    string
	sched []CodecStage // WithCodecSchedule, if not nil
}

func (l layerDef) elems() int {
	n := 1
	for _, d := range l.shape {
		n *= d
	}
	return n
}

// startWorkers builds one Worker per conn, registers layers and starts them
// concurrently; it fails the test on any error.
func startWorkers(t testing.TB, conns []transport.Conn, layers []layerDef, opts ...Option) []*Worker {
	t.Helper()
	ws, errs := tryStartWorkers(t, conns, func(int) []layerDef { return layers }, opts...)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: start: %v", r, err)
		}
	}
	return ws
}

func tryStartWorkers(t testing.TB, conns []transport.Conn, layersOf func(rank int) []layerDef, opts ...Option) ([]*Worker, []error) {
	n := len(conns)
	ws := make([]*Worker, n)
	errs := runAll(n, func(r int) error {
		w, err := New(context.Background(), conns[r], opts...)
		if err != nil {
			return err
		}
		ws[r] = w
		for _, l := range layersOf(r) {
			var lo []LayerOption
			if l.codec != "" {
				lo = append(lo, WithCodec(l.codec))
			}
			if l.ef != "" {
				lo = append(lo, WithErrorFeedback(l.ef))
			}
			if l.sched != nil {
				lo = append(lo, WithCodecSchedule(l.sched...))
			}
			if _, err := w.Register(l.name, l.shape, lo...); err != nil {
				return err
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return w.Start(ctx)
	})
	t.Cleanup(func() {
		for _, w := range ws {
			if w != nil {
				w.Close()
			}
		}
	})
	return ws, errs
}

// stepAll runs one Step on every rank; grads[r][l] is rank r's gradient of
// layer l (overwritten with the update).
func stepAll(ws []*Worker, grads [][][]float32) ([]*Ledger, []error) {
	leds := make([]*Ledger, len(ws))
	errs := runAll(len(ws), func(r int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var err error
		leds[r], err = ws[r].Step(ctx, grads[r])
		return err
	})
	return leds, errs
}

func mustStep(t testing.TB, ws []*Worker, grads [][][]float32) []*Ledger {
	t.Helper()
	leds, errs := stepAll(ws, grads)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: step: %v", r, err)
		}
	}
	return leds
}

// makeGrads returns grads[rank][layer]: small integers if ints, else
// normal floats.
func makeGrads(rng *rand.Rand, n int, layers []layerDef, ints bool) [][][]float32 {
	g := make([][][]float32, n)
	for r := range g {
		g[r] = make([][]float32, len(layers))
		for l, ld := range layers {
			v := make([]float32, ld.elems())
			for i := range v {
				if ints {
					v[i] = float32(rng.IntN(33) - 16)
				} else {
					v[i] = float32(rng.NormFloat64())
				}
			}
			g[r][l] = v
		}
	}
	return g
}

func cloneGrads(g [][][]float32) [][][]float32 {
	out := make([][][]float32, len(g))
	for r := range g {
		out[r] = make([][]float32, len(g[r]))
		for l := range g[r] {
			out[r][l] = slices.Clone(g[r][l])
		}
	}
	return out
}

// checkIdentical fails unless every rank's update is bit-identical to rank 0's.
func checkIdentical(t testing.TB, got [][][]float32) {
	t.Helper()
	for r := 1; r < len(got); r++ {
		for l := range got[r] {
			for i := range got[r][l] {
				if math.Float32bits(got[r][l][i]) != math.Float32bits(got[0][l][i]) {
					t.Fatalf("rank %d layer %d elem %d: %v, rank 0 has %v", r, l, i, got[r][l][i], got[0][l][i])
				}
			}
		}
	}
}

// randomLayers draws 1..4 layers of sizes that include 1, sizes smaller than
// n and sizes not divisible by n.
func randomLayers(rng *rand.Rand, n int, codec string) []layerDef {
	k := 1 + rng.IntN(4)
	var out []layerDef
	for i := 0; i < k; i++ {
		var size int
		switch rng.IntN(4) {
		case 0:
			size = 1 + rng.IntN(max(n, 2)) // possibly smaller than n
		case 1:
			size = n*(1+rng.IntN(20)) + 1 + rng.IntN(max(n-1, 1)) // not divisible
		default:
			size = 1 + rng.IntN(3000)
		}
		out = append(out, layerDef{name: fmt.Sprintf("l%d", i), shape: []int{size}, codec: codec})
	}
	return out
}

// Dense all-reduce of small integers equals the naive sum times 1/N, bit for
// bit, on every rank, for every algorithm, random N in 1..16 and random sizes.
func TestStepDenseMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	algs := []string{"ring", "tree", "halving-doubling"}
	for trial := 0; trial < 24; trial++ {
		n := 1 + rng.IntN(16)
		alg := algs[trial%len(algs)]
		bucket := []int{0, 25 << 20}[rng.IntN(2)]
		layers := randomLayers(rng, n, "none")
		t.Run(fmt.Sprintf("n=%d/alg=%s/bucket=%d/trial=%d", n, alg, bucket, trial), func(t *testing.T) {
			g := newGroup(t, n)
			ws := startWorkers(t, g.Conns(), layers, WithAlgorithm(alg), WithBucketBytes(bucket), WithTimeout(20*time.Second))
			in := makeGrads(rng, n, layers, true)
			got := cloneGrads(in)
			mustStep(t, ws, got)
			inv := 1 / float32(n)
			for l := range layers {
				for i := range in[0][l] {
					var sum float32
					for r := 0; r < n; r++ {
						sum += in[r][l][i]
					}
					want := sum * inv
					for r := 0; r < n; r++ {
						if math.Float32bits(got[r][l][i]) != math.Float32bits(want) {
							t.Fatalf("rank %d layer %d (%d elems) elem %d: got %v, want %v", r, l, len(in[0][l]), i, got[r][l][i], want)
						}
					}
				}
			}
			// Random floats: the order of the sum is the program's, the
			// same bits on every rank.
			floats := makeGrads(rng, n, layers, false)
			mustStep(t, ws, floats)
			checkIdentical(t, floats)
		})
	}
}

// Every codec and error feedback: random floats give bit-identical updates on
// every rank, over several steps (error-feedback state carries over).
func TestStepIdenticalAcrossRanks(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	cases := []struct{ codec, ef string }{
		{"none", "none"}, {"fp16", "none"}, {"bf16", "ef14"}, {"fp16", "ef21"},
		{"topk:0.1", "ef14"}, {"topk:0.05", "econtrol:0.1"}, {"randomk:0.25", "none"},
		{"dgc:0.1", "dgc:0.9"}, {"qsgd:4", "none"}, {"sign", "none"},
		{"powersgd:2", "ef14"}, {"powersgd:1", "none"},
	}
	for i, tc := range cases {
		n := 1 + rng.IntN(8)
		if i < 4 {
			n = 2 + i // make sure small worlds are covered
		}
		t.Run(fmt.Sprintf("codec=%s/ef=%s/n=%d", tc.codec, tc.ef, n), func(t *testing.T) {
			layers := []layerDef{
				{name: "w1", shape: []int{24, 17}, codec: tc.codec, ef: tc.ef},
				{name: "b1", shape: []int{17}, codec: tc.codec, ef: tc.ef},
				{name: "w2", shape: []int{5, 3, 7}, codec: tc.codec, ef: tc.ef},
			}
			g := newGroup(t, n)
			ws := startWorkers(t, g.Conns(), layers, WithSeed(7), WithTimeout(20*time.Second))
			for step := 0; step < 3; step++ {
				got := makeGrads(rng, n, layers, false)
				leds := mustStep(t, ws, got)
				checkIdentical(t, got)
				for l := range layers {
					for j, v := range got[0][l] {
						if v-v != 0 {
							t.Fatalf("step %d layer %d elem %d: non-finite %v", step, l, j, v)
						}
					}
				}
				if leds[0].Step != int64(step) {
					t.Errorf("ledger step %d, want %d", leds[0].Step, step)
				}
			}
		})
	}
}

// Gathered codecs: the update equals the naive rank-order decode-add of
// every rank's payload times 1/N, bit for bit, computed here with
// independently built compressors.
func TestStepGatherMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	for _, codec := range []string{"topk:0.1", "randomk:0.2", "qsgd:8", "dgc:0.2", "topk:0.3+zstd"} {
		for trial := 0; trial < 3; trial++ {
			n := 1 + rng.IntN(16)
			size := []int{1, n - 1 + 1, 3*n + 1, 500 + rng.IntN(500)}[trial%4]
			layers := []layerDef{{name: "g", shape: []int{size}, codec: codec}}
			t.Run(fmt.Sprintf("codec=%s/n=%d/size=%d", codec, n, size), func(t *testing.T) {
				const seed = 99
				g := newGroup(t, n)
				ws := startWorkers(t, g.Conns(), layers, WithSeed(seed))
				in := makeGrads(rng, n, layers, false)
				got := cloneGrads(in)
				mustStep(t, ws, got)
				want := make([]float32, size)
				for r := 0; r < n; r++ {
					c, err := compressors.New(codec, size, compressors.WithSeed(seed), compressors.WithRank(r))
					if err != nil {
						t.Fatal(err)
					}
					p, err := c.Compress(nil, in[r][0])
					if err != nil {
						t.Fatal(err)
					}
					if err := c.DecompressAdd(want, p); err != nil {
						t.Fatal(err)
					}
				}
				inv := 1 / float32(n)
				for i := range want {
					want[i] *= inv
				}
				for r := 0; r < n; r++ {
					for i := range want {
						if math.Float32bits(got[r][0][i]) != math.Float32bits(want[i]) {
							t.Fatalf("rank %d elem %d: got %v, want %v", r, i, got[r][0][i], want[i])
						}
					}
				}
			})
		}
	}
}

// The two-phase sign all-reduce equals a sequential simulation of docs/algorithms.md §2.2
// with the worker and server errors of package errorfeedback, over several
// steps, including padding (sizes not divisible by 8N).
func TestStepSignMatchesReference(t *testing.T) {
	for _, tc := range []struct{ n, size int }{{1, 10}, {3, 37}, {5, 200}, {8, 1001}} {
		t.Run(fmt.Sprintf("n=%d/size=%d", tc.n, tc.size), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.n), uint64(tc.size)))
			n := tc.n
			layers := []layerDef{{name: "m", shape: []int{tc.size}, codec: "sign"}}
			g := newGroup(t, n)
			ws := startWorkers(t, g.Conns(), layers)
			we := make([]*errorfeedback.WorkerError, n)
			se := make([]*errorfeedback.ServerError, n)
			for r := range we {
				we[r] = errorfeedback.NewWorkerError(tc.size, n)
				se[r] = errorfeedback.NewServerError(tc.size, n)
			}
			for step := 0; step < 3; step++ {
				in := makeGrads(rng, n, layers, false)
				for r := range in {
					for i := range in[r][0] {
						in[r][0][i] += 0.01 * float32(r)
					}
				}
				got := cloneGrads(in)
				mustStep(t, ws, got)
				// Reference.
				cb := we[0].ChunkBytes()
				bits := make([][]byte, n)
				scales := make([]float32, n)
				for r := 0; r < n; r++ {
					bits[r], scales[r] = we[r].Compress(nil, in[r][0])
				}
				sbits := make([][]byte, n)
				sscales := make([]float32, n)
				for c := 0; c < n; c++ {
					recv := make([][]byte, n)
					for j := 0; j < n; j++ {
						recv[j] = bits[j][c*cb : (c+1)*cb]
					}
					var err error
					sbits[c], sscales[c], err = se[c].Step(nil, recv, scales)
					if err != nil {
						t.Fatal(err)
					}
				}
				want := make([]float32, tc.size)
				if err := errorfeedback.DecodeSigns(want, sbits, sscales); err != nil {
					t.Fatal(err)
				}
				for r := 0; r < n; r++ {
					for i := range want {
						if math.Float32bits(got[r][0][i]) != math.Float32bits(want[i]) {
							t.Fatalf("step %d rank %d elem %d: got %v, want %v", step, r, i, got[r][0][i], want[i])
						}
					}
				}
			}
		})
	}
}

// A layer list that differs on one rank fails Start on every rank with the
// same *SignatureError naming the layer.
func TestStartSignatureMismatch(t *testing.T) {
	const n = 4
	base := []layerDef{{name: "emb", shape: []int{10, 4}}, {name: "fc.weight", shape: []int{4, 4}}, {name: "fc.bias", shape: []int{4}}}
	g := newGroup(t, n)
	_, errs := tryStartWorkers(t, g.Conns(), func(r int) []layerDef {
		if r == 2 {
			l := slices.Clone(base)
			l[1].shape = []int{4, 5}
			return l
		}
		return base
	}, WithTimeout(10*time.Second))
	for r, err := range errs {
		var se *SignatureError
		if !errors.As(err, &se) || se.Layer != "fc.weight" || se.Rank != 2 || se.Index != 1 {
			t.Fatalf("rank %d: got %v, want a SignatureError for layer fc.weight on rank 2", r, err)
		}
	}
	t.Log(errs[0])
}

func TestNaNPolicy(t *testing.T) {
	const n = 3
	layers := []layerDef{{name: "a", shape: []int{8}}, {name: "b", shape: []int{5}, codec: "topk:0.5"}, {name: "c", shape: []int{6}}}
	for _, policy := range []NaNPolicy{NaNError, NaNSkip} {
		t.Run(policy.String(), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, 6))
			g := newGroup(t, n)
			ws := startWorkers(t, g.Conns(), layers, WithNaNPolicy(policy), WithTimeout(10*time.Second))
			in := makeGrads(rng, n, layers, true)
			in[1][1][3] = float32(math.NaN())
			in[2][1][0] = float32(math.Inf(-1))
			leds, errs := stepAll(ws, in)
			for r := 0; r < n; r++ {
				switch policy {
				case NaNError:
					var ne *NonFiniteError
					if !errors.As(errs[r], &ne) || ne.Layer != "b" || !slices.Equal(ne.Ranks, []int{1, 2}) {
						t.Fatalf("rank %d: got %v, want NonFiniteError for layer b on ranks [1 2]", r, errs[r])
					}
				case NaNSkip:
					if errs[r] != nil || !leds[r].Skipped {
						t.Fatalf("rank %d: got %v, skipped=%v; want a skipped step", r, errs[r], leds[r] != nil && leds[r].Skipped)
					}
				}
			}
			// The workers stay in step: the next, finite step works.
			next := makeGrads(rng, n, layers, true)
			leds = mustStep(t, ws, next)
			checkIdentical(t, next)
			if leds[0].Skipped || leds[0].Step != 1 {
				t.Fatalf("second step: skipped=%v step=%d", leds[0].Skipped, leds[0].Step)
			}
		})
	}
}

// A rank that dies in the middle of a step turns into a typed error on every
// other rank, well within the timeout (abort notices), and the workers are
// broken afterwards.
func TestDeadRankMidStep(t *testing.T) {
	const n, dead = 4, 2
	layers := []layerDef{{name: "big", shape: []int{1 << 16}}, {name: "small", shape: []int{100}, codec: "topk:0.1"}}
	g := newGroup(t, n, mem.WithWindow(1<<12)) // a small window: senders block on the dead rank
	ws := startWorkers(t, g.Conns(), layers, WithTimeout(10*time.Second), WithBucketBytes(0))
	rng := rand.New(rand.NewPCG(1, 1))
	in := makeGrads(rng, n, layers, false)
	start := time.Now()
	errs := runAll(n, func(r int) error {
		if r == dead {
			// Submit one layer, then crash.
			if err := ws[r].Submit(1, in[r][1]); err != nil {
				return err
			}
			g.Kill(dead)
			return nil
		}
		_, err := ws[r].Step(context.Background(), in[r])
		return err
	})
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("took %v to fail", el)
	}
	for r, err := range errs {
		if r == dead {
			continue
		}
		var pe *transport.PeerError
		if !errors.As(err, &pe) {
			t.Fatalf("rank %d: got %v, want a *transport.PeerError", r, err)
		}
		t.Logf("rank %d: %v", r, err)
		if _, err := ws[r].Step(context.Background(), in[r]); !errors.Is(err, ErrBroken) {
			t.Errorf("rank %d: next step: got %v, want ErrBroken", r, err)
		}
	}
}

// Cancelling one rank's step: that rank gets the context error, the others
// an abort notice from it.
func TestStepCancel(t *testing.T) {
	const n = 3
	layers := []layerDef{{name: "x", shape: []int{1000}}}
	g := newGroup(t, n)
	ws := startWorkers(t, g.Conns(), layers, WithTimeout(time.Minute))
	in := makeGrads(rand.New(rand.NewPCG(2, 2)), n, layers, false)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	errs := runAll(n, func(r int) error {
		if r == 0 {
			_, err := ws[0].Step(ctx, in[0])
			return err
		}
		_, err := ws[r].Step(context.Background(), in[r])
		return err
	})
	if !errors.Is(errs[0], context.Canceled) {
		t.Errorf("rank 0: got %v, want context.Canceled", errs[0])
	}
	for r := 1; r < n; r++ {
		var pe *transport.PeerError
		if !errors.As(errs[r], &pe) {
			t.Errorf("rank %d: got %v, want a *transport.PeerError", r, errs[r])
		}
	}
}

// Submitting layers one by one from backward (in any order, at any time)
// gives the same result as Step.
func TestSubmitWait(t *testing.T) {
	const n = 4
	layers := []layerDef{
		{name: "a", shape: []int{300}}, {name: "b", shape: []int{7}}, {name: "c", shape: []int{64, 8}, codec: "topk:0.1", ef: "ef14"},
		{name: "d", shape: []int{129}, codec: "fp16"}, {name: "e", shape: []int{33}},
	}
	rng := rand.New(rand.NewPCG(3, 4))
	in := makeGrads(rng, n, layers, false)
	g1, g2 := newGroup(t, n), newGroup(t, n)
	ws1 := startWorkers(t, g1.Conns(), layers, WithBucketBytes(1200))
	ws2 := startWorkers(t, g2.Conns(), layers, WithBucketBytes(1200))
	want := cloneGrads(in)
	mustStep(t, ws1, want)
	got := cloneGrads(in)
	errs := runAll(n, func(r int) error {
		order := rand.New(rand.NewPCG(uint64(r), 9)).Perm(len(layers))
		done := make(chan error, len(layers))
		for _, l := range order {
			go func() { done <- ws2[r].Submit(l, got[r][l]) }()
		}
		for range layers {
			if err := <-done; err != nil {
				return err
			}
		}
		_, err := ws2[r].Wait(context.Background())
		return err
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	for r := range got {
		for l := range got[r] {
			if !slices.Equal(got[r][l], want[r][l]) {
				t.Fatalf("rank %d layer %d differs between Submit/Wait and Step", r, l)
			}
		}
	}
}

func TestLedger(t *testing.T) {
	const n = 4
	layers := []layerDef{
		{name: "dense", shape: []int{4000}},
		{name: "half", shape: []int{4000}, codec: "fp16"},
		{name: "sparse", shape: []int{4000}, codec: "topk:0.01", ef: "ef14"},
	}
	g := newGroup(t, n, mem.WithFraming(true))
	ws := startWorkers(t, g.Conns(), layers, WithAlgorithm("ring"), WithBucketBytes(0))
	in := makeGrads(rand.New(rand.NewPCG(8, 8)), n, layers, false)
	leds := mustStep(t, ws, in)
	l := leds[1]
	t.Log(l)
	t.Log("\n" + l.Table())
	base := ringBaseline(n, 4000) // 2·3/4·16000 = 24000
	if base != 24000 {
		t.Fatalf("baseline %d", base)
	}
	d, h, s := l.Layers[0], l.Layers[1], l.Layers[2]
	if d.SentBytes != base || d.RecvBytes != base || d.BaselineBytes != base || d.DenseBytes != 16000 {
		t.Errorf("dense layer: %+v", d)
	}
	if d.Scheme != "ring" || d.PayloadBytes != 16000 {
		t.Errorf("dense layer: scheme %q payload %d", d.Scheme, d.PayloadBytes)
	}
	// A ring sends only to the right neighbour and receives only from the left.
	for p := 0; p < n; p++ {
		wantTo, wantFrom := int64(0), int64(0)
		if p == 2 {
			wantTo = base
		}
		if p == 0 {
			wantFrom = base
		}
		if d.SentTo[p] != wantTo || d.RecvFrom[p] != wantFrom {
			t.Errorf("dense layer, peer %d: sent %d received %d, want %d %d", p, d.SentTo[p], d.RecvFrom[p], wantTo, wantFrom)
		}
	}
	if h.SentBytes != base/2 || h.PayloadBytes != 8000 {
		t.Errorf("fp16 layer: sent %d payload %d, want %d %d", h.SentBytes, h.PayloadBytes, base/2, 8000)
	}
	if s.Scheme != "sparse-gather" || s.SentBytes >= base/20 || s.SentBytes < int64(n-1)*s.PayloadBytes {
		t.Errorf("topk layer: %+v", s)
	}
	var wire, sent int64
	for _, p := range l.Peers {
		wire += p.SentWire
		sent += p.SentPayload
	}
	if sent < l.SentBytes() || wire <= sent {
		t.Errorf("transport counted %d payload / %d wire bytes, ledger %d", sent, wire, l.SentBytes())
	}
	if got, want := l.Saved(), 1-float64(l.SentBytes())/float64(3*base); math.Abs(got-want) > 1e-12 || got < 0.4 {
		t.Errorf("Saved() = %v, want %v", got, want)
	}
	if l.Ratio() <= 1 {
		t.Errorf("Ratio() = %v", l.Ratio())
	}
}

// PowerSGD's low-rank all-reduce equals the reference of docs/algorithms.md §4.1
// computed here rank by rank (P = mean M·Q, P̂ = orth(P), Q = mean Mᵀ·P̂,
// update P̂·Qᵀ) up to float rounding (the ring sums in another order), and
// the ef14 residual carries M − P̂·Qᵀ into the next step.
func TestStepPowerSGDMatchesReference(t *testing.T) {
	const n, rows, cols, rank, seed = 3, 20, 12, 2, 5
	layers := []layerDef{{name: "m", shape: []int{rows, cols}, codec: "powersgd:2", ef: "ef14"}}
	g := newGroup(t, n)
	ws := startWorkers(t, g.Conns(), layers, WithSeed(seed))
	refs := make([]*compressors.PowerSGD, n)
	resid := make([][]float32, n)
	for r := range refs {
		c, err := compressors.New("powersgd:2", rows*cols, compressors.WithShape(rows, cols), compressors.WithSeed(seed), compressors.WithRank(r))
		if err != nil {
			t.Fatal(err)
		}
		refs[r] = c.(*compressors.PowerSGD)
		resid[r] = make([]float32, rows*cols)
	}
	rng := rand.New(rand.NewPCG(6, 6))
	for step := 0; step < 3; step++ {
		in := makeGrads(rng, n, layers, false)
		got := cloneGrads(in)
		mustStep(t, ws, got)
		checkIdentical(t, got)
		m := make([][]float32, n)
		p := make([]float32, rows*rank)
		q := make([]float32, cols*rank)
		tmp := make([]float32, max(rows, cols)*rank)
		for r := 0; r < n; r++ {
			m[r] = slices.Clone(in[r][0])
			for i := range m[r] {
				m[r][i] += resid[r][i]
			}
			refs[r].ComputeP(tmp[:rows*rank], m[r])
			for i := range p {
				p[i] += tmp[i] / n
			}
		}
		refs[0].Orthogonalize(p)
		for r := 0; r < n; r++ {
			refs[r].ComputeQ(tmp[:cols*rank], m[r], p)
			for i := range q {
				q[i] += tmp[i] / n
			}
		}
		want := make([]float32, rows*cols)
		refs[0].Reconstruct(want, p, q)
		for r := 0; r < n; r++ {
			refs[r].SetQ(q)
			for i := range resid[r] {
				resid[r][i] = m[r][i] - want[i]
			}
		}
		var maxErr, norm float64
		for i := range want {
			maxErr = max(maxErr, math.Abs(float64(got[0][0][i]-want[i])))
			norm = max(norm, math.Abs(float64(want[i])))
		}
		if maxErr > 1e-4*norm {
			t.Fatalf("step %d: max error %g (max |want| %g)", step, maxErr, norm)
		}
	}
}

// Dense buckets take the cost model's algorithm unless Config.Algorithm
// forces one.
func TestDenseAlgorithmSelection(t *testing.T) {
	const n = 4
	layers := []layerDef{{name: "big", shape: []int{1 << 20}}, {name: "small", shape: []int{256}, codec: "fp16"}}
	for _, tc := range []struct {
		alg        string
		big, small string
	}{
		{"", "ring", "halving-doubling"},
		{"tree", "tree", "tree"},
	} {
		g := newGroup(t, n)
		ws := startWorkers(t, g.Conns(), layers, WithAlgorithm(tc.alg), WithBucketBytes(0))
		leds := mustStep(t, ws, makeGrads(rand.New(rand.NewPCG(1, 1)), n, layers, true))
		if got := [2]string{leds[0].Layers[0].Scheme, leds[0].Layers[1].Scheme}; got != [2]string{tc.big, tc.small} {
			t.Errorf("algorithm %q: schemes %v, want [%s %s]", tc.alg, got, tc.big, tc.small)
		}
	}
}

// ModeDense averages compressed layers densely and leaves error feedback
// untouched; ranks in different modes fail the step together and go on.
func TestModes(t *testing.T) {
	const n = 3
	layers := []layerDef{{name: "w", shape: []int{50, 4}, codec: "topk:0.05", ef: "ef14"}, {name: "s", shape: []int{33}, codec: "sign"}}
	rng := rand.New(rand.NewPCG(4, 4))
	ws := startWorkers(t, newGroup(t, n).Conns(), layers)
	fresh := startWorkers(t, newGroup(t, n).Conns(), layers)
	for _, w := range ws {
		if err := w.SetMode(ModeDense); err != nil {
			t.Fatal(err)
		}
	}
	in := makeGrads(rng, n, layers, true)
	got := cloneGrads(in)
	leds := mustStep(t, ws, got)
	inv := 1 / float32(n)
	for l := range layers {
		for i := range in[0][l] {
			var sum float32
			for r := 0; r < n; r++ {
				sum += in[r][l][i]
			}
			if got[1][l][i] != sum*inv {
				t.Fatalf("dense mode layer %d elem %d: got %v, want %v", l, i, got[1][l][i], sum*inv)
			}
		}
		if c := leds[0].Layers[l].Codec; c != "none" {
			t.Errorf("dense mode: ledger codec %q", c)
		}
	}
	// Back to compressed: the same as workers that never ran a dense step.
	for _, w := range ws {
		w.SetMode(ModeCompressed)
	}
	in = makeGrads(rng, n, layers, false)
	a, b := cloneGrads(in), cloneGrads(in)
	mustStep(t, ws, a)
	mustStep(t, fresh, b)
	for l := range layers {
		if !slices.Equal(a[0][l], b[0][l]) {
			t.Fatalf("layer %d: compressed step after a dense one differs from a fresh worker's", l)
		}
	}
	// Disagreement.
	ws[2].SetMode(ModeDense)
	_, errs := stepAll(ws, makeGrads(rng, n, layers, false))
	for r, err := range errs {
		if !errors.Is(err, ErrModeMismatch) {
			t.Fatalf("rank %d: got %v, want ErrModeMismatch", r, err)
		}
	}
	ws[2].SetMode(ModeCompressed)
	next := makeGrads(rng, n, layers, false)
	mustStep(t, ws, next)
	checkIdentical(t, next)
}

// Settings that shape the programs must agree too.
func TestStartSettingsMismatch(t *testing.T) {
	const n = 3
	layers := []layerDef{{name: "a", shape: []int{10}}}
	conns := newGroup(t, n).Conns()
	errs := runAll(n, func(r int) error {
		seg := 0
		if r == 1 {
			seg = 4096
		}
		w, err := New(context.Background(), conns[r], WithSegmentBytes(seg), WithTimeout(10*time.Second))
		if err != nil {
			return err
		}
		defer w.Close()
		w.Register(layers[0].name, layers[0].shape)
		return w.Start(context.Background())
	})
	for r, err := range errs {
		var se *SignatureError
		if !errors.As(err, &se) || se.Index != -1 || se.Rank != 1 {
			t.Fatalf("rank %d: got %v, want a settings SignatureError naming rank 1", r, err)
		}
	}
	t.Log(errs[0])
}

// Shutdown then Close of the conn, rank by rank: every rank's Shutdown
// succeeds, also for ranks whose peers already closed.
func TestShutdown(t *testing.T) {
	const n = 4
	layers := []layerDef{{name: "a", shape: []int{1000}}}
	g := newGroup(t, n)
	ws := startWorkers(t, g.Conns(), layers)
	in := makeGrads(rand.New(rand.NewPCG(3, 3)), n, layers, false)
	errs := runAll(n, func(r int) error {
		if _, err := ws[r].Step(context.Background(), in[r]); err != nil {
			return err
		}
		if err := ws[r].Shutdown(context.Background()); err != nil {
			return err
		}
		return g.Conn(r).Close()
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	if _, err := ws[0].Step(context.Background(), in[0]); !errors.Is(err, ErrClosed) {
		t.Fatalf("step after Shutdown: got %v, want ErrClosed", err)
	}
}

// TestPeerAbortedUntrusted: an abort notice comes off the wire, so the
// error it becomes holds a bounded, valid-UTF-8 excerpt of it.
func TestPeerAbortedUntrusted(t *testing.T) {
	var w Worker
	msg := append([]byte("rank 1: \xff\xfe boom "), bytes.Repeat([]byte{'x'}, 1<<20)...)
	w.peerAborted(1, msg)
	err := w.abortPending
	var pe *transport.PeerError
	if !errors.As(err, &pe) || pe.Rank != 1 || !errors.Is(err, ErrAborted) {
		t.Fatalf("err = %v, want a PeerError{Rank: 1} wrapping ErrAborted", err)
	}
	s := err.Error()
	if len(s) > maxAbortMsg+200 || !utf8.ValidString(s) || !strings.Contains(s, "boom") {
		t.Fatalf("error text: %d bytes, valid UTF-8 %v, want a bounded valid excerpt", len(s), utf8.ValidString(s))
	}
	// The first notice is kept.
	w.peerAborted(2, []byte("later"))
	if w.abortPending != err {
		t.Fatalf("a later notice replaced the first: %v", w.abortPending)
	}
}

// TestLedgerCodecTime: the ledger carries the rank's measured codec time.
// A top-k exchange spends time encoding (Compress) and decoding the
// gathered payloads (Decompress) on every rank, and both fit in the step's
// wall time; a dense fp32 exchange encodes nothing (Compress 0) and its
// Decompress is the ring's reductions, as CodecTime's contract says.
func TestLedgerCodecTime(t *testing.T) {
	const n = 3
	for _, c := range []struct {
		name       string
		layer      layerDef
		compressed bool
	}{
		{"topk", layerDef{name: "w", shape: []int{20000}, codec: "topk:0.01", ef: "ef14"}, true},
		{"dense", layerDef{name: "w", shape: []int{20000}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := newGroup(t, n, mem.WithFraming(true))
			layers := []layerDef{c.layer}
			ws := startWorkers(t, g.Conns(), layers, WithAlgorithm("ring"))
			rng := rand.New(rand.NewPCG(11, 11))
			for step := range 3 {
				leds := mustStep(t, ws, makeGrads(rng, n, layers, false))
				for r, l := range leds {
					comp, dec, _ := l.Times()
					t.Logf("step %d rank %d: compress %v decompress %v codec %v wall %v", step, r, comp, dec, l.CodecTime(), l.Wall)
					if l.CodecTime() != comp+dec || l.CodecTime() > l.Wall {
						t.Errorf("step %d rank %d: CodecTime %v, compress %v + decompress %v, wall %v", step, r, l.CodecTime(), comp, dec, l.Wall)
					}
					if dec <= 0 {
						t.Errorf("step %d rank %d: decompress %v, want > 0 (decoding or reducing ran)", step, r, dec)
					}
					if c.compressed != (comp > 0) {
						t.Errorf("step %d rank %d: compress %v with compressed=%v", step, r, comp, c.compressed)
					}
				}
			}
		})
	}
}
