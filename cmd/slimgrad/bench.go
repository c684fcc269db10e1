package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/bench"
	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/train"
)

func runBenchCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	codecs := fs.String("codecs", strings.Join(bench.DefaultRecipes, ","), "compressor recipes to measure (\"\" skips the codec and kernel measurements)")
	elems := fs.Int("elems", 1<<22, "float32 elements per codec and kernel measurement (4 Mi = 16 MiB)")
	minTime := fs.Duration("time", 300*time.Millisecond, "minimum measuring time per measurement")
	transports := fs.String("transports", "mem,nats,libp2p,libp2p-insecure", "transports for the all-reduce bus bandwidth and the per-message cost (\"\" skips); also libp2p-insecure-nocrc: security off and bulk pieces without a payload CRC-32C, as Gloo")
	workloads := fs.String("workloads", strings.Join(train.Workloads, ","), "workloads whose gradient compute (forward and backward of one batch) to measure (\"\" skips)")
	gradBatch := fs.Int("grad-batch", 32, "samples per batch of the gradient measurement (the time per sample goes into the calibration)")
	world := fs.Int("world", 4, "ranks of the all-reduce measurement (in this process, over loopback)")
	size := fs.Int64("size", 16<<20, "all-reduce size in bytes")
	simRanks := fs.Int("sim-ranks", 1024, "ranks of the simulator-speed measurement (0 skips)")
	simBytes := fs.Int64("sim-bytes", 100e6, "bytes of the simulated all-reduce")
	out := fs.String("out", "slimgrad-out", "output directory for bench.csv, bench.json and calibration.json")
	calib := fs.String("calibration", "", "where to write the simulator calibration (default OUT/calibration.json)")
	setUsage(fs, stdout, "Usage: slimgrad bench [flags]\n\nMeasures codec throughput (encode, decode, decode-add per recipe), the float32 kernels,\nthe dense all-reduce bus bandwidth and the software cost of a message per transport (round\ntrips of small and large messages between two ranks, fitted to a per-message and a per-byte\ncost), the gradient compute per workload and the simulator's speed, and writes the\ncalibration file that `slimgrad sim --calibration` reads.\n\nFlags:\n")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "slimgrad bench: unexpected arguments %q\n", fs.Args())
		return errUsage
	}
	bo := benchOptions{Codecs: *codecs, Elems: *elems, Time: *minTime, Transports: *transports, World: *world,
		Size: *size, SimRanks: *simRanks, SimBytes: *simBytes, Out: *out, Workloads: *workloads, GradBatch: *gradBatch}
	if err := bo.validate(); err != nil {
		return err
	}
	if _, err := checkOutDir(*out); err != nil {
		return err
	}
	warnIfBusy(stderr)
	var results []bench.Result
	section := func(name string, rs []bench.Result, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Fprintf(stdout, "\n== %s\n", name)
		bench.Table(stdout, rs)
		results = append(results, rs...)
		return nil
	}
	if *codecs != "" {
		rs, err := bench.Codecs(ctx, strings.Split(*codecs, ","), *elems, *minTime)
		if err := section("codecs", rs, err); err != nil {
			return err
		}
		rs, err = bench.Kernels(ctx, *elems, *minTime)
		if err := section("kernels", rs, err); err != nil {
			return err
		}
	}
	if *transports != "" {
		var rs []bench.Result
		for _, tp := range strings.Split(*transports, ",") {
			conns, closeAll, err := bench.Group(ctx, tp, *world)
			if err != nil {
				return fmt.Errorf("transport %s: %w", tp, err)
			}
			r, err := bench.AllReduce(ctx, tp, conns, allreduce.AlgRing, *size, *minTime)
			closeAll()
			if err != nil {
				return err
			}
			rs = append(rs, r)
		}
		if err := section("all-reduce bus bandwidth (ranks in one process, loopback)", rs, nil); err != nil {
			return err
		}
		rs = nil
		for _, tp := range strings.Split(*transports, ",") {
			conns, closeAll, err := bench.Group(ctx, tp, 2)
			if err != nil {
				return fmt.Errorf("transport %s: %w", tp, err)
			}
			r, err := bench.MessageRoundTrips(ctx, tp, conns, bench.MessageSizes, *minTime)
			closeAll()
			if err != nil {
				return err
			}
			rs = append(rs, r...)
		}
		if err := section("message cost (round trips between two ranks in one process, loopback)", rs, nil); err != nil {
			return err
		}
	}
	if *workloads != "" {
		rs, err := bench.Grad(ctx, strings.Split(*workloads, ","), *gradBatch, *minTime)
		if err := section(fmt.Sprintf("gradient compute (forward and backward of a batch of %d, one goroutine)", *gradBatch), rs, err); err != nil {
			return err
		}
	}
	if *simRanks > 0 {
		var rs []bench.Result
		for _, alg := range []allreduce.Algorithm{allreduce.AlgRing, allreduce.AlgTree} {
			r, err := bench.SimSpeed(ctx, alg, *simRanks, *simBytes, *minTime)
			if err != nil {
				return err
			}
			rs = append(rs, r)
		}
		if err := section("simulator speed (size-only)", rs, nil); err != nil {
			return err
		}
	}
	warnSpread(stderr, results)
	if *out == "" {
		return nil
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	rep := bench.NewReport(results)
	files := []string{filepath.Join(*out, "bench.csv"), filepath.Join(*out, "bench.json")}
	if err := writeFile(files[0], func(w io.Writer) error { return bench.WriteCSV(w, results) }); err != nil {
		return err
	}
	if err := writeFile(files[1], rep.WriteJSON); err != nil {
		return err
	}
	if *codecs != "" || *transports != "" || *workloads != "" {
		path := *calib
		if path == "" {
			path = filepath.Join(*out, "calibration.json")
		}
		if err := bench.Calibrate(results, rep.Host).Save(path); err != nil {
			return err
		}
		files = append(files, path)
	}
	fmt.Fprintf(stdout, "\nwrote %s\n", strings.Join(files, ", "))
	return nil
}

