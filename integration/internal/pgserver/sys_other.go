//go:build unix && !linux

package pgserver

import (
	"errors"
	"syscall"
	"time"
)

// sysProcAttr puts the server in its own process group (so Kill reaches
// every backend) and runs it as cred.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}

// waitGroupGone waits until process group pgid has no process left (zombies
// included, which an init that reaps will remove).
func waitGroupGone(pgid int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}
