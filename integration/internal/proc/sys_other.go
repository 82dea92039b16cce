//go:build unix && !linux

package proc

import "syscall"

// sysProcAttr runs the child in its own process group.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
