package worker_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/transport/mem"
	"github.com/slimgrad/slimgrad/worker"
)

// trunc16 is a user codec of the tests: each float32 keeps its upper 16
// bits (bfloat16 by truncation), 2 bytes per element in a
// compressors.Frame. Deterministic, so the test can compute the exact
// result of a step.
type trunc16 struct{ f compressors.Frame }

const trunc16ID compressors.Codec = 170

func truncate(v float32) float32 { return math.Float32frombits(math.Float32bits(v) &^ 0xffff) }

func (c *trunc16) Len() int                             { return c.f.N }
func (c *trunc16) Aggregation() compressors.Aggregation { return compressors.Gather }
func (c *trunc16) String() string                       { return "trunc16" }

func (c *trunc16) Compress(dst []byte, src []float32) ([]byte, error) {
	if len(src) != c.f.N {
		return dst[:0], compressors.ErrLength
	}
	b := c.f.Begin(dst)
	for _, v := range src {
		b = binary.LittleEndian.AppendUint16(b, uint16(math.Float32bits(v)>>16))
	}
	return c.f.Seal(b, 0, 0), nil
}

func (c *trunc16) decode(dst []float32, payload []byte, add bool) error {
	if len(dst) != c.f.N {
		return compressors.ErrLength
	}
	h, body, err := c.f.Open(payload, 2*c.f.N)
	if err != nil {
		return err
	}
	if h.Aux != 0 || h.Count != 0 || len(body) != 2*c.f.N {
		return fmt.Errorf("%w: trunc16 body of %d bytes", compressors.ErrCorrupt, len(body))
	}
	for i := range dst {
		v := math.Float32frombits(uint32(binary.LittleEndian.Uint16(body[2*i:])) << 16)
		if add {
			dst[i] += v
		} else {
			dst[i] = v
		}
	}
	return nil
}

func (c *trunc16) Decompress(dst []float32, p []byte) error    { return c.decode(dst, p, false) }
func (c *trunc16) DecompressAdd(dst []float32, p []byte) error { return c.decode(dst, p, true) }

var registerTrunc16 = sync.OnceValue(func() error {
	return compressors.Register(compressors.CodecSpec{
		Name: "trunc16", ID: trunc16ID, Aggregation: compressors.Gather, Biased: true,
		New: func(n int, _ string, _ compressors.Config) (compressors.Compressor, error) {
			return &trunc16{compressors.Frame{Codec: trunc16ID, N: n}}, nil
		},
		NominalBytes: func(n int, _ string, _ compressors.Config) int64 {
			return int64(compressors.FrameOverhead + 2*n)
		},
	})
})

// A registered codec named in a recipe string runs through the worker like
// a built-in one: every rank ends each step with the mean of the ranks'
// decoded payloads (summed in rank order), bit for bit, and the ledger
// counts the codec's frames.
func TestUserCodecStep(t *testing.T) {
	if err := registerTrunc16(); err != nil {
		t.Fatal(err)
	}
	const world, n, steps = 4, 1000, 3
	g, err := mem.NewGroup(world)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	grads := make([][][]float32, steps) // [step][rank]
	for s := range grads {
		grads[s] = make([][]float32, world)
		for r := range world {
			grads[s][r] = make([]float32, n)
			for i := range grads[s][r] {
				grads[s][r][i] = float32(rng.NormFloat64())
			}
		}
	}
	got := make([][][]float32, world)
	ledgers := make([][]*worker.Ledger, world)
	errs := make([]error, world)
	var wg sync.WaitGroup
	run := func(rank int) error {
		ctx := context.Background()
		w, err := worker.New(ctx, g.Conn(rank), worker.WithSeed(1))
		if err != nil {
			return err
		}
		defer w.Close()
		if _, err := w.Register("w", []int{50, 20}, worker.WithCodec("trunc16"), worker.WithErrorFeedback("ef14")); err != nil {
			return err
		}
		for s := range steps {
			buf := append([]float32(nil), grads[s][rank]...)
			led, err := w.Step(ctx, [][]float32{buf})
			if err != nil {
				return err
			}
			got[rank] = append(got[rank], buf)
			ledgers[rank] = append(ledgers[rank], led)
		}
		return w.Shutdown(ctx)
	}
	for rank := range world {
		wg.Go(func() { errs[rank] = run(rank) })
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	// The reference: ef14 around trunc16, replayed per rank.
	resid := make([][]float32, world)
	for r := range resid {
		resid[r] = make([]float32, n)
	}
	for s := range steps {
		want := make([]float32, n)
		for r := range world {
			for i := range want {
				x := resid[r][i] + grads[s][r][i]
				q := truncate(x)
				resid[r][i] = x - q
				want[i] += q
			}
		}
		for i := range want {
			want[i] *= 1.0 / world
		}
		for r := range world {
			for i := range want {
				if math.Float32bits(got[r][s][i]) != math.Float32bits(want[i]) {
					t.Fatalf("step %d rank %d: element %d = %v, want %v", s, r, i, got[r][s][i], want[i])
				}
			}
			led := ledgers[r][s]
			if c := led.Layers[0].Codec; c != "trunc16" {
				t.Fatalf("ledger codec %q", c)
			}
			if p := led.PayloadBytes(); p != int64(compressors.FrameOverhead+2*n) {
				t.Fatalf("payload of %d bytes, want %d", p, compressors.FrameOverhead+2*n)
			}
			// All-gathered: each rank's payload reaches the 3 others.
			if sent := led.SentBytes(); sent != (world-1)*led.PayloadBytes() {
				t.Fatalf("sent %d bytes, want %d·%d", sent, world-1, led.PayloadBytes())
			}
		}
	}
}
