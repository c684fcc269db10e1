package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/train"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/worker"
	"github.com/slimgrad/slimgrad/workload"
)

// jobOptions are the flags shared by `slimgrad worker` and `slimgrad launch`:
// what to train and how the processes meet.
type jobOptions struct {
	Workload, Data, Split  string
	Steps, Batch           int
	EvalEvery, EvalSamples int
	Seed                   uint64
	Method                 string
	Compress, EF, Optim    string
	Warmup                 string
	// Algorithm is the all-reduce of dense layers: ring or tree.
	Algorithm string
	connOptions
	World      int
	Out        string
	PrintEvery int
	Timeout    time.Duration
	NaNPolicy  nanPolicy
	Log        string
	// L-GreCo (see sim's flags); Topology is the link-aware objective's.
	LGreCo, LGreCoLink bool
	LG                 lgrecoSettings
	Topology           string
	// Outer: --outer, --outer-optim, --outer-fragments, --outer-delay,
	// --outer-mix (as sim's).
	Outer outerSettings
}

func defaultJobOptions() jobOptions {
	return jobOptions{Workload: "mnist", Split: "iid", Steps: 300, Batch: 32, EvalEvery: 50, EvalSamples: 2000, Seed: 1,
		Method: "econtrol", Algorithm: "ring", connOptions: connOptions{Transport: "nats"}, Timeout: 2 * time.Minute, Log: "warn", LG: defaultLGreCoSettings(), Outer: defaultOuterSettings()}
}

// validate rejects flag values that would otherwise fail only inside every
// worker process, or be accepted with a meaningless result; worldFlag is the
// name of the world-size flag ("n" for launch, "world" for worker). Each
// error names the flag.
func (o *jobOptions) validate(worldFlag string) error {
	for _, f := range []struct {
		flag   string
		v, min int
	}{
		{worldFlag, o.World, 1}, {"steps", o.Steps, 1}, {"batch", o.Batch, 1},
		{"eval-every", o.EvalEvery, 0}, {"eval-samples", o.EvalSamples, 0},
		{"print-every", o.PrintEvery, 0},
	} {
		if f.v < f.min {
			dash := "--"
			if len(f.flag) == 1 {
				dash = "-" // launch's -n
			}
			return fmt.Errorf("%s%s %d: want at least %d", dash, f.flag, f.v, f.min)
		}
	}
	if err := o.LG.validate(); err != nil {
		return err
	}
	if err := o.Outer.validate(o.Steps); err != nil {
		return err
	}
	if o.Algorithm != "ring" && o.Algorithm != "tree" {
		return fmt.Errorf("--algorithm %q: want ring or tree", o.Algorithm)
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("--timeout %v: want a positive duration", o.Timeout)
	}
	if _, err := checkOutDir(o.Out); err != nil {
		return err
	}
	return o.connOptions.validate()
}

