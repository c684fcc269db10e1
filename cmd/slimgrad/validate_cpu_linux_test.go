package main

import (
	"math"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// processCPU is the CPU time of the whole test process so far.
func processCPU(t *testing.T) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

// TestValidateThreadCPU: threadCPU counts the calling thread's CPU time,
// not the process's or wall time: it advances with the process's CPU time
// while the thread spins, and hardly at all while it waits for another
// goroutine to spin. Each spin lasts until the process has used 20 ms of
// CPU, however long a loaded machine takes to give it that, so the test
// does not depend on the load.
func TestValidateThreadCPU(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var sink float64
	spin := func() {
		x := 1.0
		for p0 := processCPU(t); processCPU(t)-p0 < 20*time.Millisecond; {
			for range 1000 {
				x = math.Sqrt(x + 1)
			}
		}
		sink += x
	}
	c0, err := threadCPU()
	if err != nil {
		t.Fatal(err)
	}
	p0 := processCPU(t)
	done := make(chan struct{})
	go func() { spin(); close(done) }()
	<-done
	c1, _ := threadCPU()
	p1 := processCPU(t)
	spin()
	c2, _ := threadCPU()
	p2 := processCPU(t)
	if waiting, proc := c1-c0, p1-p0; waiting > proc/4 {
		t.Errorf("the thread used %v of CPU while it waited for another goroutine that used %v", waiting, proc)
	}
	if spinning, proc := c2-c1, p2-p1; spinning < proc/2 {
		t.Errorf("the thread used %v of CPU while it spun, of the process's %v", spinning, proc)
	}
	_ = sink
}
