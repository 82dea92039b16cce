package outbox_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
)

// failingAcks wraps a dialect so that its first `fail` AckOutbox calls fail
// without touching the database, as a busy SQLite file or a database
// restart would make them.
type failingAcks[TTx any] struct {
	dialects.Dialect[TTx]
	fail  int64
	calls atomic.Int64
}

var errAckWrite = errors.New("test: the acknowledgement's write failed")

func (f *failingAcks[TTx]) AckOutbox(ctx context.Context, token string, seqs []int64, retain bool) (int, error) {
	if f.calls.Add(1) <= f.fail {
		return 0, errAckWrite
	}
	return f.Dialect.AckOutbox(ctx, token, seqs, retain)
}

// TestRelayAckRetried: when recording an ACK fails, the relay writes it
// again while the lease lasts, instead of leaving the rows to be sent a
// second time when the lease ends. Without the retry this test sees every
// message twice (the rows come back after the 20s lease); with it, once.
func TestRelayAckRetried(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"postgres", func(t *testing.T) { testAckRetried(t, pgxWide) }},
		{"sqlite", func(t *testing.T) { testAckRetried(t, sqliteTarget) }},
	} {
		t.Run(tc.name, func(t *testing.T) { t.Parallel(); tc.run(t) })
	}
}

func testAckRetried[TTx any](t *testing.T, tg target[TTx]) {
	const total = 10
	base := tg.open(t, true)
	d := &failingAcks[TTx]{Dialect: base, fail: 2}
	rcv := newReceiver()
	srv := startServer(t, rcv)
	ob := newOutbox(t, base, nil)
	var msgs []*outbox.Message
	for i := 1; i <= total; i++ {
		msgs = append(msgs, relayMsg("billing", i))
	}
	mustEnqueue(t, ob, msgs...)

	cfg := fastRelay(nil)
	cfg.Lease = 20 * time.Second
	cfg.SendTimeout = 5 * time.Second
	relay := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, cfg)
	stop := start(t, relay)
	rcv.waitDistinct(t, total, 60*time.Second)
	// The rows leave the outbox once an ACK is recorded: at once with the
	// retry, after the lease and a second send without it.
	waitUntil(t, "an empty outbox", 60*time.Second, func() bool { return unsent(t, base) == 0 })
	stop()

	if got := d.calls.Load(); got < 3 {
		t.Fatalf("AckOutbox called %d times, want at least 3 (two failures, then the write)", got)
	}
	got, counts := rcv.snapshot()
	if len(got) != total || len(counts) != total {
		t.Fatalf("receiver got %d envelopes with %d distinct ids, want %d and %d", len(got), len(counts), total, total)
	}
}
