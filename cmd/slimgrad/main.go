// Command slimgrad runs gradient-compression scenarios: `slimgrad sim` trains N
// virtual workers on a workload and reports, per step, the loss, the bytes on the
// wire and the bytes saved against a dense fp32 ring all-reduce, then a summary
// table, a per-step CSV/JSONL and PNG plots.
//
// Usage:
//
//	slimgrad sim [flags]      simulate a training scenario (default: 8 workers, MNIST MLP)
//	slimgrad launch -n 4      train with 4 worker processes over NATS (or --transport libp2p)
//	slimgrad worker [flags]   one process of a multi-process job
//	slimgrad server [flags]   NATS server and libp2p relay for workers on several machines
//	slimgrad bench            measure this machine and write the simulator's calibration
//	slimgrad help [command]   show help
//go:generate go run ../../internal/readme -readme ../../README.md

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"sim", "train N virtual workers with gradient compression and report bytes, loss and plots", runSimCommand},
		{"launch", "start N worker processes on this machine that train together over NATS or libp2p", runLaunchCommand},
		{"worker", "one process of a multi-process training job (started by launch, or by hand)", runWorkerCommand},
		{"server", "a job's meeting point on a reachable host: NATS server and libp2p relay for workers on other machines", runServerCommand},
		{"bench", "measure codecs, kernels, transports and the simulator; write the simulator's calibration", runBenchCommand},
		{"validate", "check the simulator against real shaped links: real workers in network namespaces vs sim (root)", runValidateCommand},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "slimgrad: gradient compression for data-parallel training, simulated or real\n\nUsage:\n  slimgrad <command> [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun `slimgrad <command> -h` for the flags of a command.\n")
}

// run dispatches a command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "--help" {
		if len(args) > 1 {
			name, args = args[1], []string{args[1], "-h"}
		} else {
			usage(stdout)
			return 0
		}
	}
	for _, c := range commands() {
		if c.name == name {
			err := c.run(ctx, args[1:], stdout, stderr)
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errUsage):
				return 2
			}
			fmt.Fprintf(stderr, "slimgrad %s: %v\n", name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "slimgrad: unknown command %q\n\n", name)
	usage(stderr)
	return 2
}

// errUsage marks a command-line error that the flag package already reported.
var errUsage = errors.New("usage error")

// setUsage makes fs's usage message header followed by its flags. It is
// printed on help (stdout, as `slimgrad -h` does) only for -h; a bad flag gets
// the flag package's one-line error on fs's output and no usage dump.
func setUsage(fs *flag.FlagSet, help io.Writer, header string) {
	fs.Usage = func() {
		fmt.Fprint(help, header)
		out := fs.Output()
		fs.SetOutput(help)
		fs.PrintDefaults()
		fs.SetOutput(out)
	}
}

// parseFlags parses args into fs, a flag.ContinueOnError set: it returns
// flag.ErrHelp (after printing the usage set by setUsage) for -h, and errUsage
// for any other error, which the flag package has already reported in one
// line.
func parseFlags(fs *flag.FlagSet, args []string) error {
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(out)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage()
			return err
		}
		fmt.Fprintf(out, "slimgrad %s: %v\n", fs.Name(), err)
		return errUsage
	}
	return nil
}

// newLogger returns a slog text logger on w at the given level name.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("bad --log level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
