//go:build linux && (386 || amd64 || arm || arm64 || loong64 || ppc64 || ppc64le || riscv64 || s390x)

package dbwait

import (
	"context"
	"net"
	"strconv"
	"syscall"
	"testing"
)

// soReusePort is SO_REUSEPORT on these architectures (the syscall package does not define it).
const soReusePort = 0xf

// reservedPort (a copy of transport/tcp's) holds a loopback port for a whole test without listening on it: connections to
// it are refused, no other socket can take it (a listener of another test, or the local end
// of an outgoing connection), and listen opens a listener on it whenever the test wants its
// server (back). Tests that stop a server and start one again at the same address use it
// rather than closing a listener and hoping that the port is still free when they listen again.
type reservedPort struct {
	addr string
}

func reservePort(t testing.TB) *reservedPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	// SO_REUSEPORT lets the test's own listeners bind the port too; a socket without it cannot.
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, soReusePort, 1); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return &reservedPort{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))}
}

// listen returns a new listener on the reserved port.
func (p *reservedPort) listen() (net.Listener, error) {
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
