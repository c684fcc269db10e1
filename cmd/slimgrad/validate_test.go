package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/slimgrad/slimgrad/internal/kernels"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/testbed"
	"github.com/slimgrad/slimgrad/train"
	"github.com/slimgrad/slimgrad/workload"
)

// TestValidateBed runs two tiny cases of `slimgrad validate` end to end on a
// test bed (a network-bound dense ring and a top-k ring, 4 hosts each, the
// logistic workload so that no MNIST files load): bench's calibration, the
// probe and the real job of each case, their simulations. It checks that the
// table and validate.csv come out with a finite positive ratio per case, not
// how close the ratios are (the machine is shared).
func TestValidateBed(t *testing.T) {
	if testing.Short() {
		t.Skip("validate: starts OS processes in network namespaces")
	}
	if err := testbed.Supported(); err != nil {
		t.Skipf("skipping validate: %v", err)
	}
	t.Setenv("GO_WANT_HELPER_PROCESS", "1") // the workers and the server are this test binary (TestMain)
	o := defaultValidateOptions()
	o.Cases = "dense-ring-4hom-10M,topk-ring-4hom-200M"
	o.Workload = "logistic"
	o.Steps, o.Skip, o.ProbeSteps = 6, 2, 6
	// The logistic workload's simulated steps take a few ms: 3 measured
	// steps cover less than this, so --min-measured lengthens both jobs.
	o.MinMeasured = 20 * time.Millisecond
	o.BenchTime = 20 * time.Millisecond
	o.CaseTimeout = time.Minute
	o.Out = t.TempDir()
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	rs, err := runValidate(t.Context(), o, &stdout, &stderr)
	t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("%d results, want 2", len(rs))
	}
	for _, r := range rs {
		if q := r.Ratio(); r.Err != nil || math.IsNaN(q) || math.IsInf(q, 0) || q <= 0 {
			t.Errorf("%s: ratio %v, error %v", r.Case.Name, q, r.Err)
		}
		if r.Steps <= o.Steps-o.Skip-1 || r.RealMedian <= 0 || r.Sim <= 0 || r.MsgCost < 0 {
			t.Errorf("%s: %d steps measured (want more than --steps' %d), real %v, simulated %v, message cost %v", r.Case.Name, r.Steps, o.Steps-o.Skip-1, r.RealMedian, r.Sim, r.MsgCost)
		}
		if _, err := sim.LoadTopology(filepath.Join(o.Out, r.Case.Name, "job", "topology.yaml")); err != nil {
			t.Errorf("%s: the topology written: %v", r.Case.Name, err)
		}
	}
	for _, want := range []string{"| dense-ring-4hom-10M | 10,10,10,10 |", "| topk-ring-4hom-200M | 200,200,200,200 |", "geometric mean of |ratio-1| over 2 cases"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("the output lacks %q", want)
		}
	}
	f, err := os.Open(filepath.Join(o.Out, "validate.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || rows[1][0] != "dense-ring-4hom-10M" || rows[2][len(rows[2])-1] != "" {
		t.Errorf("validate.csv: %q", rows)
	}
	// --local company (the default): the run saved the local compute of
	// its 4 workers at once, for --resimulate.
	var saved valLocal
	if b, err := os.ReadFile(filepath.Join(o.Out, "local.json")); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &saved); err != nil {
		t.Fatal(err)
	}
	if l := saved.JobCompany[4]; o.Local == "company" && !(l.Step >= l.Grad && l.Grad > 0) || o.Local == "company" && !(saved.ProbeCompany[4].Step > 0) {
		t.Errorf("local.json with --local %s: %+v", o.Local, saved)
	}
	// --resimulate: the same real step times, simulated again without a bed
	// (here with the loss penalty off, which changes nothing on these
	// homogeneous rings, and the message cost as latency).
	o2 := o
	o2.Resimulate, o2.Out, o2.LossPenalty, o2.MsgModel = o.Out, "", 0, "latency"
	stdout.Reset()
	rs2, err := runValidate(t.Context(), o2, &stdout, &stderr)
	if err != nil {
		t.Fatalf("--resimulate: %v\n%s", err, stdout.String())
	}
	for i, r := range rs2 {
		if r.RealMedian != rs[i].RealMedian || r.Steps != rs[i].Steps || !(r.Sim > 0) {
			t.Errorf("--resimulate %s: real %v over %d steps, simulated %v; the run measured %v over %d", r.Case.Name, r.RealMedian, r.Steps, r.Sim, rs[i].RealMedian, rs[i].Steps)
		}
	}
}

