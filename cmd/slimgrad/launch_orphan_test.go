package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLaunchWorkersDieWithLauncher: when launch is killed (SIGKILL, so it
// cannot stop them itself), its workers do not train on as orphans: every one
// is gone within seconds, over libp2p and over NATS.
func TestLaunchWorkersDieWithLauncher(t *testing.T) {
	if testing.Short() {
		t.Skip("starts OS processes")
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("needs /proc to find the workers")
	}
	for _, tp := range []string{"libp2p", "nats"} {
		t.Run(tp, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "launch", "-n", "2", "--transport", tp,
				"--workload", "logistic", "--steps", "1000000", "--eval-every", "0", "--print-every", "1000000", "--out", "")
			cmd.Env = append(os.Environ(), "GO_WANT_HELPER_PROCESS=1")
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			// Wait until the job trains: rank 0's line of step 0 arrives.
			// No line follows (a worker writing into the dead launcher's
			// pipe would die of SIGPIPE, which is not what is tested here).
			sc := bufio.NewScanner(out)
			steps := 0
			for steps < 1 && sc.Scan() {
				if f := strings.Fields(sc.Text()); len(f) > 0 {
					if _, err := strconv.Atoi(f[0]); err == nil {
						steps++
					}
				}
			}
			if steps < 1 {
				t.Fatalf("the job never trained (scan: %v)", sc.Err())
			}
			workers := childrenOf(t, cmd.Process.Pid)
			if len(workers) != 2 {
				t.Fatalf("launch has %d child processes, want 2", len(workers))
			}
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			go io.Copy(io.Discard, out)
			cmd.Wait()
			deadline := time.Now().Add(10 * time.Second)
			for _, pid := range workers {
				for alive(pid) {
					if time.Now().After(deadline) {
						syscall.Kill(pid, syscall.SIGKILL)
						t.Fatalf("worker %d still runs 10 s after its launcher was killed", pid)
					}
					time.Sleep(20 * time.Millisecond) // polling a process that is not ours to wait for
				}
			}
		})
	}
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			child, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
			out = append(out, child)
		}
	}
	return out
}

// alive reports whether pid runs (a zombie waiting to be reaped is dead).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// TestStopOnEOF: a worker started by launch stops when its stdin, the pipe
// from the launcher, closes: the context ends with errLauncherGone.
func TestStopOnEOF(t *testing.T) {
	r, w := io.Pipe()
	ctx := stopOnEOF(context.Background(), r)
	select {
	case <-ctx.Done():
		t.Fatal("stopped while the launcher is alive")
	default:
	}
	w.Close()
	<-ctx.Done()
	if !errors.Is(context.Cause(ctx), errLauncherGone) {
		t.Fatalf("cause %v, want errLauncherGone", context.Cause(ctx))
	}
}

// TestLaunchFailureNamesFirst: launch reports the worker that failed first
// and why, then that it stopped the others, not one "signal: killed" each.
func TestLaunchFailureNamesFirst(t *testing.T) {
	killed := errors.New("signal: killed")
	errs := []error{killed, errors.New("exit status 1"), killed, nil}
	last := []string{"", `slimgrad worker: joining job j: rank 1 is already taken`, "", ""}
	err := launchFailure(context.Background(), errs, last, 1)
	want := "worker 1 failed first (exit status 1: slimgrad worker: joining job j: rank 1 is already taken); stopped the other 2 workers"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	if err := launchFailure(context.Background(), make([]error, 3), last, -1); err != nil {
		t.Fatalf("no failure: %v", err)
	}
}
