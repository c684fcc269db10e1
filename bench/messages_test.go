package bench

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/sim"
)

// TestFitMessageCostRecoversKnownCosts: one-way times made from a known
// per-message and per-byte cost, with and without ±2% seeded noise, fit back
// to those costs.
func TestFitMessageCostRecoversKnownCosts(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for _, want := range []sim.MessageCost{
		{Overhead: 25e-6, PerByte: 1e-9},  // libp2p-like: 25 µs + 1 GB/s
		{Overhead: 2e-6, PerByte: 0.1e-9}, // in-memory
		{Overhead: 150e-6, PerByte: 8e-9}, // a slow transport
		{Overhead: 40e-6, PerByte: 0},     // no per-byte cost
	} {
		for _, noise := range []float64{0, 0.02} {
			var pts []MessagePoint
			for _, size := range []int64{64, 4 << 10, 64 << 10, 1 << 20} {
				for range 3 {
					s := want.Message(size) * (1 + noise*(2*rng.Float64()-1))
					pts = append(pts, MessagePoint{Bytes: size, Seconds: s})
				}
			}
			got, err := FitMessageCost(pts)
			if err != nil {
				t.Fatal(err)
			}
			// With noise, the per-byte cost is carried by the 1 MiB points
			// (within the noise); the overhead by the small ones, within the
			// noise of the large points spread over the fit.
			tolB, tolO := 1e-9*want.PerByte+1e-18, 1e-9*want.Overhead+1e-15
			if noise > 0 {
				tolB = 0.03*want.PerByte + 1e-12
				tolO = 0.03*want.Overhead + 0.02*want.Message(1<<20)/4
			}
			if math.Abs(got.PerByte-want.PerByte) > tolB || math.Abs(got.Overhead-want.Overhead) > tolO {
				t.Errorf("noise %g: fit %+v, want %+v", noise, got, want)
			}
		}
	}
}

func TestFitMessageCostErrorsAndClamps(t *testing.T) {
	for _, pts := range [][]MessagePoint{
		nil,
		{{64, 1e-5}},
		{{64, 1e-5}, {64, 2e-5}},            // one size
		{{64, 1e-5}, {1 << 20, math.NaN()}}, // not a time
		{{64, 1e-5}, {1 << 20, -1}},
		{{-1, 1e-5}, {1 << 20, 1e-3}},
	} {
		if _, err := FitMessageCost(pts); err == nil {
			t.Errorf("%v: no error", pts)
		}
	}
	// Large messages measured faster than small ones (noise): no negative
	// per-byte cost reaches the simulator.
	got, err := FitMessageCost([]MessagePoint{{64, 2e-5}, {1 << 20, 1e-5}})
	if err != nil || got.PerByte != 0 || got.Overhead <= 0 {
		t.Errorf("decreasing times: %+v, %v", got, err)
	}
}

