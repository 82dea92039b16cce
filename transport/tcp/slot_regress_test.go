package tcp

import (
	"context"
	"testing"
	"time"

	"github.com/durable-go/durable/transport"
)

// TestAbandonedSendKeepsSlot (found in review): a Send whose caller stops waiting keeps its
// in-flight slot until the server answers; before, the next Send went out at once, the server
// (MaxInFlight 1) counted two batches in flight and closed the connection with a protocol error,
// failing the innocent Send.
func TestAbandonedSendKeepsSlot(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		if b.Envelopes[0].ID == "slow" {
			entered <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
				return transport.Result{}, ctx.Err()
			}
		}
		return transport.Result{}, nil
	})
	log, sink := newLog(t)
	srv := startServer(t, h, ServerConfig{Logger: log, MaxInFlight: 1})
	c := newClient(t, srv.addr, ClientConfig{})
	ctx := testCtx(t)
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	go func() { <-entered; cancel() }()
	if _, err := c.Send(sctx, oneBatch("slow")); err == nil {
		t.Fatal("canceled send succeeded")
	}
	done := make(chan error, 1)
	go func() { _, err := c.Send(ctx, oneBatch("next")); done <- err }()
	// The innocent Send must wait for the abandoned batch's slot; with the bug it went out at
	// once and the server closed the connection. (A slow machine can only make this window
	// miss the bug, not fail the test.)
	time.Sleep(300 * time.Millisecond)
	close(release)
	if err := recv(t, done, "the innocent Send"); err != nil {
		l, _ := sink.find("batches in flight")
		t.Fatalf("innocent Send failed: %v\nserver log: %s", err, l)
	}
}
