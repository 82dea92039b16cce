package dialecttest

import (
	"strings"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
)

// deadLetterSuite checks what the dead-letter operations do across the two
// sides: one filter, one listing, replay of either side, purge by query.
type deadLetterSuite[TTx any] struct{ h Harness[TTx] }

func (s deadLetterSuite[TTx]) run(t *testing.T) {
	t.Run("BothSides", s.bothSides)
	t.Run("ReplayInboxSide", s.replayInboxSide)
	t.Run("ReplayOutboxSide", s.replayOutboxSide)
	t.Run("PurgeByQuery", s.purgeByQuery)
}

// seed records, in this order: an outbox dead letter of message idOf(1) for
// billing (rejected), an inbox dead letter of message idOf(1) from orders
// (permanent, topic.other) and one of inboxID(2) from orders
// (handler_error).
func (s deadLetterSuite[TTx]) seed(t *testing.T) dialects.Dialect[TTx] {
	t.Helper()
	d := s.h.Open(t)
	insert(t, d, dueRow(1, "billing"))
	got := claim(t, d, "billing", "t1", 1, lease)
	n, err := d.DeadLetterOutbox(ctxFor(t), "t1", []dialects.OutboxDeadLetter{{Seq: got[0].Seq, Reason: dialects.ReasonRejected, Error: "refused"}})
	count(t, "DeadLetterOutbox", n, err, 1)
	in := inboxSuite[TTx](s)
	same := InboxRow(1, "orders")
	same.ID, same.Topic = idOf(1), "topic.other"
	in.deadLetter(t, d, same, dialects.ReasonPermanent, "bad order")
	in.deadLetter(t, d, InboxRow(2, "orders"), dialects.ReasonHandlerError, "boom")
	return d
}

// sides renders dead letters as side/source/destination/id.
func sides(rows []dialects.DeadLetterRow) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = strings.Join([]string{r.Side, r.Source, r.Destination, r.ID}, "/")
	}
	return out
}

func (s deadLetterSuite[TTx]) bothSides(t *testing.T) {
	start := time.Now()
	d := s.seed(t)
	var (
		out   = "outbox//billing/" + idOf(1)
		same  = "inbox/orders//" + idOf(1)
		other = "inbox/orders//" + inboxID(2)
	)
	all := deadLetters(t, d, dialects.DeadLetterQuery{})
	wantIDs(t, "both sides, in seq order", sides(all), out, same, other)
	if o := all[0]; o.Reason != dialects.ReasonRejected || o.LastError != "refused" || len(o.Errors) != 1 || o.Errors[0].Error != "refused" {
		t.Fatalf("outbox dead letter: %+v", o)
	}
	if i := all[1]; i.Reason != dialects.ReasonPermanent || i.Topic != "topic.other" || len(i.Errors) != 1 || i.Errors[0].Error != "bad order" || i.Errors[0].Attempt != 1 {
		t.Fatalf("inbox dead letter: %+v", i)
	}
	for _, c := range []struct {
		q    dialects.DeadLetterQuery
		want []string
	}{
		{dialects.DeadLetterQuery{Side: dialects.SideOutbox}, []string{out}},
		{dialects.DeadLetterQuery{Side: dialects.SideInbox}, []string{same, other}},
		{dialects.DeadLetterQuery{Destination: "billing"}, []string{out}},
		{dialects.DeadLetterQuery{Source: "orders"}, []string{same, other}},
		{dialects.DeadLetterQuery{IDs: []string{idOf(1)}}, []string{out, same}},
		{dialects.DeadLetterQuery{Side: dialects.SideInbox, IDs: []string{idOf(1)}}, []string{same}},
		{dialects.DeadLetterQuery{Side: dialects.SideInbox, Destination: "billing"}, nil},
		{dialects.DeadLetterQuery{Topic: "topic.created"}, []string{out, other}},
		{dialects.DeadLetterQuery{Reason: dialects.ReasonRejected}, []string{out}},
		{dialects.DeadLetterQuery{Since: start.Add(-time.Minute), Before: time.Now().Add(time.Minute)}, []string{out, same, other}},
		{dialects.DeadLetterQuery{Before: start.Add(-time.Minute)}, nil},
		{dialects.DeadLetterQuery{Limit: 2}, []string{out, same}},
		{dialects.DeadLetterQuery{Side: dialects.SideInbox, Limit: 1}, []string{same}},
	} {
		wantIDs(t, "filter", sides(deadLetters(t, d, c.q)), c.want...)
	}
}

