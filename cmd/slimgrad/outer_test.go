package main

import (
	"bytes"
	"context"
	"math"
	"path/filepath"
	"strings"
	"testing"
)

// TestSimOuter: the outer-loop presets train through `slimgrad sim`; the
// simulator and real workers over transport/mem give the same parameters
// bit for bit; the CSV shows each outer sync's bytes (synced > 0 exactly on
// the steps that send) against a dense ring every step.
func TestSimOuter(t *testing.T) {
	const steps = 20
	digests := map[string][]string{}
	for _, ex := range []string{"sim", "mem"} {
		dir := t.TempDir()
		o := simOptionsFor(t, []string{"--workload", "logistic", "--workers", "4", "--steps", "20", "--eval-every", "0",
			"--methods", "diloco,streaming-diloco,sparseloco", "--exchange", ex, "--out", dir, "--plots=false", "--progress", "off"})
		rep, err := runSim(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{})
		if err != nil {
			t.Fatalf("--exchange %s: %v", ex, err)
		}
		for _, run := range rep.Runs {
			digests[run.Method.Name] = append(digests[run.Method.Name], paramsDigest(run.Result.Model.Flat()))
		}
		rows := readCSV(t, filepath.Join(dir, "steps.csv"))
		syncs := map[string]float64{}
		tot := map[string][2]float64{}
		for _, r := range rows {
			m := r["method"]
			tt := tot[m]
			tt[0] += num(t, r, "wire_bytes")
			tt[1] += num(t, r, "dense_bytes")
			tot[m] = tt
			if num(t, r, "total_wire_bytes") != tt[0] || num(t, r, "total_dense_bytes") != tt[1] {
				t.Errorf("%s %s step %s: totals are not running sums", ex, m, r["step"])
			}
			if tt[0] > 0 && math.Abs(num(t, r, "cum_saved")-tt[1]/tt[0]) > 1e-6*tt[1]/tt[0] {
				t.Errorf("%s %s step %s: cum_saved %s, want %g", ex, m, r["step"], r["cum_saved"], tt[1]/tt[0])
			}
			s := num(t, r, "synced")
			if (s > 0) != (num(t, r, "wire_bytes") > 0) {
				t.Errorf("%s %s step %s: synced %v, wire bytes %s", ex, r["method"], r["step"], s, r["wire_bytes"])
			}
			if num(t, r, "dense_bytes") <= 0 {
				t.Errorf("%s %s step %s: no dense baseline", ex, r["method"], r["step"])
			}
			syncs[r["method"]] += s
		}
		// H = 10: fragments sync twice each in 20 steps (streaming: 2
		// fragments, the second staggered by 5 steps and flushed at the end).
		for m, want := range map[string]float64{"diloco": 2, "sparseloco": 2, "streaming-diloco": 5} {
			if syncs[m] != want {
				t.Errorf("%s %s: %v fragment syncs, want %v", ex, m, syncs[m], want)
			}
		}
		for _, run := range rep.Runs {
			if s := run.Result.Last.Saved(); s < 4 {
				t.Errorf("%s %s: saved %.1f×", ex, run.Method.Name, s)
			}
		}
	}
	for m, d := range digests {
		if len(d) != 2 || d[0] != d[1] {
			t.Errorf("%s: params sim vs mem %v", m, d)
		}
	}
}

func TestSimOuterFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--outer", "5", "--outer-delay", "5"}, "--outer-delay"},
		{[]string{"--outer", "-1"}, "--outer"},
		{[]string{"--outer", "5", "--outer-mix", "2"}, "--outer-mix"},
		{[]string{"--outer", "5", "--outer-optim", "nesterov:lr=-1"}, "--outer-optim"},
		{[]string{"--outer-fragments", "2"}, "--outer-fragments needs --outer"},
		{[]string{"--methods", "diloco", "--size-only"}, "--size-only"},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"sim", "--out", "", "--workload", "logistic"}, tc.args...)
		if code := run(context.Background(), args, &stdout, &stderr); code != 1 {
			t.Errorf("%q: exit %d, want 1", tc.args, code)
		}
		if !strings.Contains(stderr.String(), tc.msg) {
			t.Errorf("%q: error %q lacks %q", tc.args, stderr.String(), tc.msg)
		}
	}
	o := simOptionsFor(t, []string{"--outer", "4", "--compress", "topk:0.01", "--ef", "ef14"})
	ms, err := selectMethods(o)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[1].Name != "topk:0.01+ef14+momentum+outer4" || ms[1].Outer.H != 4 || ms[1].Outer.Optim != DefaultOuterOptim {
		t.Errorf("--outer 4 methods: %+v", ms)
	}
}
