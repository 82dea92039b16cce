package outbox_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// losingClaim wraps a dialect so that the relay's first claim loses a race
// to another relay's: while it runs, a concurrent transaction holds the
// locks of the oldest rows (the candidates of a claim), which SKIP LOCKED
// passes over; that transaction then leases them, as the other relay's
// claim would, and commits.
type losingClaim struct {
	dialects.Dialect[pgxTx]
	limit int
	calls atomic.Int64
	first atomic.Int64 // rows the first claim returned
}

func (c *losingClaim) ClaimOutbox(ctx context.Context, cl dialects.OutboxClaim) ([]dialects.ClaimedRow, error) {
	if c.calls.Add(1) > 1 {
		return c.Dialect.ClaimOutbox(ctx, cl)
	}
	other, err := c.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Rollback(context.Background(), other) }()
	const oldest = `seq IN (SELECT seq FROM durable_outbox ORDER BY seq LIMIT $1)`
	if _, err := other.Exec(ctx, `SELECT 1 FROM durable_outbox WHERE `+oldest+` FOR UPDATE`, c.limit); err != nil {
		return nil, err
	}
	rows, err := c.Dialect.ClaimOutbox(ctx, cl)
	c.first.Store(int64(len(rows)))
	if err != nil {
		return rows, err
	}
	if _, err := other.Exec(ctx, `UPDATE durable_outbox SET locked_by = 'other/x/1', locked_until = now() + interval '1 hour' WHERE `+oldest, c.limit); err != nil {
		return nil, err
	}
	return rows, c.Commit(ctx, other)
}

// TestRelayClaimLostRace: a claim that comes up empty because another
// relay's concurrent claim locked its candidates (the oldest rows) looks
// again soon, and does not sit idle for a PollInterval (here an hour)
// while more rows wait behind the ones the other relay took.
func TestRelayClaimLostRace(t *testing.T) {
	const batch = 10
	d := pgxWide.open(t, true)
	ob := newOutbox(t, d, nil)
	for i := range 2 * batch {
		mustEnqueue(t, ob, relayMsg("billing", i))
	}
	rcv := newReceiver()
	srv := startServer(t, rcv)
	lc := &losingClaim{Dialect: d, limit: batch}
	cfg := fastRelay(nil)
	cfg.PollInterval = time.Hour
	cfg.BatchSize = batch
	stop := start(t, newRelay(t, lc, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, cfg))
	defer stop()
	rcv.waitDistinct(t, batch, 30*time.Second)
	if n := lc.first.Load(); n != 0 {
		t.Fatalf("the first claim, its candidates locked by another, returned %d rows; the test wants it to lose the race", n)
	}
	if _, byID := rcv.snapshot(); len(byID) != batch {
		t.Fatalf("%d distinct messages delivered, want the %d the other relay did not take", len(byID), batch)
	}
}
