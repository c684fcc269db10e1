package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestMain lets the test binary act as the slimgrad command: `slimgrad
// launch` starts os.Executable() (this binary, in tests) as its workers,
// which inherit GO_WANT_HELPER_PROCESS=1 (os/exec's convention for a test
// binary that plays another program).
func TestMain(m *testing.M) {
	if os.Getenv("GO_WANT_HELPER_PROCESS") == "1" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestLaunch runs `slimgrad launch -n 3` over embedded NATS and over libp2p:
// three OS processes train together, every replica ends with the same
// parameters, and they are the parameters `slimgrad sim` computes for the
// same scenario (same seed, shards and method), bit for bit.
func TestLaunch(t *testing.T) {
	if testing.Short() {
		t.Skip("starts OS processes")
	}
	t.Setenv("GO_WANT_HELPER_PROCESS", "1")
	scenario := []string{"--workload", "logistic", "--steps", "30", "--eval-every", "10", "--seed", "4", "--split", "noniid"}
	lg := []string{"--lgreco-link-aware", "--lgreco-adjust", "5"}
	rep, err := runSim(context.Background(), simOptionsFor(t, append([]string{"--workers", "3", "--methods", "econtrol", "--out", "", "--progress", "off"}, append(lg, scenario...)...)), &bytes.Buffer{}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 2 || rep.Runs[1].Method.Name != "econtrol+lgreco-link" {
		t.Fatalf("sim runs: %d", len(rep.Runs))
	}
	// DGC with its density warm-up (4 steps of 30: max(4, 30/20)).
	dgc, err := runSim(context.Background(), simOptionsFor(t, append([]string{"--workers", "3", "--methods", "dgc", "--out", "", "--progress", "off"}, scenario...)), &bytes.Buffer{}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(dgc.Runs) != 1 || dgc.Runs[0].Result.Records[0].Recipes[0] == dgc.Runs[0].Result.Records[29].Recipes[0] {
		t.Fatalf("sim dgc: %d runs, no warm-up in the recipes", len(dgc.Runs))
	}
	re := regexp.MustCompile(`all 3 replicas hold identical parameters \(params ([0-9a-f]{16})\)`)
	for _, tc := range []struct {
		name, transport string
		method          string
		extra           []string
		sim             methodRun
	}{
		{"nats", "nats", "econtrol", nil, rep.Runs[0]},
		{"libp2p", "libp2p", "econtrol", nil, rep.Runs[0]},
		// L-GreCo (link-aware, on the default topology of 3 workers) over
		// real processes decides and computes what sim does.
		{"nats-lgreco-link", "nats", "econtrol", lg, rep.Runs[1]},
		// DGC's density warm-up runs as the workers' codec schedules.
		{"nats-dgc", "nats", "dgc", nil, dgc.Runs[0]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := paramsDigest(tc.sim.Result.Model.Flat())
			dir := t.TempDir()
			var stdout, stderr bytes.Buffer
			args := append([]string{"launch", "-n", "3", "--transport", tc.transport, "--method", tc.method, "--out", dir}, append(tc.extra, scenario...)...)
			if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
			}
			m := re.FindStringSubmatch(stdout.String())
			if m == nil {
				t.Fatalf("no agreement line in:\n%s", stdout.String())
			}
			if m[1] != want {
				t.Errorf("launch over %s ends with params %s, sim with %s", tc.transport, m[1], want)
			}
			if n := strings.Count(stdout.String(), " done: "); n != 3 {
				t.Errorf("%d workers reported done", n)
			}
			rows := readCSV(t, dir+"/steps.csv")
			if len(rows) != 30 {
				t.Fatalf("rank 0 wrote %d rows", len(rows))
			}
			checkLedgerColumns(t, rows)
			// The same loss curve, bytes and recipes as the simulator.
			for i, r := range rows {
				simRec := tc.sim.Result.Records[i]
				if got := num(t, r, "loss"); got != simRec.Loss {
					t.Errorf("step %d: loss %v, sim %v", i, got, simRec.Loss)
				}
				if got := num(t, r, "wire_bytes"); got != float64(simRec.WireBytes) {
					t.Errorf("step %d: wire bytes %v, sim %v", i, got, simRec.WireBytes)
				}
				if got, want := r["recipes"], strings.Join(simRec.Recipes, " "); got != want {
					t.Errorf("step %d: recipes %q, sim %q", i, got, want)
				}
			}
		})
	}
}

// simOptionsFor parses sim flags as the command line would.
func simOptionsFor(t *testing.T, args []string) simOptions {
	t.Helper()
	o := defaultSimOptions()
	if err := simFlags(&o, &bytes.Buffer{}, &bytes.Buffer{}).Parse(args); err != nil {
		t.Fatal(err)
	}
	return o
}

// TestJobRejectsBadFlags: launch and worker reject out-of-range flags and
// stray arguments before starting or joining anything, naming the flag.
func TestJobRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"launch", "-n", "0"}, "-n 0"},
		{[]string{"launch", "--steps", "0"}, "--steps"},
		{[]string{"launch", "--batch", "-1"}, "--batch"},
		{[]string{"launch", "--eval-samples", "-1"}, "--eval-samples"},
		{[]string{"launch", "--timeout", "-1s"}, "--timeout"},
		{[]string{"launch", "--lgreco-alpha", "NaN"}, "--lgreco-alpha"},
		{[]string{"launch", "--transport", "x"}, "--transport"},
		{[]string{"launch", "stray"}, "unexpected arguments"},
		{[]string{"worker", "--world", "0"}, "--world"},
		{[]string{"worker", "--world", "2", "--print-every", "-1"}, "--print-every"},
		{[]string{"worker", "--world", "2", "stray"}, "unexpected arguments"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), tc.args, &stdout, &stderr); code == 0 {
			t.Errorf("%q: exit 0", tc.args)
		}
		if stdout.Len() != 0 {
			t.Errorf("%q: output %q", tc.args, stdout.String())
		}
		if !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: error %q does not mention %q", tc.args, stderr.String(), tc.want)
		}
	}
}

// TestJobArgsRoundTrip: what launch passes to its workers (jobOptions.args)
// parses back to the same options, so that no flag, such as
// --lgreco-squared=false, is lost on the way to the worker processes.
func TestJobArgsRoundTrip(t *testing.T) {
	o := defaultJobOptions()
	fs := flag.NewFlagSet("launch", flag.ContinueOnError)
	o.register(fs)
	o.World = 3
	if err := fs.Parse([]string{"--steps", "7", "--lgreco", "--lgreco-start", "4", "--lgreco-adjust", "3", "--lgreco-alpha", "0.9", "--lgreco-squared=false", "--seed", "5",
		"--compress", "topk:0.001", "--ef", "dgc:0.9", "--warmup", "5%", "--outer", "8", "--outer-optim", "sgd:lr=1", "--outer-fragments", "2", "--outer-delay", "3", "--outer-mix", "0.25"}); err != nil {
		t.Fatal(err)
	}
	back := defaultJobOptions()
	fs2 := flag.NewFlagSet("worker", flag.ContinueOnError)
	back.register(fs2)
	fs2.IntVar(&back.World, "world", 0, "") // worker's own flag, as the worker command adds it
	if err := fs2.Parse(o.args()); err != nil {
		t.Fatal(err)
	}
	if back != o {
		t.Fatalf("round trip through the worker flags:\n got %+v\nwant %+v", back, o)
	}
	if back.LG != (lgrecoSettings{Start: 4, Adjust: 3, Alpha: 0.9, Squared: false}) {
		t.Fatalf("L-GreCo settings %+v", back.LG)
	}
}
