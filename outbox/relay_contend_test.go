package outbox_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// losingClaim wraps a dialect so that the relay's second claim loses a race
// to other relays' claims: while it runs, a concurrent transaction holds the
// locks of the oldest lock rows (every candidate of a claim: a claim
// considers twice its limit), which SKIP LOCKED passes over; that
// transaction then leases them, as the other relays' claims would, and
// commits.
type losingClaim struct {
	dialects.Dialect[pgxTx]
	lock  int
	calls atomic.Int64
	lost  atomic.Int64 // rows the second claim returned
}

func (c *losingClaim) ClaimOutbox(ctx context.Context, cl dialects.OutboxClaim) ([]dialects.ClaimedRow, error) {
	if c.calls.Add(1) != 2 {
		return c.Dialect.ClaimOutbox(ctx, cl)
	}
	other, err := c.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Rollback(context.Background(), other) }()
	const oldest = `seq IN (SELECT seq FROM durable_outbox WHERE locked_until IS NULL ORDER BY seq LIMIT $1)`
	if _, err := other.Exec(ctx, `SELECT 1 FROM durable_outbox WHERE `+oldest+` FOR UPDATE`, c.lock); err != nil {
		return nil, err
	}
	rows, err := c.Dialect.ClaimOutbox(ctx, cl)
	c.lost.Store(int64(len(rows)))
	if err != nil {
		return rows, err
	}
	if _, err := other.Exec(ctx, `UPDATE durable_outbox SET locked_by = 'other/x/1', locked_until = now() + interval '1 hour' WHERE `+oldest, c.lock); err != nil {
		return nil, err
	}
	return rows, c.Commit(ctx, other)
}

// TestRelayClaimLostRace: a claim that comes up empty right after a full
// one, because other relays' concurrent claims locked its candidates (the
// oldest rows), looks again soon, and does not sit idle for a PollInterval
// (here an hour) while more rows wait behind the ones the other relay took.
// The first batch's send hangs, so no settled batch wakes the relay either.
func TestRelayClaimLostRace(t *testing.T) {
	const batch = 10
	d := pgxWide.open(t, true)
	ob := newOutbox(t, d, nil)
	for i := range 4 * batch {
		mustEnqueue(t, ob, relayMsg("billing", i))
	}
	var (
		calls     atomic.Int64
		delivered = make(chan []string, 1)
		release   = make(chan struct{})
	)
	sender := funcSender(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		if calls.Add(1) == 1 {
			select { // the first batch hangs until the test ends
			case <-release:
			case <-ctx.Done():
			}
			return transport.Result{}, context.Canceled
		}
		ids := make([]string, len(b.Envelopes))
		for i, e := range b.Envelopes {
			ids[i] = e.ID
		}
		delivered <- ids
		return transport.Result{}, nil
	})
	lc := &losingClaim{Dialect: d, lock: 2 * batch}
	cfg := fastRelay(nil)
	cfg.PollInterval = time.Hour
	cfg.BatchSize = batch
	stop := start(t, newRelay(t, lc, map[string]transport.Sender{"billing": sender}, cfg))
	defer stop()
	defer close(release)
	ids := within(t, delivered, "the rows behind the other relay's claim")
	if n := lc.lost.Load(); n != 0 {
		t.Fatalf("the second claim, its candidates locked by another, returned %d rows; the test wants it to lose the race", n)
	}
	if len(ids) != batch || ids[0] != relayMsg("billing", 3*batch).ID {
		t.Fatalf("delivered %v, want the %d rows after the other relays'", ids, batch)
	}
}
