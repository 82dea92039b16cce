// Package testport reserves loopback TCP ports for tests. It is imported by
// tests only.
//
// A test that stops a server and starts one again at the same address, or
// that needs an address where connections are refused, reserves a port with
// Reserve instead of closing a listener and hoping that the port is still
// free when it listens again. On Linux (most architectures) the port stays bound for
// the whole test without listening: connections to it are refused, no
// other socket can take it (a listener of another test, or the local end of
// an outgoing connection), and Listen opens a listener on it whenever the
// test wants its server (back). Elsewhere the port is only remembered after
// its listener was closed.
package testport

// Port is a loopback port reserved by Reserve until the end of its test.
type Port struct {
	addr string
}

// Addr returns the port's address, "127.0.0.1:port".
func (p *Port) Addr() string { return p.addr }
