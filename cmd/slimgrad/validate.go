package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/internal/kernels"
	"github.com/slimgrad/slimgrad/optim"
	"github.com/slimgrad/slimgrad/sim"
	"github.com/slimgrad/slimgrad/testbed"
	"github.com/slimgrad/slimgrad/train"
	"github.com/slimgrad/slimgrad/transport"
	"github.com/slimgrad/slimgrad/workload"
)

// validateOptions are the flags of `slimgrad validate`.
type validateOptions struct {
	Cases       string // comma-separated names or globs; "" all (or the quick ones)
	Quick       bool
	List        bool
	Steps, Skip int
	// MinMeasured lengthens the job of a case whose simulated step is short
	// (see jobSteps): its measured steps cover at least this much simulated
	// time. 0 runs every case for Steps.
	MinMeasured time.Duration
	Batch       int
	Seed        uint64
	Workload    string
	Data        string
	Transport   string
	Calibration string
	Grad        string // data or calibration
	// Local is how --grad data measures the local compute: alone (one
	// goroutine, wall time) or company (a case's N workers at once, each
	// step's thread CPU time).
	Local       string
	MsgCost     string // probe or calibration
	MsgModel    string // cpu, wait or latency: how the simulator charges the message cost
	ProbeSteps  int
	BenchTime   time.Duration
	Cores       int
	Goodput     float64
	Latency     time.Duration
	Out         string
	CaseTimeout time.Duration
	LossPenalty float64
	// Buckets is which of the bed's token-bucket parameters the simulated
	// links get (--tbf): "both", "queue", "burst" or "none".
	Buckets string
	// Resimulate is the --out directory of an earlier run whose real
	// measurements are simulated again (no bed, no root).
	Resimulate string
	// WorkerProfile has every worker of a case's job write a CPU profile
	// beside its steps.csv (OUT/CASE/job/HOST/cpu.pprof).
	WorkerProfile bool
	// CoreShare is sim.Options.CoreShare (--core-share): the share of the
	// machine's cores that the simulated workers get while more of them
	// compute than there are cores. 0: all of it. With CoreShareProbe each
	// case measures it on its probe job (probeCoreShare).
	CoreShare      float64
	CoreShareProbe bool
}

func defaultValidateOptions() validateOptions {
	return validateOptions{Steps: 20, Skip: 4, MinMeasured: 3 * time.Second, Batch: 32, Seed: 1, Workload: "mnist", Transport: "libp2p", Grad: "data", Local: defaultLocal(), MsgCost: "probe", MsgModel: "cpu", ProbeSteps: 60,
		BenchTime: 300 * time.Millisecond, Cores: runtime.NumCPU(), Goodput: tcpGoodput, Latency: 30 * time.Microsecond,
		CaseTimeout: 15 * time.Minute, LossPenalty: defaultLossPenalty, Buckets: "queue"}
}

// defaultLocal is --local's default: company where the system has a
// per-thread CPU clock (it brought the resimulated table of the 26 cases
// of 2026-12-07, val-q1, from 6.3 % to 5.2–6.0 % in three runs: notes/issue18-h45.md), else alone.
func defaultLocal() string {
	if threadCPUSupported {
		return "company"
	}
	return "alone"
}

// tcpGoodput is the share of a full packet that carries a TCP stream's
// payload: a full Ethernet frame of 1514 bytes (what tc's token bucket
// counts: 14 bytes of Ethernet, 20 of IPv4, 32 of TCP with timestamps)
// carries a 1448-byte segment (tcpMSS).
const (
	tcpGoodput = 1448.0 / 1514.0
	tcpMSS     = 1448
)

// messageFraming is the bytes that each transport adds to a message once
// (sim.Framing.MessageBytes): libp2p, the worker's frame header, yamux's
// 12-byte frame header and Noise's 2-byte length and 16-byte tag (one
// Noise message per yamux frame, up to 64 KiB); NATS, the frame header and
// a protocol line of about 40 bytes (subject, reply, size).
var messageFraming = map[string]int64{
	"libp2p": transport.FrameHeaderLen + 12 + 18,
	"nats":   transport.FrameHeaderLen + 40,
}

// framing is the simulator's sim.Framing for the bed's links: the
// transport's bytes per message, and per TCP segment of tcpMSS bytes the
// headers that --goodput leaves (66 bytes at the default). The topology's
// links then have the shaped rates: a small message pays a whole packet's
// headers, not the goodput share of its own bytes.
func (o validateOptions) framing() sim.Framing {
	return sim.Framing{
		MessageBytes:   messageFraming[o.Transport],
		SegmentPayload: tcpMSS,
		SegmentBytes:   int64(math.Round(tcpMSS/o.Goodput - tcpMSS)),
	}
}

// defaultLossPenalty is validate's sim.Options.LossPenalty: the share of
// bytes that TCP resent when a 10 Mbit/s sender filled a 2.5 Mbit/s
// receiver's shaped queue, fitted on the one case dense-ring-4slow-10M
// (docs/simulator.md, "Validation against real links").
const defaultLossPenalty = 0.11

// valCase is one validation case: hosts with shaped links, a dense
// all-reduce algorithm and a method.
type valCase struct {
	Name      string
	Rates     []int64 // per host: egress and ingress rate, bits/s
	Algorithm string  // ring or tree
	Method    string  // dense, topk, sign or powersgd
	Quick     bool    // in the --quick subset
}

// valMethods are the methods of the cases: a compressor, error feedback
// and optimizer recipe each, passed the same to the workers (--compress,
// --ef, --optim) and to the simulator.
var valMethods = map[string]method{
	"dense":    {Name: "dense", Compress: "none", EF: "none", Optim: "momentum:lr=0.1,m=0.9"},
	"topk":     {Name: "topk", Compress: "topk:0.001", EF: "ef14", Optim: "momentum:lr=0.1,m=0.9"},
	"sign":     {Name: "sign", Compress: "sign", EF: "none", Optim: "momentum:lr=0.1,m=0.9"}, // keeps its own worker and server error
	"powersgd": {Name: "powersgd", Compress: "powersgd:4", EF: "ef14", Optim: "momentum:lr=0.1,m=0.9"},
}

// validationCases are the cases of issue #18: homogeneous links, one slow
// host (a quarter of the others' rate) and mixed rates (R/4, R/2, R in
// turn); 4 and 8 hosts; ring and tree; dense, top-k with EF, sign
// (two-phase) and PowerSGD; at 10 Mbit/s, where the network takes most of
// a dense step, and at 200 Mbit/s, where the CPU does.
func validationCases() []valCase {
	type spec struct {
		method, alg string
		n           int
		profile     string // hom, slow, mix
		rate        int64
		quick       bool
	}
	const net, cpu = 10_000_000, 200_000_000
	specs := []spec{
		{"dense", "ring", 4, "hom", net, true},
		{"dense", "tree", 4, "hom", net, true},
		{"dense", "ring", 8, "hom", net, false},
		{"dense", "tree", 8, "hom", net, false},
		{"dense", "ring", 4, "slow", net, false},
		{"dense", "tree", 4, "slow", net, false},
		{"dense", "ring", 8, "mix", net, false},
		{"topk", "ring", 4, "hom", net, false},
		{"topk", "ring", 8, "mix", net, false},
		{"sign", "ring", 4, "hom", net, true},
		{"sign", "ring", 8, "hom", net, false},
		{"sign", "ring", 4, "slow", net, false},
		{"powersgd", "ring", 4, "hom", net, false},
		{"powersgd", "tree", 8, "hom", net, false},
		{"powersgd", "ring", 8, "mix", net, false},
		{"dense", "ring", 4, "hom", cpu, true},
		{"dense", "tree", 4, "hom", cpu, false},
		{"dense", "ring", 8, "hom", cpu, false},
		{"dense", "ring", 8, "mix", cpu, false},
		{"dense", "tree", 8, "mix", cpu, false},
		{"topk", "ring", 4, "hom", cpu, true},
		{"topk", "ring", 8, "hom", cpu, false},
		{"sign", "ring", 4, "hom", cpu, false},
		{"sign", "ring", 8, "mix", cpu, false},
		{"powersgd", "ring", 4, "hom", cpu, false},
		{"powersgd", "ring", 8, "hom", cpu, false},
	}
	var out []valCase
	for _, s := range specs {
		rates := make([]int64, s.n)
		for i := range rates {
			switch s.profile {
			case "hom":
				rates[i] = s.rate
			case "slow":
				rates[i] = s.rate
				if i == s.n-1 {
					rates[i] = s.rate / 4
				}
			case "mix":
				rates[i] = [3]int64{s.rate / 4, s.rate / 2, s.rate}[i%3]
			}
		}
		out = append(out, valCase{Name: fmt.Sprintf("%s-%s-%d%s-%s", s.method, s.alg, s.n, s.profile, rateLabel(s.rate)),
			Rates: rates, Algorithm: s.alg, Method: s.method, Quick: s.quick})
	}
	return out
}

// rateLabel is a rate in bits/s as "10M", "2.5M" or "200M".
func rateLabel(r int64) string {
	return strconv.FormatFloat(float64(r)/1e6, 'g', -1, 64) + "M"
}

