package main

import (
	"bytes"
	"context"
	"errors"
	"math"
	"runtime/debug"
	"strings"
	"testing"
)

func TestParseMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		bad  bool
	}{
		{in: "off"}, {in: "0"}, {in: "8GiB", want: 8 << 30}, {in: "500MB", want: 500e6},
		{in: "12XB", bad: true}, {in: "-3GiB", bad: true}, {in: "lots", bad: true},
	} {
		got, err := parseMemoryLimit(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("parseMemoryLimit(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.bad)
		}
	}
	if avail, err := memAvailable(); err == nil {
		got, err := parseMemoryLimit("auto")
		if err != nil || got == 0 || got > avail {
			t.Errorf("auto = %d, %v with %d bytes available", got, err, avail)
		}
	}
}

// TestMemoryGuardStopsRun: a run that would need gigabytes (4096 simulated
// ranks: programs grow as workers²) stops with the guard's error once it
// holds more than --max-memory, instead of exhausting the machine.
func TestMemoryGuardStopsRun(t *testing.T) {
	for _, args := range [][]string{
		{"--size-only", "--workers", "4096"},
		{"--workers", "3000", "--steps", "2"},
	} {
		o := simOptionsFor(t, append(args, "--max-memory", "64MiB", "--out", "", "--progress", "off", "--plots=false"))
		_, err := runSim(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{})
		if !errors.Is(err, errMemory) || !strings.Contains(err.Error(), "--max-memory") {
			t.Errorf("%v: err = %v, want the memory guard's error", args, err)
		}
	}
}

// TestSizeOnlyGC: a size-only run collects at sizeOnlyGOGC with a soft
// limit of 90% of the memory guard's, keeps a GOGC or GOMEMLIMIT the user
// set, and restores the previous settings after.
func TestSizeOnlyGC(t *testing.T) {
	gc0 := debug.SetGCPercent(100)
	defer debug.SetGCPercent(gc0)
	mem0 := debug.SetMemoryLimit(math.MaxInt64)
	defer debug.SetMemoryLimit(mem0)
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	restore := sizeOnlyGC(10 << 30)
	if gc, mem := debug.SetGCPercent(-1), debug.SetMemoryLimit(-1); gc != sizeOnlyGOGC || mem != 9<<30 {
		t.Errorf("during a size-only run: GC percent %d, memory limit %d; want %d, %d", gc, mem, sizeOnlyGOGC, 9<<30)
	}
	debug.SetGCPercent(sizeOnlyGOGC)
	restore()
	if gc, mem := debug.SetGCPercent(100), debug.SetMemoryLimit(-1); gc != 100 || mem != math.MaxInt64 {
		t.Errorf("after: GC percent %d, memory limit %d; want 100, no limit", gc, mem)
	}
	t.Setenv("GOGC", "200")
	t.Setenv("GOMEMLIMIT", "5GiB")
	restore = sizeOnlyGC(10 << 30)
	if gc, mem := debug.SetGCPercent(100), debug.SetMemoryLimit(-1); gc != 100 || mem != math.MaxInt64 {
		t.Errorf("with GOGC and GOMEMLIMIT set: GC percent %d, memory limit %d; want them left alone", gc, mem)
	}
	restore()
}
