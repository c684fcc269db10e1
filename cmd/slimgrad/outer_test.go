package main

import (
	"bytes"
	"context"
	"math"
	"path/filepath"
	"regexp"
	"slices"
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

// TestLaunchOuter: `slimgrad launch -n 2` runs the outer-loop presets and
// the --outer flags on real processes (train.RunRankOuter; Streaming
// DiLoCo's second fragment over its own connections) and ends with the
// parameters of `slimgrad sim --exchange mem` bit for bit, with the same
// loss curve and bytes in rank 0's steps.csv.
func TestLaunchOuter(t *testing.T) {
	if testing.Short() {
		t.Skip("starts OS processes")
	}
	t.Setenv("GO_WANT_HELPER_PROCESS", "1")
	scenario := []string{"--workload", "logistic", "--steps", "24", "--eval-every", "10", "--seed", "4", "--split", "noniid"}
	custom := []string{"--outer", "6", "--compress", "topk:0.1", "--ef", "ef14", "--outer-optim", "sgd:lr=1", "--outer-fragments", "2", "--outer-delay", "1"}
	// The same with L-GreCo: each fragment's worker runs its own controller,
	// deciding every 2 syncs of its fragment.
	lg := append(slices.Clone(custom), "--lgreco", "--lgreco-adjust", "2")
	sims := map[string]methodRun{}
	for _, args := range [][]string{{"--methods", "streaming-diloco,sparseloco"}, append([]string{"--methods", "dense"}, lg...)} {
		rep, err := runSim(context.Background(), simOptionsFor(t, append(append([]string{"--workers", "2", "--exchange", "mem", "--out", "", "--progress", "off"}, args...), scenario...)), &bytes.Buffer{}, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rep.Runs {
			sims[r.Method.Name] = r
		}
	}
	re := regexp.MustCompile(`all 2 replicas hold identical parameters \(params ([0-9a-f]{16})\)`)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"streaming-diloco", []string{"--method", "streaming-diloco"}},
		{"sparseloco", []string{"--method", "sparseloco"}},
		{"topk:0.1+ef14+momentum+outer6", custom},
		{"topk:0.1+ef14+momentum+outer6+lgreco", lg},
		// libp2p: each fragment's rendezvous is asked for the rank the
		// first connection got (its peer ID would give another).
		{"streaming-diloco", []string{"--method", "streaming-diloco", "--transport", "libp2p"}},
	} {
		sr, ok := sims[tc.name]
		if !ok {
			t.Fatalf("sim ran no method %s", tc.name)
		}
		dir := t.TempDir()
		var stdout, stderr bytes.Buffer
		args := append(append([]string{"launch", "-n", "2", "--out", dir}, tc.args...), scenario...)
		if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
			t.Fatalf("%s: exit %d\nstdout:\n%s\nstderr:\n%s", tc.name, code, stdout.String(), stderr.String())
		}
		m := re.FindStringSubmatch(stdout.String())
		if m == nil {
			t.Fatalf("%s: no agreement line in:\n%s", tc.name, stdout.String())
		}
		if want := paramsDigest(sr.Result.Model.Flat()); m[1] != want {
			t.Errorf("%s: launch ends with params %s, sim --exchange mem with %s", tc.name, m[1], want)
		}
		rows := readCSV(t, filepath.Join(dir, "steps.csv"))
		if len(rows) != 24 {
			t.Fatalf("%s: rank 0 wrote %d rows", tc.name, len(rows))
		}
		var syncs float64
		for i, r := range rows {
			rec := sr.Result.Records[i]
			for _, c := range []struct {
				col  string
				want float64
			}{{"loss", rec.Loss}, {"wire_bytes", float64(rec.WireBytes)}, {"dense_bytes", float64(rec.DenseBytes)}, {"synced", float64(rec.Synced)}} {
				if got := num(t, r, c.col); got != c.want {
					t.Errorf("%s step %d: %s %v, sim %v", tc.name, i, c.col, got, c.want)
				}
			}
			syncs += num(t, r, "synced")
		}
		if syncs < 3 { // H ≤ 10 in 24 steps, with the final flush
			t.Errorf("%s: %v fragment syncs in 24 steps", tc.name, syncs)
		}
	}
}

// TestJobOuterFlags: launch and worker check the outer flags before
// starting anything; a multi-fragment outer loop over libp2p cannot use
// --announce (each fragment's connection listens on a free port).
func TestJobOuterFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"launch", "--outer-delay", "2"}, "--outer-delay needs --outer"},
		{[]string{"launch", "--outer", "5", "--outer-delay", "5"}, "--outer-delay"},
		{[]string{"launch", "--method", "streaming-diloco", "--transport", "libp2p", "--announce", "/ip4/192.0.2.1/tcp/4001"}, "--announce"},
		{[]string{"worker", "--world", "2", "--nats", "nats://127.0.0.1:1", "--job", "j", "--method", "streaming-diloco", "--transport", "libp2p", "--announce", "/ip4/192.0.2.1/tcp/4001"}, "--announce"},
		{[]string{"worker", "--world", "2", "--outer", "-2"}, "--outer"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), tc.args, &stdout, &stderr); code == 0 {
			t.Errorf("%q: exit 0", tc.args)
		}
		if !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: error %q does not mention %q", tc.args, stderr.String(), tc.want)
		}
	}
}

func TestFreePorts(t *testing.T) {
	for in, want := range map[string]string{
		"/ip4/0.0.0.0/tcp/4001":                               "/ip4/0.0.0.0/tcp/0",
		"/ip4/0.0.0.0/tcp/4001,/ip4/0.0.0.0/udp/4001/quic-v1": "/ip4/0.0.0.0/tcp/0,/ip4/0.0.0.0/udp/0/quic-v1",
		"0.0.0.0:4001,[::]:4002":                              "0.0.0.0:0,[::]:0",
		"/ip6/::/tcp/0":                                       "/ip6/::/tcp/0",
	} {
		if got := freePorts(in); got != want {
			t.Errorf("freePorts(%q) = %q, want %q", in, got, want)
		}
	}
}
