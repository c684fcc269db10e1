package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/slimgrad/slimgrad/bench"
)

// cancelOnSecond is stdout that cancels the run when the second method's
// header ("== NAME") is printed: the first method has finished by then.
type cancelOnSecond struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	seen   int
	cancel context.CancelFunc
}

func (c *cancelOnSecond) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen += strings.Count(string(p), "\n== "); c.seen >= 2 {
		c.cancel()
	}
	return c.buf.Write(p)
}

// TestSimInterruptKeepsFinished: an interrupted sim writes the results of
// the methods that finished, says so, and exits non-zero.
func TestSimInterruptKeepsFinished(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &cancelOnSecond{cancel: cancel}
	var stderr bytes.Buffer
	args := []string{"sim", "--workload", "logistic", "--workers", "2", "--steps", "30", "--methods", "dense,topk-ef14",
		"--out", dir, "--progress", "off", "--plots=false"}
	if code := run(ctx, args, out, &stderr); code == 0 {
		t.Fatal("an interrupted run exited 0")
	}
	if s := out.buf.String(); !strings.Contains(s, "interrupted during method topk-ef14") || !strings.Contains(s, "keeping the 1 methods that finished") {
		t.Errorf("stdout does not say what was kept:\n%s", s)
	}
	sum, err := os.ReadFile(filepath.Join(dir, "summary.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(sum), "dense") || strings.Contains(string(sum), "topk-ef14") {
		t.Errorf("summary.txt should hold dense only:\n%s", sum)
	}
}

// TestSimSaysItReplaces: a second run into the same folder says that it
// replaces the first one's results.
func TestSimSaysItReplaces(t *testing.T) {
	dir := t.TempDir()
	args := []string{"sim", "--workload", "logistic", "--workers", "2", "--steps", "3", "--methods", "dense",
		"--out", dir, "--progress", "off", "--plots=false"}
	for i, want := range []bool{false, true} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
			t.Fatalf("run %d: exit %d: %s", i, code, stderr.String())
		}
		if got := strings.Contains(stdout.String(), "replaces the results of the run already there"); got != want {
			t.Errorf("run %d: says it replaces: %v, want %v\n%s", i, got, want, stdout.String())
		}
	}
}

// TestBenchWarnings: bench warns on a busy machine and on measurements
// whose repetitions disagree, and stays quiet otherwise.
func TestBenchWarnings(t *testing.T) {
	for _, tc := range []struct {
		loadavg string
		cores   int
		warn    bool
	}{
		{"0.40 0.30 0.20 1/100 42", 2, false},
		{"1.00 0.30 0.20 1/100 42", 2, false},
		{"1.30 0.30 0.20 1/100 42", 2, true},
		{"9.99 0.30 0.20 1/100 42", 32, false},
		{"", 2, false},
	} {
		if got := busyWarning(tc.loadavg, tc.cores); (got != "") != tc.warn || (tc.warn && !strings.Contains(got, "busy")) {
			t.Errorf("load %q on %d cores: %q", tc.loadavg, tc.cores, got)
		}
	}
	var w bytes.Buffer
	warnSpread(&w, []bench.Result{{Name: "topk", Spread: 1.1}, {Name: "bf16 decode-add", Spread: 3.2}})
	if s := w.String(); !strings.Contains(s, "bf16 decode-add (3.2×)") || strings.Contains(s, "topk") {
		t.Errorf("spread warning %q", s)
	}
	w.Reset()
	warnSpread(&w, []bench.Result{{Name: "topk", Spread: 1.2}})
	if w.Len() != 0 {
		t.Errorf("steady measurements warned: %q", w.String())
	}
}
