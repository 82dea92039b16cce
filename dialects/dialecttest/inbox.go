package dialecttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// run runs the conformance suite of the inbox's operations
// (dialects.InboxStore) as subtests of t.
func (s inboxSuite[TTx]) run(t *testing.T) {
	t.Run("InsertRoundTrip", s.insertRoundTrip)
	t.Run("InsertDuplicates", s.insertDuplicates)
	t.Run("InsertRollback", s.insertRollback)
	t.Run("InsertLargeBatch", s.insertLargeBatch)
	t.Run("InsertDeadLetterDuplicate", s.insertDeadLetterDuplicate)
	t.Run("InsertHandled", s.insertHandled)
	t.Run("InsertHandledFinish", s.insertHandledFinish)
	t.Run("Claim", s.claim)
	t.Run("ClaimTopics", s.claimTopics)
	t.Run("ClaimOrderingKeys", s.claimOrderingKeys)
	t.Run("ClaimExpired", s.claimExpired)
	t.Run("ConcurrentClaims", s.concurrentClaims)
	t.Run("Lock", s.lock)
	t.Run("Fencing", s.fencing)
	t.Run("Finish", s.finishKinds)
	t.Run("Savepoints", s.savepoints)
	t.Run("Rescue", s.rescue)
	t.Run("RescueSkipsLocked", s.rescueSkipsLocked)
	t.Run("Purge", s.purge)
	t.Run("Stats", s.stats)
	t.Run("DeadLetters", s.deadLetters)
	t.Run("Replay", s.replay)
	t.Run("Unmigrated", s.unmigrated)
}

type inboxSuite[TTx any] struct{ h Harness[TTx] }

// inboxLease is the lease of claims that must not expire during a test.
const inboxLease = time.Minute

// InboxRow returns a valid inbox row from source with distinct, non-trivial
// field values; i names it.
func InboxRow(i int, source string) dialects.InboxRow {
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return dialects.InboxRow{
		Envelope: transport.Envelope{
			ID:        fmt.Sprintf("in-%06d", i),
			Topic:     "topic.created",
			Headers:   map[string]string{"trace": fmt.Sprintf("t-%d", i), "ünïcode": "✓ \"quoted\" \\ slash"},
			Payload:   []byte{0, 1, 2, 0xff, byte(i), byte(i >> 8), 0, '\'', '"', '\\'},
			CreatedAt: base.Add(time.Duration(i) * time.Millisecond),
		},
		Source: source,
	}
}

func inboxID(i int) string { return InboxRow(i, "").ID }

