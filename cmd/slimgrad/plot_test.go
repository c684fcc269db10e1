package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestSimOneWorker: one worker sends no bytes, so there is nothing to put
// on the log-scale bytes axis; the run must still finish and plot the loss
// (it panicked in gonum/plot with "Values must be greater than 0").
func TestSimOneWorker(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	args := []string{"sim", "--workload", "logistic", "--workers", "1", "--steps", "5", "--methods", "dense", "--out", dir, "--progress", "off"}
	if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	checkPNG(t, filepath.Join(dir, "loss_vs_step.png"))
	if _, err := os.Stat(filepath.Join(dir, "loss_vs_bytes.png")); err == nil {
		t.Error("loss_vs_bytes.png written for a run that sent no bytes")
	}
}

// TestPlainTicks: the step axis is labelled every nice step (the x-axis of
// a 250-step run was labelled only at 0 and 250).
func TestPlainTicks(t *testing.T) {
	for _, tc := range []struct {
		hi   float64
		want []float64
	}{
		{250, []float64{0, 50, 100, 150, 200, 250}},
		{1199, []float64{0, 200, 400, 600, 800, 1000}},
		{4, []float64{0, 1, 2, 3, 4}},
	} {
		var got []float64
		for _, tk := range (plainTicks{}).Ticks(0, tc.hi) {
			if tk.Label != "" {
				got = append(got, tk.Value)
			}
		}
		if len(got) != len(tc.want) {
			t.Errorf("0..%g: labels at %v, want %v", tc.hi, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("0..%g: labels at %v, want %v", tc.hi, got, tc.want)
				break
			}
		}
	}
}
