//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || ppc64 || ppc64le || riscv64 || s390x)

package testport

import (
	"net"
	"testing"
	"time"
)

// Reserve picks a free loopback port and remembers it: here the port is
// not held, and another socket could take it before Listen.
func Reserve(tb testing.TB) *Port {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return &Port{addr: ln.Addr().String()}
}

// Listen returns a new listener on the port, retrying for a while should
// another socket hold it meanwhile.
func (p *Port) Listen() (net.Listener, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ln, err := net.Listen("tcp", p.addr)
		if err == nil || time.Now().After(deadline) {
			return ln, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
