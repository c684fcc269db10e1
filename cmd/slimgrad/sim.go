package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/train"
	"github.com/slimgrad/slimgrad/workload"
)

// simOptions are the flags of `slimgrad sim`.
type simOptions struct {
	Workers     int
	Batch       int
	Steps       int
	Seed        uint64
	Workload    string
	Data        string
	Split       string
	Topology    string
	Methods     string
	Compress    string
	EF          string
	Optim       string
	Warmup      string
	Out         string
	Target      float64
	EvalEvery   int
	EvalSamples int
	PrintEvery  int
	Progress    string
	Metrics     string
	Log         string
	JSONL       bool
	Plots       bool
	CPUProfile  string
	MaxMemory   string
	Exchange    string
	NaNPolicy   nanPolicy
	Calibration string
	Transport   string
	MsgCost     string // --message-cost: cpu or latency
	FLOPS       float64
	// flopsSet is whether --flops was given: an explicit rate wins over the
	// calibration's measured gradient time.
	flopsSet bool
	SizeOnly bool
	// Churn is a membership schedule (train.ParseChurn); ChurnDetect the
	// time a leave takes to be detected.
	Churn       string
	ChurnDetect time.Duration
	Layers      string
	Aggregate   aggregateFlag
	// L-GreCo: --lgreco, --lgreco-link-aware, --lgreco-adjust, --lgreco-alpha.
	LGreCo, LGreCoLink bool
	LG                 lgrecoSettings
	// Outer: --outer, --outer-optim, --outer-fragments, --outer-delay, --outer-mix.
	Outer outerSettings
}

// simEnv is what all methods of a run share.
type simEnv struct {
	topo     *sim.Topology
	topoYAML string // the default topology's text, "" for --topology
	calib    *sim.Calibration
	// transport is --transport: its calibrated per-message cost is charged
	// to every simulated message, as CPU of its two ranks (messageCPU,
	// --message-cost cpu) or as latency.
	transport  string
	messageCPU bool
	// gradSample is the calibration's measured gradient time of the
	// workload, seconds per sample, or 0 to use the FLOP model (no
	// calibration, no figure for the workload, --flops given, or --layers).
	gradSample float64
	// localStep is the calibration's measured local compute per step
	// beyond the gradient (optimizer, finite check), seconds, when
	// gradSample is used; else 0.
	localStep float64
}

// printGrad says on w, when the run uses a measured gradient time, what it
// is and where it comes from.
func (e *simEnv) printGrad(w io.Writer, o simOptions) {
	if e.gradSample > 0 {
		fmt.Fprintf(w, "gradient compute: %s per sample measured by slimgrad bench (%s), %s per step of %d on a speed-1 node (instead of the FLOP model)\n",
			time.Duration(e.gradSample*1e9).Round(time.Microsecond), o.Calibration, time.Duration(e.gradSeconds(o)*1e9).Round(time.Microsecond), o.Batch)
		if e.localStep > 0 {
			fmt.Fprintf(w, "local compute beyond the gradient: %s per step (optimizer and finite check, slimgrad bench)\n", time.Duration(e.localStep*1e9).Round(time.Microsecond))
		}
	}
}

// gradSeconds is train.SimConfig.GradSeconds for a run of o: the measured
// time per sample times the batch, or 0 for the FLOP model.
func (e *simEnv) gradSeconds(o simOptions) float64 { return e.gradSample * float64(o.Batch) }

func defaultSimOptions() simOptions {
	return simOptions{
		Workers: 8, Batch: 32, Steps: 300, Seed: 1, Workload: "mnist", Split: "iid",
		Methods: "default", Out: "slimgrad-out", Target: 0.9, EvalEvery: 50, EvalSamples: 2000,
		Progress: "auto", Log: "warn", JSONL: true, Plots: true, Exchange: "sim", FLOPS: train.DefaultFLOPS, MsgCost: "cpu",
		LG: defaultLGreCoSettings(), MaxMemory: "auto", Outer: defaultOuterSettings(), ChurnDetect: time.Second,
	}
}

