package main

import (
	"bytes"
	"context"
	"errors"
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
