package main

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel send cmd's process SIGKILL when the thread
// that started it exits, which (Go never retires the threads of unlocked
// goroutines) is when this process dies, however it dies.
func dieWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
