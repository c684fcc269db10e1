package allreduce

import (
	"syscall"
	"unsafe"
)

const hugePage = 2 << 20

// adviseHuge asks the kernel to back the 2 MiB-aligned interior of
// [p, p+n) with transparent huge pages (madvise MADV_HUGEPAGE). It is a hint:
// errors are ignored, and pages already faulted in stay small until the
// kernel collapses them.
func adviseHuge(p unsafe.Pointer, n uintptr) {
	lo := (uintptr(p) + hugePage - 1) &^ (hugePage - 1)
	hi := (uintptr(p) + n) &^ (hugePage - 1)
	if hi <= lo {
		return
	}
	_ = syscall.Madvise(unsafe.Slice((*byte)(unsafe.Add(p, lo-uintptr(p))), hi-lo), 14 /* MADV_HUGEPAGE */)
}