func simFlags(o *simOptions, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.Workers, "workers", o.Workers, "number of virtual workers")
	fs.IntVar(&o.Batch, "batch", o.Batch, "mini-batch size per worker")
	fs.IntVar(&o.Steps, "steps", o.Steps, "training steps per method")
	fs.Uint64Var(&o.Seed, "seed", o.Seed, "seed of the model initialisation, shards, samplers and codecs")
	fs.StringVar(&o.Workload, "workload", o.Workload, "workload: "+strings.Join(train.Workloads, ", "))
	fs.StringVar(&o.Data, "data", o.Data, "directory with the MNIST *-ubyte.gz files (default: the GoMNIST module in the Go module cache)")
	fs.StringVar(&o.Split, "split", o.Split, "how data is sharded: iid or noniid")
	fs.StringVar(&o.Topology, "topology", o.Topology, "topology YAML file of the simulated network (default: a built-in heterogeneous topology)")
	fs.StringVar(&o.Methods, "methods", o.Methods, "comma-separated method presets to compare ("+strings.Join(presetNames(), ", ")+"), \"default\", or \"reference\" (the PyTorch reference's rows: dense, DGC with exact top-k and warm-up, top-k EF14, Adam without bias correction, 1-bit Adam; their figures are printed beside the results)")
	fs.StringVar(&o.Compress, "compress", o.Compress, "compressor recipe of a custom method, e.g. topk:0.001 (runs dense + the custom method)")
	fs.StringVar(&o.EF, "ef", o.EF, "error-feedback recipe of the custom method, e.g. econtrol:0.1, ef14, dgc:0.9")
	fs.StringVar(&o.Optim, "optim", o.Optim, "optimizer recipe of the custom method, e.g. momentum:lr=0.1,m=0.9 or onebitadam:freeze=200")
	fs.StringVar(&o.Warmup, "warmup", o.Warmup, warmupUsage)
	fs.StringVar(&o.Out, "out", o.Out, "output directory for CSV, JSONL and PNG files (\"\" to write nothing)")
	fs.Float64Var(&o.Target, "target", o.Target, "target test accuracy for the time-to-accuracy column")
	fs.IntVar(&o.EvalEvery, "eval-every", o.EvalEvery, "steps between test evaluations")
	fs.IntVar(&o.EvalSamples, "eval-samples", o.EvalSamples, "test samples per periodic evaluation (0: all; the final one uses all)")
	fs.IntVar(&o.PrintEvery, "print-every", o.PrintEvery, "steps between per-step lines (0: about 10 lines per method)")
	fs.StringVar(&o.Progress, "progress", o.Progress, "progress bar: auto (when stderr is a terminal), on, off")
	fs.StringVar(&o.Metrics, "metrics", o.Metrics, "serve Prometheus metrics on this address, e.g. :9090")
	fs.StringVar(&o.Log, "log", o.Log, "log level: debug, info, warn, error")
	fs.BoolVar(&o.JSONL, "jsonl", o.JSONL, "also write steps.jsonl")
	fs.BoolVar(&o.Plots, "plots", o.Plots, "write PNG plots")
	fs.StringVar(&o.CPUProfile, "cpuprofile", o.CPUProfile, "write a CPU profile of the run to this file")
	fs.StringVar(&o.MaxMemory, "max-memory", o.MaxMemory, "stop with an error once the run holds more memory than this: auto (90% of what the system has available at start), off, or a size such as 8GiB")
	fs.StringVar(&o.Exchange, "exchange", o.Exchange, "how gradients are exchanged: sim (the simulator, virtual time), mem (real workers over the in-memory transport, no simulated clock) or local (in-process reference)")
	fs.Var(&o.NaNPolicy, "nan-policy", nanPolicyUsage)
	fs.StringVar(&o.Calibration, "calibration", o.Calibration, "calibration file written by slimgrad bench (default: built-in throughputs)")
	fs.StringVar(&o.Transport, "transport", o.Transport, "with --calibration: charge this transport's measured per-message cost (mem, nats, libp2p, ...) to every simulated message (see --message-cost)")
	fs.StringVar(&o.MsgCost, "message-cost", o.MsgCost, "how --transport's per-message cost is charged: cpu (compute time of the sending and the receiving rank, half each: a rank's messages and codec work serialize; not aggregated) or latency (added to the message's latency: overlaps everything)")
	fs.Float64Var(&o.FLOPS, "flops", o.FLOPS, "simulated gradient compute rate of a speed-1 node, FLOP/s (default: the --calibration's measured gradient time of the workload when it has one, else 20e9)")
	fs.StringVar(&o.Churn, "churn", o.Churn, "membership churn: comma-separated leave:RANK@STEP and join@STEP events, or @FILE holding them; each method trains as an elastic job (in this process, over transport/mem) with and without them, and the table says what the churn cost")
	fs.DurationVar(&o.ChurnDetect, "churn-detect", o.ChurnDetect, "with --churn: the simulated time from a member's death to its detection (the transports detect a dead process within about a second, a hung one at the peer timeout)")
	fs.BoolVar(&o.SizeOnly, "size-only", o.SizeOnly, "simulate one steady-state step per method without data: bytes and step time only (no training state; every message is simulated, so time grows as workers² to workers³: --aggregate for thousands of workers)")
	fs.StringVar(&o.Layers, "layers", o.Layers, "with --size-only: the model's layers instead of the workload's, e.g. 4096x4096,4096,1000x4096")
	fs.Var(&o.Aggregate, "aggregate", aggregateUsage)
	fs.BoolVar(&o.LGreCo, "lgreco", o.LGreCo, "also run L-GreCo (per-layer levels under the uniform default's error budget, minimising bytes) after each method whose codec has levels (topk, dgc, randomk, qsgd, powersgd), and compare")
	fs.BoolVar(&o.LGreCoLink, "lgreco-link-aware", o.LGreCoLink, "also run L-GreCo with the link-aware objective: the simulated time of each layer's collective on the topology")
	o.LG.register(fs)
	o.Outer.register(fs)
	setUsage(fs, stdout, "Usage: slimgrad sim [flags]\n\nTrains N virtual workers on a workload with each method and reports bytes saved versus a\ndense fp32 ring all-reduce. With no flags: 8 workers, MNIST MLP 784-256-10, the default methods.\n\nFlags:\n")
	return fs
}

func runSimCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := defaultSimOptions()
	fs := simFlags(&o, stdout, stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "slimgrad sim: unexpected arguments %q\n", fs.Args())
		return errUsage
	}
	fs.Visit(func(f *flag.Flag) { o.flopsSet = o.flopsSet || f.Name == "flops" })
	if o.CPUProfile != "" {
		stop, err := startCPUProfile(o.CPUProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	_, err := runSim(ctx, o, stdout, stderr)
	return err
}

// startCPUProfile starts a CPU profile of this process into the file path
// (created or truncated, with its directory) and returns the function that
// stops it and closes the file.
func startCPUProfile(path string) (stop func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// memoryPollInterval is how often the --max-memory guard looks at the heap.
const memoryPollInterval = 20 * time.Millisecond

// methodRun is one method's results.
type methodRun struct {
	Method method
	Result *train.Result
	Wall   time.Duration
}

// simReport is everything runSim produced.
type simReport struct {
	Options simOptions
	Runs    []methodRun
	Files   []string
}

// validate rejects flag values that would otherwise fail late (after output
// has started), be silently ignored, or give meaningless numbers. Each error
// names the flag.
func (o simOptions) validate() error {
	for _, f := range []struct {
		flag   string
		v, min int
	}{
		{"workers", o.Workers, 1}, {"batch", o.Batch, 1}, {"steps", o.Steps, 1},
		{"eval-every", o.EvalEvery, 0}, {"eval-samples", o.EvalSamples, 0},
		{"print-every", o.PrintEvery, 0},
	} {
		if f.v < f.min {
			return fmt.Errorf("--%s %d: want at least %d", f.flag, f.v, f.min)
		}
	}
	if !(o.Target > 0 && o.Target <= 1) {
		return fmt.Errorf("--target %g: want an accuracy in (0, 1]", o.Target)
	}
	if !(o.FLOPS >= 0) || math.IsInf(o.FLOPS, 0) {
		return fmt.Errorf("--flops %g: want a finite, non-negative rate (0: the default)", o.FLOPS)
	}
	if err := o.LG.validate(); err != nil {
		return err
	}
	if err := o.Outer.validate(o.Steps); err != nil {
		return err
	}
	if err := checkCustomFlags(o.Compress, o.EF); err != nil {
		return err
	}
	if o.Layers != "" {
		if !o.SizeOnly {
			return fmt.Errorf("--layers needs --size-only (a training run uses the workload's model)")
		}
		if _, err := parseLayers(o.Layers); err != nil {
			return err
		}
	}
	switch o.Progress {
	case "auto", "on", "off":
	default:
		return fmt.Errorf("--progress %q: want auto, on or off", o.Progress)
	}
	switch o.Exchange {
	case "sim", "mem", "local":
	default:
		return fmt.Errorf("--exchange %q: want sim, mem or local", o.Exchange)
	}
	if o.Churn != "" {
		if _, err := churnSchedule(o.Churn); err != nil {
			return flagError("churn", err)
		}
		switch {
		case o.SizeOnly:
			return fmt.Errorf("--churn trains (an elastic job per method): drop --size-only")
		case o.Exchange != "sim":
			return fmt.Errorf("--churn simulates step times on the topology: use --exchange sim")
		case o.ChurnDetect < 0:
			return fmt.Errorf("--churn-detect %v: want a non-negative duration", o.ChurnDetect)
		}
	}
	return nil
}

func runSim(ctx context.Context, o simOptions, stdout, stderr io.Writer) (rep *simReport, err error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	limit, err := parseMemoryLimit(o.MaxMemory)
	if err != nil {
		return nil, err
	}
	ctx, stop := guardMemory(ctx, limit, memoryPollInterval)
	defer stop()
	defer func() { err = memoryCause(ctx, err) }()
	log, err := newLogger(stderr, o.Log)
	if err != nil {
		return nil, err
	}
	split, err := workload.ParseSplit(o.Split)
	if err != nil {
		return nil, err
	}
	methods, err := selectMethods(o)
	if err != nil {
		return nil, err
	}
	for _, m := range methods {
		if err := m.checkRecipes(o.Steps); err != nil {
			return nil, fmt.Errorf("method %s: %w", m.Name, err)
		}
		if m.Outer.H > 0 && o.SizeOnly {
			return nil, fmt.Errorf("method %s: --size-only prices one per-step exchange; an outer-loop method needs training (drop --size-only)", m.Name)
		}
	}
	var env simEnv
	if o.SizeOnly || o.Exchange == "sim" || o.LGreCoLink {
		if env.topo, env.topoYAML, err = loadTopology(o.Topology, o.Workers); err != nil {
			return nil, err
		}
		if o.Calibration != "" {
			if env.calib, err = sim.LoadCalibration(o.Calibration); err != nil {
				return nil, flagError("calibration", err)
			}
		}
		if o.MsgCost != "cpu" && o.MsgCost != "latency" {
			return nil, fmt.Errorf("--message-cost %q: want cpu or latency", o.MsgCost)
		}
		if o.Transport != "" {
			if env.calib == nil {
				return nil, fmt.Errorf("--transport needs --calibration (a file written by slimgrad bench)")
			}
			if _, ok := env.calib.Messages[o.Transport]; !ok {
				return nil, fmt.Errorf("--transport: calibration %s has no message cost for %q", o.Calibration, o.Transport)
			}
			env.transport = o.Transport
			env.messageCPU = o.MsgCost == "cpu"
		}
		if env.calib != nil && !o.flopsSet && o.Layers == "" {
			env.gradSample = env.calib.Grad[o.Workload]
			if env.gradSample > 0 {
				env.localStep = env.calib.Local[o.Workload]
			}
		}
	}
	if o.SizeOnly {
		if o.Exchange != "sim" {
			return nil, fmt.Errorf("--size-only needs --exchange sim")
		}
		env.printGrad(stdout, o)
		defer sizeOnlyGC(limit)()
		return &simReport{Options: o}, runSizeOnly(ctx, o, methods, &env, stdout)
	}
	replaces, err := checkOutDir(o.Out)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	task, err := train.LoadTask(o.Workload, o.Data, o.Seed)
	if err != nil {
		return nil, err
	}
	if o.Churn != "" {
		return &simReport{Options: o}, runChurnMode(ctx, o, methods, &env, task, stdout)
	}
	log.Info("workload loaded", "workload", task.Name, "train", task.Train.N, "test", task.Test.N, "took", time.Since(t0))
	var met *metrics
	if o.Metrics != "" {
		met, err = startMetrics(ctx, o.Metrics, log)
		if err != nil {
			return nil, err
		}
		defer met.Close()
	}
	layers := train.LayersOf(task.Model)
	var elems int
	for _, l := range layers {
		elems += l.Size
	}
	fmt.Fprintf(stdout, "slimgrad sim: %s, %d parameters in %d tensors, %d workers × batch %d, %s shards, %d steps, seed %d\n",
		task.Name, elems, len(layers), o.Workers, o.Batch, split, o.Steps, o.Seed)
	switch {
	case o.Exchange != "sim":
		fmt.Fprintf(stdout, "exchange: %s (no simulated clock)\n", o.Exchange)
	case o.Topology != "":
		fmt.Fprintf(stdout, "topology: %s (%d nodes)\n", o.Topology, len(env.topo.Nodes))
	default:
		where := ""
		if o.Out != "" {
			where = "; saved with the results as " + filepath.Join(o.Out, "topology.yaml")
		}
		fmt.Fprintf(stdout, "topology: built-in heterogeneous (two sites of 10 Gbit/s nodes, 2.5 Gbit/s WAN, one 1 Gbit/s edge node at half speed%s)\n", where)
	}
	env.printGrad(stdout, o)
	if replaces {
		fmt.Fprintf(stdout, "output: %s (replaces the results of the run already there)\n", o.Out)
	}
	var diverged []error // methods that diverged: reported, the others still run
	printEvery := o.PrintEvery
	if printEvery <= 0 {
		printEvery = max(1, o.Steps/10)
	}
	rep = &simReport{Options: o}
	for _, m := range methods {
		ex, spec, err := m.build(ctx, o, task, &env, log)
		if err != nil {
			return nil, fmt.Errorf("method %s: %w", m.Name, err)
		}
		fmt.Fprintf(stdout, "\n== %s  (%s)\n", m.Name, m.describe())
		fmt.Fprintf(stdout, "%6s %9s %8s %12s %12s %9s %11s\n", "step", "loss", "acc", "wire_bytes", "dense_bytes", "saved", "sim_step")
		bar := newBar(o, stderr, m.Name)
		cfg := train.Config{
			Workers: o.Workers, Batch: o.Batch, Steps: o.Steps, Seed: o.Seed, Split: split,
			EvalEvery: o.EvalEvery, EvalSamples: o.EvalSamples, Logger: log, NaNPolicy: o.NaNPolicy.p,
		}
		start := time.Now()
		lastAcc := -1.0
		units := train.Units(task.Model, spec.Flat)
		res, err := m.trainMethod(ctx, o, task, &env, log, cfg, ex, spec, func(r train.Record) {
			if r.Evaluated {
				lastAcc = r.Accuracy
			}
			met.observe(m.Name, units, r)
			if r.Step%printEvery == 0 || r.Step == o.Steps-1 {
				line := stepLine(r, lastAcc, simStepCol(r))
				if bar != nil {
					bar.Clear()
				}
				fmt.Fprintln(stdout, line)
			}
			if bar != nil {
				bar.Add(1)
			}
		})
		if c, ok := ex.(io.Closer); ok {
			c.Close()
		}
		if bar != nil {
			bar.Finish()
			fmt.Fprintln(stderr)
		}
		if err != nil && ctx.Err() != nil {
			// Interrupted (SIGINT, SIGTERM, --max-memory): keep what the
			// methods that finished produced.
			return rep, interrupted(stdout, o, rep, &env, m.Name, err)
		}
		if errors.Is(err, train.ErrDiverged) {
			// A method that diverges is a finding of the comparison, not
			// the end of it: the other methods still run and are written;
			// the command fails at the end, naming it.
			fmt.Fprintf(stdout, "method %s diverged (%v); going on with the other methods\n", m.Name, err)
			diverged = append(diverged, fmt.Errorf("method %s: %w", m.Name, err))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("method %s: %w", m.Name, err)
		}
		rep.Runs = append(rep.Runs, methodRun{Method: m, Result: res, Wall: time.Since(start)})
		log.Info("method done", "method", m.Name, "wall", time.Since(start), "accuracy", res.Final.Accuracy)
	}
	fmt.Fprintln(stdout)
	writeSummary(stdout, rep, o.Target)
	writeLGreCoSummary(stdout, rep)
	if wantsReference(o.Methods) {
		writeReferenceTable(stdout, o, rep, elems)
	}
	for _, run := range rep.Runs {
		log.Info("final parameters", "method", run.Method.Name, "params", paramsDigest(run.Result.Model.Flat()))
	}
	for _, err := range diverged {
		fmt.Fprintf(stdout, "not in the summary: %v\n", err)
	}
	return rep, errors.Join(append(diverged, writeResults(stdout, o, rep, &env))...)
}

// writeResults writes rep's files into --out (if set) and lists them.
func writeResults(stdout io.Writer, o simOptions, rep *simReport, env *simEnv) error {
	if o.Out == "" {
		return nil
	}
	files, err := writeOutputs(o.Out, rep, o.JSONL, o.Plots)
	if err == nil && env.topoYAML != "" {
		path := filepath.Join(o.Out, "topology.yaml")
		if err = os.WriteFile(path, []byte(env.topoYAML), 0o644); err == nil {
			files = append(files, path)
		}
	}
	rep.Files = files
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s\n", strings.Join(files, ", "))
	return nil
}

// interrupted ends a run stopped during method name: it prints the summary
// of the methods that finished, writes their results, says so, and returns
// the cause.
func interrupted(stdout io.Writer, o simOptions, rep *simReport, env *simEnv, name string, cause error) error {
	fmt.Fprintf(stdout, "\ninterrupted during method %s: ", name)
	if len(rep.Runs) == 0 {
		fmt.Fprintln(stdout, "no method had finished, nothing written")
		return fmt.Errorf("method %s: %w", name, cause)
	}
	fmt.Fprintf(stdout, "keeping the %d methods that finished\n\n", len(rep.Runs))
	writeSummary(stdout, rep, o.Target)
	if err := writeResults(stdout, o, rep, env); err != nil {
		return errors.Join(fmt.Errorf("method %s: %w", name, cause), err)
	}
	return fmt.Errorf("method %s: %w (the results of the %d methods that finished were written)", name, cause, len(rep.Runs))
}

// stepLine formats one per-step line; acc < 0 means not measured yet, and
// timeCol is the last column (simulated step time or wall time).
func stepLine(r train.Record, acc float64, timeCol string) string {
	accs := "-"
	if acc >= 0 {
		accs = fmt.Sprintf("%.2f%%", 100*acc)
	}
	return fmt.Sprintf("%6d %9.4f %8s %12s %12s %8.1f× %11s",
		r.Step, r.Loss, accs, fmtBytes(r.WireBytes), fmtBytes(r.DenseBytes), r.Ratio(), timeCol)
}

func simStepCol(r train.Record) string {
	if r.StepTime > 0 {
		return fmtDuration(r.StepTime)
	}
	return "-"
}

func newBar(o simOptions, stderr io.Writer, desc string) *progressbar.ProgressBar {
	show := o.Progress == "on"
	if o.Progress == "auto" {
		if f, ok := stderr.(*os.File); ok {
			if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
				show = true
			}
		}
	}
	if !show {
		return nil
	}
	return progressbar.NewOptions(o.Steps,
		progressbar.OptionSetWriter(stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("steps"),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetWidth(30))
}

func fmtBytes(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	v, i := float64(b), 0
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGT"[i-1])
}

func fmtDuration(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.1fµs", float64(d)/float64(time.Microsecond))
	}
}
