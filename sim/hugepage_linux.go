package sim

import (
	"syscall"
	"unsafe"
)

const hugePage = 2 << 20

// adviseHuge asks the kernel to back the 2 MiB-aligned interior of b with
// transparent huge pages (madvise MADV_HUGEPAGE): the simulator's
// lock-step passes over thousands of ranks' state miss the TLB less. It is
// a hint: errors are ignored, and pages already faulted in stay small until
// the kernel collapses them. Blocks under two huge pages are left alone.
func adviseHuge(b []byte) {
	if len(b) < 2*hugePage {
		return
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo := (p + hugePage - 1) &^ (hugePage - 1)
	hi := (p + uintptr(len(b))) &^ (hugePage - 1)
	if hi <= lo {
		return
	}
	_ = syscall.Madvise(b[lo-p:hi-p], 14 /* MADV_HUGEPAGE */)
}
