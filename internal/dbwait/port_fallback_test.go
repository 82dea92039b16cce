//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || ppc64 || ppc64le || riscv64 || s390x)

package dbwait

import (
	"net"
	"testing"
	"time"
)

// reservedPort: see port_reserve_test.go. Elsewhere the port is only remembered after its
// listener was closed, and listen retries for a while should another socket hold it meanwhile.
type reservedPort struct {
	addr string
}

func reservePort(t testing.TB) *reservedPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return &reservedPort{addr: ln.Addr().String()}
}

func (p *reservedPort) listen() (net.Listener, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ln, err := net.Listen("tcp", p.addr)
		if err == nil || time.Now().After(deadline) {
			return ln, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