// selectCases returns the cases that o selects: those matching any of the
// comma-separated --cases patterns (exact names or path.Match globs), else
// the quick subset with --quick, else all.
func (o validateOptions) selectCases() ([]valCase, error) {
	all := validationCases()
	if o.Cases == "" {
		if !o.Quick {
			return all, nil
		}
		var out []valCase
		for _, c := range all {
			if c.Quick {
				out = append(out, c)
			}
		}
		return out, nil
	}
	var out []valCase
	for _, p := range strings.Split(o.Cases, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("--cases: bad pattern %q: %w", p, err)
		}
		n := 0
		for _, c := range all {
			if ok, _ := path.Match(p, c.Name); ok && !slices.ContainsFunc(out, func(d valCase) bool { return d.Name == c.Name }) {
				out = append(out, c)
				n++
			} else if ok {
				n++
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("--cases: %q matches no case (see slimgrad validate --list)", p)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("--cases selects no case")
	}
	return out, nil
}

func (o validateOptions) validate() error {
	for _, f := range []struct {
		flag   string
		v, min int
	}{{"steps", o.Steps, 3}, {"skip", o.Skip, 0}, {"batch", o.Batch, 1}, {"cores", o.Cores, 1}, {"probe-steps", o.ProbeSteps, 3}} {
		if f.v < f.min {
			return fmt.Errorf("--%s %d: want at least %d", f.flag, f.v, f.min)
		}
	}
	if o.Skip > o.Steps-2 || o.Skip > o.ProbeSteps-2 {
		return fmt.Errorf("--skip %d: leaves no step to measure of --steps %d or --probe-steps %d (the last one, with the final evaluation, is not measured either)", o.Skip, o.Steps, o.ProbeSteps)
	}
	if o.Transport != "libp2p" && o.Transport != "nats" {
		return fmt.Errorf("--transport %q: want libp2p or nats", o.Transport)
	}
	if o.Grad != "data" && o.Grad != "calibration" {
		return fmt.Errorf("--grad %q: want data or calibration", o.Grad)
	}
	if o.Local != "alone" && o.Local != "company" {
		return fmt.Errorf("--local %q: want alone or company", o.Local)
	}
	if o.Local == "company" && o.Grad != "data" {
		return fmt.Errorf("--local company measures the local compute on the training data: it needs --grad data, not %q", o.Grad)
	}
	if o.Local == "company" && !threadCPUSupported {
		return errors.New("--local company: no per-thread CPU clock on this system (Linux only)")
	}
	if o.MsgCost != "probe" && o.MsgCost != "calibration" {
		return fmt.Errorf("--message-cost %q: want probe or calibration", o.MsgCost)
	}
	if !(o.CoreShare >= 0 && o.CoreShare <= 1) {
		return fmt.Errorf("--core-share %v: want a share in [0, 1] (0: all of the cores)", o.CoreShare)
	}
	if o.CoreShareProbe && o.MsgCost != "probe" {
		return fmt.Errorf("--core-share probe: measured on the probe job, which --message-cost %s does not run", o.MsgCost)
	}
	if o.MsgModel != "cpu" && o.MsgModel != "wait" && o.MsgModel != "latency" {
		return fmt.Errorf("--message-model %q: want cpu, wait or latency", o.MsgModel)
	}
	if !(o.Goodput > 0 && o.Goodput <= 1) {
		return fmt.Errorf("--goodput %g: want a share in (0, 1]", o.Goodput)
	}
	if o.Latency < 0 {
		return fmt.Errorf("--latency %v: want a non-negative duration", o.Latency)
	}
	if !(o.LossPenalty >= 0) || math.IsInf(o.LossPenalty, 0) {
		return fmt.Errorf("--loss-penalty %g: want a finite non-negative share", o.LossPenalty)
	}
	if !slices.Contains([]string{"both", "queue", "burst", "none"}, o.Buckets) {
		return fmt.Errorf("--tbf %q: want both, queue, burst or none", o.Buckets)
	}
	if o.BenchTime <= 0 || o.CaseTimeout <= 0 {
		return errors.New("--bench-time and --case-timeout must be positive")
	}
	if _, err := train.NewModel(o.Workload, 1); err != nil {
		return fmt.Errorf("--workload: %w", err)
	}
	_, err := o.selectCases()
	return err
}

func runValidateCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := defaultValidateOptions()
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Cases, "cases", o.Cases, "comma-separated case names or globs, e.g. 'dense-*-10M,sign-ring-4hom-10M' (default: all; see --list)")
	fs.BoolVar(&o.Quick, "quick", o.Quick, "run the quick subset (4-host dense ring and tree, sign and top-k) unless --cases is given")
	fs.BoolVar(&o.List, "list", o.List, "list the cases and exit")
	fs.IntVar(&o.Steps, "steps", o.Steps, "training steps per case, real and simulated")
	fs.IntVar(&o.Skip, "skip", o.Skip, "warm-up steps left out of the per-step figures (the last step, with the final evaluation, is left out too)")
	fs.DurationVar(&o.MinMeasured, "min-measured", o.MinMeasured, "a case whose simulated steps are short runs more than --steps steps, real and simulated, so that its measured steps cover at least this much simulated time (at most 2000 steps; a fifth of them, at least --skip, are the warm-up): a short step's real median over 15 steps still holds the job's warm-up and sampling noise (0: --steps for every case)")
	fs.IntVar(&o.Batch, "batch", o.Batch, "mini-batch size per worker")
	fs.Uint64Var(&o.Seed, "seed", o.Seed, "seed of the model, shards, samplers and codecs")
	fs.StringVar(&o.Workload, "workload", o.Workload, "workload: "+strings.Join(train.Workloads, ", "))
	fs.StringVar(&o.Data, "data", o.Data, "directory with the MNIST *-ubyte.gz files (default: the GoMNIST module in the Go module cache)")
	fs.StringVar(&o.Transport, "transport", o.Transport, "transport of the real workers, whose per-message cost the simulator charges: libp2p (direct TCP links between the hosts, as the simulator's network) or nats (every message through the server host)")
	fs.StringVar(&o.Calibration, "calibration", o.Calibration, "calibration file of slimgrad bench (default: run bench on this machine first, into --out)")
	fs.StringVar(&o.Grad, "grad", o.Grad, "a simulated step's compute outside the collectives: data (measured here in one goroutine on the workload's training data: gradient, the optimizer's prepare and update, the workers' finite check) or calibration (the file's gradient time, which bench measures on random inputs of the workload's shape)")
	fs.StringVar(&o.Local, "local", o.Local, "how --grad data measures the local compute: alone (one worker in one goroutine, wall time per step) or company (the case's N workers at once, a goroutine on an OS thread of its own each, with its own model, optimizer and data; each step's CPU time of its thread, so that the cost of sharing caches and memory with the other workers is in it; --resimulate of a run without these figures scales the recorded alone ones by company/alone measured now)")
	fs.StringVar(&o.MsgCost, "message-cost", o.MsgCost, "the simulated per-message cost: probe (fitted before each case to a latency-bound job on the case's bed: the logistic workload's dense ring, --probe-steps steps) or calibration (bench's, measured between two ranks in one process)")
	fs.StringVar(&o.MsgModel, "message-model", o.MsgModel, "how the simulator charges the per-message cost: cpu (compute time of the sending and the receiving worker, shared with their codec work and the machine's cores; the probe fits it), wait (bench's cost as cpu, the probe's excess as a wait without CPU) or latency (all of it added to the message's latency)")
	fs.Func("core-share", "share of the --cores that the simulated workers get while more of them compute than there are cores (sim.Options.CoreShare; the real workers leave the cores 11-17 % idle in the compressed 200 Mbit/s cases and in the probe, docs/simulator.md, h58): each of a busy ones computes at share·cores/a of a core. A number in [0, 1] (0, the default: all of it), or probe: measured per case on its probe job, the workers' process CPU per step (steps.csv's cpu_s) over the cores' time; the probe's fitted message cost then comes out at about the workers' CPU per message", func(v string) error {
		if v == "probe" {
			o.CoreShare, o.CoreShareProbe = 0, true
			return nil
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return errors.New("want a share in [0, 1] or probe")
		}
		o.CoreShare, o.CoreShareProbe = f, false
		return nil
	})
	fs.IntVar(&o.ProbeSteps, "probe-steps", o.ProbeSteps, "steps of the probe job of --message-cost probe")
	fs.DurationVar(&o.BenchTime, "bench-time", o.BenchTime, "minimum measuring time per measurement of bench and of the local compute")
	fs.IntVar(&o.Cores, "cores", o.Cores, "CPU cores that the workers of a case share (this machine's): the simulated nodes are on one host of this many cores, processor-shared")
	fs.Float64Var(&o.Goodput, "goodput", o.Goodput, "share of a full packet (a TCP segment of 1448 bytes) that is payload, the rest being headers that every packet pays, also a message's last, partly filled one (default: TCP/IPv4 with timestamps over Ethernet, 1448/1514); the simulated links have the shaped rates and carry each message with its headers and its transport's framing")
	fs.DurationVar(&o.Latency, "latency", o.Latency, "one-way latency between two hosts in the simulated topology (the bed's veth and bridge)")
	fs.StringVar(&o.Out, "out", o.Out, "directory for the cases' topologies, the workers' steps.csv, the calibration and validate.csv (default: a temporary directory, removed)")
	fs.DurationVar(&o.CaseTimeout, "case-timeout", o.CaseTimeout, "time limit of one case's real jobs")
	fs.Float64Var(&o.LossPenalty, "loss-penalty", o.LossPenalty, "the simulator's loss-recovery penalty (sim.Options.LossPenalty): a flow whose bytes can overflow the receiver's queue (--tbf queue or both; else any flow into a slower receiver or a shared downlink) arrives this share of its transfer time later (0: none)")
	fs.StringVar(&o.Buckets, "tbf", o.Buckets, "which of the bed's tc token-bucket parameters the simulated links get (sim.Node.Queue and Burst): both, queue (the limit, where a flow into the link can overflow it and pays --loss-penalty; without it every flow into a slower receiver or a shared downlink pays), burst (the bucket, whose credit passes at once) or none")
	fs.StringVar(&o.Resimulate, "resimulate", o.Resimulate, "the --out directory of an earlier run: simulate its cases again against the real step times it measured (no test bed, no root; its calibration.json unless --calibration)")
	fs.BoolVar(&o.WorkerProfile, "worker-profile", o.WorkerProfile, "have every worker of a case's job (not the probe's) write a CPU profile beside its steps.csv: OUT/CASE/job/HOST/cpu.pprof (slimgrad worker --cpuprofile)")
	setUsage(fs, stdout, "Usage: slimgrad validate [--quick | --cases LIST] [flags]\n\n"+
		"Checks the simulator against real links (needs root: it builds network namespaces\n"+
		"with tc-shaped links, see package testbed). For each case it runs one `slimgrad worker`\n"+
		"process per host over --transport, takes rank 0's per-step wall time, simulates the\n"+
		"same job (a topology written from the hosts' rates, the calibration of this machine)\n"+
		"and prints case | simulated | real median | real mean | ratio, and the geometric mean\n"+
		"of |ratio-1|.\n\nFlags:\n")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "slimgrad validate: unexpected arguments %q\n", fs.Args())
		return errUsage
	}
	if err := o.validate(); err != nil {
		return err
	}
	if o.List {
		cases, _ := o.selectCases()
		for _, c := range cases {
			q := ""
			if c.Quick {
				q = "  (quick)"
			}
			fmt.Fprintf(stdout, "%-26s %d hosts at %s Mbit/s, %s, %s%s\n", c.Name, len(c.Rates), ratesList(c.Rates), c.Algorithm, c.Method, q)
		}
		return nil
	}
	_, err := runValidate(ctx, o, stdout, stderr)
	return err
}

