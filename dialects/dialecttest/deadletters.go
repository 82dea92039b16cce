package dialecttest

import (
	"strings"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
)

// deadLetterSuite checks what the dead-letter operations do across the two
// sides: one filter, one listing, replay of the inbox side only, purge by
// query.
type deadLetterSuite[TTx any] struct{ h Harness[TTx] }

func (s deadLetterSuite[TTx]) run(t *testing.T) {
	t.Run("BothSides", s.bothSides)
	t.Run("ReplayInboxOnly", s.replayInboxOnly)
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

func (s deadLetterSuite[TTx]) replayInboxOnly(t *testing.T) {
	d := s.seed(t)
	ctx := ctxFor(t)
	if n, err := d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{Side: dialects.SideOutbox}); err == nil || n != 0 {
		t.Fatalf("replay of the outbox side = %d, %v; want an error", n, err)
	}
	// No side: the inbox's, also for an id both sides hold.
	n, err := d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{IDs: []string{idOf(1)}})
	count(t, "ReplayDeadLetters", n, err, 1)
	n, err = d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{})
	count(t, "ReplayDeadLetters", n, err, 1)
	inboxWant(t, "inbox after the replays", inboxIDs(inboxSuite[TTx](s).list(t, d, dialects.InboxQuery{})), idOf(1), inboxID(2))
	wantIDs(t, "pending", sides(deadLetters(t, d, dialects.DeadLetterQuery{})), "outbox//billing/"+idOf(1))
	all := deadLetters(t, d, dialects.DeadLetterQuery{IncludeReplayed: true})
	if len(all) != 3 || !all[0].ReplayedAt.IsZero() || all[1].ReplayedAt.IsZero() || all[2].ReplayedAt.IsZero() {
		t.Fatalf("replayed_at after the replays: %+v", all)
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