// TestValidateCases: the case grid (4 and 8 hosts, ring and tree,
// the four methods, both regimes and the three rate profiles), --quick,
// --cases globs, and errors for patterns that match nothing.
func TestValidateCases(t *testing.T) {
	all := validationCases()
	seen := map[string]bool{}
	for _, c := range all {
		if seen[c.Name] {
			t.Errorf("case %s twice", c.Name)
		}
		seen[c.Name] = true
		for _, k := range []string{c.Method, c.Algorithm, map[int]string{4: "4hosts", 8: "8hosts"}[len(c.Rates)]} {
			seen[k] = true
		}
		if _, ok := valMethods[c.Method]; !ok {
			t.Errorf("case %s: unknown method %s", c.Name, c.Method)
		}
	}
	for _, k := range []string{"dense", "topk", "sign", "powersgd", "ring", "tree", "4hosts", "8hosts",
		"dense-ring-4slow-10M", "dense-ring-8mix-200M", "dense-tree-8hom-10M"} {
		if !seen[k] {
			t.Errorf("no case with %s", k)
		}
	}
	if c := all[len(all)-1]; c.Name != "powersgd-ring-8hom-200M" || c.Rates[0] != 200_000_000 {
		t.Errorf("last case %+v", c)
	}
	mix := all[slicesIndex(all, "dense-ring-8mix-200M")]
	if got := ratesList(mix.Rates); got != "50,100,200,50,100,200,50,100" {
		t.Errorf("mixed rates %s", got)
	}
	o := defaultValidateOptions()
	o.Quick = true
	q, err := o.selectCases()
	if err != nil || len(q) != 5 {
		t.Errorf("--quick: %d cases, %v", len(q), err)
	}
	o.Cases = "dense-*-10M, sign-ring-4hom-10M,dense-ring-4hom-10M"
	sel, err := o.selectCases()
	if err != nil || len(sel) != 8 || sel[len(sel)-1].Name != "sign-ring-4hom-10M" {
		t.Errorf("--cases %q: %d cases, %v", o.Cases, len(sel), err)
	}
	for _, bad := range []string{"nosuch", "dense-[", ","} {
		o.Cases = bad
		if _, err := o.selectCases(); err == nil {
			t.Errorf("--cases %q: no error", bad)
		}
	}
}

func slicesIndex(cs []valCase, name string) int {
	return slices.IndexFunc(cs, func(c valCase) bool { return c.Name == name })
}

