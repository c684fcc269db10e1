package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestSimChurn: `sim --churn` trains each method as an elastic job with and
// without the schedule and prints what the churn cost; the finishers are
// bit-identical, the churned run went through both changes, and methods
// that elastic jobs cannot run are listed as skipped.
func TestSimChurn(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("churn.txt", []byte("leave:1@5\njoin@10\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"sim", "--churn", "@churn.txt", "--workers", "3", "--steps", "20",
		"--workload", "logistic", "--methods", "dense,topk-ef14,dgc", "--progress", "off"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, m := range []string{"dense", "topk-ef14"} {
		// method, 2 changes, 3 finishers, accuracies, Δ, identical, times.
		re := regexp.MustCompile(`(?m)^\s*` + m + `\s+2\s+3\s+[0-9.]+%\s+[0-9.]+%\s+[-+][0-9.]+\s+true\s`)
		if !re.MatchString(out) {
			t.Errorf("no row for %s with 2 changes, 3 finishers, identical:\n%s", m, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == m && strings.HasPrefix(f[len(f)-1], "-") {
				t.Errorf("%s: the churn cost %s is negative (the survivors stay on their nodes)", m, f[len(f)-1])
			}
		}
	}
	if !strings.Contains(out, "skipped method dgc:") {
		t.Errorf("dgc (warm-up) not listed as skipped:\n%s", out)
	}
}
