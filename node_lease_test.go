package durable_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/outbox"
)

// handled returns a handler that passes the id of each message it is given
// to the returned channel (dropping ids nobody waits for).
func handled() (func(context.Context, *sql.Tx, *inbox.Message) error, chan string) {
	ids := make(chan string, 16)
	return func(_ context.Context, _ *sql.Tx, m *inbox.Message) error {
		select {
		case ids <- m.ID:
		default:
		}
		return nil
	}, ids
}

// receive waits for the id of a handled message, for at most a minute (a
// bound on a hang, not on the machine's speed).
func receive(t *testing.T, ids <-chan string, what string) string {
	t.Helper()
	select {
	case id := <-ids:
		return id
	case <-time.After(time.Minute):
		t.Fatalf("timed out after 1m waiting for %s", what)
		return ""
	}
}

// enqueueOne enqueues one message to billing in a committed transaction of
// db and returns it.
func enqueueOne(t *testing.T, db *sql.DB, n *durable.Node[*sql.Tx]) *outbox.Message {
	t.Helper()
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := &outbox.Message{Destination: "billing", Topic: "order.placed", Payload: []byte("1")}
	if err := n.Enqueue(ctx, tx, m); err != nil {
		_ = tx.Rollback()
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestNodeShortLease: a node whose relay is given only a Lease below
// outbox.DefaultSendTimeout starts (SendTimeout's default follows the lease)
// and sends over TCP; a SendTimeout set explicitly against the lease is
// still refused by NewNode, naming both values.
func TestNodeShortLease(t *testing.T) {
	_, billingD := openSQLite(t)
	ordersDB, ordersD := openSQLite(t)
	ln := listener(t)
	billingMux := inbox.NewMux[*sql.Tx]()
	billing, err := durable.NewNode(billingD, fastConfig(durable.Config[*sql.Tx]{Handler: billingMux, Name: "billing", Listener: ln}))
	if err != nil {
		t.Fatal(err)
	}
	h, ids := handled()
	billingMux.HandleFunc("order.placed", h)

	peers := map[string]durable.Peer{"billing": {Addr: ln.Addr().String()}}
	// fastConfig leaves the relay's Lease and SendTimeout alone once one is set.
	orders, err := durable.NewNode(ordersD, fastConfig(durable.Config[*sql.Tx]{
		Name: "orders", Peers: peers, Relay: outbox.RelayConfig{Lease: 5 * time.Second},
	}))
	if err != nil {
		t.Fatalf("NewNode with only Relay.Lease = 5s: %v, want it to start", err)
	}
	runNode(t, billing)
	runNode(t, orders)
	m := enqueueOne(t, ordersDB, orders)
	if id := receive(t, ids, "billing to handle the message"); id != m.ID {
		t.Fatalf("billing handled %q, want %q", id, m.ID)
	}

	for _, c := range []struct {
		relay outbox.RelayConfig
		want  string
	}{
		{outbox.RelayConfig{Lease: 5 * time.Second, SendTimeout: 5 * time.Second}, "SendTimeout (5s) must be shorter than Lease (5s)"},
		{outbox.RelayConfig{Lease: 5 * time.Second, SendTimeout: outbox.DefaultSendTimeout}, "SendTimeout (10s) must be shorter than Lease (5s)"},
	} {
		_, err := durable.NewNode(ordersD, fastConfig(durable.Config[*sql.Tx]{Name: "orders", Peers: peers, Relay: c.relay}))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewNode with Relay.Lease %v and SendTimeout %v = %v, want an error containing %q", c.relay.Lease, c.relay.SendTimeout, err, c.want)
		}
	}
}