func (o *jobOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.Workload, "workload", o.Workload, "workload: "+strings.Join(train.Workloads, ", "))
	fs.StringVar(&o.Data, "data", o.Data, "directory with the MNIST *-ubyte.gz files (default: the GoMNIST module in the Go module cache)")
	fs.StringVar(&o.Split, "split", o.Split, "how data is sharded: iid or noniid")
	fs.IntVar(&o.Steps, "steps", o.Steps, "training steps")
	fs.IntVar(&o.Batch, "batch", o.Batch, "mini-batch size per worker")
	fs.IntVar(&o.EvalEvery, "eval-every", o.EvalEvery, "steps between test evaluations")
	fs.IntVar(&o.EvalSamples, "eval-samples", o.EvalSamples, "test samples per periodic evaluation (0: all)")
	fs.Uint64Var(&o.Seed, "seed", o.Seed, "seed of the model initialisation, shards, samplers and codecs (same on every process)")
	fs.StringVar(&o.Method, "method", o.Method, "method preset ("+strings.Join(presetNames(), ", ")+"); dgc runs its density warm-up on the workers, as sim does")
	fs.StringVar(&o.Compress, "compress", o.Compress, "compressor recipe of a custom method (overrides --method)")
	fs.StringVar(&o.EF, "ef", o.EF, "error-feedback recipe of a custom method")
	fs.StringVar(&o.Optim, "optim", o.Optim, "optimizer recipe of a custom method")
	fs.StringVar(&o.Warmup, "warmup", o.Warmup, warmupUsage)
	fs.StringVar(&o.Algorithm, "algorithm", o.Algorithm, "all-reduce of dense layers: ring (as sim) or tree")
	o.connOptions.register(fs)
	fs.StringVar(&o.Out, "out", o.Out, "directory for rank 0's steps.csv (\"\" writes nothing)")
	fs.IntVar(&o.PrintEvery, "print-every", o.PrintEvery, "steps between per-step lines (0: about 10 lines)")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "per-message timeout of the workers; also bounds the rendezvous")
	fs.StringVar(&o.Log, "log", o.Log, "log level: debug, info, warn, error")
	fs.Var(&o.NaNPolicy, "nan-policy", nanPolicyUsage)
	fs.BoolVar(&o.LGreCo, "lgreco", o.LGreCo, "run L-GreCo over the method's codec (per-layer levels under the uniform default's error budget, minimising bytes)")
	fs.BoolVar(&o.LGreCoLink, "lgreco-link-aware", o.LGreCoLink, "run L-GreCo with the link-aware objective: the simulated time of each layer's collective on --topology")
	o.LG.register(fs)
	fs.StringVar(&o.Topology, "topology", o.Topology, "with --lgreco-link-aware: the job's topology YAML (default: sim's built-in heterogeneous topology for the world size)")
	o.Outer.register(fs)
}

// args re-encodes the options as worker flags.
func (o *jobOptions) args() []string {
	return append([]string{
		"--workload", o.Workload, "--data", o.Data, "--split", o.Split,
		"--steps", strconv.Itoa(o.Steps), "--batch", strconv.Itoa(o.Batch),
		"--eval-every", strconv.Itoa(o.EvalEvery), "--eval-samples", strconv.Itoa(o.EvalSamples),
		"--seed", strconv.FormatUint(o.Seed, 10), "--method", o.Method,
		"--compress", o.Compress, "--ef", o.EF, "--optim", o.Optim, "--warmup", o.Warmup, "--algorithm", o.Algorithm,
		"--world", strconv.Itoa(o.World), "--out", o.Out, "--print-every", strconv.Itoa(o.PrintEvery),
		"--timeout", o.Timeout.String(), "--log", o.Log, "--nan-policy", o.NaNPolicy.String(),
		"--lgreco=" + strconv.FormatBool(o.LGreCo), "--lgreco-link-aware=" + strconv.FormatBool(o.LGreCoLink),
		"--topology", o.Topology,
	}, append(append(o.LG.args(), o.Outer.args()...), o.connOptions.args()...)...)
}

// method resolves the job's method. DGC's warm-up runs as the workers'
// codec schedules (train.RegisterUnits), as in sim.
func (o *jobOptions) method() (method, error) {
	if err := checkCustomFlags(o.Compress, o.EF); err != nil {
		return method{}, err
	}
	m, ok := withOuter(customMethod(o.Compress, o.EF, o.Optim, o.Warmup))(o.Outer)
	if !ok {
		var err error
		if m, err = preset(o.Method, o.Workload); err != nil {
			return m, err
		}
	}
	if err := m.checkRecipes(o.Steps); err != nil {
		return m, err
	}
	switch {
	case o.LGreCo && o.LGreCoLink:
		return m, errors.New("choose one of --lgreco and --lgreco-link-aware")
	case o.LGreCo:
		m.Name, m.LGreCo, m.Base = m.Name+"+lgreco", "bytes", m.Name
	case o.LGreCoLink:
		m.Name, m.LGreCo, m.Base = m.Name+"+lgreco-link", "link", m.Name
	}
	return m, nil
}

func newJobID() string {
	var b [6]byte
	rand.Read(b[:])
	return "slimgrad-" + hex.EncodeToString(b[:])
}

// Tags of the shutdown barrier: above every tag the worker uses (its
// collective ids count up from 0 in the high 32 bits).
const (
	barrierTag1 = uint64(0xffffffff)<<32 | 1
	barrierTag2 = uint64(0xffffffff)<<32 | 2
)