func (s deadLetterSuite[TTx]) replayInboxSide(t *testing.T) {
	d := s.seed(t)
	ctx := ctxFor(t)
	if n, err := d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{Side: "both"}); err == nil || n != 0 {
		t.Fatalf("replay of side \"both\" = %d, %v; want an error", n, err)
	}
	// No side: the inbox's, also for an id both sides hold.
	n, err := d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{IDs: []string{idOf(1)}})
	count(t, "ReplayDeadLetters", n, err, 1)
	n, err = d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{})
	count(t, "ReplayDeadLetters", n, err, 1)
	inboxWant(t, "inbox after the replays", inboxIDs(inboxSuite[TTx](s).list(t, d, dialects.InboxQuery{})), idOf(1), inboxID(2))
	wantIDs(t, "outbox after the inbox replays", ids(list(t, d, dialects.OutboxQuery{})))
	wantIDs(t, "pending", sides(deadLetters(t, d, dialects.DeadLetterQuery{})), "outbox//billing/"+idOf(1))
	all := deadLetters(t, d, dialects.DeadLetterQuery{IncludeReplayed: true})
	if len(all) != 3 || !all[0].ReplayedAt.IsZero() || all[1].ReplayedAt.IsZero() || all[2].ReplayedAt.IsZero() {
		t.Fatalf("replayed_at after the replays: %+v", all)
	}
}

