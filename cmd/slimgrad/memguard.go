package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// errMemory is the cause of a run stopped by its memory limit.
var errMemory = errors.New("memory limit reached")

// parseMemoryLimit reads --max-memory: "auto" (90% of the memory the
// system has available now; no limit where that is unknown), "0" or "off"
// (no limit), or a size such as 8GiB or 500MB.
func parseMemoryLimit(s string) (uint64, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "auto":
		avail, err := memAvailable()
		if err != nil {
			return 0, nil
		}
		return avail / 10 * 9, nil
	case "0", "off", "none":
		return 0, nil
	}
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("--max-memory %q: want auto, off or a size such as 8GiB or 500MB", s)
	}
	return n, nil
}

// memAvailable is MemAvailable from /proc/meminfo, in bytes.
func memAvailable() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/meminfo: %w", err)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("/proc/meminfo: no MemAvailable")
}

// runtimeMemory is the memory the Go runtime holds from the system (mapped
// and not returned), in bytes.
func runtimeMemory(s []rtmetrics.Sample) uint64 {
	rtmetrics.Read(s)
	total, released := s[0].Value.Uint64(), s[1].Value.Uint64()
	if released > total {
		return 0
	}
	return total - released
}

// guardMemory returns a context that is cancelled, with a cause wrapping
// errMemory, as soon as the process holds more than limit bytes (checked
// every interval), so that a run too large for the machine ends with an
// error instead of exhausting the system's memory. limit 0 disables the
// guard. The returned stop function releases the watcher; it must be called.
func guardMemory(ctx context.Context, limit uint64, interval time.Duration) (context.Context, func()) {
	if limit == 0 {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		s := []rtmetrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if m := runtimeMemory(s); m > limit {
				cancel(fmt.Errorf("%w: the run holds %s, above --max-memory %s (simulated programs grow as workers², training state as workers × parameters): use fewer --workers or raise --max-memory",
					errMemory, humanize.IBytes(m), humanize.IBytes(limit)))
				return
			}
			select {
			case <-t.C:
			case <-done:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return ctx, func() {
		close(done)
		cancel(nil)
	}
}

// memoryCause replaces err by the memory guard's cause when the guard
// stopped the run (err is then a context error).
func memoryCause(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil {
		return err
	}
	if cause := context.Cause(ctx); errors.Is(cause, errMemory) {
		return cause
	}
	return err
}

// sizeOnlyGOGC is the GC percent of a size-only run (unless GOGC is set):
// the per-message simulator's memory is a few large pointer-free slices
// that grow by doubling (the event queue's buckets, flows, connection
// queues), so collecting more often costs little CPU, while the default of
// 100 lets the heap reach twice what is live (a 2048-rank run held 2–3×).
const sizeOnlyGOGC = 50

// sizeOnlyGC sets the garbage collector for a size-only run and returns
// the function that restores the previous settings: GC percent sizeOnlyGOGC
// unless the GOGC environment variable is set, and, with a memory guard of
// limit bytes (guardMemory; 0: none) and no GOMEMLIMIT, a soft memory limit
// of 90% of it, so that the collector works harder before the guard stops
// the run for memory that is garbage rather than live.
func sizeOnlyGC(limit uint64) (restore func()) {
	gc, mem := -2, int64(-1)
	if os.Getenv("GOGC") == "" {
		gc = debug.SetGCPercent(sizeOnlyGOGC)
	}
	if limit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		mem = debug.SetMemoryLimit(int64(min(limit/10*9, math.MaxInt64)))
	}
	return func() {
		if gc != -2 {
			debug.SetGCPercent(gc)
		}
		if mem >= 0 {
			debug.SetMemoryLimit(mem)
		}
	}
}