// TestValidateFlags: bad flag values are refused, naming the flag, before
// anything runs; --list prints the cases without needing root.
func TestValidateFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--steps", "2"}, "--steps"},
		{[]string{"--skip", "19"}, "--skip"},
		{[]string{"--transport", "tcp"}, "--transport"},
		{[]string{"--grad", "flops"}, "--grad"},
		{[]string{"--message-cost", "x"}, "--message-cost"},
		{[]string{"--local", "x"}, "--local"},
		{[]string{"--grad", "calibration", "--local", "company"}, "--local"},
		{[]string{"--goodput", "1.5"}, "--goodput"},
		{[]string{"--tbf", "limit"}, "--tbf"},
		{[]string{"--core-share", "1.2"}, "--core-share"},
		{[]string{"--core-share", "-0.5"}, "--core-share"},
		{[]string{"--core-share", "probe", "--message-cost", "calibration"}, "--core-share"},
		{[]string{"--workload", "imagenet"}, "--workload"},
		{[]string{"--cases", "nosuch"}, "--cases"},
	} {
		var stdout, stderr bytes.Buffer
		err := runValidateCommand(t.Context(), tc.args, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one naming %s", tc.args, err, tc.want)
		}
	}
	var stdout, stderr bytes.Buffer
	if err := runValidateCommand(t.Context(), []string{"--list", "--quick"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(stdout.String(), "(quick)"); n != 5 || !strings.Contains(stdout.String(), "sign-ring-4hom-10M") {
		t.Errorf("--list --quick:\n%s", stdout.String())
	}
}

// TestValidateTopology: the topology written for a case parses, puts rank
// r on host hostOf[r] with its shaped rate, and puts every node on one
// host with the machine's cores, so that four workers on two cores compute
// at half speed when all compute at once; the simulation's framing is
// libp2p's bytes per message and, per 1448-byte segment, the 66 bytes of
// headers that the default goodput leaves; each node's queue (and with
// --tbf both or burst, its bucket) is its host's tc tbf's.
func TestValidateTopology(t *testing.T) {
	o := defaultValidateOptions()
	o.Cores = 2
	c := validationCases()[slicesIndex(validationCases(), "dense-ring-4slow-10M")]
	text := o.topologyYAML(c, []int{3, 0, 2, 1})
	topo, err := sim.ParseTopology("validate", []byte(text))
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	if len(topo.Nodes) != 4 {
		t.Fatalf("%d nodes", len(topo.Nodes))
	}
	for r, want := range []struct {
		name string
		rate float64
	}{{"h3", 2.5e6}, {"h0", 10e6}, {"h2", 10e6}, {"h1", 10e6}} {
		n := topo.Nodes[r]
		if n.Name != want.name || math.Abs(float64(n.Up)*8-want.rate) > 8 || n.Up != n.Down || n.Speed != 1 || n.Host != "bed" || n.Cores != 2 {
			t.Errorf("node %d: %+v, want %s at %g bit/s, speed 1, host bed with 2 cores", r, n, want.name, want.rate)
		}
	}
	// The bed's tbf at 10 and 2.5 Mbit/s: a burst of 64 KiB, and a limit of
	// 200 ms of the rate plus the burst (--tbf queue, the default: no burst).
	for r, want := range []int64{62_500 + 65_536, 250_000 + 65_536, 250_000 + 65_536, 250_000 + 65_536} {
		if n := topo.Nodes[r]; n.Queue != want || n.Burst != 0 {
			t.Errorf("node %s: queue %d, burst %d; want %d, 0", n.Name, n.Queue, n.Burst, want)
		}
	}
	for _, tc := range []struct {
		tbf          string
		queue, burst bool
	}{{"both", true, true}, {"burst", false, true}, {"none", false, false}} {
		o := o
		o.Buckets = tc.tbf
		tp, err := sim.ParseTopology("validate", []byte(o.topologyYAML(c, []int{3, 0, 2, 1})))
		if err != nil {
			t.Fatal(err)
		}
		if n := tp.Nodes[1]; (n.Queue == 250_000+65_536) != tc.queue || (n.Burst == 65_536) != tc.burst || n.Queue != 0 && !tc.queue || n.Burst != 0 && !tc.burst {
			t.Errorf("--tbf %s: node %s queue %d, burst %d", tc.tbf, n.Name, n.Queue, n.Burst)
		}
	}
	if got, want := o.framing(), (sim.Framing{MessageBytes: 24 + 12 + 18, SegmentPayload: 1448, SegmentBytes: 66}); got != want {
		t.Errorf("framing %+v, want %+v", got, want)
	}
	shares, err := topo.CoreShares(nil, 4)
	if err != nil || !slices.Equal(shares, []float64{2, 2, 2, 2}) {
		t.Errorf("core shares %v (%v), want 2 for each of 4 workers on 2 cores", shares, err)
	}
}

// TestValidateSteps: readSteps keeps the steps after --skip but for the
// last (the final evaluation) and any evaluated one, and rejects a file
// without the columns.
func TestValidateSteps(t *testing.T) {
	o := defaultValidateOptions()
	o.Skip = 1
	j := valJob{steps: 5, skip: 1}
	var b strings.Builder
	w := csv.NewWriter(&b)
	w.Write(csvHeader)
	for step := range 5 {
		row := make([]string, len(csvHeader))
		for i, h := range csvHeader {
			switch h {
			case "step":
				row[i] = strconv.Itoa(step)
			case "evaluated":
				row[i] = map[bool]string{true: "true", false: "false"}[step == 2 || step == 4]
			case "wall_s":
				row[i] = strconv.Itoa(10 + step)
			case "compute_wall_s":
				row[i] = "0.5"
			case "sim_codec_s":
				row[i] = "0.25"
			default:
				row[i] = "0"
			}
		}
		w.Write(row)
	}
	w.Flush()
	var run realRun
	if err := o.readSteps(j, strings.NewReader(b.String()), &run); err != nil {
		t.Fatal(err)
	}
	wall, compute, codec := run.wall, run.compute, run.codec
	if len(wall) != 2 || wall[0] != 11 || wall[1] != 13 || len(compute) != 2 || !slices.Equal(codec, []float64{0.25, 0.25}) || run.steps != 5 || run.skip != 1 {
		t.Errorf("wall %v compute %v codec %v, %d steps, warm-up %d; want steps 1 and 3 of 5, warm-up 1", wall, compute, codec, run.steps, run.skip)
	}
	// A job of unknown length (--resimulate) has the file's steps and their
	// warm-up: --skip's for a job of at most --steps.
	o.Steps = 5
	var again realRun
	if err := o.readSteps(valJob{}, strings.NewReader(b.String()), &again); err != nil || again.steps != 5 || again.skip != 1 || !slices.Equal(again.wall, wall) {
		t.Errorf("a job of unknown steps: %d steps, warm-up %d, wall %v, %v; want 5, 1, %v", again.steps, again.skip, again.wall, err, wall)
	}
	if err := o.readSteps(j, strings.NewReader("step,wall_s\n1,2\n"), &run); err == nil {
		t.Error("no error for a file without evaluated and compute_wall_s")
	}
	if g := geoMeanAbsErr([]float64{0.01, 0.04}); math.Abs(g-0.02) > 1e-12 {
		t.Errorf("geometric mean of 1%% and 4%%: %v", g)
	}
	if g := geoMeanAbsErr([]float64{0, 0.01}); math.Abs(g-1e-3) > 1e-12 {
		t.Errorf("geometric mean of 0 (floored at 1e-4) and 1%%: %v", g)
	}
}

// TestValidateJobSteps: a case whose simulated step is short runs enough
// steps that its measured ones cover --min-measured (a fifth of them, at
// least --skip, the warm-up), at most maxJobSteps; the others run --steps
// with --skip; and skipFor finds the warm-up again from the steps alone,
// as --resimulate does.
func TestValidateJobSteps(t *testing.T) {
	o := defaultValidateOptions()
	o.Steps, o.Skip, o.MinMeasured = 20, 4, 3*time.Second
	for _, tc := range []struct {
		est         float64
		steps, skip int
	}{{1, 20, 4}, {0.2, 20, 4}, {0.1, 39, 7}, {0.005, 752, 150}, {1e-6, maxJobSteps, maxJobSteps / 5}} {
		steps, skip := o.jobSteps(tc.est)
		if steps != tc.steps || skip != tc.skip {
			t.Errorf("step of %gs: %d steps, warm-up %d; want %d, %d", tc.est, steps, skip, tc.steps, tc.skip)
		}
	}
	for est := 1e-4; est < 2; est *= 1.07 {
		steps, skip := o.jobSteps(est)
		if measured := float64(steps-skip-1) * est; measured < o.MinMeasured.Seconds() && steps < maxJobSteps || skip < o.Skip || steps < o.Steps {
			t.Errorf("step of %gs: %d steps, warm-up %d: %.3gs measured", est, steps, skip, measured)
		}
		if o.skipFor(steps) != skip {
			t.Errorf("step of %gs: skipFor(%d) = %d, the job's warm-up %d", est, steps, o.skipFor(steps), skip)
		}
	}
	o.MinMeasured = 0
	if steps, skip := o.jobSteps(1e-6); steps != 20 || skip != 4 {
		t.Errorf("--min-measured 0: %d steps, warm-up %d; want --steps and --skip", steps, skip)
	}
}

// TestValidateFitMessageCost: the probe's fit recovers the per-message cost
// that made a simulated probe step, as CPU of both workers
// (--message-model cpu: the overhead beyond bench's, no wait) or as a wait
// beyond bench's CPU cost (wait); and a cost charged as CPU costs a job
// whose messages run at once more than the same cost as a wait, which a
// chain of messages (the probe) cannot tell apart.
func TestValidateFitMessageCost(t *testing.T) {
	o := defaultValidateOptions()
	o.Skip, o.Cores = 2, 2
	task, err := train.LoadTask(probeWorkload, "", o.Seed)
	if err != nil {
		t.Fatal(err)
	}
	j := valJob{name: "probe", workload: probeWorkload, task: task, method: valMethods[probeMethod], algorithm: probeAlg, steps: 8,
		local: localCost{Grad: 20e-6, Step: 30e-6}}
	c := valCase{Name: "fit-ring-4hom-200M", Rates: []int64{200e6, 200e6, 200e6, 200e6}, Algorithm: "ring", Method: "dense"}
	hostOf := []int{0, 1, 2, 3}
	bench := &sim.Calibration{Messages: map[string]sim.MessageCost{"libp2p": {Overhead: 7e-6, PerByte: 0.7e-9}}}
	probeStep := func(o validateOptions, j valJob, mc sim.MessageCost) float64 {
		t.Helper()
		recs, err := o.simulate(t.Context(), c, j, hostOf, &sim.Calibration{Messages: map[string]sim.MessageCost{"libp2p": mc}}, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		var st []float64
		for _, r := range recs {
			if o.measured(j, r.Step, r.Evaluated) {
				st = append(st, r.StepTime.Seconds())
			}
		}
		return median(st)
	}
	const excess = 40e-6
	cpu := sim.MessageCost{Overhead: 7e-6 + excess, PerByte: 0.7e-9}
	target := probeStep(o, j, cpu)
	fitted, err := o.fitMessageCost(t.Context(), c, j, &realRun{wall: []float64{target}, hostOf: hostOf}, bench, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if mc := fitted.Messages["libp2p"]; math.Abs(mc.Overhead-cpu.Overhead) > 0.02*cpu.Overhead || mc.Wait != 0 || mc.PerByte != cpu.PerByte {
		t.Errorf("--message-model cpu fitted %+v, want %+v", mc, cpu)
	}
	ow := o
	ow.MsgModel = "wait"
	fitted, err = ow.fitMessageCost(t.Context(), c, j, &realRun{wall: []float64{target}, hostOf: hostOf}, bench, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	wait := fitted.Messages["libp2p"]
	if wait.Overhead != 7e-6 || !(wait.Wait > 0) {
		t.Errorf("--message-model wait fitted %+v, want bench's overhead and a wait", wait)
	}
	if s := probeStep(ow, j, wait); math.Abs(s-target) > 0.02*target {
		t.Errorf("wait: the fitted probe takes %v, want %v", s, target)
	}
	// The same probe on 8 hosts: twice the chain of dependent messages,
	// 4.7 times the messages (the real probe took 5 times as long).
	c8 := valCase{Name: "fit-ring-8hom-200M", Rates: slices.Repeat([]int64{200e6}, 8), Algorithm: "ring", Method: "dense"}
	step8 := func(o validateOptions, mc sim.MessageCost) float64 {
		t.Helper()
		recs, err := o.simulate(t.Context(), c8, j, []int{0, 1, 2, 3, 4, 5, 6, 7}, &sim.Calibration{Messages: map[string]sim.MessageCost{"libp2p": mc}}, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return recs[len(recs)-2].StepTime.Seconds()
	}
	asCPU, asWait := step8(o, cpu)/target, step8(ow, wait)/target
	t.Logf("8 hosts over 4: %.2fx with the cost as CPU, %.2fx as a wait", asCPU, asWait)
	if !(asCPU > 1.2*asWait) {
		t.Errorf("8 hosts over 4: %.2fx with the cost as CPU, %.2fx as a wait: want the CPU one to grow more", asCPU, asWait)
	}
}

// TestValidateSavedLoads: --resimulate shows the load average that the
// earlier run recorded per case in its validate.csv.
func TestValidateSavedLoads(t *testing.T) {
	rs := []caseResult{
		{Case: valCase{Name: "a", Rates: []int64{1e7}}, Sim: time.Millisecond, RealMedian: time.Millisecond, Load: 1.5},
		{Case: valCase{Name: "b", Rates: []int64{1e7}}, Err: os.ErrNotExist, Load: 7.25},
		{Case: valCase{Name: "c", Rates: []int64{1e7}}, Sim: time.Millisecond, RealMedian: time.Millisecond, Load: math.NaN()},
	}
	p := filepath.Join(t.TempDir(), "validate.csv")
	if err := writeFile(p, func(w io.Writer) error { return writeValidationCSV(w, rs) }); err != nil {
		t.Fatal(err)
	}
	got := savedLoads(p)
	if len(got) != 2 || got["a"] != 1.5 || got["b"] != 7.25 {
		t.Errorf("loads %v, want a 1.5 and b 7.25 (c has none)", got)
	}
	if savedLoads(filepath.Join(t.TempDir(), "none.csv")) != nil {
		t.Error("loads of a missing file")
	}
}

// TestValidateLocalCompany: measureLocalCompany runs n workers, each to at
// least 5 steps, and returns a per-step CPU time with the gradient inside
// the step; localCompany uses an earlier run's figures as they are, scales
// the recorded alone figures by company/alone measured now when the
// earlier run has none, and measures anew on a fresh run; localFor takes
// the figure of the case's number of workers.
func TestValidateLocalCompany(t *testing.T) {
	if !threadCPUSupported {
		t.Skip("no per-thread CPU clock")
	}
	o := defaultValidateOptions()
	o.BenchTime, o.Workload, o.Local = 20*time.Millisecond, probeWorkload, "company"
	task, err := train.LoadTask(probeWorkload, "", o.Seed)
	if err != nil {
		t.Fatal(err)
	}
	l, counts, err := o.measureLocalCompany(t.Context(), task, valMethods["dense"].Optim, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(counts) != 3 || slices.Min(counts) < 5 {
		t.Errorf("steps per worker %v, want 3 workers of at least 5", counts)
	}
	if !(l.Grad > 0 && l.Step >= l.Grad && l.Step < 0.1) {
		t.Errorf("per step: %+v", l)
	}
	if _, _, err := o.measureLocalCompany(t.Context(), task, valMethods["dense"].Optim, 0); err == nil {
		t.Error("0 workers: no error")
	}

	cases := []valCase{{Name: "a", Rates: make([]int64, 4)}, {Name: "b", Rates: make([]int64, 2)}, {Name: "c", Rates: make([]int64, 4)}}
	alone := localCost{Grad: 1, Step: 2} // seconds: far from what the logistic model takes now
	recorded := map[int]localCost{2: {Grad: 3, Step: 4}, 4: {Grad: 5, Step: 6}}
	o.MsgCost = "calibration"
	o.Resimulate = t.TempDir()
	env := &valEnv{task: task, local: alone}
	if err := o.localCompany(t.Context(), env, cases, valLocal{Job: alone, JobCompany: recorded}, io.Discard); err != nil {
		t.Fatal(err)
	}
	if len(env.localN) != 2 || env.localN[2] != recorded[2] || env.localN[4] != recorded[4] {
		t.Errorf("--resimulate with recorded figures: %v, want %v", env.localN, recorded)
	}
	if got := localFor(alone, env.localN, 4); got != recorded[4] {
		t.Errorf("localFor 4 workers: %v", got)
	}
	if got := localFor(alone, env.localN, 8); got != alone {
		t.Errorf("localFor 8 workers, none measured: %v, want alone's %v", got, alone)
	}
	env = &valEnv{task: task, local: alone}
	if err := o.localCompany(t.Context(), env, cases, valLocal{Job: alone}, io.Discard); err != nil {
		t.Fatal(err)
	}
	for n, l := range env.localN {
		// A ratio of two CPU times of the logistic model, not its time.
		if g, s := l.Grad/alone.Grad, l.Step/alone.Step; !(g > 0.3 && g < 10 && s > 0.3 && s < 10) {
			t.Errorf("--resimulate without recorded figures, %d workers: %+v, want the alone figures %+v scaled by company/alone", n, l, alone)
		}
	}
	o.Resimulate = ""
	env = &valEnv{task: task, local: alone}
	if err := o.localCompany(t.Context(), env, cases, valLocal{}, io.Discard); err != nil {
		t.Fatal(err)
	}
	if l := env.localN[4]; len(env.localN) != 2 || !(l.Grad > 0 && l.Step < 0.1) {
		t.Errorf("a fresh run: %v, want measured figures for 2 and 4 workers", env.localN)
	}
}

// TestValidateBenchElems: validate's bench run measures the codecs and
// kernels on a vector of the workload's largest unit (the MNIST MLP's
// first weight matrix, 256×784), not bench's default of 4 Mi values.
func TestValidateBenchElems(t *testing.T) {
	m, err := workload.NewMLP([]int{784, 256, 10}, workload.CrossEntropy, 1)
	if err != nil {
		t.Fatal(err)
	}
	n := largestUnit(m)
	if n != 256*784 {
		t.Fatalf("largest unit %d, want %d", n, 256*784)
	}
	o := defaultValidateOptions()
	args := o.benchArgs(validationCases(), n, t.TempDir(), "calibration.json")
	i := slices.Index(args, "--elems")
	if i < 0 || i+1 >= len(args) || args[i+1] != "200704" {
		t.Errorf("bench %v: want --elems 200704", args)
	}
}

// TestValidateLocalFinitePasses: the measured local step makes as many
// finite passes over each unit's vector as a worker of the job does (with
// the default NaN policy): one for the flag exchange before the bucket's
// collective and one over the reduced result after it (worker.Step).
func TestValidateLocalFinitePasses(t *testing.T) {
	o := defaultValidateOptions()
	task, err := train.LoadTask(probeWorkload, "", o.Seed)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := parseOptim(valMethods["dense"].Optim, o.Steps)
	if err != nil {
		t.Fatal(err)
	}
	w, err := o.newLocalWorker(task, spec, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	passes := map[int]int{} // by vector length
	defer func(f func([]float32) bool) { localAllFinite = f }(localAllFinite)
	localAllFinite = func(x []float32) bool { passes[len(x)]++; return kernels.AllFinite(x) }
	if _, _, err := w.step(wallClock); err != nil {
		t.Fatal(err)
	}
	want := map[int]int{}
	for _, p := range w.params {
		want[len(p)] += 2
	}
	if !maps.Equal(passes, want) {
		t.Errorf("finite passes by vector length %v, want %v (two per unit)", passes, want)
	}
}

// TestProbeCoreShare: --core-share probe's share is n times rank 0's mean
// CPU per measured step over the cores' time of its mean step, at most 1;
// rank 0's file is on its host; a file without cpu_s (an older worker) or
// with no CPU time is an error.
func TestProbeCoreShare(t *testing.T) {
	o := defaultValidateOptions()
	o.Cores, o.Skip = 2, 1
	j := valJob{steps: 5, skip: 1}
	dir := t.TempDir()
	write := func(h int, cpu func(step int) string, header []string) {
		t.Helper()
		var b strings.Builder
		w := csv.NewWriter(&b)
		w.Write(header)
		for step := range 5 {
			row := make([]string, len(header))
			for i, name := range header {
				switch name {
				case "step":
					row[i] = strconv.Itoa(step)
				case "evaluated":
					row[i] = strconv.FormatBool(step == 4)
				case "cpu_s":
					row[i] = cpu(step)
				default:
					row[i] = "0"
				}
			}
			w.Write(row)
		}
		w.Flush()
		d := filepath.Join(dir, fmt.Sprintf("h%d", h))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "steps.csv"), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Steps 1-3 are measured: 0.4, 0.5 and 0.6 ms of CPU; 9 ms at the
	// warm-up step 0 and at the final step 4, not counted. Rank 0 is on
	// host h2; h0 has another file.
	write(2, func(step int) string {
		if step == 0 || step == 4 {
			return "0.009"
		}
		return strconv.FormatFloat(0.0003+0.0001*float64(step), 'g', -1, 64)
	}, csvHeader)
	write(0, func(int) string { return "0.1" }, csvHeader)
	real := &realRun{hostOf: []int{2, 0, 1, 3}, wall: []float64{0.002, 0.0022, 0.0018}}
	got, err := o.probeCoreShare(j, dir, 4, real)
	if want := 4 * 0.0005 / (2 * 0.002); err != nil || math.Abs(got-want) > 1e-12 {
		t.Errorf("share %v (%v), want %v", got, err, want)
	}
	real.wall = []float64{0.0005, 0.0005, 0.0005}
	if got, err = o.probeCoreShare(j, dir, 4, real); err != nil || got != 1 {
		t.Errorf("share %v (%v), want 1 (at most)", got, err)
	}
	old := slices.DeleteFunc(slices.Clone(csvHeader), func(s string) bool { return s == "cpu_s" })
	write(2, func(int) string { return "" }, old)
	if _, err := o.probeCoreShare(j, dir, 4, real); err == nil || !strings.Contains(err.Error(), "cpu_s") {
		t.Errorf("a file without cpu_s: %v, want an error naming it", err)
	}
	write(2, func(int) string { return "0" }, csvHeader)
	if _, err := o.probeCoreShare(j, dir, 4, real); err == nil {
		t.Error("a worker without CPU time: no error")
	}
}
