package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/slimgrad/slimgrad/allreduce"
	"github.com/slimgrad/slimgrad/bench"
)

func runBenchCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	codecs := fs.String("codecs", strings.Join(bench.DefaultRecipes, ","), "compressor recipes to measure (\"\" skips the codec and kernel measurements)")
	elems := fs.Int("elems", 1<<22, "float32 elements per codec and kernel measurement (4 Mi = 16 MiB)")
	minTime := fs.Duration("time", 300*time.Millisecond, "minimum measuring time per measurement")
	transports := fs.String("transports", "mem,nats,libp2p,libp2p-insecure", "transports for the all-reduce bus bandwidth (\"\" skips)")
	world := fs.Int("world", 4, "ranks of the all-reduce measurement (in this process, over loopback)")
	size := fs.Int64("size", 16<<20, "all-reduce size in bytes")
	simRanks := fs.Int("sim-ranks", 1024, "ranks of the simulator-speed measurement (0 skips)")
	simBytes := fs.Int64("sim-bytes", 100e6, "bytes of the simulated all-reduce")
	out := fs.String("out", "slimgrad-out", "output directory for bench.csv, bench.json and calibration.json")
	calib := fs.String("calibration", "", "where to write the simulator calibration (default OUT/calibration.json)")
	setUsage(fs, stdout, "Usage: slimgrad bench [flags]\n\nMeasures codec throughput (encode, decode, decode-add per recipe), the float32 kernels,\nthe dense all-reduce bus bandwidth per transport and the simulator's speed, and writes\nthe calibration file that `slimgrad sim --calibration` reads.\n\nFlags:\n")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
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
	if *codecs != "" {
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