// ratesList is "10,10,10,2.5": the hosts' rates in Mbit/s.
func ratesList(rates []int64) string {
	s := make([]string, len(rates))
	for i, r := range rates {
		s[i] = strings.TrimSuffix(rateLabel(r), "M")
	}
	return strings.Join(s, ",")
}

// caseResult is what one case measured and simulated. Durations are per
// step: medians unless named otherwise, over the steps after --skip but for
// the last.
type caseResult struct {
	Case valCase
	// Sim is the simulated step time (local compute and exchange),
	// SimLocal its local compute (gradient and, with --grad data, the
	// optimizer and finite check), SimComm the share of the step that is
	// neither that nor codec or reduction compute, SimCodec the codec and
	// reduction time of the critical rank (elapsed: under processor
	// sharing a rank's work takes longer than on a core of its own).
	Sim, SimLocal, SimCodec time.Duration
	SimComm                 float64
	// Speed is the simulated compute speed of a worker when all of a
	// case's workers compute at once (cores/N, at most 1), MsgCost the
	// simulated per-message cost that the probe fits (--message-model cpu
	// and latency: the whole overhead; wait: the wait on top of bench's
	// CPU cost), or bench's overhead.
	Speed   float64
	MsgCost time.Duration
	// CoreShare is the simulation's sim.Options.CoreShare (--core-share;
	// with probe, this case's measured one).
	CoreShare float64
	// RealMedian and RealMean are rank 0's wall time per step; RealGrad is
	// its gradient compute (with the optimizer's preparation) per step,
	// RealCodec its codec and reduction time (the ledger's compress and
	// decompress, wall time of the calls: steps.csv's sim_codec_s).
	RealMedian, RealMean, RealGrad, RealCodec time.Duration
	Steps                                     int     // steps measured
	Load                                      float64 // one-minute load average when the real job ended
	// Wall is the case's wall time: bed, probe, job and simulations.
	Wall time.Duration
	Err  error
}

// Ratio is the simulated over the real median step time.
func (r caseResult) Ratio() float64 { return r.Sim.Seconds() / r.RealMedian.Seconds() }

// valEnv is what every case of a run uses.
type valEnv struct {
	dir, exe string
	calib    *sim.Calibration
	task     train.Task
	// local is the local compute per step of one worker on a whole core
	// (gradient and the rest, the simulated GradSeconds and LocalSeconds)
	// of the workload, probeLocal the probe's.
	local, probeLocal localCost
	// localN and probeLocalN are, with --local company, the local
	// compute per step of one of N workers that compute at once, by N.
	localN, probeLocalN map[int]localCost
	probe               train.Task // the probe's workload (logistic)
	// loads are the load averages that the earlier run of --resimulate
	// recorded per case (its validate.csv), nil if it has none.
	loads map[string]float64
}

// The probe of --message-cost probe: a job whose step is a chain of small
// messages, so that its real step time, against the simulated one, gives
// the software cost per message as the workers see it (separate processes
// sharing cores), which bench measures between two ranks of one process.
const (
	probeWorkload = "logistic"
	probeMethod   = "dense"
	probeAlg      = "ring"
)