// benchOptions are the flags of `slimgrad bench` that validate checks.
type benchOptions struct {
	Codecs, Transports, Out, Workloads string
	Elems, World, SimRanks, GradBatch  int
	Size, SimBytes                     int64
	Time                               time.Duration
}

// validate rejects values that would fail only after minutes of measuring,
// naming the flag.
func (o benchOptions) validate() error {
	for _, f := range []struct {
		flag   string
		v, min int64
	}{
		{"elems", int64(o.Elems), 1}, {"world", int64(o.World), 2}, {"size", o.Size, 4},
		{"sim-ranks", int64(o.SimRanks), 0}, {"sim-bytes", o.SimBytes, 1}, {"grad-batch", int64(o.GradBatch), 1},
	} {
		if f.v < f.min {
			return fmt.Errorf("--%s %d: want at least %d", f.flag, f.v, f.min)
		}
	}
	if o.Time <= 0 {
		return fmt.Errorf("--time %v: want a positive duration", o.Time)
	}
	if o.Codecs != "" {
		for _, r := range strings.Split(o.Codecs, ",") {
			if _, err := compressors.Parse(r); err != nil {
				return fmt.Errorf("--codecs: %w", err)
			}
		}
	}
	if o.Workloads != "" {
		for _, wl := range strings.Split(o.Workloads, ",") {
			if _, err := train.NewModel(wl, 1); err != nil {
				return fmt.Errorf("--workloads: %w", err)
			}
		}
	}
	if o.Transports != "" {
		for _, tp := range strings.Split(o.Transports, ",") {
			if !slices.Contains(bench.Transports, tp) {
				return fmt.Errorf("--transports: unknown transport %q (want some of %s)", tp, strings.Join(bench.Transports, ", "))
			}
		}
	}
	return nil
}

// busyLoad is the one-minute load average per core above which bench warns
// that its measurements, and so a calibration, will come out low.
const busyLoad = 0.5

// warnIfBusy warns on w when the machine is busy: measured throughputs then
// fall with the load (a bf16 decode-add was once measured at 16.6 MB/s).
func warnIfBusy(w io.Writer) {
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprint(w, busyWarning(string(b), runtime.NumCPU()))
	}
}

// busyWarning returns bench's warning line for the contents of
// /proc/loadavg on a machine of cores cores, or "" when the one-minute load
// is below busyLoad per core or cannot be read.
func busyWarning(loadavg string, cores int) string {
	fields := strings.Fields(loadavg)
	if len(fields) == 0 {
		return ""
	}
	load, err := strconv.ParseFloat(fields[0], 64)
	if err != nil || load <= busyLoad*float64(cores) {
		return ""
	}
	return fmt.Sprintf("slimgrad bench: warning: the machine is busy (load average %.2f on %d cores): measurements, and the calibration written from them, will be low; measure on a quiet machine\n", load, cores)
}

// wideSpread is the spread (bench.Result.Spread) above which a measurement
// is reported as unsteady.
const wideSpread = 1.5

// warnSpread warns on w about the measurements whose repetitions disagreed
// by more than wideSpread.
func warnSpread(w io.Writer, rs []bench.Result) {
	var wide []string
	for _, r := range rs {
		if r.Spread > wideSpread {
			wide = append(wide, fmt.Sprintf("%s (%.1f×)", r.Name, r.Spread))
		}
	}
	if len(wide) > 0 {
		fmt.Fprintf(w, "slimgrad bench: warning: %d measurements varied by more than %.1f× between repetitions, so the machine was busy or throttled while measuring: %s\n", len(wide), wideSpread, strings.Join(wide, ", "))
	}
}
