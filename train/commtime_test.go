package train

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/worker"
)

// TestStatsOfCommIsExchangeWall: layers whose collectives overlap each
// count the shared wall time in their Communicate; a real run's CommTime
// is the exchange's wall time less codec time (the slowest rank's), not
// the sum over layers, and never more than that sum.
func TestStatsOfCommIsExchangeWall(t *testing.T) {
	ms := time.Millisecond
	layer := func(comm, codec time.Duration) worker.LayerLedger {
		return worker.LayerLedger{Communicate: comm, Compress: codec / 2, Decompress: codec / 2}
	}
	overlap := &worker.Ledger{Wall: 100 * ms, Layers: []worker.LayerLedger{layer(90*ms, 4*ms), layer(88*ms, 2*ms), layer(85*ms, 0)}}
	serial := &worker.Ledger{Wall: 60 * ms, Layers: []worker.LayerLedger{layer(20*ms, 2*ms), layer(30*ms, 2*ms)}}
	noWall := &worker.Ledger{Layers: []worker.LayerLedger{layer(7*ms, 0), layer(5*ms, 0)}}
	for _, c := range []struct {
		name string
		leds []*worker.Ledger
		want time.Duration
	}{
		{"overlapping layers", []*worker.Ledger{overlap}, 94 * ms}, // 100 − 6, not 263
		{"serial layers", []*worker.Ledger{serial}, 50 * ms},       // the sum: less than 60 − 4
		{"no wall", []*worker.Ledger{noWall}, 12 * ms},
		{"slowest rank", []*worker.Ledger{serial, overlap, noWall}, 94 * ms},
	} {
		st := statsOf(c.leds, 3)
		if st.CommTime != c.want {
			t.Errorf("%s: CommTime %v, want %v", c.name, st.CommTime, c.want)
		}
	}
}

// TestWorkersCommWithinWall: real workers over transport/mem with several
// layers (concurrent buckets): on every rank, communication plus codec
// time fits in the exchange's wall time, and so do the step's figures.
func TestWorkersCommWithinWall(t *testing.T) {
	ctx := context.Background()
	n := 3
	wx, err := NewWorkers(ctx, memConns(t, n), testUnits, Plan{Compress: "topk:0.05", EF: "ef14", Seed: 3}, "", WorkerOptions(3, nil)...)
	if err != nil {
		t.Fatal(err)
	}
	defer wx.Close()
	rng := rand.New(rand.NewPCG(7, 7))
	for step := range 4 {
		in, out := vectors(rng, n, testUnits)
		st, err := wx.Exchange(ctx, step, hows(optim.Mean, len(testUnits)), in, out)
		if err != nil {
			t.Fatal(err)
		}
		var wall time.Duration
		for r, l := range wx.leds {
			wall = max(wall, l.Wall)
			if c, m := codecTime(l), exchangeComm(l); m <= 0 || c+m > l.Wall {
				t.Errorf("step %d rank %d: comm %v + codec %v, exchange wall %v", step, r, m, c, l.Wall)
			}
		}
		if st.CommTime <= 0 || st.CommTime > wall || st.CodecTime > wall {
			t.Errorf("step %d: comm %v, codec %v, slowest exchange wall %v", step, st.CommTime, st.CodecTime, wall)
		}
	}
}
