package bench

import (
	"bytes"
	"context"
	"encoding/csv"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/sim"
)

func TestCodecsAndCalibration(t *testing.T) {
	ctx := context.Background()
	rs, err := Codecs(ctx, []string{"none", "topk:0.01", "sign", "powersgd:2"}, 4096, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 13 {
		t.Fatalf("%d results, want 3 per codec and sign's server step", len(rs))
	}
	for _, r := range rs {
		if r.Ops < 1 || r.Throughput() <= 0 || r.Bytes != 4*4096 {
			t.Errorf("%s: %d ops, %g B/s, %d bytes", r.Name, r.Ops, r.Throughput(), r.Bytes)
		}
		if strings.HasPrefix(r.Name, "encode/codec=topk:0.01") {
			// 41 pairs of 8 bytes plus a frame header: about 50×.
			if ratio := r.Extra["ratio"]; ratio < 30 || ratio > 64 {
				t.Errorf("topk:0.01 ratio %g", ratio)
			}
		}
	}
	ks, err := Kernels(ctx, 4096, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	cal := Calibrate(append(rs, ks...), "test")
	for _, key := range []string{"encode/topk:0.01", "decode-add/sign", "server/sign", "reduce", "copy", "scale", "encode", "decode-add"} {
		if cal.Throughput[key] <= 0 {
			t.Errorf("calibration lacks %q: %v", key, cal.Throughput)
		}
	}
	// The simulator reads what we write.
	path := filepath.Join(t.TempDir(), "calibration.json")
	if err := cal.Save(path); err != nil {
		t.Fatal(err)
	}
	back, err := sim.LoadCalibration(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.Throughput["reduce"] != cal.Throughput["reduce"] {
		t.Errorf("calibration round trip: %v vs %v", back.Throughput, cal.Throughput)
	}
	var buf bytes.Buffer
	if err := WriteCSV(&buf, rs); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil || len(rows) != len(rs)+1 {
		t.Fatalf("CSV: %d rows, %v", len(rows), err)
	}
	buf.Reset()
	if err := Table(&buf, rs); err != nil || !strings.Contains(buf.String(), "decode-add/codec=sign") {
		t.Errorf("table: %v\n%s", err, buf.String())
	}
	if _, err := Codecs(ctx, []string{"nonsense"}, 16, time.Millisecond); err == nil {
		t.Error("bad recipe: no error")
	}
}

func TestSimSpeed(t *testing.T) {
	r, err := SimSpeed(context.Background(), allreduce.AlgRing, 16, 1<<20, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// A 1 MiB ring over 16 ranks at 10 Gbit/s: 2·15/16 MiB at 1.25 GB/s ≈ 1.6 ms plus latencies.
	if v := r.Extra["virtual_s"]; v < 1.5e-3 || v > 2.5e-3 {
		t.Errorf("virtual time %g s", v)
	}
}

func TestAllReduceOverTransports(t *testing.T) {
	ctx := context.Background()
	for _, tp := range []string{"mem", "nats", "libp2p", "libp2p-insecure-nocrc"} {
		conns, closeAll, err := Group(ctx, tp, 3)
		if err != nil {
			t.Fatalf("%s: %v", tp, err)
		}
		r, err := AllReduce(ctx, tp, conns, allreduce.AlgRing, 64<<10, time.Millisecond)
		closeAll()
		if err != nil {
			t.Fatalf("%s: %v", tp, err)
		}
		if r.Extra["busbw_Bps"] <= 0 || !strings.Contains(r.Name, "transport="+tp) {
			t.Errorf("%s: %+v", tp, r)
		}
	}
	if _, _, err := Group(ctx, "carrier-pigeon", 2); err == nil {
		t.Error("unknown transport: no error")
	}
}

// TestRejectsBadSizes: sizes that are not a positive whole number of float32
// elements, and empty simulations, are errors rather than results with a
// negative or rounded throughput.
func TestRejectsBadSizes(t *testing.T) {
	ctx := context.Background()
	for _, bytes := range []int64{-4, 0, 6} {
		if _, err := SimSpeed(ctx, allreduce.AlgRing, 2, bytes, time.Millisecond); err == nil {
			t.Errorf("SimSpeed(bytes=%d): no error", bytes)
		}
		if _, err := AllReduce(ctx, "mem", nil, allreduce.AlgRing, bytes, time.Millisecond); err == nil {
			t.Errorf("AllReduce(bytes=%d): no error", bytes)
		}
	}
	if _, err := SimSpeed(ctx, allreduce.AlgRing, 0, 1<<10, time.Millisecond); err == nil {
		t.Error("SimSpeed(ranks=0): no error")
	}
}
