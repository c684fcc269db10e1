//go:build !linux

package main

import "os/exec"

// dieWithParent does nothing where the kernel has no parent-death signal;
// the worker still stops when its stdin reaches EOF (envWatchStdin).
func dieWithParent(cmd *exec.Cmd) {}