// insert stores rows in a transaction of their own and returns which were
// stored.
func (s inboxSuite[TTx]) insert(t *testing.T, d dialects.Dialect[TTx], rows ...dialects.InboxRow) []bool {
	t.Helper()
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	stored, err := d.InsertInbox(ctx, tx, rows)
	if err != nil {
		_ = d.Rollback(ctx, tx)
		t.Fatalf("InsertInbox: %v", err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if len(stored) != len(rows) {
		t.Fatalf("InsertInbox returned %d flags for %d rows", len(stored), len(rows))
	}
	return stored
}

func (s inboxSuite[TTx]) list(t *testing.T, d dialects.Dialect[TTx], q dialects.InboxQuery) []dialects.InboxRow {
	t.Helper()
	rows, err := d.ListInbox(ctxFor(t), q)
	if err != nil {
		t.Fatalf("ListInbox: %v", err)
	}
	return rows
}

func (s inboxSuite[TTx]) one(t *testing.T, d dialects.Dialect[TTx], source, id string) dialects.InboxRow {
	t.Helper()
	rows := s.list(t, d, dialects.InboxQuery{Source: source, IDs: []string{id}})
	if len(rows) != 1 {
		t.Fatalf("ListInbox(%s/%s) returned %d rows, want 1", source, id, len(rows))
	}
	return rows[0]
}

func (s inboxSuite[TTx]) claimN(t *testing.T, d dialects.Dialect[TTx], token string, limit int, lease time.Duration) []dialects.InboxRow {
	t.Helper()
	rows, err := d.ClaimInbox(ctxFor(t), dialects.InboxClaim{Token: token, Worker: "w-" + token, Limit: limit, Lease: lease})
	if err != nil {
		t.Fatalf("ClaimInbox: %v", err)
	}
	return rows
}

// settle settles outcomes in a transaction of their own, after locking them
// as a worker does, and returns FinishInbox's count.
func (s inboxSuite[TTx]) settle(t *testing.T, d dialects.Dialect[TTx], token string, outs ...dialects.InboxOutcome) int {
	t.Helper()
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	n, err := d.FinishInbox(ctx, tx, token, outs)
	if err != nil {
		_ = d.Rollback(ctx, tx)
		t.Fatalf("FinishInbox: %v", err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return n
}

func inboxIDs(rows []dialects.InboxRow) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}

func inboxWant(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

func inboxNear(t *testing.T, what string, got, want time.Time, slack time.Duration) {
	t.Helper()
	if got.Before(want.Add(-slack)) || got.After(want.Add(slack)) {
		t.Fatalf("%s = %v, want %v ± %v", what, got, want, slack)
	}
}

func inboxDone(r dialects.InboxRow) dialects.InboxOutcome {
	return dialects.InboxOutcome{Source: r.Source, ID: r.ID, Kind: dialects.InboxHandled}
}

func (s inboxSuite[TTx]) insertRoundTrip(t *testing.T) {
	d := s.h.Open(t)
	want := []dialects.InboxRow{InboxRow(1, "orders"), InboxRow(2, "orders"), InboxRow(3, "billing")}
	want[0].Key = "k1"
	want[0].ExpiresAt = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	want[1].Headers = nil
	want[1].Payload = nil
	want[2].RunAt = time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	want[2].CreatedAt = time.Time{}
	before := time.Now()
	if got := s.insert(t, d, want...); !slices.Equal(got, []bool{true, true, true}) {
		t.Fatalf("InsertInbox stored %v, want all", got)
	}
	got := s.list(t, d, dialects.InboxQuery{})
	if len(got) != 3 {
		t.Fatalf("ListInbox returned %d rows, want 3", len(got))
	}
	for i, g := range got {
		w := want[i]
		if g.Source != w.Source || g.ID != w.ID || g.Topic != w.Topic || g.Key != w.Key {
			t.Errorf("row %d: %s/%s topic %q key %q, want %s/%s %q %q", i, g.Source, g.ID, g.Topic, g.Key, w.Source, w.ID, w.Topic, w.Key)
		}
		if !bytes.Equal(g.Payload, w.Payload) || (w.Payload == nil && len(g.Payload) != 0) {
			t.Errorf("row %d: payload %x, want %x", i, g.Payload, w.Payload)
		}
		wh := w.Headers
		if wh == nil {
			wh = map[string]string{}
		}
		if !maps.Equal(g.Headers, wh) {
			t.Errorf("row %d: headers %v, want %v", i, g.Headers, wh)
		}
		if g.State != dialects.InboxStateReady || g.Attempts != 0 || g.LeaseToken != "" || g.LockedBy != "" ||
			!g.LockedUntil.IsZero() || g.LastError != "" || len(g.Errors) != 0 || !g.HandledAt.IsZero() || !g.ReplayedAt.IsZero() {
			t.Errorf("row %d: a new row has state %+v", i, g)
		}
		if !g.ExpiresAt.Equal(w.ExpiresAt) {
			t.Errorf("row %d: ExpiresAt %v, want %v", i, g.ExpiresAt, w.ExpiresAt)
		}
		inboxNear(t, "ReceivedAt", g.ReceivedAt, before, 5*time.Second)
		if i > 0 && g.Seq <= got[i-1].Seq {
			t.Errorf("seq not increasing: %d then %d", got[i-1].Seq, g.Seq)
		}
	}
	if !got[0].CreatedAt.Equal(want[0].CreatedAt) {
		t.Errorf("CreatedAt %v, want %v", got[0].CreatedAt, want[0].CreatedAt)
	}
	inboxNear(t, "default CreatedAt", got[2].CreatedAt, before, 5*time.Second)
	inboxNear(t, "default RunAt", got[0].RunAt, before, 5*time.Second)
	if !got[2].RunAt.Equal(want[2].RunAt) {
		t.Errorf("RunAt %v, want %v", got[2].RunAt, want[2].RunAt)
	}
}

func (s inboxSuite[TTx]) insertDuplicates(t *testing.T) {
	d := s.h.Open(t)
	s.insert(t, d, InboxRow(1, "orders"), InboxRow(2, "orders"))
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A stored id, a new one, the new one again, the same id from another
	// source.
	call := []dialects.InboxRow{InboxRow(2, "orders"), InboxRow(3, "orders"), InboxRow(3, "orders"), InboxRow(1, "billing")}
	call[2].Topic = "other" // a repeat is a duplicate whatever its content
	stored, err := d.InsertInbox(ctx, tx, call)
	if err != nil {
		t.Fatalf("InsertInbox with duplicates: %v", err)
	}
	if !slices.Equal(stored, []bool{false, true, false, true}) {
		t.Fatalf("stored = %v, want [false true false true]", stored)
	}
	// The transaction is still usable.
	if stored, err := d.InsertInbox(ctx, tx, []dialects.InboxRow{InboxRow(4, "orders")}); err != nil || !stored[0] {
		t.Fatalf("InsertInbox after duplicates = %v, %v", stored, err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	got := s.list(t, d, dialects.InboxQuery{})
	var keys []string
	for _, r := range got {
		keys = append(keys, r.Source+"/"+r.ID+"/"+r.Topic)
	}
	inboxWant(t, "rows", keys, "orders/"+inboxID(1)+"/topic.created", "orders/"+inboxID(2)+"/topic.created",
		"orders/"+inboxID(3)+"/topic.created", "billing/"+inboxID(1)+"/topic.created", "orders/"+inboxID(4)+"/topic.created")
}

func (s inboxSuite[TTx]) insertRollback(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.InsertInbox(ctx, tx, []dialects.InboxRow{InboxRow(1, "orders")}); err != nil {
		t.Fatal(err)
	}
	if err := d.Rollback(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if got := s.list(t, d, dialects.InboxQuery{}); len(got) != 0 {
		t.Fatalf("after rollback: %d rows, want 0", len(got))
	}
	// Nothing of it counts as received: the same id is stored later.
	if got := s.insert(t, d, InboxRow(1, "orders")); !got[0] {
		t.Fatal("a rolled-back id is reported as a duplicate")
	}
}

// InboxLargeBatch is how many rows InboxInsertLargeBatch stores in one call.
const InboxLargeBatch = 10_000

func (s inboxSuite[TTx]) insertLargeBatch(t *testing.T) {
	d := s.h.Open(t)
	rows := make([]dialects.InboxRow, InboxLargeBatch)
	for i := range rows {
		// IDs deliberately not in lexical order: seq follows the call.
		rows[i] = InboxRow(InboxLargeBatch-i, "orders")
	}
	s.insert(t, d, rows[:10]...)
	stored := s.insert(t, d, rows...)
	for i, ok := range stored {
		if ok != (i >= 10) {
			t.Fatalf("row %d stored = %v, want %v", i, ok, i >= 10)
		}
	}
	got := s.list(t, d, dialects.InboxQuery{})
	if len(got) != len(rows) {
		t.Fatalf("%d rows, want %d", len(got), len(rows))
	}
	for i := range got {
		if got[i].ID != rows[i].ID || !bytes.Equal(got[i].Payload, rows[i].Payload) {
			t.Fatalf("row %d is %s, want %s (arrival order)", i, got[i].ID, rows[i].ID)
		}
	}
}

// deadLetter stores r and moves it to the dead letters with reason and
// error, through a claim.
func (s inboxSuite[TTx]) deadLetter(t *testing.T, d dialects.Dialect[TTx], r dialects.InboxRow, reason, msg string) {
	t.Helper()
	s.insert(t, d, r)
	token := "dead-" + r.Source + "-" + r.ID
	ctx := ctxFor(t)
	rows, err := d.ClaimInbox(ctx, dialects.InboxClaim{Token: token, Worker: "w", Limit: 1, Lease: inboxLease, Topics: []string{r.Topic}})
	if err != nil || len(rows) != 1 || rows[0].ID != r.ID {
		t.Fatalf("claim %s for the dead letters: %v, %v", r.ID, inboxIDs(rows), err)
	}
	if n := s.settle(t, d, token, dialects.InboxOutcome{Source: r.Source, ID: r.ID, Kind: dialects.InboxDead, Reason: reason, Error: msg}); n != 1 {
		t.Fatalf("FinishInbox dead = %d, want 1", n)
	}
}

func (s inboxSuite[TTx]) deadLetters(t *testing.T) {
	d := s.h.Open(t)
	start := time.Now()
	a, b, c := InboxRow(1, "orders"), InboxRow(2, "orders"), InboxRow(3, "billing")
	a.Key, a.ExpiresAt = "k", time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	b.Topic = "topic.other"
	s.deadLetter(t, d, a, "handler_error", "boom")
	s.deadLetter(t, d, b, "no_handler", "no handler for topic.other")
	s.deadLetter(t, d, c, "decode_error", "bad json")
	if got := s.list(t, d, dialects.InboxQuery{}); len(got) != 0 {
		t.Fatalf("inbox holds %v after the moves, want nothing", inboxIDs(got))
	}
	all := s.dead(t, d, dialects.DeadLetterQuery{})
	if len(all) != 3 {
		t.Fatalf("%d dead letters, want 3", len(all))
	}
	g := all[0]
	if g.Source != a.Source || g.ID != a.ID || g.Topic != a.Topic || g.Key != "k" || !maps.Equal(g.Headers, a.Headers) ||
		!bytes.Equal(g.Payload, a.Payload) || !g.CreatedAt.Equal(a.CreatedAt) || !g.ExpiresAt.Equal(a.ExpiresAt) ||
		g.Reason != "handler_error" || g.Attempts != 1 || g.LastError != "boom" || !g.ReplayedAt.IsZero() {
		t.Fatalf("dead letter %+v does not keep the message", g)
	}
	if len(g.Errors) != 1 || g.Errors[0].Attempt != 1 || g.Errors[0].Error != "boom" {
		t.Fatalf("dead letter errors %+v, want one entry for attempt 1", g.Errors)
	}
	inboxNear(t, "error time", g.Errors[0].At, start, 5*time.Second)
	inboxNear(t, "FirstFailedAt", g.FirstFailedAt, g.Errors[0].At, 5*time.Millisecond)
	inboxNear(t, "FailedAt", g.FailedAt, start, 5*time.Second)

	for _, c := range []struct {
		q    dialects.DeadLetterQuery
		want []string
	}{
		{dialects.DeadLetterQuery{Source: "orders"}, []string{inboxID(1), inboxID(2)}},
		{dialects.DeadLetterQuery{Topic: "topic.other"}, []string{inboxID(2)}},
		{dialects.DeadLetterQuery{Reason: "decode_error"}, []string{inboxID(3)}},
		{dialects.DeadLetterQuery{IDs: []string{inboxID(3), inboxID(1)}}, []string{inboxID(1), inboxID(3)}},
		{dialects.DeadLetterQuery{Since: start.Add(-time.Minute)}, []string{inboxID(1), inboxID(2), inboxID(3)}},
		{dialects.DeadLetterQuery{Since: time.Now().Add(time.Minute)}, nil},
		{dialects.DeadLetterQuery{Before: time.Now().Add(time.Minute), Source: "billing"}, []string{inboxID(3)}},
		{dialects.DeadLetterQuery{Before: start.Add(-time.Minute)}, nil},
		{dialects.DeadLetterQuery{Limit: 2}, []string{inboxID(1), inboxID(2)}},
		{dialects.DeadLetterQuery{Source: "billing", Reason: "handler_error"}, nil},
	} {
		inboxWant(t, fmt.Sprintf("filter %+v", c.q), inboxDeadIDs(s.dead(t, d, c.q)), c.want...)
	}

	// Purge by filter.
	ctx := ctxFor(t)
	n, err := d.PurgeDeadLetters(ctx, dialects.DeadLetterQuery{Side: dialects.SideInbox, Source: "orders", Limit: 1})
	if err != nil || n != 1 {
		t.Fatalf("PurgeDeadLetters(limit 1) = %d, %v; want 1", n, err)
	}
	inboxWant(t, "after purging one", inboxDeadIDs(s.dead(t, d, dialects.DeadLetterQuery{})), inboxID(2), inboxID(3))
	n, err = d.PurgeDeadLetters(ctx, dialects.DeadLetterQuery{Side: dialects.SideInbox, Reason: "decode_error"})
	if err != nil || n != 1 {
		t.Fatalf("PurgeDeadLetters(reason) = %d, %v; want 1", n, err)
	}
	inboxWant(t, "after purging by reason", inboxDeadIDs(s.dead(t, d, dialects.DeadLetterQuery{})), inboxID(2))
}

func (s inboxSuite[TTx]) dead(t *testing.T, d dialects.Dialect[TTx], q dialects.DeadLetterQuery) []dialects.DeadLetterRow {
	t.Helper()
	q.Side = dialects.SideInbox // as package inbox asks
	rows, err := d.ListDeadLetters(ctxFor(t), q)
	if err != nil {
		t.Fatalf("ListDeadLetters: %v", err)
	}
	return rows
}

func inboxDeadIDs(rows []dialects.DeadLetterRow) []string {
	var out []string
	for _, r := range rows {
		out = append(out, r.ID)
	}
	return out
}

func (s inboxSuite[TTx]) insertDeadLetterDuplicate(t *testing.T) {
	d := s.h.Open(t)
	s.deadLetter(t, d, InboxRow(1, "orders"), "permanent", "no")
	if got := s.insert(t, d, InboxRow(1, "orders"), InboxRow(1, "billing")); !slices.Equal(got, []bool{false, true}) {
		t.Fatalf("stored = %v, want [false true]: a dead-lettered message is a duplicate of its source only", got)
	}
	if got := s.list(t, d, dialects.InboxQuery{Source: "orders"}); len(got) != 0 {
		t.Fatalf("inbox holds %v for orders, want nothing", inboxIDs(got))
	}
}

func (s inboxSuite[TTx]) claim(t *testing.T) {
	d := s.h.Open(t)
	rows := []dialects.InboxRow{InboxRow(1, "orders"), InboxRow(2, "orders"), InboxRow(3, "orders"), InboxRow(4, "orders"), InboxRow(5, "orders")}
	rows[4].RunAt = time.Now().Add(time.Hour) // scheduled: not due
	s.insert(t, d, rows...)
	before := time.Now()
	got := s.claimN(t, d, "tok-a", 3, inboxLease)
	inboxWant(t, "first claim", inboxIDs(got), inboxID(1), inboxID(2), inboxID(3))
	for _, r := range got {
		if r.State != dialects.InboxStateRunning || r.Attempts != 1 || r.LeaseToken != "tok-a" || r.LockedBy != "w-tok-a" || r.Expired {
			t.Fatalf("claimed row %+v: want running, attempt 1, leased to tok-a", r)
		}
		inboxNear(t, "LockedUntil", r.LockedUntil, before.Add(inboxLease), 5*time.Second)
		if len(r.Payload) == 0 || len(r.Headers) != 2 || r.Topic != "topic.created" {
			t.Fatalf("claimed row without its message: %+v", r)
		}
	}
	if stored := s.one(t, d, "orders", inboxID(2)); stored.State != dialects.InboxStateRunning || stored.LeaseToken != "tok-a" || stored.Attempts != 1 {
		t.Fatalf("stored row after claim: %+v", stored)
	}
	inboxWant(t, "second claim", inboxIDs(s.claimN(t, d, "tok-b", 3, inboxLease)), inboxID(4))
	inboxWant(t, "third claim", inboxIDs(s.claimN(t, d, "tok-c", 3, inboxLease)))

	ctx := ctxFor(t)
	for _, bad := range []dialects.InboxClaim{{Limit: 1, Lease: time.Second}, {Token: "x", Lease: time.Second}, {Token: "x", Limit: 1}} {
		if _, err := d.ClaimInbox(ctx, bad); err == nil {
			t.Fatalf("ClaimInbox(%+v) = nil error", bad)
		}
	}
}

func (s inboxSuite[TTx]) claimTopics(t *testing.T) {
	d := s.h.Open(t)
	rows := []dialects.InboxRow{InboxRow(1, "orders"), InboxRow(2, "orders"), InboxRow(3, "orders")}
	rows[0].Topic, rows[1].Topic, rows[2].Topic = "a", "b", `c'\"x`
	s.insert(t, d, rows...)
	ctx := ctxFor(t)
	got, err := d.ClaimInbox(ctx, dialects.InboxClaim{Token: "t1", Limit: 10, Lease: inboxLease, Topics: []string{"b", "z"}})
	if err != nil {
		t.Fatal(err)
	}
	inboxWant(t, "Topics", inboxIDs(got), inboxID(2))
	got, err = d.ClaimInbox(ctx, dialects.InboxClaim{Token: "t2", Limit: 10, Lease: inboxLease, ExcludeTopics: []string{`c'\"x`}})
	if err != nil {
		t.Fatal(err)
	}
	inboxWant(t, "ExcludeTopics", inboxIDs(got), inboxID(1))
	got, err = d.ClaimInbox(ctx, dialects.InboxClaim{Token: "t3", Limit: 10, Lease: inboxLease, Topics: []string{`c'\"x`}})
	if err != nil {
		t.Fatal(err)
	}
	inboxWant(t, "a topic with quotes and a backslash", inboxIDs(got), inboxID(3))
}

func (s inboxSuite[TTx]) claimOrderingKeys(t *testing.T) {
	d := s.h.Open(t)
	keyed := func(i int, source, key string) dialects.InboxRow {
		r := InboxRow(i, source)
		r.Key = key
		return r
	}
	s.insert(t, d, keyed(1, "orders", "k1"), keyed(2, "orders", "k1"), keyed(3, "orders", "k2"),
		keyed(4, "orders", ""), keyed(5, "orders", "k1"), keyed(6, "orders", ""), keyed(7, "billing", "k1"),
		keyed(8, "orders", "k2"))
	got := s.claimN(t, d, "t1", 10, inboxLease)
	inboxWant(t, "heads of each key and unkeyed rows", inboxIDs(got), inboxID(1), inboxID(3), inboxID(4), inboxID(6), inboxID(7))
	inboxWant(t, "while the heads run", inboxIDs(s.claimN(t, d, "t2", 10, inboxLease)))
	// k1's head handled: the next of k1 comes.
	if n := s.settle(t, d, "t1", inboxDone(got[0])); n != 1 {
		t.Fatalf("finish = %d", n)
	}
	next := s.claimN(t, d, "t3", 10, inboxLease)
	inboxWant(t, "after the head", inboxIDs(next), inboxID(2))
	// Waiting for a retry holds the key back.
	if n := s.settle(t, d, "t3", dialects.InboxOutcome{Source: "orders", ID: inboxID(2), Kind: dialects.InboxRetry, RetryAfter: time.Hour, Error: "later"}); n != 1 {
		t.Fatalf("finish = %d", n)
	}
	inboxWant(t, "behind a retrying head", inboxIDs(s.claimN(t, d, "t4", 10, inboxLease)))
	// A dead head releases its key.
	if n := s.settle(t, d, "t1", dialects.InboxOutcome{Source: "orders", ID: inboxID(3), Kind: dialects.InboxDead, Reason: "permanent", Error: "x"}); n != 1 {
		t.Fatalf("finish = %d", n)
	}
	inboxWant(t, "after a dead head", inboxIDs(s.claimN(t, d, "t5", 10, inboxLease)), inboxID(8))
}

func (s inboxSuite[TTx]) claimExpired(t *testing.T) {
	d := s.h.Open(t)
	r := InboxRow(1, "orders")
	r.ExpiresAt = time.Now().Add(-time.Minute)
	live := InboxRow(2, "orders")
	live.ExpiresAt = time.Now().Add(time.Hour)
	s.insert(t, d, r, live)
	got := s.claimN(t, d, "t", 10, inboxLease)
	if len(got) != 2 || !got[0].Expired || got[0].Attempts != 0 || got[1].Expired || got[1].Attempts != 1 {
		t.Fatalf("claim = %+v; want %s expired with attempts 0, %s live with 1", got, inboxID(1), inboxID(2))
	}
}

func (s inboxSuite[TTx]) concurrentClaims(t *testing.T) {
	d := s.h.Open(t)
	const n, claimers = 300, 4
	rows := make([]dialects.InboxRow, n)
	for i := range rows {
		rows[i] = InboxRow(i, "orders")
	}
	s.insert(t, d, rows...)
	ctx := ctxFor(t)
	var (
		mu   sync.Mutex
		seen = map[string]int{}
		wg   sync.WaitGroup
		errs = make(chan error, claimers)
	)
	for c := range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				got, err := d.ClaimInbox(ctx, dialects.InboxClaim{Token: fmt.Sprintf("c%d-%d", c, i), Limit: 7, Lease: inboxLease})
				if err != nil {
					errs <- err
					return
				}
				if len(got) == 0 {
					return
				}
				mu.Lock()
				for _, r := range got {
					seen[r.ID]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("ClaimInbox: %v", err)
	}
	if len(seen) != n {
		t.Fatalf("%d rows claimed, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("%s claimed %d times", id, c)
		}
	}
	for _, r := range s.list(t, d, dialects.InboxQuery{}) {
		if r.State != dialects.InboxStateRunning || r.Attempts != 1 {
			t.Fatalf("row %+v after the claims", r)
		}
	}
}

func inboxKeysOf(rows []dialects.InboxRow) []dialects.InboxKey {
	out := make([]dialects.InboxKey, len(rows))
	for i, r := range rows {
		out[i] = dialects.InboxKey{Source: r.Source, ID: r.ID}
	}
	return out
}

func (s inboxSuite[TTx]) lock(t *testing.T) {
	d := s.h.Open(t)
	s.insert(t, d, InboxRow(1, "orders"), InboxRow(2, "orders"), InboxRow(3, "orders"))
	a := s.claimN(t, d, "tok-a", 2, inboxLease)
	b := s.claimN(t, d, "tok-b", 2, inboxLease)
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Rollback(ctx, tx) }()
	keys := append(inboxKeysOf(a), inboxKeysOf(b)...)
	keys = append(keys, dialects.InboxKey{Source: "orders", ID: "missing"})
	held, err := d.LockInbox(ctx, tx, "tok-a", keys)
	if err != nil {
		t.Fatalf("LockInbox: %v", err)
	}
	if !slices.Equal(held, inboxKeysOf(a)) {
		t.Fatalf("LockInbox(tok-a) = %v, want %v", held, inboxKeysOf(a))
	}
	if held, err := d.LockInbox(ctx, tx, "tok-x", inboxKeysOf(a)); err != nil || len(held) != 0 {
		t.Fatalf("LockInbox with a foreign token = %v, %v; want none", held, err)
	}
}

func (s inboxSuite[TTx]) fencing(t *testing.T) {
	d := s.h.Open(t)
	s.insert(t, d, InboxRow(1, "orders"))
	a := s.claimN(t, d, "tok-a", 1, time.Millisecond)
	if len(a) != 1 {
		t.Fatalf("claim: %v", inboxIDs(a))
	}
	time.Sleep(20 * time.Millisecond)
	ctx := ctxFor(t)
	if n, err := d.RescueInbox(ctx, 10); err != nil || n != 1 {
		t.Fatalf("RescueInbox = %d, %v; want 1", n, err)
	}
	b := s.claimN(t, d, "tok-b", 1, inboxLease)
	if len(b) != 1 || b[0].Attempts != 2 {
		t.Fatalf("second claim: %+v", b)
	}
	// A's lock finds nothing; A's late outcomes of every kind change nothing.
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if held, err := d.LockInbox(ctx, tx, "tok-a", inboxKeysOf(a)); err != nil || len(held) != 0 {
		t.Fatalf("LockInbox with the stale token = %v, %v", held, err)
	}
	_ = d.Rollback(ctx, tx)
	for _, o := range []dialects.InboxOutcome{
		inboxDone(a[0]),
		{Source: "orders", ID: a[0].ID, Kind: dialects.InboxRetry, Error: "stale"},
		{Source: "orders", ID: a[0].ID, Kind: dialects.InboxDead, Reason: "handler_error", Error: "stale"},
	} {
		if n := s.settle(t, d, "tok-a", o); n != 0 {
			t.Fatalf("stale FinishInbox kind %d changed %d rows", o.Kind, n)
		}
	}
	r := s.one(t, d, "orders", inboxID(1))
	if r.State != dialects.InboxStateRunning || r.LeaseToken != "tok-b" || r.Attempts != 2 || r.LastError == "stale" {
		t.Fatalf("row after stale outcomes: %+v", r)
	}
	if n := s.settle(t, d, "tok-b", inboxDone(b[0])); n != 1 {
		t.Fatalf("B's FinishInbox = %d, want 1", n)
	}
	// After B's completion, A's completion still changes nothing.
	if n := s.settle(t, d, "tok-a", dialects.InboxOutcome{Source: "orders", ID: a[0].ID, Kind: dialects.InboxRetry, Error: "late"}); n != 0 {
		t.Fatalf("late FinishInbox changed %d rows", n)
	}
	if n := s.settle(t, d, "tok-b", inboxDone(b[0])); n != 0 {
		t.Fatalf("a second FinishInbox by B changed %d rows", n)
	}
	r = s.one(t, d, "orders", inboxID(1))
	if r.State != dialects.InboxStateHandled || r.LastError != "lease of w-tok-a expired before it finished" {
		t.Fatalf("final row %+v", r)
	}
	if len(s.dead(t, d, dialects.DeadLetterQuery{IncludeReplayed: true})) != 0 {
		t.Fatal("a stale dead-letter outcome wrote a dead letter")
	}
}

func (s inboxSuite[TTx]) finishKinds(t *testing.T) {
	d := s.h.Open(t)
	s.insert(t, d, InboxRow(1, "orders"), InboxRow(2, "orders"), InboxRow(3, "orders"), InboxRow(4, "orders"), InboxRow(5, "orders"))
	got := s.claimN(t, d, "tok", 5, inboxLease)
	if len(got) != 5 {
		t.Fatalf("claim: %v", inboxIDs(got))
	}
	before := time.Now()
	n := s.settle(t, d, "tok",
		inboxDone(got[0]),
		dialects.InboxOutcome{Source: "orders", ID: got[1].ID, Kind: dialects.InboxRetry, RetryAfter: time.Hour, Error: "boom"},
		dialects.InboxOutcome{Source: "orders", ID: got[2].ID, Kind: dialects.InboxRetry, UndoAttempt: true},
		dialects.InboxOutcome{Source: "orders", ID: got[3].ID, Kind: dialects.InboxDead, Reason: "permanent", Error: "never"},
		dialects.InboxOutcome{Source: "orders", ID: "not-claimed", Kind: dialects.InboxHandled},
	)
	if n != 4 {
		t.Fatalf("FinishInbox = %d, want 4", n)
	}
	h := s.one(t, d, "orders", got[0].ID)
	if h.State != dialects.InboxStateHandled || h.LeaseToken != "" || h.LockedBy != "" || !h.LockedUntil.IsZero() || h.Attempts != 1 {
		t.Fatalf("handled row %+v", h)
	}
	inboxNear(t, "HandledAt", h.HandledAt, before, 5*time.Second)
	r := s.one(t, d, "orders", got[1].ID)
	if r.State != dialects.InboxStateReady || r.Attempts != 1 || r.LastError != "boom" || r.LeaseToken != "" || !r.HandledAt.IsZero() {
		t.Fatalf("retried row %+v", r)
	}
	inboxNear(t, "retry RunAt", r.RunAt, before.Add(time.Hour), 5*time.Second)
	if len(r.Errors) != 1 || r.Errors[0].Attempt != 1 || r.Errors[0].Error != "boom" {
		t.Fatalf("retried row errors %+v", r.Errors)
	}
	inboxNear(t, "error time", r.Errors[0].At, before, 5*time.Second)
	u := s.one(t, d, "orders", got[2].ID)
	if u.State != dialects.InboxStateReady || u.Attempts != 0 || u.LastError != "" || len(u.Errors) != 0 {
		t.Fatalf("undone row %+v", u)
	}
	inboxNear(t, "undone RunAt", u.RunAt, before, 5*time.Second)
	if rows := s.list(t, d, dialects.InboxQuery{IDs: []string{got[3].ID}}); len(rows) != 0 {
		t.Fatalf("dead row still in the inbox: %+v", rows)
	}
	dl := s.dead(t, d, dialects.DeadLetterQuery{})
	if len(dl) != 1 || dl[0].ID != got[3].ID || dl[0].Reason != "permanent" || dl[0].LastError != "never" || dl[0].Attempts != 1 ||
		len(dl[0].Errors) != 1 || dl[0].Errors[0].Error != "never" {
		t.Fatalf("dead letters %+v", dl)
	}
	if still := s.one(t, d, "orders", got[4].ID); still.State != dialects.InboxStateRunning || still.LeaseToken != "tok" {
		t.Fatalf("row without an outcome %+v", still)
	}
	// The undone row is due again at once.
	again := s.claimN(t, d, "tok2", 5, inboxLease)
	inboxWant(t, "claim after finish", inboxIDs(again), got[2].ID)
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.FinishInbox(ctx, tx, "tok", []dialects.InboxOutcome{{Source: "orders", ID: got[4].ID, Kind: dialects.InboxDead}}); err == nil {
		t.Fatal("FinishInbox accepted a dead outcome without a reason")
	}
	_ = d.Rollback(ctx, tx)
}

func (s inboxSuite[TTx]) savepoints(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	step := func(a dialects.SavepointAction) {
		t.Helper()
		if err := d.InboxSavepoint(ctx, tx, a); err != nil {
			_ = d.Rollback(ctx, tx)
			t.Fatalf("InboxSavepoint(%d): %v", a, err)
		}
	}
	write := func(i int) {
		t.Helper()
		if _, err := d.InsertInbox(ctx, tx, []dialects.InboxRow{InboxRow(i, "orders")}); err != nil {
			_ = d.Rollback(ctx, tx)
			t.Fatal(err)
		}
	}
	write(0)
	step(dialects.SavepointSet)
	write(1)
	step(dialects.SavepointRollback) // 1 undone; the savepoint stays
	write(2)
	step(dialects.SavepointReleaseSet) // 2 kept
	write(3)
	step(dialects.SavepointRollback) // 3 undone
	write(4)
	step(dialects.SavepointRelease) // 4 kept
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	inboxWant(t, "rows after savepoints", inboxIDs(s.list(t, d, dialects.InboxQuery{})), inboxID(0), inboxID(2), inboxID(4))
}

func (s inboxSuite[TTx]) rescue(t *testing.T) {
	d := s.h.Open(t)
	s.insert(t, d, InboxRow(1, "orders"), InboxRow(2, "orders"))
	short := s.claimN(t, d, "short", 1, time.Millisecond)
	long := s.claimN(t, d, "long", 1, inboxLease)
	if len(short) != 1 || len(long) != 1 {
		t.Fatal("claims")
	}
	time.Sleep(20 * time.Millisecond)
	ctx := ctxFor(t)
	if n, err := d.RescueInbox(ctx, 10); err != nil || n != 1 {
		t.Fatalf("RescueInbox = %d, %v; want 1", n, err)
	}
	r := s.one(t, d, "orders", short[0].ID)
	if r.State != dialects.InboxStateReady || r.Attempts != 1 || r.LeaseToken != "" || r.LockedBy != "" ||
		r.LastError != "lease of w-short expired before it finished" || len(r.Errors) != 1 || r.Errors[0].Attempt != 1 {
		t.Fatalf("rescued row %+v", r)
	}
	if l := s.one(t, d, "orders", long[0].ID); l.State != dialects.InboxStateRunning || l.LeaseToken != "long" {
		t.Fatalf("row with a live lease was touched: %+v", l)
	}
	if n, err := d.RescueInbox(ctx, 10); err != nil || n != 0 {
		t.Fatalf("second RescueInbox = %d, %v; want 0", n, err)
	}
	if _, err := d.RescueInbox(ctx, 0); err == nil {
		t.Fatal("RescueInbox(0) = nil error")
	}
}

// rescueSkipsLocked: a batch transaction that holds its rows (LockInbox)
// keeps them even after their lease expired, and the rescuer does not wait
// for it (SKIP LOCKED). SQLite serializes writers, so a rescuer cannot run
// beside a batch transaction at all; the test is for databases with row
// locks.
func (s inboxSuite[TTx]) rescueSkipsLocked(t *testing.T) {
	d := s.h.Open(t)
	if d.Name() == "sqlite" {
		t.Skip("sqlite: one writer; a rescuer waits for the batch transaction to end")
	}
	s.insert(t, d, InboxRow(1, "orders"), InboxRow(2, "orders"))
	held := s.claimN(t, d, "held", 1, time.Millisecond)
	free := s.claimN(t, d, "free", 1, time.Millisecond)
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Rollback(ctx, tx) }()
	if k, err := d.LockInbox(ctx, tx, "held", inboxKeysOf(held)); err != nil || len(k) != 1 {
		t.Fatalf("LockInbox = %v, %v", k, err)
	}
	time.Sleep(20 * time.Millisecond)
	// A rescuer that waited for the lock would wait until the rollback at
	// the end, that is until this deadline: a minute bounds that hang
	// without betting on how fast a rescue is on a loaded machine.
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	n, err := d.RescueInbox(rctx, 10)
	if err != nil || n != 1 {
		t.Fatalf("RescueInbox beside a batch = %d, %v; want 1 (the unlocked row), without waiting", n, err)
	}
	if r := s.one(t, d, "orders", free[0].ID); r.State != dialects.InboxStateReady {
		t.Fatalf("unlocked expired row not rescued: %+v", r)
	}
	if n, err := d.FinishInbox(ctx, tx, "held", []dialects.InboxOutcome{inboxDone(held[0])}); err != nil || n != 1 {
		t.Fatalf("FinishInbox of the held row = %d, %v", n, err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if r := s.one(t, d, "orders", held[0].ID); r.State != dialects.InboxStateHandled {
		t.Fatalf("held row %+v, want handled", r)
	}
}

func (s inboxSuite[TTx]) purge(t *testing.T) {
	d := s.h.Open(t)
	var rows []dialects.InboxRow
	for i := range 5 {
		rows = append(rows, InboxRow(i, "orders"))
	}
	s.insert(t, d, rows...)
	got := s.claimN(t, d, "tok", 4, inboxLease) // the fifth stays ready
	outs := []dialects.InboxOutcome{inboxDone(got[0]), inboxDone(got[1]), inboxDone(got[2]),
		{Source: "orders", ID: got[3].ID, Kind: dialects.InboxRetry}}
	if n := s.settle(t, d, "tok", outs...); n != 4 {
		t.Fatalf("finish = %d", n)
	}
	ctx := ctxFor(t)
	if n, err := d.PurgeInbox(ctx, time.Hour, 10); err != nil || n != 0 {
		t.Fatalf("PurgeInbox(1h) = %d, %v; want 0", n, err)
	}
	time.Sleep(20 * time.Millisecond)
	if n, err := d.PurgeInbox(ctx, 5*time.Millisecond, 2); err != nil || n != 2 {
		t.Fatalf("PurgeInbox(limit 2) = %d, %v; want 2", n, err)
	}
	if n, err := d.PurgeInbox(ctx, 5*time.Millisecond, 2); err != nil || n != 1 {
		t.Fatalf("PurgeInbox again = %d, %v; want 1", n, err)
	}
	inboxWant(t, "left after purge", inboxIDs(s.list(t, d, dialects.InboxQuery{})), got[3].ID, inboxID(4))
	if _, err := d.PurgeInbox(ctx, time.Hour, 0); err == nil {
		t.Fatal("PurgeInbox with limit 0 = nil error")
	}
}

func (s inboxSuite[TTx]) stats(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	if got, err := d.InboxStats(ctx); err != nil || got.InboxCounts != (dialects.InboxCounts{}) || got.Topics != nil {
		t.Fatalf("InboxStats of an empty inbox = %+v, %v; want zeros and no topics", got, err)
	}
	row := func(i int, source, topic string, runAt time.Time) dialects.InboxRow {
		r := InboxRow(i, source)
		r.Topic, r.RunAt = topic, runAt
		return r
	}
	// Two dead letters, one of them replayed later (it is then a ready row,
	// no longer a pending dead letter); gone.away has nothing else.
	replayed := row(6, "orders", "order.placed", time.Time{})
	s.deadLetter(t, d, replayed, "handler_error", "x")
	s.deadLetter(t, d, row(7, "orders", "gone.away", time.Time{}), "no_handler", "x")
	// Four rows due now, three of order.placed from two sources and one of
	// refund.issued, and two due in an hour.
	later := time.Now().Add(time.Hour)
	s.insert(t, d,
		row(0, "orders", "order.placed", time.Time{}),
		row(1, "orders", "order.placed", time.Time{}),
		row(2, "shop", "order.placed", time.Time{}),
		row(3, "orders", "refund.issued", time.Time{}),
		row(4, "orders", "order.placed", later),
		row(5, "orders", "invoice.paid", later))
	got := s.claimN(t, d, "tok", 10, inboxLease)
	ids := inboxIDs(got)
	slices.Sort(ids)
	inboxWant(t, "claimed", ids, inboxID(0), inboxID(1), inboxID(2), inboxID(3))
	// 0 handled, 1 waits for a retry, 2 (shop's) stays running, 3 is dead.
	s.settle(t, d, "tok", inboxDone(row(0, "orders", "", time.Time{})),
		dialects.InboxOutcome{Source: "orders", ID: inboxID(1), Kind: dialects.InboxRetry, RetryAfter: time.Hour, Error: "x"},
		dialects.InboxOutcome{Source: "orders", ID: inboxID(3), Kind: dialects.InboxDead, Reason: "permanent", Error: "x"})
	if n, err := d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{IDs: []string{replayed.ID}}); err != nil || n != 1 {
		t.Fatalf("ReplayDeadLetters = %d, %v; want 1", n, err)
	}
	// The handled row was handled just now: it is one of the last minute's.
	want := dialects.InboxStats{
		InboxCounts: dialects.InboxCounts{Ready: 3, Retrying: 1, Running: 1, Handled: 1, Dead: 2, HandledLastMinute: 1},
		Topics: map[string]dialects.InboxCounts{
			"order.placed":  {Ready: 2, Retrying: 1, Running: 1, Handled: 1, HandledLastMinute: 1},
			"refund.issued": {Dead: 1},
			"invoice.paid":  {Ready: 1},
			"gone.away":     {Dead: 1},
		},
	}
	st, err := d.InboxStats(ctx)
	if err != nil || st.InboxCounts != want.InboxCounts || !maps.Equal(st.Topics, want.Topics) {
		t.Fatalf("InboxStats = %+v, %v; want %+v", st, err, want)
	}
}

func (s inboxSuite[TTx]) replay(t *testing.T) {
	d := s.h.Open(t)
	r := InboxRow(1, "orders")
	r.Key = "k"
	r.ExpiresAt = time.Now().Add(time.Hour)
	s.deadLetter(t, d, r, "handler_error", "first life")
	s.deadLetter(t, d, InboxRow(2, "orders"), "no_handler", "other")
	before := s.dead(t, d, dialects.DeadLetterQuery{IDs: []string{r.ID}})[0]
	ctx := ctxFor(t)
	n, err := d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{IDs: []string{r.ID}})
	if err != nil || n != 1 {
		t.Fatalf("ReplayDeadLetters = %d, %v; want 1", n, err)
	}
	in := s.one(t, d, "orders", r.ID)
	if in.State != dialects.InboxStateReady || in.Attempts != 0 || in.Key != "k" || !bytes.Equal(in.Payload, r.Payload) ||
		!maps.Equal(in.Headers, r.Headers) || !in.CreatedAt.Equal(r.CreatedAt) || !in.ExpiresAt.IsZero() ||
		in.ReplayedAt.IsZero() || in.LastError != "" || len(in.Errors) != 1 || in.Errors[0].Error != "first life" {
		t.Fatalf("replayed row %+v", in)
	}
	inboxNear(t, "replayed RunAt", in.RunAt, time.Now(), 5*time.Second)
	dl := s.dead(t, d, dialects.DeadLetterQuery{IDs: []string{r.ID}, IncludeReplayed: true})
	if len(dl) != 1 || dl[0].ReplayedAt.IsZero() {
		t.Fatalf("dead letter after replay %+v", dl)
	}
	if pending := s.dead(t, d, dialects.DeadLetterQuery{}); len(pending) != 1 || pending[0].ID != inboxID(2) {
		t.Fatalf("pending dead letters after replay: %v", inboxDeadIDs(pending))
	}
	// Twice: nothing more.
	if n, err := d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{IDs: []string{r.ID}}); err != nil || n != 0 {
		t.Fatalf("second replay = %d, %v; want 0", n, err)
	}
	if got := s.list(t, d, dialects.InboxQuery{}); len(got) != 1 {
		t.Fatalf("inbox after two replays: %v", inboxIDs(got))
	}
	// A resend of a replayed message is a duplicate.
	if got := s.insert(t, d, r); got[0] {
		t.Fatal("resend of a replayed message stored")
	}
	// It fails again: the same dead-letter row, updated, pending again.
	token := "again"
	if c := s.claimN(t, d, token, 5, inboxLease); len(c) != 1 || c[0].Attempts != 1 {
		t.Fatalf("claim of the replayed message: %+v", c)
	}
	time.Sleep(5 * time.Millisecond)
	if n := s.settle(t, d, token, dialects.InboxOutcome{Source: "orders", ID: r.ID, Kind: dialects.InboxDead, Reason: "permanent", Error: "second life"}); n != 1 {
		t.Fatalf("finish = %d", n)
	}
	after := s.dead(t, d, dialects.DeadLetterQuery{IDs: []string{r.ID}})
	if len(after) != 1 {
		t.Fatalf("dead letters of the message after failing again: %d, want 1 (pending)", len(after))
	}
	a := after[0]
	if a.Seq != before.Seq || a.Reason != "permanent" || a.LastError != "second life" || a.Attempts != 1 ||
		!a.FirstFailedAt.Equal(before.FirstFailedAt) || !a.FailedAt.After(before.FailedAt) || a.ReplayedAt.IsZero() {
		t.Fatalf("dead letter after failing again %+v (before %+v)", a, before)
	}
	if len(a.Errors) != 2 || a.Errors[0].Error != "first life" || a.Errors[1].Error != "second life" {
		t.Fatalf("error history across the replay %+v", a.Errors)
	}
	// Replay all pending, with a limit.
	if n, err := d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{Limit: 1}); err != nil || n != 1 {
		t.Fatalf("replay with limit = %d, %v; want 1", n, err)
	}
	inboxWant(t, "replayed oldest first", inboxIDs(s.list(t, d, dialects.InboxQuery{})), r.ID)
	if n, err := d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{}); err != nil || n != 1 {
		t.Fatalf("replay all = %d, %v; want 1", n, err)
	}
}

func (s inboxSuite[TTx]) unmigrated(t *testing.T) {
	d := s.h.OpenUnmigrated(t)
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.InsertInbox(ctx, tx, []dialects.InboxRow{InboxRow(1, "orders")})
	_ = d.Rollback(ctx, tx)
	assertSchemaError(t, "InsertInbox", err, d.Name())
	_, err = d.ClaimInbox(ctx, dialects.InboxClaim{Token: "t", Limit: 1, Lease: time.Second})
	assertSchemaError(t, "ClaimInbox", err, d.Name())
	_, err = d.InboxStats(ctx)
	assertSchemaError(t, "InboxStats", err, d.Name())
	if !errors.Is(err, dialects.ErrSchema) {
		t.Fatal("not ErrSchema")
	}
}

// insertHandled: rows asked to be stored handled are, unless they are not
// due, expired, or wait behind an unfinished row of their key; the states
// are written back; duplicates stay duplicates; a handled row is never
// claimed and counts as handled.
func (s inboxSuite[TTx]) insertHandled(t *testing.T) {
	d := s.h.Open(t)
	// An unfinished keyed row, and a handled one of another key.
	old := InboxRow(1, "orders")
	old.Key = "k-busy"
	doneOld := InboxRow(2, "orders")
	doneOld.Key = "k-free"
	s.insert(t, d, old, doneOld)
	token := "tok-done"
	claimed := s.claimN(t, d, token, 2, inboxLease)
	for _, r := range claimed {
		if r.ID == doneOld.ID {
			if n := s.settle(t, d, token, inboxDone(r)); n != 1 {
				t.Fatalf("settle = %d", n)
			}
		} else if n := s.settle(t, d, token, dialects.InboxOutcome{Source: r.Source, ID: r.ID, Kind: dialects.InboxRetry, UndoAttempt: true}); n != 1 {
			t.Fatalf("release = %d", n)
		}
	}

	handled := func(r dialects.InboxRow) dialects.InboxRow {
		r.State = dialects.InboxStateHandled
		return r
	}
	plain := InboxRow(3, "orders")
	keyBusy := InboxRow(4, "orders")
	keyBusy.Key = "k-busy"
	keyFree := InboxRow(5, "orders")
	keyFree.Key = "k-free"
	later := InboxRow(6, "orders")
	later.RunAt = time.Now().Add(time.Hour)
	expired := InboxRow(7, "orders")
	expired.ExpiresAt = time.Now().Add(-time.Minute)
	notAsked := InboxRow(8, "orders")
	dup := InboxRow(2, "orders") // stored (and handled) already
	rows := []dialects.InboxRow{handled(plain), handled(keyBusy), handled(keyFree), handled(later), handled(expired), notAsked, handled(dup)}

	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := d.InsertInbox(ctx, tx, rows)
	if err != nil {
		_ = d.Rollback(ctx, tx)
		t.Fatalf("InsertInbox: %v", err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if want := []bool{true, true, true, true, true, true, false}; !slices.Equal(stored, want) {
		t.Fatalf("stored = %v, want %v", stored, want)
	}
	wantState := []string{"handled", "ready", "handled", "ready", "ready", "ready"}
	for i, w := range wantState {
		if rows[i].State != w {
			t.Errorf("row %s: written-back State = %q, want %q", rows[i].ID, rows[i].State, w)
		}
		got := s.one(t, d, rows[i].Source, rows[i].ID)
		if got.State != w {
			t.Errorf("row %s: stored state = %q, want %q", rows[i].ID, got.State, w)
		}
		switch w {
		case "handled":
			if got.Attempts != 1 || got.HandledAt.IsZero() {
				t.Errorf("row %s stored handled: attempts %d, handled_at %v; want 1 and set", got.ID, got.Attempts, got.HandledAt)
			}
			inboxNear(t, "handled_at of "+got.ID, got.HandledAt, time.Now(), time.Minute)
		default:
			if got.Attempts != 0 || !got.HandledAt.IsZero() {
				t.Errorf("row %s stored ready: attempts %d, handled_at %v; want 0 and unset", got.ID, got.Attempts, got.HandledAt)
			}
		}
	}
	// The duplicate is untouched, and the handled rows are never claimed.
	if got := s.one(t, d, dup.Source, dup.ID); got.State != "handled" || got.Attempts != 1 {
		t.Errorf("duplicate: state %q attempts %d, want handled 1", got.State, got.Attempts)
	}
	var ids []string
	for {
		c := s.claimN(t, d, fmt.Sprintf("tok-%d", len(ids)), 100, inboxLease)
		if len(c) == 0 {
			break
		}
		ids = append(ids, inboxIDs(c)...)
		for _, r := range c {
			s.settle(t, d, fmt.Sprintf("tok-%d", len(ids)-len(c)), inboxDone(r))
		}
	}
	slices.Sort(ids)
	inboxWant(t, "claimed after the insert", ids, old.ID, keyBusy.ID, expired.ID, notAsked.ID)
}

// insertHandledFinish: a row stored handled under a token (the inline
// caller's) can still be settled otherwise by FinishInbox with that token in
// the same transaction: retried (ready, its error recorded, its attempt
// kept or taken back) or dead-lettered. Another token, or none, settles
// nothing; a row stored handled without a token is settled by no token.
func (s inboxSuite[TTx]) insertHandledFinish(t *testing.T) {
	d := s.h.Open(t)
	const token = "tok-inline"
	handled := func(n int, tok string) dialects.InboxRow {
		r := InboxRow(n, "orders")
		r.State, r.LeaseToken = dialects.InboxStateHandled, tok
		return r
	}
	ok, retried, released, dead, untokened := handled(1, token), handled(2, token), handled(3, token), handled(4, token), handled(5, "")
	rows := []dialects.InboxRow{ok, retried, released, dead, untokened}
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Rollback(ctx, tx) }()
	stored, err := d.InsertInbox(ctx, tx, rows)
	if err != nil {
		t.Fatalf("InsertInbox: %v", err)
	}
	if !slices.Equal(stored, []bool{true, true, true, true, true}) {
		t.Fatalf("stored = %v, want all", stored)
	}
	for _, r := range rows {
		if r.State != dialects.InboxStateHandled {
			t.Fatalf("row %s stored %q, want handled", r.ID, r.State)
		}
	}
	outs := []dialects.InboxOutcome{
		{Source: retried.Source, ID: retried.ID, Kind: dialects.InboxRetry, RetryAfter: time.Hour, Error: "boom"},
		{Source: released.Source, ID: released.ID, Kind: dialects.InboxRetry, UndoAttempt: true},
		{Source: dead.Source, ID: dead.ID, Kind: dialects.InboxDead, Reason: "permanent", Error: "bad"},
	}
	for _, other := range []string{"tok-other", ""} {
		if n, err := d.FinishInbox(ctx, tx, other, append(outs, dialects.InboxOutcome{Source: untokened.Source, ID: untokened.ID, Kind: dialects.InboxRetry})); err != nil || n != 0 {
			t.Fatalf("FinishInbox with token %q = %d, %v; want 0 settled", other, n, err)
		}
	}
	if n, err := d.FinishInbox(ctx, tx, token, outs); err != nil || n != 3 {
		t.Fatalf("FinishInbox with the insert's token = %d, %v; want 3", n, err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if got := s.one(t, d, ok.Source, ok.ID); got.State != dialects.InboxStateHandled || got.Attempts != 1 || got.HandledAt.IsZero() {
		t.Errorf("handled row: state %q attempts %d handled_at %v; want handled, 1, set", got.State, got.Attempts, got.HandledAt)
	}
	if got := s.one(t, d, untokened.Source, untokened.ID); got.State != dialects.InboxStateHandled || got.LeaseToken != "" {
		t.Errorf("row stored handled without a token: state %q token %q; want handled, none", got.State, got.LeaseToken)
	}
	got := s.one(t, d, retried.Source, retried.ID)
	if got.State != dialects.InboxStateReady || got.Attempts != 1 || got.LastError != "boom" || len(got.Errors) != 1 ||
		got.Errors[0].Attempt != 1 || !got.HandledAt.IsZero() || got.LeaseToken != "" || !got.RunAt.After(time.Now().Add(50*time.Minute)) {
		t.Errorf("retried row %+v; want ready, attempt 1 kept, error boom recorded, run_at in an hour, no token", got)
	}
	got = s.one(t, d, released.Source, released.ID)
	if got.State != dialects.InboxStateReady || got.Attempts != 0 || got.LastError != "" || got.LeaseToken != "" || got.RunAt.After(time.Now().Add(time.Minute)) {
		t.Errorf("released row %+v; want ready now, attempt taken back, no error, no token", got)
	}
	if rest := s.list(t, d, dialects.InboxQuery{IDs: []string{dead.ID}}); len(rest) != 0 {
		t.Errorf("dead-lettered row still in the inbox: %+v", rest)
	}
	dl := s.dead(t, d, dialects.DeadLetterQuery{})
	if len(dl) != 1 || dl[0].ID != dead.ID || dl[0].Reason != "permanent" || dl[0].LastError != "bad" || dl[0].Attempts != 1 {
		t.Fatalf("dead letters %+v; want %s, permanent, bad, 1 attempt", dl, dead.ID)
	}
	// Nothing stored handled is claimed; the retried row waits an hour and
	// the released one is claimed at once.
	c := s.claimN(t, d, "tok-after", 10, inboxLease)
	inboxWant(t, "claimed after the inline settle", inboxIDs(c), released.ID)
}
