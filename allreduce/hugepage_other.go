//go:build !linux

package allreduce

import "unsafe"

func adviseHuge(p unsafe.Pointer, n uintptr) {}