// TestMessageRoundTripsAndCalibration measures round trips over the
// in-memory, NATS and libp2p transports (loopback) and checks that the fitted
// costs reach calibration.json and come back from it.
func TestMessageRoundTripsAndCalibration(t *testing.T) {
	ctx := context.Background()
	var rs []Result
	for _, tp := range []string{"mem", "nats", "libp2p"} {
		conns, closeAll, err := Group(ctx, tp, 2)
		if err != nil {
			t.Fatalf("%s: %v", tp, err)
		}
		r, err := MessageRoundTrips(ctx, tp, conns, []int64{64, 256 << 10}, time.Millisecond)
		closeAll()
		if err != nil {
			t.Fatalf("%s: %v", tp, err)
		}
		if len(r) != 3 {
			t.Fatalf("%s: %d results, want one per size and the fit", tp, len(r))
		}
		for _, x := range r[:2] {
			if x.Ops < 1 || !(x.Extra["oneway_s"] > 0) || !strings.Contains(x.Name, "transport="+tp) {
				t.Errorf("%s: %+v", tp, x)
			}
		}
		if fit := r[2]; fit.Key != "messages/"+tp || !(fit.Extra["overhead_s"]+fit.Extra["byte_s"] > 0) {
			t.Errorf("%s: fit %+v", tp, fit)
		}
		rs = append(rs, r...)
	}
	var tab strings.Builder
	if err := Table(&tab, rs); err != nil || !regexp.MustCompile(`message-cost/transport=mem\s+-\s+-\s+-\s+byte_s=`).MatchString(tab.String()) {
		t.Errorf("table (%v): the fit's row should show its costs and no timing:\n%s", err, tab.String())
	}
	gs, err := Grad(ctx, []string{"logistic", "mnist"}, 8, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	rs = append(rs, gs...)
	cal := Calibrate(rs, "test")
	if len(cal.Messages) != 3 || len(cal.Grad) != 2 || len(cal.Local) != 2 || len(cal.Throughput) != 0 {
		t.Fatalf("calibration: messages %v, grad %v, local %v, throughput %v", cal.Messages, cal.Grad, cal.Local, cal.Throughput)
	}
	for _, r := range gs {
		if wl, ok := strings.CutPrefix(r.Key, "grad_s/"); ok {
			if want := r.PerOp().Seconds() / 8; cal.Grad[wl] != want || !(want > 0) {
				t.Errorf("grad_s %s: %g, want %g s per sample", wl, cal.Grad[wl], want)
			}
		} else if wl, ok := strings.CutPrefix(r.Key, "local_s/"); ok {
			// The optimizer's passes over the model: more for the MLP's
			// 200k parameters than for logistic regression's few.
			if want := r.PerOp().Seconds(); cal.Local[wl] != want || !(want > 0) {
				t.Errorf("local_s %s: %g, want %g s per step", wl, cal.Local[wl], want)
			}
		} else {
			t.Errorf("Grad returned a result with key %q", r.Key)
		}
	}
	if !(cal.Local["mnist"] > cal.Local["logistic"]) {
		t.Errorf("local step: mnist %g s, logistic %g s; want mnist's (200k parameters) larger", cal.Local["mnist"], cal.Local["logistic"])
	}
	path := filepath.Join(t.TempDir(), "calibration.json")
	if err := cal.Save(path); err != nil {
		t.Fatal(err)
	}
	back, err := sim.LoadCalibration(path)
	if err != nil {
		t.Fatal(err)
	}
	for tp, mc := range cal.Messages {
		if back.Messages[tp] != mc {
			t.Errorf("messages %s: %+v after the round trip, wrote %+v", tp, back.Messages[tp], mc)
		}
	}
	for wl, s := range cal.Grad {
		if back.Grad[wl] != s {
			t.Errorf("grad_s %s: %g after the round trip, wrote %g", wl, back.Grad[wl], s)
		}
	}
	for wl, s := range cal.Local {
		if back.Local[wl] != s {
			t.Errorf("local_s %s: %g after the round trip, wrote %g", wl, back.Local[wl], s)
		}
	}
}

func TestGradRejects(t *testing.T) {
	ctx := context.Background()
	if _, err := Grad(ctx, []string{"mnist"}, 0, time.Millisecond); err == nil {
		t.Error("batch 0: no error")
	}
	if _, err := Grad(ctx, []string{"imagenet"}, 8, time.Millisecond); err == nil {
		t.Error("unknown workload: no error")
	}
	conns, closeAll, err := Group(ctx, "mem", 2)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll()
	if _, err := MessageRoundTrips(ctx, "mem", conns[:1], MessageSizes, time.Millisecond); err == nil {
		t.Error("one rank: no error")
	}
	if _, err := MessageRoundTrips(ctx, "mem", conns, []int64{64}, time.Millisecond); err == nil {
		t.Error("one size: no error")
	}
	if _, err := MessageRoundTrips(ctx, "mem", conns, []int64{0, 64}, time.Millisecond); err == nil {
		t.Error("size 0: no error")
	}
}
