package train

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
)

// renamed is a user codec of this test: QSGD with 4 levels under another
// name and wire id, enough to follow a registered recipe through the
// drivers.
type renamed struct{ compressors.Compressor }

func (renamed) String() string { return "user-qsgd" }

var registerUserQSGD = sync.OnceValue(func() error {
	inner := compressors.MustParse("qsgd:4")
	return compressors.Register(compressors.CodecSpec{
		Name: "user-qsgd", ID: 201, Aggregation: compressors.Gather,
		New: func(n int, _ string, cfg compressors.Config) (compressors.Compressor, error) {
			c, err := inner.New(n, compressors.WithSeed(cfg.Seed), compressors.WithRank(cfg.Rank))
			return renamed{c}, err
		},
		NominalBytes: func(n int, _ string, _ compressors.Config) int64 { return inner.NominalBytes(n) },
	})
})

// A plan naming a registered codec runs in the payload simulator and the
// size-only estimate with no other call, and both charge what the codec's
// NominalBytes says (its size does not depend on the data).
func TestUserCodecPlan(t *testing.T) {
	if err := registerUserQSGD(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n = 4
	cfg := SimConfig{Topology: sim.Homogeneous(n, sim.Gbps, 10*time.Microsecond), Options: &sim.Options{FreeCompute: true}, GradFLOP: 1e6}
	var results [2]Stats
	for i, codec := range []string{"user-qsgd", "qsgd:4"} {
		plan := Plan{Compress: codec, EF: "ef14"}
		h := hows(optim.Mean, len(testUnits))
		est, err := SizeOnly(ctx, n, testUnits, plan, h, cfg)
		if err != nil {
			t.Fatalf("%s: %v", codec, err)
		}
		sx, err := NewSim(ctx, n, testUnits, plan, cfg)
		if err != nil {
			t.Fatalf("%s: %v", codec, err)
		}
		in, out := vectors(rand.New(rand.NewPCG(1, 2)), n, testUnits)
		got, err := sx.Exchange(ctx, 0, h, in, out)
		if err != nil {
			t.Fatalf("%s: %v", codec, err)
		}
		if est.WireBytes != got.WireBytes || est.PayloadBytes != got.PayloadBytes || got.PayloadBytes >= got.DenseBytes {
			t.Errorf("%s: size-only wire %d payload %d, payload mode %d %d (dense %d)", codec,
				est.WireBytes, est.PayloadBytes, got.WireBytes, got.PayloadBytes, got.DenseBytes)
		}
		results[i] = got
	}
	// The same bytes as the built-in it wraps.
	if results[0].WireBytes != results[1].WireBytes || results[0].PayloadBytes != results[1].PayloadBytes {
		t.Errorf("user-qsgd %+v, qsgd:4 %+v", results[0], results[1])
	}
}
