//go:build linux

package main

import (
	"time"

	"golang.org/x/sys/unix"
)

// threadCPUSupported reports whether threadCPU works on this system.
const threadCPUSupported = true

// threadCPU is the CPU time that the calling OS thread has used
// (CLOCK_THREAD_CPUTIME_ID). The caller must hold its thread
// (runtime.LockOSThread) between two readings for their difference to be
// its own goroutine's.
func threadCPU() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0, err
	}
	return time.Duration(ts.Nano()), nil
}