// finishBarrier lets every rank close only once every peer has received
// everything it sent. Some transports drop queued messages at Close (NATS),
// so a rank that finished its last step must not close while a slower peer
// still waits for its messages. Round 1 (strict): everyone tells everyone it
// is done and waits to hear the same; a peer's round-1 message arrives only
// after that peer finished its steps, which needed all of ours. Round 2
// confirms round 1; a peer that is already gone in round 2 got our round-1
// message (it sent its round 2 after receiving it), so its death is fine.
func finishBarrier(ctx context.Context, conn transport.Conn) error {
	for round, tag := range []uint64{barrierTag1, barrierTag2} {
		for p := range conn.Size() {
			if p != conn.Rank() {
				if err := conn.Send(ctx, p, tag, nil); err != nil && round == 0 {
					return fmt.Errorf("shutdown barrier: %w", err)
				}
			}
		}
		for p := range conn.Size() {
			if p == conn.Rank() {
				continue
			}
			if _, err := conn.Recv(ctx, p, tag); err != nil {
				if round == 0 || !errors.Is(err, transport.ErrPeerDead) {
					return fmt.Errorf("shutdown barrier: %w", err)
				}
			}
		}
	}
	return nil
}

// figuresTag is the tag of step's figures message to rank 0 (above the
// worker's tags, below the barrier's).
func figuresTag(step int) uint64 { return uint64(0xfffffffe)<<32 | uint64(uint32(step)) }

// gatherFigures sends this rank's loss and per-layer byte counts to rank 0,
// which returns the job's: the mean loss summed in rank order (as `slimgrad
// sim` computes it) and the bytes of all ranks. Other ranks return their own.
func gatherFigures(conn transport.Conn) func(ctx context.Context, step int, loss float64, st train.Stats) (float64, train.Stats, error) {
	return func(ctx context.Context, step int, loss float64, st train.Stats) (float64, train.Stats, error) {
		if conn.Rank() != 0 {
			b := binary.LittleEndian.AppendUint64(nil, math.Float64bits(loss))
			for _, l := range st.Layers {
				b = binary.LittleEndian.AppendUint64(b, uint64(l.PayloadBytes))
				b = binary.LittleEndian.AppendUint64(b, uint64(l.WireBytes))
				b = binary.LittleEndian.AppendUint64(b, uint64(l.DenseBytes))
			}
			return loss, st, conn.Send(ctx, 0, figuresTag(step), b)
		}
		sum := loss
		for p := 1; p < conn.Size(); p++ {
			b, err := conn.Recv(ctx, p, figuresTag(step))
			if err != nil {
				return 0, st, err
			}
			if len(b) != 8+24*len(st.Layers) {
				return 0, st, fmt.Errorf("figures message of %d bytes from rank %d", len(b), p)
			}
			sum += math.Float64frombits(binary.LittleEndian.Uint64(b))
			for i := range st.Layers {
				l, o := &st.Layers[i], 8+24*i
				l.PayloadBytes += int64(binary.LittleEndian.Uint64(b[o:]))
				l.WireBytes += int64(binary.LittleEndian.Uint64(b[o+8:]))
				l.DenseBytes += int64(binary.LittleEndian.Uint64(b[o+16:]))
			}
		}
		st.PayloadBytes, st.WireBytes, st.DenseBytes = 0, 0, 0
		for _, l := range st.Layers {
			st.PayloadBytes += l.PayloadBytes
			st.WireBytes += l.WireBytes
			st.DenseBytes += l.DenseBytes
		}
		return sum / float64(conn.Size()), st, nil
	}
}

