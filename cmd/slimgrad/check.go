package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/slimgrad/slimgrad/compressors"
	"github.com/slimgrad/slimgrad/errorfeedback"
	"github.com/slimgrad/slimgrad/worker"
)

// checkRecipes parses every recipe of m (compressor, error feedback,
// optimizer for a run of steps steps), so that a bad recipe fails before any
// method has trained rather than when its turn comes. Each error names the
// flag the recipe came from.
func (m method) checkRecipes(steps int) error {
	if _, err := compressors.Parse(m.Compress); err != nil {
		return fmt.Errorf("--compress %q: %w", m.Compress, err)
	}
	if _, err := errorfeedback.Parse(m.EF); err != nil {
		return fmt.Errorf("--ef %q: %w", m.EF, err)
	}
	if _, err := parseOptim(m.Optim, steps); err != nil {
		return fmt.Errorf("--optim %q: %w", m.Optim, err)
	}
	return m.Outer.check(steps)
}

// checkCustomFlags rejects --compress/--ef combinations that would run but
// mean nothing: error feedback (other than DGC's momentum correction) around
// the lossless "none" codec has no error to feed back.
func checkCustomFlags(compress, ef string) error {
	if ef == "" || (compress != "" && compress != "none") {
		return nil
	}
	r, err := errorfeedback.Parse(ef)
	if err != nil {
		return fmt.Errorf("--ef %q: %w", ef, err)
	}
	switch r.Kind {
	case errorfeedback.KindNone, errorfeedback.KindDGC:
		return nil
	}
	return fmt.Errorf("--ef %s needs --compress: error feedback corrects a lossy codec, and without --compress every layer is sent dense (e.g. --compress topk:0.01 --ef %s)", ef, ef)
}

// checkOutDir verifies, before any work, that results can be written under
// dir: dir is a directory (or does not exist yet) and its nearest existing
// ancestor accepts new files. It creates nothing that it does not remove. It
// returns whether dir already holds a run's results, which the run replaces.
func checkOutDir(dir string) (replaces bool, err error) {
	if dir == "" {
		return false, nil
	}
	probe := filepath.Clean(dir)
	for {
		fi, err := os.Stat(probe)
		if err == nil {
			if !fi.IsDir() {
				return false, fmt.Errorf("--out %s: %s is not a directory", dir, probe)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("--out %s: %w", dir, err)
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			return false, fmt.Errorf("--out %s: no existing parent directory", dir)
		}
		probe = parent
	}
	f, err := os.CreateTemp(probe, ".slimgrad-write-check-*")
	if err != nil {
		return false, fmt.Errorf("--out %s: cannot write there: %w", dir, unwrapPathError(err))
	}
	f.Close()
	os.Remove(f.Name())
	for _, name := range []string{"steps.csv", "summary.txt"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return true, nil
		}
	}
	return false, nil
}

// unwrapPathError drops the temporary file's name from a *fs.PathError.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// flagError is err, for the value of --flag, without a library's package
// prefix ("sim: "): a CLI error reads "slimgrad sim: --topology: topology
// x.yaml:3: ..." rather than "slimgrad sim: sim: topology ...". It unwraps to
// err.
func flagError(flag string, err error) error {
	msg := err.Error()
	if i := strings.Index(msg, ": "); i > 0 && !strings.ContainsAny(msg[:i], " /.") {
		msg = msg[i+2:]
	}
	return &cliError{msg: "--" + flag + ": " + msg, err: err}
}

// cliError is an error with a message rewritten for the command line.
type cliError struct {
	msg string
	err error
}

func (e *cliError) Error() string { return e.msg }
func (e *cliError) Unwrap() error { return e.err }

// nanPolicy is the --nan-policy flag of sim, launch and worker: a
// worker.NaNPolicy by its name.
type nanPolicy struct{ p worker.NaNPolicy }

func (f *nanPolicy) String() string { return f.p.String() }

func (f *nanPolicy) Set(s string) (err error) {
	f.p, err = worker.ParseNaNPolicy(s)
	return err
}

const nanPolicyUsage = "what a step does when some worker's gradient holds a NaN or Inf, or a reduced format overflows: error (stop the run, naming the step, layer and workers), skip (every worker skips the update; counted in the skipped column) or ignore (exchange it as it is)"
