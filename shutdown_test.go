package durable_test

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
	"github.com/durable-go/durable/transport/tcp"
)

// TestNodeShutdownTimeoutBoundsRelayDrain: a peer stores nothing and never answers; once Run's
// context ends, the relay's drain lasts Config.ShutdownTimeout, not the much longer
// SendTimeout, and the message stays in the outbox for the next run.
func TestNodeShutdownTimeoutBoundsRelayDrain(t *testing.T) {
	db, d := openSQLite(t)
	received := make(chan struct{}, 16)
	release := make(chan struct{})
	defer close(release)
	peer, err := tcp.NewServer(transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		received <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return transport.Result{}, errors.New("never stored")
	}), &tcp.ServerConfig{Secret: secret, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- peer.Serve(ln) }()
	defer func() {
		peer.Close()
		<-served
	}()

	cfg := fastConfig(durable.Config[*sql.Tx]{
		Name:            "orders",
		Peers:           map[string]durable.Peer{"billing": {Addr: ln.Addr().String()}},
		ShutdownTimeout: 300 * time.Millisecond,
		Logger:          quiet,
	})
	// The send would last 10 minutes: a drain bounded by anything but ShutdownTimeout stands
	// out from a slow machine's stop by far.
	cfg.Relay.SendTimeout = 10 * time.Minute
	cfg.Relay.Lease = 20 * time.Minute
	cfg.Client.AckTimeout = 10 * time.Minute
	n, err := durable.NewNode(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enqueue(context.Background(), tx, &outbox.Message{Destination: "billing", Topic: "t"}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-received:
	case <-time.After(30 * time.Second):
		t.Fatal("the peer never received the batch")
	}
	cancel()
	start := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Run did not return within 2m of its context's end (ShutdownTimeout 300ms, SendTimeout 10m)")
	}
	if took := time.Since(start); took > time.Minute {
		t.Fatalf("Run took %v to stop, want about ShutdownTimeout (300ms)", took)
	}
	var left int
	if err := db.QueryRow(`SELECT count(*) FROM durable_outbox`).Scan(&left); err != nil || left != 1 {
		t.Fatalf("%d messages left in the outbox (%v), want 1", left, err)
	}
}
