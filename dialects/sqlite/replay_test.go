package sqlite_test

import (
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// TestOutboxReplayedFailsAgainPending: an outbox dead letter that was replayed and failed
// again no later than its replay (in the same millisecond, the precision of SQLite's stored
// times; here the replay's time is pushed a second ahead) reads as pending again, so the next
// Replay takes it. The inbox side has the same test in package inbox.
func TestOutboxReplayedFailsAgainPending(t *testing.T) {
	ctx := ctxFor(t)
	d, _ := open(t, true)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.InsertOutbox(ctx, tx, []dialects.OutboxRow{{Envelope: transport.Envelope{ID: "m", Topic: "t", Payload: []byte("x")}, Destination: "billing"}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	q := dialects.DeadLetterQuery{Side: dialects.SideOutbox, Destination: "billing"}
	reject := func(round int) {
		t.Helper()
		rows, err := d.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: "billing", Token: "tok", Limit: 1, Lease: time.Minute})
		if err != nil || len(rows) != 1 {
			t.Fatalf("round %d: claim = %d rows, %v", round, len(rows), err)
		}
		n, err := d.DeadLetterOutbox(ctx, "tok", []dialects.OutboxDeadLetter{{Seq: rows[0].Seq, Reason: dialects.ReasonRejected, Error: "refused"}})
		if err != nil || n != 1 {
			t.Fatalf("round %d: DeadLetterOutbox = %d, %v", round, n, err)
		}
	}
	reject(0)
	for round := 1; round <= 3; round++ {
		if n, err := d.ReplayDeadLetters(ctx, q); err != nil || n != 1 {
			t.Fatalf("round %d: ReplayDeadLetters = %d, %v; want 1", round, n, err)
		}
		if _, err := d.DB().Exec(`UPDATE durable_dead_letters SET replayed_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 second')`); err != nil {
			t.Fatal(err)
		}
		reject(round)
		pending, err := d.ListDeadLetters(ctx, q)
		if err != nil || len(pending) != 1 || !pending[0].FailedAt.After(pending[0].ReplayedAt) {
			t.Fatalf("round %d: pending dead letters %+v, %v; want the message, failed after its replay", round, pending, err)
		}
	}
}
