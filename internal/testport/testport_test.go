package testport

import (
	"net"
	"testing"
)

func TestReserve(t *testing.T) {
	p := Reserve(t)
	// Listen, serve one connection, stop, and listen again.
	for i := range 2 {
		ln, err := p.Listen()
		if err != nil {
			t.Fatalf("listen %d: %v", i, err)
		}
		if ln.Addr().String() != p.Addr() {
			t.Fatalf("listening on %s, want %s", ln.Addr(), p.Addr())
		}
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatalf("accept %d: %v", i, err)
		}
		s.Close()
		c.Close()
		ln.Close()
	}
}
