//go:build unix

package train

import (
	"syscall"
	"time"
)

// processCPU is the CPU time, user and system, that this process has used
// (getrusage RUSAGE_SELF), or 0 if the system does not say.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
