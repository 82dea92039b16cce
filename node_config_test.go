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

// TestNodeConfigPointer: NewNode refuses a nil *Config (Name is required), and
// works on a copy of the one it is given: the defaults it fills in do not show
// in the caller's Config.
func TestNodeConfigPointer(t *testing.T) {
	_, d := openSQLite(t)
	if _, err := durable.NewNode[*sql.Tx](d, nil); err == nil || !strings.Contains(err.Error(), "Name is required") {
		t.Errorf("NewNode(d, nil) = %v, want an error saying Name is required", err)
	}
	cfg := &durable.Config[*sql.Tx]{Name: "orders", Secret: secret, Peers: map[string]durable.Peer{"billing": {Addr: "localhost:7400"}}}
	if _, err := durable.NewNode(d, cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.ShutdownTimeout != 0 || cfg.Heartbeat != 0 || cfg.NodeTimeout != 0 || cfg.Outbox.Destinations != nil ||
		cfg.Client.NodeID != "" || cfg.Inbox.Name != "" || cfg.Relay.Outbox != nil {
		t.Errorf("NewNode changed the caller's Config: %+v", cfg)
	}
}