// runValidate runs the selected cases and prints the table; it returns the
// results of the cases it ran (also those that failed, with Err set) and an
// error when it could not start or some case failed.
func runValidate(ctx context.Context, o validateOptions, stdout, stderr io.Writer) ([]caseResult, error) {
	if o.Resimulate == "" {
		if err := testbed.Supported(); err != nil {
			return nil, fmt.Errorf("validate runs real workers in network namespaces: %w (run it as root on Linux with ip and tc)", err)
		}
	}
	cases, err := o.selectCases()
	if err != nil {
		return nil, err
	}
	env := &valEnv{}
	if env.exe, err = os.Executable(); err != nil {
		return nil, err
	}
	env.dir = o.Out
	if o.Resimulate != "" {
		env.dir = o.Resimulate
		if o.Calibration == "" {
			o.Calibration = filepath.Join(o.Resimulate, "calibration.json")
		}
	} else if env.dir == "" {
		if env.dir, err = os.MkdirTemp("", "slimgrad-validate-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(env.dir)
	} else if err := os.MkdirAll(env.dir, 0o755); err != nil {
		return nil, err
	}
	if env.task, err = train.LoadTask(o.Workload, o.Data, o.Seed); err != nil {
		return nil, err
	}
	calib, calPath, err := o.calibration(ctx, env.dir, cases, largestUnit(env.task.Model), stderr)
	if err != nil {
		return nil, err
	}
	mc, ok := calib.Messages[o.Transport]
	if !ok {
		return nil, fmt.Errorf("calibration %s has no message cost of transport %q (run slimgrad bench --transports %s)", calPath, o.Transport, o.Transport)
	}
	env.calib = calib
	for _, r := range valCodecs(cases) {
		if _, ok := calib.Throughput["encode/"+r]; !ok && r != "none" {
			fmt.Fprintf(stderr, "slimgrad validate: warning: calibration %s has no throughputs of codec %s: the simulator uses its generic ones (run slimgrad bench --codecs %s)\n", calPath, r, r)
		}
	}
	fmt.Fprintf(stdout, "slimgrad validate: %d cases, %s, %d steps (%d measured; more where the simulated steps take less than --min-measured %s), batch %d, %s transport, %d cores shared\n",
		len(cases), o.Workload, o.Steps, o.Steps-o.Skip-1, o.MinMeasured, o.Batch, o.Transport, o.Cores)
	fmt.Fprintf(stdout, "calibration %s: %s message cost %s + %.2f ns/byte (between two ranks of one process)\n", calPath,
		o.Transport, fmtDuration(seconds(mc.Overhead)), mc.PerByte*1e9)
	env.local = localCost{Grad: calib.Grad[o.Workload] * float64(o.Batch), Step: calib.Grad[o.Workload]*float64(o.Batch) + calib.Local[o.Workload]}
	// The local compute measured by the run (--resimulate: by the earlier
	// run, if it saved it).
	saved, haveSaved := valLocal{}, false
	if o.Resimulate != "" {
		if b, err := os.ReadFile(filepath.Join(env.dir, "local.json")); err == nil {
			if err := json.Unmarshal(b, &saved); err != nil {
				return nil, fmt.Errorf("%s: %w", filepath.Join(env.dir, "local.json"), err)
			}
			haveSaved = true
		} else {
			fmt.Fprintf(stderr, "slimgrad validate: warning: %s has no local.json: measuring the local compute now\n", env.dir)
		}
	}
	if o.Grad == "data" {
		l, err := saved.Job, error(nil)
		if !haveSaved {
			l, err = o.measureLocal(ctx, env.task, valMethods["dense"].Optim)
		}
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(stdout, "local compute of a worker on %s's training data, alone: gradient %s, with the optimizer and finite check %s per step of %d (bench's: %s and %s)\n",
			o.Workload, fmtDuration(seconds(l.Grad)), fmtDuration(seconds(l.Step)), o.Batch, fmtDuration(seconds(env.local.Grad)), fmtDuration(seconds(env.local.Step)))
		env.local = l
	}
	if !(env.local.Grad > 0) {
		return nil, fmt.Errorf("calibration %s has no gradient time of workload %q (run slimgrad bench --workloads %s, or use --grad data)", calPath, o.Workload, o.Workload)
	}
	if o.MsgCost == "probe" {
		if env.probe, err = train.LoadTask(probeWorkload, "", o.Seed); err != nil {
			return nil, err
		}
		l, err := saved.Probe, error(nil)
		if !haveSaved {
			l, err = o.measureLocal(ctx, env.probe, valMethods[probeMethod].Optim)
		}
		if err != nil {
			return nil, err
		}
		env.probeLocal = l
	}
	if o.Local == "company" {
		if err := o.localCompany(ctx, env, cases, saved, stdout); err != nil {
			return nil, err
		}
	}
	if o.Resimulate == "" {
		b, _ := json.Marshal(valLocal{Job: env.local, Probe: env.probeLocal, JobCompany: env.localN, ProbeCompany: env.probeLocalN})
		if err := os.WriteFile(filepath.Join(env.dir, "local.json"), b, 0o644); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(stdout, "simulated: local compute %s per step on a core (--grad %s, --local %s), the workers on one host of %d cores (processor sharing), message cost %s, charged as %s, loss penalty %g\n",
		fmtDuration(seconds(env.local.Step)), o.Grad, o.Local, o.Cores, map[string]string{"probe": "fitted per case by the probe job", "calibration": "bench's"}[o.MsgCost], o.MsgModel, o.LossPenalty)
	if o.Resimulate != "" {
		env.loads = savedLoads(filepath.Join(o.Resimulate, "validate.csv"))
		fmt.Fprintf(stdout, "resimulating the real step times measured in %s (same --steps, --skip and --probe-steps as that run; load: that run's)\n", o.Resimulate)
	}
	fmt.Fprintln(stdout)
	start := time.Now()
	var results []caseResult
	var failed int
	for _, c := range cases {
		if ctx.Err() != nil {
			break
		}
		r := o.runCase(ctx, env, c)
		if r.Err != nil {
			failed++
			fmt.Fprintf(stdout, "%-26s failed: %s\n", c.Name, oneLine(r.Err))
		} else {
			share := ""
			if r.CoreShare > 0 {
				share = fmt.Sprintf("core share %.3f, ", r.CoreShare)
			}
			fmt.Fprintf(stdout, "%-26s simulated %-9s real median %-9s mean %-9s ratio %.3f (message cost %s, %sload %.1f, %s)\n", c.Name,
				fmtDuration(r.Sim), fmtDuration(r.RealMedian), fmtDuration(r.RealMean), r.Ratio(), fmtDuration(r.MsgCost), share, r.Load, r.Wall.Round(time.Second))
		}
		results = append(results, r)
	}
	fmt.Fprintln(stdout)
	writeValidationTable(stdout, results)
	fmt.Fprintf(stdout, "\n%d cases in %s (wall time of the cases; the calibration before them not counted)\n", len(results), time.Since(start).Round(time.Second))
	if o.Out != "" {
		p := filepath.Join(o.Out, "validate.csv")
		if err := writeFile(p, func(w io.Writer) error { return writeValidationCSV(w, results) }); err != nil {
			return results, err
		}
		fmt.Fprintf(stdout, "\nwrote %s\n", p)
	}
	switch {
	case ctx.Err() != nil:
		return results, fmt.Errorf("interrupted after %d of %d cases: %w", len(results), len(cases), context.Cause(ctx))
	case failed > 0:
		return results, fmt.Errorf("%d of %d cases failed", failed, len(cases))
	}
	return results, nil
}

// savedLoads returns the load average per case of a validate.csv (nil if
// the file cannot be read; cases without a number are left out).
func savedLoads(path string) map[string]float64 {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil || len(rows) < 2 {
		return nil
	}
	ci, li := slices.Index(rows[0], "case"), slices.Index(rows[0], "load1")
	if ci < 0 || li < 0 {
		return nil
	}
	out := map[string]float64{}
	for _, r := range rows[1:] {
		if len(r) > max(ci, li) {
			if v, err := strconv.ParseFloat(r[li], 64); err == nil && !math.IsNaN(v) {
				out[r[ci]] = v
			}
		}
	}
	return out
}

// calibration loads --calibration, or runs slimgrad bench on what the
// cases need (their codecs, the transport, the workload) into dir, its
// codecs and kernels on vectors of elems values: the workload's largest
// unit, the size at which the job runs them (whose working set stays in
// the caches), rather than bench's default of 16 MiB.
func (o validateOptions) calibration(ctx context.Context, dir string, cases []valCase, elems int, stderr io.Writer) (*sim.Calibration, string, error) {
	p := o.Calibration
	if p == "" {
		p = filepath.Join(dir, "calibration.json")
		args := o.benchArgs(cases, elems, dir, p)
		var out bytes.Buffer
		if err := runBenchCommand(ctx, args, &out, stderr); err != nil {
			return nil, "", fmt.Errorf("calibrating (slimgrad bench %s): %w", strings.Join(args, " "), err)
		}
	}
	c, err := sim.LoadCalibration(p)
	if err != nil {
		return nil, "", flagError("calibration", err)
	}
	return c, p, nil
}

// benchArgs are the arguments of the slimgrad bench run that calibration
// makes into dir, writing the calibration file p.
func (o validateOptions) benchArgs(cases []valCase, elems int, dir, p string) []string {
	return []string{"--codecs", strings.Join(valCodecs(cases), ","), "--elems", strconv.Itoa(elems), "--transports", o.Transport, "--workloads", o.Workload,
		"--grad-batch", strconv.Itoa(o.Batch), "--time", o.BenchTime.String(), "--sim-ranks", "0",
		"--world", "2", "--size", strconv.Itoa(1 << 20), "--out", filepath.Join(dir, "bench"), "--calibration", p}
}

// largestUnit is the number of values of m's largest unit (parameter
// tensor): the vector size of the codecs' and kernels' biggest calls in a
// step of the validation's jobs.
func largestUnit(m workload.Model) int {
	n := 0
	for _, u := range train.Units(m, false) {
		n = max(n, u.Size)
	}
	return n
}

// valCodecs are the codec recipes of the cases' methods.
func valCodecs(cases []valCase) []string {
	var codecs []string
	for _, c := range cases {
		if r := valMethods[c.Method].Compress; !slices.Contains(codecs, r) {
			codecs = append(codecs, r)
		}
	}
	return codecs
}

// localCost is a worker's compute per step outside its collectives, in
// seconds: the gradient (forward and backward) and the whole local step.
type localCost struct {
	Grad float64 `json:"grad_s"`
	Step float64 `json:"step_s"`
}

// valLocal is what a run saves in OUT/local.json for --resimulate: the
// local compute it simulated, of the job's workload and of the probe's.
type valLocal struct {
	Job   localCost `json:"job"`
	Probe localCost `json:"probe"`
	// JobCompany and ProbeCompany are the figures of --local company by
	// the number of workers; absent from runs that measured none.
	JobCompany   map[int]localCost `json:"job_company,omitempty"`
	ProbeCompany map[int]localCost `json:"probe_company,omitempty"`
}

// localWorker is one worker's local compute for measureLocal and
// measureLocalCompany: its own model, workspace, sampler and optimizers.
type localWorker struct {
	task    train.Task
	batch   int
	ws      workload.Workspace
	sampler *workload.Sampler
	params  [][]float32
	gs      [][]float32
	opts    []optim.Optimizer
}

// newLocalWorker is worker rank of world's local compute on its IID shard
// of task's training data, with the optimizers of spec.
func (o validateOptions) newLocalWorker(task train.Task, spec train.OptimSpec, rank, world int) (*localWorker, error) {
	shards, err := workload.Shard(task.Train, world, workload.IID, o.Seed)
	if err != nil {
		return nil, err
	}
	model := task.Model.Clone()
	w := &localWorker{task: task, batch: o.Batch, ws: model.NewWorkspace(o.Batch), sampler: workload.NewSampler(shards[rank], o.Seed, rank)}
	w.params, w.gs = unitVectors(model, w.ws, spec.Flat)
	w.opts = make([]optim.Optimizer, len(w.params))
	for u := range w.params {
		if w.opts[u], err = spec.New(len(w.params[u])); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// step runs one local step: the gradient of a batch of the worker's data,
// its optimizers' Prepare, the finite check of what it would send (the
// worker's flag exchange), the check of the reduced result for an overflow
// (the worker's, after each bucket's collective: here over the same
// vector, which the exchange would have overwritten with the mean) and
// the optimizers' Step. It returns the gradient's and the whole step's
// time on clock.
func (w *localWorker) step(clock func() (time.Duration, error)) (grad, step time.Duration, err error) {
	t0, err := clock()
	if err != nil {
		return 0, 0, err
	}
	if _, err := w.ws.Gradient(w.task.Train, w.sampler.Next(w.batch)); err != nil {
		return 0, 0, err
	}
	tg, err := clock()
	if err != nil {
		return 0, 0, err
	}
	for u := range w.params {
		send, _, err := w.opts[u].Prepare(w.gs[u])
		if err == nil && !localAllFinite(send) {
			err = fmt.Errorf("non-finite gradient of unit %d", u)
		}
		if err == nil && !localAllFinite(send) {
			err = fmt.Errorf("non-finite mean of unit %d", u)
		}
		if err == nil {
			err = w.opts[u].Step(w.params[u], send)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("measuring the local compute: %w", err)
		}
	}
	te, err := clock()
	if err != nil {
		return 0, 0, err
	}
	return tg - t0, te - t0, nil
}

// localAllFinite is the finite check of localWorker.step (a variable so
// that a test can count the passes).
var localAllFinite = kernels.AllFinite

// wallOrigin and wallClock: the monotonic time since an arbitrary origin.
var wallOrigin = time.Now()

func wallClock() (time.Duration, error) { return time.Since(wallOrigin), nil }

// measureLocal measures for at least --bench-time, in one goroutine, what a
// worker with the optimizer recipe optimRecipe does per step outside its
// collectives (localWorker.step, wall time); it returns the medians. Unlike
// bench's gradient figure (random inputs of the workload's shape) this sees
// the data's zeros, which the MLP's backward pass skips: about 80% of
// MNIST's pixels.
func (o validateOptions) measureLocal(ctx context.Context, task train.Task, optimRecipe string) (localCost, error) {
	spec, err := parseOptim(optimRecipe, o.Steps)
	if err != nil {
		return localCost{}, err
	}
	w, err := o.newLocalWorker(task, spec, 0, 1)
	if err != nil {
		return localCost{}, err
	}
	var grads, steps []float64
	for start := time.Now(); len(steps) < 5 || time.Since(start) < o.BenchTime; {
		if err := ctx.Err(); err != nil {
			return localCost{}, err
		}
		g, s, err := w.step(wallClock)
		if err != nil {
			return localCost{}, err
		}
		grads, steps = append(grads, g.Seconds()), append(steps, s.Seconds())
	}
	return localCost{Grad: median(grads), Step: median(steps)}, nil
}

// measureLocalCompany measures the local compute of localWorker.step as n
// workers run it at once (--local company): n goroutines, each on an OS
// thread of its own (runtime.LockOSThread) with its own model, optimizer
// state and shard of the data, step until every one of them has stepped
// at least 5 times and for --bench-time; each step's cost is the CPU time
// of its thread, not wall time, since the simulator shares the cores among
// the workers itself. What it adds to measureLocal is the cost of company:
// caches, memory bandwidth and switches shared with the other workers. It
// returns the medians over all workers' steps and the steps per worker.
func (o validateOptions) measureLocalCompany(ctx context.Context, task train.Task, optimRecipe string, n int) (localCost, []int, error) {
	if n < 1 {
		return localCost{}, nil, fmt.Errorf("measuring the local compute of %d workers: want at least 1", n)
	}
	if _, err := threadCPU(); err != nil {
		return localCost{}, nil, err
	}
	spec, err := parseOptim(optimRecipe, o.Steps)
	if err != nil {
		return localCost{}, nil, err
	}
	workers := make([]*localWorker, n)
	for r := range workers {
		if workers[r], err = o.newLocalWorker(task, spec, r, n); err != nil {
			return localCost{}, nil, err
		}
	}
	grads, steps := make([][]float64, n), make([][]float64, n)
	errs := make([]error, n)
	var done atomic.Int32 // workers that have measured enough
	var stop atomic.Bool  // set on the first error
	begin := make(chan struct{})
	var wg sync.WaitGroup
	for r, w := range workers {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			<-begin
			start, counted := time.Now(), false
			for int(done.Load()) < n && !stop.Load() {
				if err := ctx.Err(); err != nil {
					errs[r] = err
					stop.Store(true)
					return
				}
				g, s, err := w.step(threadCPU)
				if err != nil {
					errs[r] = err
					stop.Store(true)
					return
				}
				grads[r], steps[r] = append(grads[r], g.Seconds()), append(steps[r], s.Seconds())
				if !counted && len(steps[r]) >= 5 && time.Since(start) >= o.BenchTime {
					counted = true
					done.Add(1)
				}
			}
		})
	}
	close(begin)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return localCost{}, nil, err
	}
	counts := make([]int, n)
	for r := range steps {
		counts[r] = len(steps[r])
	}
	return localCost{Grad: median(slices.Concat(grads...)), Step: median(slices.Concat(steps...))}, counts, nil
}

// localFor is the simulated local compute of one of n workers: byN's
// figure for n (--local company) if it has one, else alone's.
func localFor(alone localCost, byN map[int]localCost, n int) localCost {
	if l, ok := byN[n]; ok {
		return l
	}
	return alone
}

// localCompany fills env.localN (and env.probeLocalN with --message-cost
// probe) for the numbers of workers of cases (--local company): measured
// now with measureLocalCompany, or, with --resimulate, the earlier run's
// figures from saved. An earlier run without them measured only the
// alone figures, on the machine as it was then; its figures are then
// scaled by the ratio of the CPU time per step of n workers at once to
// that of one, both measured now, one after the other, so that the
// company's cost is added to what that run measured.
func (o validateOptions) localCompany(ctx context.Context, env *valEnv, cases []valCase, saved valLocal, stdout io.Writer) error {
	env.localN, env.probeLocalN = map[int]localCost{}, map[int]localCost{}
	type kind struct {
		name  string
		task  train.Task
		optim string
		alone localCost
		saved map[int]localCost
		out   map[int]localCost
	}
	kinds := []kind{{o.Workload, env.task, valMethods["dense"].Optim, env.local, saved.JobCompany, env.localN}}
	if o.MsgCost == "probe" {
		kinds = append(kinds, kind{probeWorkload + " (probe)", env.probe, valMethods[probeMethod].Optim, env.probeLocal, saved.ProbeCompany, env.probeLocalN})
	}
	var ns []int
	for _, c := range cases {
		if n := len(c.Rates); !slices.Contains(ns, n) {
			ns = append(ns, n)
		}
	}
	slices.Sort(ns)
	for _, k := range kinds {
		for _, n := range ns {
			if l, ok := k.saved[n]; ok {
				k.out[n] = l
				fmt.Fprintf(stdout, "local compute of %s, %d workers at once (recorded): gradient %s, step %s of CPU each\n", k.name, n, fmtDuration(seconds(l.Grad)), fmtDuration(seconds(l.Step)))
				continue
			}
			l, counts, err := o.measureLocalCompany(ctx, k.task, k.optim, n)
			if err != nil {
				return fmt.Errorf("measuring the local compute of %d workers at once: %w", n, err)
			}
			if o.Resimulate == "" {
				k.out[n] = l
				fmt.Fprintf(stdout, "local compute of %s, %d workers at once: gradient %s, step %s of CPU each (alone: %s, %s wall; steps per worker %v)\n",
					k.name, n, fmtDuration(seconds(l.Grad)), fmtDuration(seconds(l.Step)), fmtDuration(seconds(k.alone.Grad)), fmtDuration(seconds(k.alone.Step)), counts)
				continue
			}
			now, _, err := o.measureLocalCompany(ctx, k.task, k.optim, 1)
			if err != nil {
				return err
			}
			g, s := l.Grad/now.Grad, l.Step/now.Step
			k.out[n] = localCost{Grad: k.alone.Grad * g, Step: k.alone.Step * s}
			fmt.Fprintf(stdout, "local compute of %s, %d workers at once: measured now %s gradient, %s step of CPU each against %s, %s alone (CPU): x%.2f, x%.2f of the recorded alone figures, %s and %s\n",
				k.name, n, fmtDuration(seconds(l.Grad)), fmtDuration(seconds(l.Step)), fmtDuration(seconds(now.Grad)), fmtDuration(seconds(now.Step)), g, s,
				fmtDuration(seconds(k.out[n].Grad)), fmtDuration(seconds(k.out[n].Step)))
		}
	}
	return nil
}

// unitVectors returns the parameters and the workspace's gradients of m as
// the vectors of train.Units(m, flat): one per parameter tensor, or the
// whole model as one.
func unitVectors(m workload.Model, ws workload.Workspace, flat bool) (params, grads [][]float32) {
	if flat {
		return [][]float32{m.Flat()}, [][]float32{ws.FlatGrads()}
	}
	for _, p := range m.Params() {
		params = append(params, p.Data)
	}
	return params, ws.Grads()
}

// valJob is one job of a case, real and simulated.
type valJob struct {
	name      string // for the job ID and its directory
	workload  string
	task      train.Task
	method    method
	algorithm string
	steps     int
	skip      int       // warm-up steps not measured
	local     localCost // simulated local compute per step on a core
}

// maxJobSteps bounds the steps of a case's job lengthened by --min-measured.
const maxJobSteps = 2000

// jobSteps returns the steps of a case's job and its warm-up (steps not
// measured) when its simulated step takes est seconds: --steps and --skip,
// unless the measured steps would then cover less than --min-measured of
// simulated time; then enough steps that they cover it (at most
// maxJobSteps), of which skipFor's warm-up.
func (o validateOptions) jobSteps(est float64) (steps, skip int) {
	steps = o.Steps
	if o.MinMeasured > 0 && est > 0 && float64(o.Steps-o.Skip-1)*est < o.MinMeasured.Seconds() {
		m := math.Ceil(o.MinMeasured.Seconds() / est)
		steps = int(min(maxJobSteps, math.Ceil(5*(m+1)/4)))
	}
	return steps, o.skipFor(steps)
}

// skipFor is the warm-up of a job of steps steps: --skip, or a fifth of
// the steps (at least --skip) for a job that --min-measured lengthened.
// A function of steps alone, so that --resimulate finds it again from the
// steps an earlier run recorded.
func (o validateOptions) skipFor(steps int) int {
	if steps <= o.Steps {
		return o.Skip
	}
	return max(o.Skip, steps/5)
}

// measured reports whether a step of j counts in the per-step figures:
// after the warm-up, not the last (which runs the final evaluation), not
// evaluated.
func (o validateOptions) measured(j valJob, step int, evaluated bool) bool {
	return step >= j.skip && step < j.steps-1 && !evaluated
}

// measuredSteps is the step times, seconds, of j's measured steps in recs.
func (o validateOptions) measuredSteps(j valJob, recs []train.Record) []float64 {
	var st []float64
	for _, r := range recs {
		if o.measured(j, r.Step, r.Evaluated) {
			st = append(st, r.StepTime.Seconds())
		}
	}
	return st
}

// identity is the placement of n ranks with rank r on host r.
func identity(n int) []int {
	p := make([]int, n)
	for r := range p {
		p[r] = r
	}
	return p
}

// runCase runs c: it builds the case's bed, runs the probe (--message-cost
// probe) and the case's job on it, and simulates both on the topology of
// the hosts as each job placed its ranks.
func (o validateOptions) runCase(ctx context.Context, env *valEnv, c valCase) (res caseResult) {
	defer func(t0 time.Time) { res.Wall = time.Since(t0) }(time.Now())
	res = caseResult{Case: c, Speed: min(1, float64(o.Cores)/float64(len(c.Rates))), MsgCost: seconds(env.calib.Messages[o.Transport].Overhead)}
	dir := filepath.Join(env.dir, c.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		res.Err = err
		return res
	}
	rctx, cancel := context.WithTimeout(ctx, o.CaseTimeout)
	defer cancel()
	var bed *testBed
	run := func(j valJob) (*realRun, error) {
		if bed == nil {
			return o.loadJob(j, filepath.Join(dir, j.name))
		}
		return o.runJob(rctx, bed, j, filepath.Join(dir, j.name))
	}
	if o.Resimulate == "" {
		var err error
		if bed, err = o.newBed(rctx, c, env.exe); err != nil {
			res.Err = fmt.Errorf("test bed: %w", err)
			return res
		}
		defer bed.close()
	}
	calib := env.calib
	if o.MsgCost == "probe" {
		j := valJob{name: "probe", workload: probeWorkload, task: env.probe, method: valMethods[probeMethod], algorithm: probeAlg,
			steps: o.ProbeSteps, skip: o.Skip, local: localFor(env.probeLocal, env.probeLocalN, len(c.Rates))}
		real, err := run(j)
		if err != nil {
			res.Err = fmt.Errorf("probe job: %w", err)
			return res
		}
		if o.CoreShareProbe {
			if o.CoreShare, err = o.probeCoreShare(j, filepath.Join(dir, j.name), len(c.Rates), real); err != nil {
				res.Err = fmt.Errorf("--core-share probe: %w", err)
				return res
			}
		}
		if calib, err = o.fitMessageCost(ctx, c, j, real, env.calib, filepath.Join(dir, j.name)); err != nil {
			res.Err = fmt.Errorf("probe: %w", err)
			return res
		}
		res.MsgCost = seconds(calib.Messages[o.Transport].Overhead)
		if o.MsgModel == "wait" {
			res.MsgCost = seconds(calib.Messages[o.Transport].Wait)
		}
	}
	j := valJob{name: "job", workload: o.Workload, task: env.task, method: valMethods[c.Method], algorithm: c.Algorithm, steps: o.Steps, skip: o.Skip, local: localFor(env.local, env.localN, len(c.Rates))}
	if bed == nil {
		j.steps = 0 // as many as the earlier run recorded (readSteps)
	} else if o.MinMeasured > 0 {
		// The job's length from its simulated step: the job of --steps
		// simulated with rank r on host r.
		recs, err := o.simulate(ctx, c, j, identity(len(c.Rates)), calib, filepath.Join(dir, "estimate"))
		if err != nil {
			res.Err = fmt.Errorf("simulation of the job's length: %w", err)
			return res
		}
		j.steps, j.skip = o.jobSteps(median(o.measuredSteps(j, recs)))
	}
	real, err := run(j)
	res.Load = loadAverage()
	if bed == nil {
		// Not measured now: the earlier run's, if it recorded one.
		res.Load = math.NaN()
		if l, ok := env.loads[c.Name]; ok {
			res.Load = l
		}
	}
	if bed != nil {
		bed.close()
	}
	if err != nil {
		res.Err = fmt.Errorf("real job: %w", err)
		return res
	}
	j.steps, j.skip = real.steps, real.skip
	res.Steps = len(real.wall)
	res.RealMedian, res.RealMean, res.RealGrad, res.RealCodec = seconds(median(real.wall)), seconds(mean(real.wall)), seconds(median(real.compute)), seconds(median(real.codec))
	recs, err := o.simulate(ctx, c, j, real.hostOf, calib, filepath.Join(dir, j.name))
	if err != nil {
		res.Err = fmt.Errorf("simulation: %w", err)
		return res
	}
	var st, lo, comm, codec []float64
	for _, r := range recs {
		if o.measured(j, r.Step, r.Evaluated) {
			st = append(st, r.StepTime.Seconds())
			codec = append(codec, (r.CodecTime + r.ReduceTime).Seconds())
			lo = append(lo, r.GradTime.Seconds())
			comm = append(comm, r.CommTime.Seconds()/r.StepTime.Seconds())
		}
	}
	if len(st) == 0 {
		res.Err = errors.New("simulation: no step to measure")
		return res
	}
	res.Sim, res.SimLocal, res.SimComm, res.SimCodec = seconds(median(st)), seconds(median(lo)), median(comm), seconds(median(codec))
	res.CoreShare = o.CoreShare
	if r := res.Ratio(); math.IsNaN(r) || math.IsInf(r, 0) || r <= 0 {
		res.Err = fmt.Errorf("ratio %v of simulated %v to real %v", r, res.Sim, res.RealMedian)
	}
	return res
}

// fitMessageCost returns calib with the transport's per-message cost set
// so that the simulated probe job j (on the topology of its real run)
// takes the median step time that it took for real: with --message-model
// cpu the CPU time per message beyond bench's (system calls, wake-ups and
// context switches of worker processes that share cores: the real probe
// step grows with the job's messages, about 5x from 4 to 8 hosts at
// 200 Mbit/s, not with its chain of dependent hops, 2.1x), with wait a
// latency without CPU beyond bench's CPU cost, with latency the whole
// overhead as latency. The simulated step of
// a chain of small messages is about linear in that overhead: a first
// simulation at 0 and 1 ms gives the line, a third checks it, and one more
// secant step corrects a bend (a new critical path). The per-byte cost is
// bench's.
func (o validateOptions) fitMessageCost(ctx context.Context, c valCase, j valJob, real *realRun, calib *sim.Calibration, dir string) (*sim.Calibration, error) {
	target := median(real.wall)
	at := func(ov float64) (*sim.Calibration, float64, error) {
		cal := *calib
		cal.Messages = maps.Clone(calib.Messages)
		mc := cal.Messages[o.Transport]
		switch o.MsgModel {
		case "cpu":
			mc.Overhead = calib.Messages[o.Transport].Overhead + ov
		case "wait":
			mc.Wait = ov
		default:
			mc.Overhead = ov
		}
		cal.Messages[o.Transport] = mc
		recs, err := o.simulate(ctx, c, j, real.hostOf, &cal, dir)
		if err != nil {
			return nil, 0, err
		}
		return &cal, median(o.measuredSteps(j, recs)), nil
	}
	_, s0, err := at(0)
	if err != nil {
		return nil, err
	}
	const probe = 1e-3
	_, s1, err := at(probe)
	if err != nil {
		return nil, err
	}
	if !(s1 > s0) {
		return nil, fmt.Errorf("the simulated probe does not depend on the message cost (%v at 0, %v at 1 ms)", s0, s1)
	}
	x0, y0, x1, y1 := 0.0, s0, probe, s1
	ov := max(0, (target-s0)/(s1-s0)*probe)
	var cal *sim.Calibration
	for range 2 {
		var s float64
		if cal, s, err = at(ov); err != nil {
			return nil, err
		}
		if math.Abs(s-target) <= 0.01*target || ov == 0 {
			break
		}
		x0, y0, x1, y1 = x1, y1, ov, s
		if y1 == y0 {
			break
		}
		ov = max(0, x1+(target-y1)*(x1-x0)/(y1-y0))
	}
	return cal, nil
}

// probeCoreShare measures the share of the --cores that the n workers of
// the probe job j got while they ran, from rank 0's steps.csv in dir (on
// host real.hostOf[0], as runJob writes it; the other ranks send rank 0
// their figures and write none): n times rank 0's mean process CPU per
// measured step (cpu_s) over the cores' time in its mean step (real's
// wall_s). The probe's ranks are alike (a dense ring of small messages),
// so n times one rank's CPU is the workers'. They have work most of the
// time (four or eight processes on two cores), so the rest is the time
// the cores idle between them (wake-ups) or give to other jobs. The
// share is at most 1.
func (o validateOptions) probeCoreShare(j valJob, dir string, n int, real *realRun) (float64, error) {
	path := filepath.Join(dir, fmt.Sprintf("h%d", real.hostOf[0]), "steps.csv")
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	rows, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	col := map[string]int{}
	if len(rows) > 0 {
		for i, name := range rows[0] {
			col[name] = i
		}
	}
	ci, ok1 := col["cpu_s"]
	si, ok2 := col["step"]
	ei, ok3 := col["evaluated"]
	if !ok1 || !ok2 || !ok3 {
		return 0, fmt.Errorf("%s: no cpu_s column (a worker of an older slimgrad)", path)
	}
	var xs []float64
	for _, row := range rows[1:] {
		step, err1 := strconv.Atoi(row[si])
		ev, err2 := strconv.ParseBool(row[ei])
		v, err3 := strconv.ParseFloat(row[ci], 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
		if o.measured(j, step, ev) {
			xs = append(xs, v)
		}
	}
	if len(xs) == 0 || !(mean(xs) > 0) {
		return 0, fmt.Errorf("%s: no CPU time measured (the system does not report it)", path)
	}
	share := float64(n) * mean(xs) / (float64(o.Cores) * mean(real.wall))
	if !(share > 0) || math.IsInf(share, 0) {
		return 0, fmt.Errorf("core share %v of %d × %v s of CPU per step over %d cores", share, n, mean(xs), o.Cores)
	}
	return min(1, share), nil
}

// testBed is a case's bed: a server host, unshaped, for the NATS server
// that the workers meet at, and one shaped host per worker.
type testBed struct {
	bed   *testbed.Bed
	hosts []*testbed.Host
	url   string
	exe   string
	stop  func()
}

func (o validateOptions) newBed(ctx context.Context, c valCase, exe string) (*testBed, error) {
	bed, err := testbed.New(ctx)
	if err != nil {
		return nil, err
	}
	b := &testBed{bed: bed, exe: exe, stop: func() {}}
	srv, err := bed.AddHost(ctx, "srv", testbed.Link{})
	if err != nil {
		b.close()
		return nil, err
	}
	for i, r := range c.Rates {
		h, err := bed.AddHost(ctx, fmt.Sprintf("h%d", i), testbed.Link{Egress: r, Ingress: r})
		if err != nil {
			b.close()
			return nil, err
		}
		b.hosts = append(b.hosts, h)
	}
	if b.url, b.stop, err = startBedServer(ctx, srv, exe); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

// close stops the server and removes the bed; it may be called again.
func (b *testBed) close() {
	b.stop()
	b.stop = func() {}
	b.bed.Close()
}

// realRun is what a real job measured.
type realRun struct {
	wall, compute, codec []float64 // rank 0's, per measured step, seconds
	hostOf               []int     // rank -> host index
	steps, skip          int       // the job's steps and warm-up (valJob's)
}

var (
	valWireRE  = regexp.MustCompile(`(?m)^rank (\d+) wire: `)
	natsURLRE  = regexp.MustCompile(`NATS URL:\s+(\S+)`)
	valJobIDRE = regexp.MustCompile(`[^A-Za-z0-9_-]`)
)

// runJob runs j with one `slimgrad worker` per host of b and reads rank
// 0's steps.csv (the workers write into dir/HOST).
func (o validateOptions) runJob(ctx context.Context, b *testBed, j valJob, dir string) (*realRun, error) {
	n := len(b.hosts)
	id := valJobIDRE.ReplaceAllString(fmt.Sprintf("validate-%s-%d", j.name, time.Now().UnixNano()), "_")
	outs := make([]string, n)
	errs := make([]error, n)
	ranks := make([]int, n)
	var wg sync.WaitGroup
	for i, h := range b.hosts {
		outs[i] = filepath.Join(dir, h.Name)
		args := []string{"worker", "--nats", b.url, "--job", id, "--world", strconv.Itoa(n),
			"--transport", o.Transport, "--relay", "off", "--reachability", "public",
			"--algorithm", j.algorithm, "--compress", j.method.Compress, "--ef", j.method.EF, "--optim", j.method.Optim,
			"--workload", j.workload, "--data", o.Data, "--steps", strconv.Itoa(j.steps), "--batch", strconv.Itoa(o.Batch),
			"--eval-every", "0", "--seed", strconv.FormatUint(o.Seed, 10), "--out", outs[i],
			// A measurement, not a production job: behind a slow lossy
			// link a peer's heartbeats may wait in a congested TCP
			// connection for tens of seconds (seen once at 2.5 Mbit/s);
			// the case's own timeout bounds the job.
			"--timeout", "2m", "--peer-timeout", "2m"}
		if o.Transport == "nats" {
			args = append(args, "--rank", strconv.Itoa(i))
		}
		if o.WorkerProfile && j.name == "job" {
			args = append(args, "--cpuprofile", filepath.Join(outs[i], "cpu.pprof"))
		}
		cmd := h.Command(ctx, b.exe, args...)
		cmd.Env = os.Environ()
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		wg.Go(func() {
			if err := cmd.Run(); err != nil {
				errs[i] = fmt.Errorf("worker on %s: %v: %s", h.Name, err, lastLines(stderr.String(), 3))
				return
			}
			w := valWireRE.FindStringSubmatch(stdout.String())
			if w == nil {
				errs[i] = fmt.Errorf("worker on %s printed no rank: %s", h.Name, lastLines(stdout.String(), 3))
				return
			}
			ranks[i], _ = strconv.Atoi(w[1])
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	run := &realRun{hostOf: make([]int, n)}
	seen := make([]bool, n)
	for i, r := range ranks {
		if r < 0 || r >= n || seen[r] {
			return nil, fmt.Errorf("workers reported ranks %v", ranks)
		}
		seen[r] = true
		run.hostOf[r] = i
	}
	if err := o.readRank0(j, filepath.Join(outs[run.hostOf[0]], "steps.csv"), run); err != nil {
		return nil, err
	}
	return run, nil
}

// readRank0 reads rank 0's per-step figures of j from its steps.csv at
// path into run.
func (o validateOptions) readRank0(j valJob, path string, run *realRun) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("rank 0's records: %w", err)
	}
	defer f.Close()
	if err = o.readSteps(j, f, run); err != nil {
		return fmt.Errorf("rank 0's %s: %w", f.Name(), err)
	}
	return nil
}

// loadJob reads what an earlier run of j measured in dir (--resimulate):
// the placement of its ranks from the topology it wrote (node r is named
// after rank r's host) and rank 0's steps.csv.
func (o validateOptions) loadJob(j valJob, dir string) (*realRun, error) {
	topo, err := sim.LoadTopology(filepath.Join(dir, "topology.yaml"))
	if err != nil {
		return nil, fmt.Errorf("the earlier run's placement: %w", err)
	}
	run := &realRun{hostOf: make([]int, len(topo.Nodes))}
	for r, n := range topo.Nodes {
		h, err := strconv.Atoi(strings.TrimPrefix(n.Name, "h"))
		if err != nil || !strings.HasPrefix(n.Name, "h") {
			return nil, fmt.Errorf("%s: node %d is %q, not a host h0, h1, ...", dir, r, n.Name)
		}
		run.hostOf[r] = h
	}
	if err := o.readRank0(j, filepath.Join(dir, fmt.Sprintf("h%d", run.hostOf[0]), "steps.csv"), run); err != nil {
		return nil, err
	}
	return run, nil
}

// startBedServer starts `slimgrad server` (no auth, no relay: a closed
// bed) on h and returns its NATS URL once it serves, and a function that
// stops it.
func startBedServer(ctx context.Context, h *testbed.Host, exe string) (string, func(), error) {
	cmd := h.Command(ctx, exe, "server", "--no-auth", "--relay", "off", "--listen", h.Addr.String()+":4222")
	cmd.Env = os.Environ()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if m := natsURLRE.FindStringSubmatch(sc.Text()); m != nil {
			go io.Copy(io.Discard, out)
			return m[1], stop, nil
		}
	}
	stop()
	return "", nil, fmt.Errorf("slimgrad server on %s printed no NATS URL: %s", h.Name, lastLines(stderr.String(), 3))
}

// readSteps reads the wall, gradient compute and codec times of j's
// measured steps from a worker's steps.csv into run, and j's steps and
// warm-up. A j of zero steps (--resimulate) has as many as the file's
// records, and skipFor's warm-up.
func (o validateOptions) readSteps(j valJob, r io.Reader, run *realRun) error {
	rows, err := csv.NewReader(r).ReadAll()
	if err != nil {
		return err
	}
	if len(rows) < 2 {
		return errors.New("no records")
	}
	if j.steps == 0 {
		j.steps, j.skip = len(rows)-1, o.skipFor(len(rows)-1)
	}
	run.steps, run.skip = j.steps, j.skip
	var wall, compute, codec []float64
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, name := range []string{"step", "evaluated", "wall_s", "compute_wall_s", "sim_codec_s"} {
		if _, ok := col[name]; !ok {
			return fmt.Errorf("no column %s", name)
		}
	}
	for _, row := range rows[1:] {
		step, err1 := strconv.Atoi(row[col["step"]])
		ev, err2 := strconv.ParseBool(row[col["evaluated"]])
		w, err3 := strconv.ParseFloat(row[col["wall_s"]], 64)
		c, err4 := strconv.ParseFloat(row[col["compute_wall_s"]], 64)
		k, err5 := strconv.ParseFloat(row[col["sim_codec_s"]], 64)
		if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
			return err
		}
		if o.measured(j, step, ev) {
			wall, compute, codec = append(wall, w), append(compute, c), append(codec, k)
		}
	}
	if len(wall) == 0 {
		return errors.New("no step to measure")
	}
	run.wall, run.compute, run.codec = wall, compute, codec
	return nil
}

// topologyYAML is the simulator's topology of c's bed with rank r on host
// hostOf[r]: each node's uplink and downlink are its host's shaped rate
// (the simulation adds each message's headers, o.framing), with the queue
// limit and the burst of its tc tbf as --tbf selects (testbed.Shaping),
// and, since the
// N workers run on this one machine, every node is on one host of --cores
// cores, which their compute and message costs share.
func (o validateOptions) topologyYAML(c valCase, hostOf []int) string {
	n := len(c.Rates)
	var b strings.Builder
	fmt.Fprintf(&b, "# slimgrad validate, case %s: %d hosts (network namespaces) with tc-shaped links; node r is rank r's host.\n", c.Name, n)
	fr := o.framing()
	fmt.Fprintf(&b, "# Links: the shaped rate; a message carries %d bytes of %s framing and %d bytes of headers per packet of up to %d bytes (--goodput %.4f).\n",
		fr.MessageBytes, o.Transport, fr.SegmentBytes, fr.SegmentPayload, o.Goodput)
	fmt.Fprintf(&b, "# Compute: the %d workers share the %d cores of one machine (host: bed, processor sharing).\n", n, o.Cores)
	fmt.Fprintf(&b, "name: validate-%s\nlatency: %s\ndefaults: {host: bed, cores: %d}\nnodes:\n", c.Name, o.Latency, o.Cores)
	if o.Buckets != "none" {
		fmt.Fprintf(&b, "# Token buckets (--tbf %s): the queue limit and burst of each host's tc tbf, in bytes.\n", o.Buckets)
	}
	for _, h := range hostOf {
		bw := strconv.FormatInt(c.Rates[h], 10) + "bit/s"
		burst, limit := testbed.Shaping(c.Rates[h])
		var tbf string
		if o.Buckets == "both" || o.Buckets == "queue" {
			tbf += fmt.Sprintf(", queue: %dB", limit)
		}
		if o.Buckets == "both" || o.Buckets == "burst" {
			tbf += fmt.Sprintf(", burst: %dB", burst)
		}
		fmt.Fprintf(&b, "  - {name: h%d, uplink: %s, downlink: %s%s}\n", h, bw, bw, tbf)
	}
	return b.String()
}

// simulate writes j's topology on c's bed (rank r on host hostOf[r]) into
// dir/topology.yaml and trains j in the simulator on it with calib's codec
// throughputs and the transport's per-message cost, and j.local as each
// step's compute at speed 1, and the transport's framing on the wire
// (o.framing): what `slimgrad sim --topology FILE --calibration FILE
// --transport T` runs, with the job's dense algorithm, but for the framing,
// which `slimgrad sim` does not add.
func (o validateOptions) simulate(ctx context.Context, c valCase, j valJob, hostOf []int, calib *sim.Calibration, dir string) ([]train.Record, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "topology.yaml")
	if err := os.WriteFile(path, []byte(o.topologyYAML(c, hostOf)), 0o644); err != nil {
		return nil, err
	}
	topo, err := sim.LoadTopology(path)
	if err != nil {
		return nil, err
	}
	n := len(c.Rates)
	spec, err := parseOptim(j.method.Optim, j.steps)
	if err != nil {
		return nil, err
	}
	plan, err := j.method.plan(j.steps, o.Seed)
	if err != nil {
		return nil, err
	}
	plan.Sign = spec.Sign
	alg, err := allreduce.ParseAlgorithm(j.algorithm)
	if err != nil {
		return nil, err
	}
	cfg := train.SimConfig{
		Topology: topo,
		Options: &sim.Options{Calibration: calib, Seed: o.Seed, Recipe: j.method.Compress, Transport: o.Transport, MessageCPU: o.MsgModel != "latency",
			LossPenalty: o.LossPenalty, Framing: o.framing(), CoreShare: o.CoreShare},
		Dense:        alg,
		GradFLOP:     train.TrainFLOPs(j.task.Model) * float64(o.Batch),
		FLOPS:        train.DefaultFLOPS,
		GradSeconds:  j.local.Grad,
		LocalSeconds: max(0, j.local.Step-j.local.Grad),
	}
	ex, err := train.NewSim(ctx, n, train.Units(j.task.Model, spec.Flat), plan, cfg)
	if err != nil {
		return nil, err
	}
	res, err := train.Run(ctx, train.Config{Workers: n, Batch: o.Batch, Steps: j.steps, Seed: o.Seed, Split: workload.IID}, j.task, ex, spec, nil)
	if err != nil {
		return nil, err
	}
	return res.Records, nil
}

// writeValidationTable prints the results as a Markdown table and the
// geometric mean of the absolute errors |ratio − 1| of the cases that ran.
func writeValidationTable(w io.Writer, rs []caseResult) {
	fmt.Fprintln(w, "| case | hosts (Mbit/s) | simulated | real median | real mean | ratio | sim local | real grad | sim codec | real codec | sim comm | message cost | load |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	var errs []float64
	within := 0
	for _, r := range rs {
		if r.Err != nil {
			fmt.Fprintf(w, "| %s | %s | failed: %s | | | | | | | | | | |\n", r.Case.Name, ratesList(r.Case.Rates), oneLine(r.Err))
			continue
		}
		e := math.Abs(r.Ratio() - 1)
		errs = append(errs, e)
		if e <= 0.10 {
			within++
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %.3f | %s | %s | %s | %s | %.0f%% | %s | %.1f |\n", r.Case.Name, ratesList(r.Case.Rates),
			fmtDuration(r.Sim), fmtDuration(r.RealMedian), fmtDuration(r.RealMean), r.Ratio(),
			fmtDuration(r.SimLocal), fmtDuration(r.RealGrad), fmtDuration(r.SimCodec), fmtDuration(r.RealCodec), 100*r.SimComm, fmtDuration(r.MsgCost), r.Load)
	}
	if len(errs) == 0 {
		return
	}
	fmt.Fprintf(w, "\ngeometric mean of |ratio-1| over %d cases: %.1f%%; %d of %d within 10%% of the real median\n",
		len(errs), 100*geoMeanAbsErr(errs), within, len(errs))
}

// geoMeanAbsErr is the geometric mean of errs, each floored at 1e-4 (a
// case that matches exactly would make it 0 whatever the others).
func geoMeanAbsErr(errs []float64) float64 {
	var s float64
	for _, e := range errs {
		s += math.Log(max(e, 1e-4))
	}
	return math.Exp(s / float64(len(errs)))
}

// writeValidationCSV writes one row per case, durations in seconds.
func writeValidationCSV(w io.Writer, rs []caseResult) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"case", "hosts", "rates_mbit", "algorithm", "method", "sim_step_s", "real_median_s", "real_mean_s", "ratio",
		"sim_local_s", "real_grad_s", "sim_comm_share", "speed", "message_cost_s", "steps", "load1", "wall_s", "sim_codec_s", "real_codec_s", "error"})
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }
	for _, r := range rs {
		row := []string{r.Case.Name, strconv.Itoa(len(r.Case.Rates)), ratesList(r.Case.Rates), r.Case.Algorithm, r.Case.Method}
		if r.Err != nil {
			row = append(row, "", "", "", "", "", "", "", f(r.Speed), f(r.MsgCost.Seconds()), "", f(r.Load), f(r.Wall.Seconds()), "", "", oneLine(r.Err))
		} else {
			row = append(row, f(r.Sim.Seconds()), f(r.RealMedian.Seconds()), f(r.RealMean.Seconds()), f(r.Ratio()),
				f(r.SimLocal.Seconds()), f(r.RealGrad.Seconds()), f(r.SimComm), f(r.Speed), f(r.MsgCost.Seconds()), strconv.Itoa(r.Steps), f(r.Load), f(r.Wall.Seconds()),
				f(r.SimCodec.Seconds()), f(r.RealCodec.Seconds()), "")
		}
		cw.Write(row)
	}
	cw.Flush()
	return cw.Error()
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func seconds(s float64) time.Duration { return time.Duration(math.Round(s * 1e9)) }

// loadAverage is the one-minute load average, or NaN if unknown.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return math.NaN()
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return math.NaN()
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

// oneLine is err's message on one line.
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " | ") }

// lastLines is the last n non-empty lines of s, joined by " | ".
func lastLines(s string, n int) string {
	var lines []string
	for l := range strings.SplitSeq(strings.TrimSpace(s), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
