package durable_test

import (
	"database/sql"
	"strings"
	"testing"

	"github.com/durable-go/durable"
)

// TestNodePeerAddr: NewNode refuses a peer address it could never dial (no
// port, no host, not host:port), with an error that names the peer and
// says what is missing; addresses with a host and a port pass, without a
// lookup.
func TestNodePeerAddr(t *testing.T) {
	_, d := openSQLite(t)
	for _, c := range []struct {
		addr string
		want []string // substrings of the error; nil: NewNode succeeds
	}{
		{"localhost", []string{`peer "billing"`, `"localhost" has no port`, `"localhost:7400"`}},
		{"10.0.0.7", []string{`peer "billing"`, "has no port"}},
		{"localhost:", []string{`peer "billing"`, "has no port"}},
		{"[::1]", []string{`peer "billing"`, "has no port", `"[::1]:7400"`}},
		{":7400", []string{`peer "billing"`, `":7400" has no host`}},
		{"::1", []string{`peer "billing"`, "is not host:port", "brackets"}},
		{"", []string{`peer "billing" has no Addr`}},
		{"localhost:7400", nil},
		{"127.0.0.1:7400", nil},
		{"[::1]:7400", nil},
		{"billing.invalid:7400", nil}, // NewNode does no I/O: the name is looked up when connecting
		{"billing:http", nil},         // a service name is a port to net.Dial
	} {
		n, err := durable.NewNode(d, &durable.Config[*sql.Tx]{
			Name: "orders", Secret: secret, Peers: map[string]durable.Peer{"billing": {Addr: c.addr}},
		})
		if c.want == nil {
			if err != nil {
				t.Errorf("Addr %q: NewNode = %v, want it accepted", c.addr, err)
			} else if n.Relay() == nil {
				t.Errorf("Addr %q: the node has no relay", c.addr)
			}
			continue
		}
		if err == nil {
			t.Errorf("Addr %q: NewNode succeeded, want an error", c.addr)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Addr %q: NewNode = %v, want an error containing %q", c.addr, err, w)
			}
		}
	}
}
