package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/train"
)

// TestBudgetTable: the comparison at equal budgets takes the least final
// time and bytes of the runs, and reads each run's loss (mean of the last
// steps within the budget) and last evaluation there.
func TestBudgetTable(t *testing.T) {
	run := func(name string, n int, dt time.Duration, bytes int64, loss func(int) float64) methodRun {
		var recs []train.Record
		for i := range n {
			r := train.Record{Step: i, Loss: loss(i), TotalStepTime: time.Duration(i+1) * dt, Evaluated: i%5 == 4}
			r.TotalWireBytes = int64(i+1) * bytes
			r.Accuracy = float64(i) / 100
			recs = append(recs, r)
		}
		return methodRun{Method: method{Name: name}, Result: &train.Result{Records: recs, Last: recs[n-1]}}
	}
	// dense: 20 steps of 10 ms and 1000 B; local: 20 steps of 1 ms and 10 B.
	rep := &simReport{Runs: []methodRun{
		run("dense", 20, 10*time.Millisecond, 1000, func(i int) float64 { return float64(i) }),
		run("local", 20, time.Millisecond, 10, func(i int) float64 { return 100 + float64(i) }),
	}}
	tb, bb, header, rows := budgetTable(rep)
	if tb != 20*time.Millisecond || bb != 200 {
		t.Fatalf("budgets %v, %d B; want local's 20ms and 200 B", tb, bb)
	}
	if len(header) != 7 || len(rows) != 2 {
		t.Fatalf("header %q, %d rows", header, len(rows))
	}
	// dense within 20 ms: steps 0 and 1 (losses 0, 1); within 200 B: none.
	if got := strings.Join(rows[0], "|"); got != "dense|1|0.5000|-|-|-|-" {
		t.Errorf("dense row %q", got)
	}
	// local: all 20 steps within both; loss mean of steps 10..19 = 114.5;
	// last evaluation at step 19 (19%).
	if got := strings.Join(rows[1], "|"); got != "local|19|114.5000|19.00% (step 19)|19|114.5000|19.00% (step 19)" {
		t.Errorf("local row %q", got)
	}
	rep.Runs[1].Result.Records = rep.Runs[1].Result.Records[5:] // a window of the last records
	if _, _, _, rows := budgetTable(rep); rows != nil {
		t.Error("budgets compared over a run that kept only its last records")
	}
	if _, _, _, rows := budgetTable(&simReport{Runs: rep.Runs[:1]}); rows != nil {
		t.Error("budgets compared with one run")
	}
}

// TestSimDivergedMethodKeepsOthers: a method whose loss diverges is
// reported and left out of the summary, the other methods still run and
// are written, and the command fails at the end naming it.
func TestSimDivergedMethodKeepsOthers(t *testing.T) {
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	args := []string{"sim", "--workload", "logistic", "--steps", "20", "--methods", "dense", "--compress", "none",
		"--optim", "sgd:lr=1e38", "--plots=false", "--progress", "off", "--out", out}
	if code := run(context.Background(), args, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1; stderr %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "method sgd") || !strings.Contains(stderr.String(), "diverged") {
		t.Errorf("the error does not name the diverged method: %q", stderr.String())
	}
	summary, err := os.ReadFile(filepath.Join(out, "summary.txt"))
	if err != nil {
		t.Fatalf("the other method's results were not written: %v", err)
	}
	if !strings.Contains(string(summary), "dense") || strings.Contains(string(summary), "sgd") {
		t.Errorf("summary.txt should hold dense and not the diverged method:\n%s", summary)
	}
}
