//go:build linux && (386 || amd64 || arm || arm64 || loong64 || ppc64 || ppc64le || riscv64 || s390x)

package testport

import (
	"net"
	"testing"
)

// TestReserveBound: here the port stays bound without listening, so it is
// refused and not handed out again.
func TestReserveBound(t *testing.T) {
	p := Reserve(t)
	if c, err := net.Dial("tcp", p.Addr()); err == nil {
		c.Close()
		t.Fatalf("dialing the reserved port %s succeeded", p.Addr())
	}
	if q := Reserve(t); q.Addr() == p.Addr() {
		t.Fatalf("two reservations of %s", p.Addr())
	}
	ln, err := p.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	// Refused again once the listener is closed.
	if c, err := net.Dial("tcp", p.Addr()); err == nil {
		c.Close()
		t.Fatalf("dialing the reserved port %s succeeded after its listener closed", p.Addr())
	}
}
