//go:build !linux

package main

import (
	"errors"
	"time"
)

// threadCPUSupported reports whether threadCPU works on this system.
const threadCPUSupported = false

// threadCPU is the calling thread's CPU time where the system has a clock
// for it; here it has none.
func threadCPU() (time.Duration, error) {
	return 0, errors.New("no per-thread CPU clock on this system (--local company needs Linux)")
}
