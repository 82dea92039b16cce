//go:build linux && (386 || amd64 || arm || arm64 || loong64 || ppc64 || ppc64le || riscv64 || s390x)

package testport

import (
	"context"
	"net"
	"strconv"
	"syscall"
	"testing"
)

// soReusePort is SO_REUSEPORT on these architectures (the syscall package does not define it).
const soReusePort = 0xf

// Reserve reserves a loopback port until tb ends: a socket bound to it, not
// listening, closed at cleanup. Connections to the port are refused until
// Listen opens a listener on it.
func Reserve(tb testing.TB) *Port {
	tb.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { syscall.Close(fd) })
	// SO_REUSEPORT lets the test's own listeners bind the port too; a socket without it cannot.
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, soReusePort, 1); err != nil {
		tb.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		tb.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		tb.Fatal(err)
	}
	return &Port{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))}
}

// Listen returns a new listener on the reserved port. It may be called
// again after the previous listener was closed.
func (p *Port) Listen() (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soReusePort, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	return lc.Listen(context.Background(), "tcp", p.addr)
}