// paramsDigest is a short digest of a parameter vector, to compare replicas
// across processes (and with `slimgrad sim`).
func paramsDigest(x []float32) string {
	h := fnv.New64a()
	var b [4]byte
	for _, v := range x {
		u := math.Float32bits(v)
		b[0], b[1], b[2], b[3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
		h.Write(b[:])
	}
	return fmt.Sprintf("%016x", h.Sum64())
}

func runWorkerCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := defaultJobOptions()
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.register(fs)
	rank := fs.Int("rank", -1, "this process's rank (NATS transport; libp2p ranks come from the rendezvous)")
	fs.IntVar(&o.World, "world", 0, "number of processes in the job")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics of this process on this address, e.g. :9090")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this process (from joining the job to its end) to this file")
	el := defaultElasticOptions()
	el.register(fs, false)
	setUsage(fs, stdout, "Usage: slimgrad worker --nats URL --job ID --world N [--rank R] [flags]\n\nOne process of a data-parallel job: trains its replica on its shard and exchanges\ngradients with the others over NATS or libp2p. `slimgrad launch` starts these for you.\n\nFlags:\n")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "slimgrad worker: unexpected arguments %q\n", fs.Args())
		return errUsage
	}
	if err := o.validate("world"); err != nil {
		return err
	}
	if err := el.validate(fs, &o); err != nil {
		return err
	}
	if el.Elastic {
		return workerElastic(ctx, &o, &el, *rank, *metricsAddr, stdout, stderr)
	}
	if err := o.checkJoin(o.World, *rank); err != nil {
		return err
	}
	if os.Getenv(envWatchStdin) == "1" {
		ctx = stopOnEOF(ctx, os.Stdin)
	}
	log, err := newLogger(stderr, o.Log)
	if err != nil {
		return err
	}
	m, err := o.method()
	if err != nil {
		return err
	}
	if err := checkJobOuter(m, o.connOptions); err != nil {
		return err
	}
	split, err := workload.ParseSplit(o.Split)
	if err != nil {
		return err
	}
	spec, err := parseOptim(m.Optim, o.Steps)
	if err != nil {
		return err
	}
	task, err := train.LoadTask(o.Workload, o.Data, o.Seed)
	if err != nil {
		return err
	}
	var met *metrics
	if *metricsAddr != "" {
		if met, err = startMetrics(ctx, *metricsAddr, log); err != nil {
			return err
		}
		defer met.Close()
	}
	if *cpuProfile != "" {
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	o.connOptions.Log = log
	cctx, cancel := context.WithTimeout(ctx, o.Timeout)
	conn, err := connect(cctx, &o.connOptions, o.World, *rank, o.Timeout)
	cancel()
	if err != nil {
		return fmt.Errorf("joining job %s: %w", o.Job, err)
	}
	defer conn.Close()
	wopts := append(train.WorkerOptions(o.Seed, log), worker.WithTimeout(o.Timeout), worker.WithAlgorithm(o.Algorithm), worker.WithNaNPolicy(o.NaNPolicy.p))
	if m.LGreCo != "" {
		var topo *sim.Topology
		if m.LGreCo == "link" {
			if topo, _, err = loadTopology(o.Topology, o.World); err != nil {
				return err
			}
		}
		wopts = append(wopts, lgrecoWorkerOption(m, o.Steps, o.Seed, o.LG, topo, &sim.Options{Seed: o.Seed}))
	}
	w, err := worker.New(ctx, conn, wopts...)
	if err != nil {
		return err
	}
	defer w.Close()
	r := conn.Rank()
	codec := spec.Sign // 1-bit Adam's compressed stage is the two-phase sign scheme
	plan, err := m.plan(o.Steps, o.Seed)
	if err != nil {
		return err
	}
	plan.Sign = spec.Sign
	printEvery := o.PrintEvery
	if printEvery <= 0 {
		printEvery = max(1, o.Steps/10)
	}
	if r == 0 {
		fmt.Fprintf(stdout, "slimgrad worker: job %s, %d processes over %s, %s (%s), %d steps\n", o.Job, o.World, o.Transport, m.Name, m.describe(), o.Steps)
		fmt.Fprintf(stdout, "%6s %9s %8s %12s %12s %9s %11s\n", "step", "loss", "acc", "wire_bytes", "dense_bytes", "saved", "wall")
	}
	lastAcc := -1.0
	// Records are streamed to rank 0's steps.csv as they come and not kept:
	// a run of hours holds the last one only.
	var csvOut *csvStream
	if r == 0 && o.Out != "" {
		if err := os.MkdirAll(o.Out, 0o755); err != nil {
			return err
		}
		if csvOut, err = newCSVStream(filepath.Join(o.Out, "steps.csv"), m.Name); err != nil {
			return err
		}
		defer csvOut.Close()
	}
	cfg := train.RankConfig{Config: train.Config{Workers: o.World, Batch: o.Batch, Steps: o.Steps, Seed: o.Seed, Split: split,
		EvalEvery: o.EvalEvery, EvalSamples: o.EvalSamples, Logger: log, RecordWindow: 1}, Rank: r, World: o.World, Combine: gatherFigures(conn)}
	start := time.Now()
	units := train.Units(task.Model, spec.Flat)
	var csvErr error
	onStep := func(rec train.Record) {
		if rec.Evaluated {
			lastAcc = rec.Accuracy
		}
		met.observe(m.Name, units, rec)
		if r == 0 && (rec.Step%printEvery == 0 || rec.Step == o.Steps-1) {
			fmt.Fprintln(stdout, stepLine(rec, lastAcc, fmtDuration(rec.Wall)))
		}
		if csvOut != nil && csvErr == nil {
			csvErr = csvOut.Write(rec)
		}
	}
	var res *train.Result
	var fragConns []transport.Conn // an outer loop's fragments 1 to F−1
	if m.Outer.H == 0 {
		res, err = train.RunRank(ctx, cfg, task, w, plan, spec, codec, onStep)
	} else {
		var closeFragments func()
		res, fragConns, closeFragments, err = rankOuter(ctx, &o, m, conn, w, wopts, cfg, task, spec, onStep)
		defer closeFragments() // after the shutdown barrier below
	}
	if err != nil {
		return fmt.Errorf("rank %d: %w", r, err)
	}
	if csvErr != nil {
		return fmt.Errorf("rank %d: writing %s: %w", r, filepath.Join(o.Out, "steps.csv"), csvErr)
	}
	bctx, bcancel := context.WithTimeout(ctx, o.Timeout)
	err = finishBarrier(bctx, conn)
	bcancel()
	if err != nil {
		return fmt.Errorf("rank %d: %w", r, err)
	}
	st := conn.Stats()
	_, sentWire, _, recvWire := st.Total()
	for _, c := range fragConns {
		_, s, _, r := c.Stats().Total()
		sentWire, recvWire = sentWire+s, recvWire+r
	}
	// Every rank's transport totals over the job (steps, figures, the
	// shutdown barrier and an outer loop's fragment connections), and how
	// each link of its main connection runs, with the wire bytes sent on
	// it.
	wire := fmt.Sprintf("rank %d wire: sent %d recv %d", r, sentWire, recvWire)
	if st.Relayed != nil {
		wire += ", links:"
		for p, rel := range st.Relayed {
			if p != r {
				wire += fmt.Sprintf(" %d=%s:%d", p, map[bool]string{false: "direct", true: "relayed"}[rel], st.SentWire[p])
			}
		}
	}
	fmt.Fprintln(stdout, wire)
	last := res.Last
	summary := fmt.Sprintf("rank %d/%d done: test accuracy %.4f test loss %.6f params %s", r, o.World, res.Final.Accuracy, res.Final.Loss, paramsDigest(res.Model.Flat()))
	if r == 0 {
		summary += fmt.Sprintf(", all ranks sent %s (dense ring %s, %.1f× saved)", fmtBytes(last.TotalWireBytes), fmtBytes(last.TotalDenseBytes), last.Saved())
	}
	fmt.Fprintf(stdout, "%s, %s\n", summary, time.Since(start).Round(time.Millisecond))
	if csvOut != nil {
		if err := csvOut.Close(); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", filepath.Join(o.Out, "steps.csv"))
	}
	return nil
}

// errLauncherGone is the cause of a worker stopped because its launcher died.
var errLauncherGone = errors.New("the launcher is gone (stdin closed)")

// stopOnEOF returns a context that is cancelled with errLauncherGone once r
// (the worker's stdin, a pipe from launch) reaches EOF or fails.
func stopOnEOF(ctx context.Context, r io.Reader) context.Context {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		io.Copy(io.Discard, r)
		cancel(errLauncherGone)
	}()
	return ctx
}