// replayOutboxSide: an outbox dead letter goes back into the outbox as a
// fresh row, due now, unleased, without expiry, created_at, key, headers
// and payload kept; once only; not over a row of the same message.
func (s deadLetterSuite[TTx]) replayOutboxSide(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	orig := Row(1, "billing") // created 2026-01-02, keyed, expires in 2026
	orig.DeliverAt = time.Now().Add(-time.Second)
	orig.ExpiresAt = time.Now().Add(time.Hour)
	insert(t, d, orig, dueRow(2, "billing"))
	got := claim(t, d, "billing", "t1", 2, lease)
	if len(got) != 2 {
		t.Fatalf("claimed %d rows, want 2", len(got))
	}
	n, err := d.DeadLetterOutbox(ctx, "t1", []dialects.OutboxDeadLetter{
		{Seq: got[0].Seq, Reason: dialects.ReasonRejected, Error: "refused"},
		{Seq: got[1].Seq, Reason: dialects.ReasonExpired, Error: "expired"},
	})
	count(t, "DeadLetterOutbox", n, err, 2)
	in := inboxSuite[TTx](s)
	in.deadLetter(t, d, InboxRow(3, "orders"), dialects.ReasonHandlerError, "boom")
	wantIDs(t, "outbox after the dead-letter move", ids(list(t, d, dialects.OutboxQuery{})))

	// The second message is in the outbox again (enqueued anew under its
	// id): its dead letter is not replayed over it.
	insert(t, d, dueRow(2, "billing"))
	before := time.Now()
	n, err = d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{Side: dialects.SideOutbox})
	count(t, "ReplayDeadLetters(outbox)", n, err, 1)
	wantIDs(t, "outbox after the replay", ids(list(t, d, dialects.OutboxQuery{})), idOf(2)+"@billing", idOf(1)+"@billing")
	r := byID(t, d, idOf(1))
	if r.Destination != "billing" || r.Topic != orig.Topic || r.Key != orig.Key || !r.CreatedAt.Equal(orig.CreatedAt) ||
		r.SendAttempt != 0 || r.LeaseToken != "" || !r.LockedUntil.IsZero() || !r.ExpiresAt.IsZero() || !r.SentAt.IsZero() ||
		string(r.Payload) != string(orig.Payload) || r.Headers["trace"] != orig.Headers["trace"] || r.Headers["ünïcode"] != orig.Headers["ünïcode"] {
		t.Fatalf("replayed row = %+v, want the message fresh (from %+v)", r, orig)
	}
	near(t, "replayed row's deliver_at", r.DeliverAt, before, 5*time.Second)
	// The relay claims it at once.
	wantIDs(t, "claim after the replay", claimedIDs(claim(t, d, "billing", "t2", 10, lease)), idOf(2), idOf(1))

	all := deadLetters(t, d, dialects.DeadLetterQuery{IncludeReplayed: true})
	wantIDs(t, "dead letters", sides(all), "outbox//billing/"+idOf(1), "outbox//billing/"+idOf(2), "inbox/orders//"+inboxID(3))
	if all[0].ReplayedAt.IsZero() || !all[1].ReplayedAt.IsZero() || !all[2].ReplayedAt.IsZero() {
		t.Fatalf("replayed_at after the outbox replay: %+v", all)
	}
	near(t, "replayed_at", all[0].ReplayedAt, before, 5*time.Second)
	wantIDs(t, "pending", sides(deadLetters(t, d, dialects.DeadLetterQuery{})), "outbox//billing/"+idOf(2), "inbox/orders//"+inboxID(3))
	// Not pending any more: a second replay does nothing.
	n, err = d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{Side: dialects.SideOutbox, IDs: []string{idOf(1)}})
	count(t, "ReplayDeadLetters(outbox, again)", n, err, 0)

	// It fails again: the same dead letter, pending again, both errors kept.
	n, err = d.DeadLetterOutbox(ctx, "t2", []dialects.OutboxDeadLetter{{Seq: r.Seq, Reason: dialects.ReasonRejected, Error: "refused again"}})
	count(t, "DeadLetterOutbox(again)", n, err, 1)
	again := deadLetters(t, d, dialects.DeadLetterQuery{Side: dialects.SideOutbox, IDs: []string{idOf(1)}})
	if len(again) != 1 || again[0].LastError != "refused again" || len(again[0].Errors) != 2 ||
		again[0].Errors[0].Error != "refused" || again[0].Errors[1].Error != "refused again" {
		t.Fatalf("dead letter after a second failure: %+v", again)
	}
	// A limit takes the oldest pending one: idOf(1), whose dead letter
	// kept its place (seq) when it failed again.
	n, err = d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{Side: dialects.SideOutbox, Limit: 1})
	count(t, "ReplayDeadLetters(outbox, limit 1)", n, err, 1)
	wantIDs(t, "pending after the limited replay", sides(deadLetters(t, d, dialects.DeadLetterQuery{Side: dialects.SideOutbox})), "outbox//billing/"+idOf(2))
	// idOf(2) still conflicts with its row in the outbox.
	n, err = d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{Side: dialects.SideOutbox, Destination: "billing", Reason: dialects.ReasonExpired})
	count(t, "ReplayDeadLetters(outbox, by destination and reason)", n, err, 0)
	if got := in.list(t, d, dialects.InboxQuery{}); len(got) != 0 {
		t.Fatalf("inbox after outbox replays: %d rows, want 0 (the inbox side is untouched)", len(got))
	}
}

func (s deadLetterSuite[TTx]) purgeByQuery(t *testing.T) {
	d := s.seed(t)
	ctx := ctxFor(t)
	n, err := d.PurgeDeadLetters(ctx, dialects.DeadLetterQuery{IDs: []string{idOf(1)}, Side: dialects.SideOutbox})
	count(t, "PurgeDeadLetters(outbox side)", n, err, 1)
	wantIDs(t, "after purging the outbox side", sides(deadLetters(t, d, dialects.DeadLetterQuery{})),
		"inbox/orders//"+idOf(1), "inbox/orders//"+inboxID(2))
	n, err = d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{IDs: []string{inboxID(2)}})
	count(t, "ReplayDeadLetters", n, err, 1)
	// Pending only, unless IncludeReplayed.
	n, err = d.PurgeDeadLetters(ctx, dialects.DeadLetterQuery{Source: "orders"})
	count(t, "PurgeDeadLetters(pending)", n, err, 1)
	n, err = d.PurgeDeadLetters(ctx, dialects.DeadLetterQuery{IncludeReplayed: true})
	count(t, "PurgeDeadLetters(all)", n, err, 1)
	wantIDs(t, "after purging all", sides(deadLetters(t, d, dialects.DeadLetterQuery{IncludeReplayed: true})))
}
