package inbox

import (
	"context"
	"testing"
	"time"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects"
)

// TestReplayedFailsAgainPending: on SQLite, whose times are stored to the millisecond, a
// replayed message that fails again within the millisecond of its replay must read as a
// pending dead letter again (replayed_at < failed_at), or Replay would skip it for good and
// Stats.Dead would not count it. The replay's time is pushed a second ahead here, so that the
// second failure is not later than it, which a failure in the same millisecond also is.
func TestReplayedFailsAgainPending(t *testing.T) {
	f := openSQLite(t)
	ib, _ := newInbox(t, f, nil)
	ctx := context.Background()
	deliver(t, ib, batch("orders", envelope(1, "t")))
	id := envelope(1, "t").ID
	fail := func(round int) {
		t.Helper()
		rs, err := ib.store.ClaimInbox(ctx, dialects.InboxClaim{Token: "tok", Worker: "w", Limit: 10, Lease: time.Minute})
		if err != nil || len(rs) != 1 {
			t.Fatalf("round %d: claim = %d rows, %v", round, len(rs), err)
		}
		tx, err := ib.d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ib.store.LockInbox(ctx, tx, "tok", []dialects.InboxKey{{Source: "orders", ID: id}}); err != nil {
			t.Fatal(err)
		}
		if _, err := ib.store.FinishInbox(ctx, tx, "tok", []dialects.InboxOutcome{{Source: "orders", ID: id,
			Kind: dialects.InboxDead, Reason: deadletter.ReasonPermanent, Error: "still broken"}}); err != nil {
			t.Fatal(err)
		}
		if err := ib.d.Commit(ctx, tx); err != nil {
			t.Fatal(err)
		}
	}
	fail(0)
	for round := 1; round <= 3; round++ {
		if n, err := ib.Replay(ctx, DeadLetterFilter{Source: "orders", IDs: []string{id}}); err != nil || n != 1 {
			t.Fatalf("round %d: Replay = %d, %v; want 1", round, n, err)
		}
		f.db.exec(t, `UPDATE durable_dead_letters SET replayed_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 second')`)
		fail(round)
		dl, err := ib.DeadLetter(ctx, "orders", id)
		if err != nil {
			t.Fatal(err)
		}
		if !dl.Pending() || !dl.FailedAt.After(dl.ReplayedAt) {
			t.Fatalf("round %d: replayed at %s, failed again at %s: Pending() = %v, want a pending dead letter",
				round, dl.ReplayedAt.Format(time.RFC3339Nano), dl.FailedAt.Format(time.RFC3339Nano), dl.Pending())
		}
		if s := stats(t, ib); s.Dead != 1 {
			t.Fatalf("round %d: Stats.Dead = %d, want 1", round, s.Dead)
		}
	}
}
