package proc

import "syscall"

// sysProcAttr runs the child in its own process group and has the kernel
// kill it if the test binary dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
