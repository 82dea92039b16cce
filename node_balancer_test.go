package durable_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/outbox"
)

// TestNodePeerAddrsMetrics: a peer given by Addrs is sent to through a Balancer that reports
// its sends by instance to the node's MeterProvider.
func TestNodePeerAddrsMetrics(t *testing.T) {
	const n = 5
	ordersDB, ordersD := openSQLite(t)
	_, billingD := openSQLite(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })

	ln := listener(t)
	mux := inbox.NewMux[*sql.Tx]()
	mux.HandleFunc("order.placed", func(ctx context.Context, tx *sql.Tx, m *inbox.Message) error { return nil })
	billing, err := durable.NewNode(billingD, fastConfig(durable.Config[*sql.Tx]{Handler: mux, Name: "billing", Listener: ln}))
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	orders, err := durable.NewNode(ordersD, fastConfig(durable.Config[*sql.Tx]{
		Name:          "orders",
		Peers:         map[string]durable.Peer{"billing": {Addrs: []string{addr}}},
		MeterProvider: mp,
	}))
	if err != nil {
		t.Fatal(err)
	}
	runNode(t, billing)
	runNode(t, orders)

	ctx := context.Background()
	tx, err := ordersDB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*outbox.Message
	for i := range n {
		msgs = append(msgs, &outbox.Message{Destination: "billing", Topic: "order.placed", Payload: fmt.Appendf(nil, "%d", i)})
	}
	if err := orders.Enqueue(ctx, tx, msgs...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every message handled", func() (bool, error) {
		s, err := billing.Inbox().Stats(ctx)
		return s.Handled == n, err
	})
	ms := metricsOf(t, reader)
	if got := sumOf(ms, "durable.transport.instance.sends", "durable.peer", "billing", "durable.instance", addr, "durable.outcome", "ok"); got < 1 {
		t.Fatalf("durable.transport.instance.sends{billing, %s, ok} = %d, want at least 1", addr, got)
	}
	if got := sumOf(ms, "durable.transport.instance.sends", "durable.outcome", "failed"); got != 0 {
		t.Fatalf("failed sends: %d", got)
	}
}
