package inbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// TestDeliverDuplicates: the same batch delivered three times, and two
// senders delivering the same ids concurrently: one row per id, every
// delivery acknowledged, the handler's effect exactly once.
func TestDeliverDuplicates(t *testing.T) {
	each(t, testDeliverDuplicates[pgx.Tx], testDeliverDuplicates[*sql.Tx])
}

func testDeliverDuplicates[TTx any](t *testing.T, f *fixture[TTx]) {
	ib, mux := newInbox(t, f, nil)
	mux.Handle("t", effect(f))
	const n = 50
	envs := make([]transport.Envelope, n)
	var ids []string
	for i := range envs {
		envs[i] = envelope(i, "t")
		envs[i].SendAttempt = 3 // the sender's count is not the inbox's
		ids = append(ids, envs[i].ID)
	}
	for round := range 3 {
		res := deliver(t, ib, batch("orders", envs...))
		want := transport.Accepted
		if round > 0 {
			want = transport.Duplicate
		}
		for i, s := range statuses(res, n) {
			if s != want {
				t.Fatalf("delivery %d, envelope %d: %v, want %v", round+1, i, s, want)
			}
		}
	}
	// Two senders, the same new ids, at once: each id accepted once.
	envs2 := make([]transport.Envelope, n)
	for i := range envs2 {
		envs2[i] = envelope(1000+i, "t")
		ids = append(ids, envs2[i].ID)
	}
	var (
		wg      sync.WaitGroup
		results [2]transport.Result
		errs    [2]error
	)
	for s := range 2 {
		wg.Go(func() {
			results[s], errs[s] = ib.Deliver(context.Background(), batch("orders", envs2...))
		})
	}
	wg.Wait()
	for s, err := range errs {
		if err != nil {
			t.Fatalf("sender %d: %v", s, err)
		}
	}
	for i := range n {
		a, b := results[0].Outcome(i).Status, results[1].Outcome(i).Status
		if !(a == transport.Accepted && b == transport.Duplicate) && !(a == transport.Duplicate && b == transport.Accepted) {
			t.Fatalf("envelope %d: senders got %v and %v, want one accepted and one duplicate", i, a, b)
		}
	}
	if got := f.db.int(t, `SELECT count(*) FROM durable_inbox`); got != 2*n {
		t.Fatalf("%d inbox rows, want %d", got, 2*n)
	}
	// Deliveries during and after handling are still duplicates.
	began := time.Now()
	start(t, ib)
	deliver(t, ib, batch("orders", envs...))
	st := lastMinuteSlack(settled(t, ib, 60*time.Second), began)
	if st.Counts != (Counts{Handled: 2 * n, HandledLastMinute: 2 * n}) {
		t.Fatalf("stats %+v, want %d handled", st, 2*n)
	}
	res := deliver(t, ib, batch("orders", envs2...))
	for i, s := range statuses(res, n) {
		if s != transport.Duplicate {
			t.Fatalf("redelivery after handling, envelope %d: %v", i, s)
		}
	}
	assertEffectsOnce(t, f, ids)
	for _, r := range rows(t, ib, dialects.InboxQuery{}) {
		if r.State != dialects.InboxStateHandled || r.Attempts != 1 {
			t.Fatalf("row %s: state %s attempts %d, want handled after 1", r.ID, r.State, r.Attempts)
		}
	}
}

// TestDeliverStoresEnvelope checks every field and the per-envelope
// verdicts of a mixed batch.
func TestDeliverStoresEnvelope(t *testing.T) {
	each(t, testDeliverStoresEnvelope[pgx.Tx], testDeliverStoresEnvelope[*sql.Tx])
}

func testDeliverStoresEnvelope[TTx any](t *testing.T, f *fixture[TTx]) {
	ib, _ := newInbox(t, f, nil)
	created := time.Date(2026, 3, 4, 5, 6, 7, 8_000_000, time.UTC)
	good := transport.Envelope{ID: "a", Topic: "t", Key: "k", Headers: map[string]string{"h": "v"}, Payload: []byte{0, 1, 2},
		CreatedAt: created, DeliverAt: time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond), ExpiresAt: time.Now().Add(2 * time.Hour).UTC().Truncate(time.Millisecond)}
	res := deliver(t, ib, batch("orders",
		good,
		transport.Envelope{ID: "", Topic: "t"},
		transport.Envelope{ID: "b", Topic: "bad\x00topic"},
		transport.Envelope{ID: "c", Topic: "t", Headers: map[string]string{"h": "\xff"}},
		transport.Envelope{ID: "a", Topic: "t"},
		transport.Envelope{ID: "d"},
		transport.Envelope{ID: strings.Repeat("x", transport.MaxNameBytes+1), Topic: "t"},
	))
	want := []transport.Status{transport.Accepted, transport.Rejected, transport.Rejected, transport.Rejected, transport.Duplicate, transport.Accepted, transport.Rejected}
	if got := statuses(res, len(want)); !slices.Equal(got, want) {
		t.Fatalf("statuses %v, want %v", got, want)
	}
	if r := res.Outcome(2).Reason; r != "Topic contains a NUL byte" {
		t.Fatalf("reject reason %q", r)
	}
	if r := res.Outcome(6).Reason; r != "ID is longer than 255 bytes" {
		t.Fatalf("reject reason %q", r)
	}
	r := row(t, ib, "orders", "a")
	if r.Topic != "t" || r.Key != "k" || r.Headers["h"] != "v" || string(r.Payload) != "\x00\x01\x02" ||
		!r.CreatedAt.Equal(created.Truncate(time.Millisecond)) && !r.CreatedAt.Equal(created) ||
		!r.RunAt.Equal(good.DeliverAt) || !r.ExpiresAt.Equal(good.ExpiresAt) || r.Attempts != 0 {
		t.Fatalf("stored %+v from %+v", r, good)
	}
	if _, err := ib.Deliver(context.Background(), batch("bad\xffsource", good)); !transport.IsPermanent(err) {
		t.Fatalf("Deliver with an invalid source = %v, want a permanent error", err)
	}
	if res, err := ib.Deliver(context.Background(), batch("orders")); err != nil || len(res.Outcomes) != 0 {
		t.Fatalf("empty batch: %v, %v", res, err)
	}
}

// TestHandlerFailureRollsBack: a handler that writes a row in its tx and
// then fails: the row is rolled back, the message retried, and after
// success exactly one effect exists; the other messages of the batch commit.
func TestHandlerFailureRollsBack(t *testing.T) {
	each(t, testHandlerFailureRollsBack[pgx.Tx], testHandlerFailureRollsBack[*sql.Tx])
}

func testHandlerFailureRollsBack[TTx any](t *testing.T, f *fixture[TTx]) {
	ib, mux := newInbox(t, f, nil)
	var attempts atomic.Int32
	mux.HandleFunc("flaky", func(ctx context.Context, tx TTx, m *Message) error {
		if err := effect(f)(ctx, tx, m); err != nil {
			return err
		}
		if n := attempts.Add(1); n < 3 {
			return fmt.Errorf("transient failure %d", n)
		}
		return nil
	})
	mux.HandleFunc("ok", effect(f))
	deliver(t, ib, batch("orders", envelope(1, "ok"), envelope(2, "flaky"), envelope(3, "ok")))
	// One pass by hand: the batch commits the good ones, not the failed one.
	ib.processOnce(t)
	assertEffectsOnce(t, f, []string{envelope(1, "").ID, envelope(3, "").ID})
	r := row(t, ib, "orders", envelope(2, "").ID)
	if r.State != dialects.InboxStateReady || r.Attempts != 1 || r.LastError != "transient failure 1" ||
		len(r.Errors) != 1 || r.Errors[0].Attempt != 1 || r.Errors[0].Error != "transient failure 1" {
		t.Fatalf("failed row %+v", r)
	}
	start(t, ib)
	settled(t, ib, 60*time.Second)
	assertEffectsOnce(t, f, []string{envelope(1, "").ID, envelope(2, "").ID, envelope(3, "").ID})
	r = row(t, ib, "orders", envelope(2, "").ID)
	if r.State != dialects.InboxStateHandled || r.Attempts != 3 || len(r.Errors) != 2 || r.Errors[1].Attempt != 2 {
		t.Fatalf("row after success %+v", r)
	}
}

// processOnce claims and handles one batch of the default queue.
func (ib *Inbox[TTx]) processOnce(t testing.TB) int {
	t.Helper()
	q := ib.queues[len(ib.queues)-1]
	token, rs, err := ib.claim(context.Background(), q, "test")
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	if len(rs) > 0 {
		ib.process(context.Background(), q, "test", token, rs)
	}
	return len(rs)
}

// TestAlwaysFailing: after MaxAttempts the message is in the dead letters
// with every attempt's error; replay puts it back once; replay after a fix
// processes it.
func TestAlwaysFailing(t *testing.T) {
	each(t, testAlwaysFailing[pgx.Tx], testAlwaysFailing[*sql.Tx])
}

func testAlwaysFailing[TTx any](t *testing.T, f *fixture[TTx]) {
	cfg := fastConfig(t)
	cfg.MaxAttempts = 3
	ib, mux := newInbox(t, f, cfg)
	var fixed atomic.Bool
	var calls atomic.Int32
	mux.HandleFunc("t", func(ctx context.Context, tx TTx, m *Message) error {
		n := calls.Add(1)
		if err := effect(f)(ctx, tx, m); err != nil {
			return err
		}
		if !fixed.Load() {
			return fmt.Errorf("failure %d", n)
		}
		return nil
	})
	before := time.Now()
	deliver(t, ib, batch("orders", envelope(1, "t"), envelope(2, "t")))
	stop := start(t, ib)
	waitFor(t, "two dead letters", 60*time.Second, func() bool { return stats(t, ib).Dead == 2 })
	stop()
	if got := calls.Load(); got != 6 {
		t.Fatalf("handler called %d times, want 6 (3 attempts each)", got)
	}
	if n := f.db.int(t, `SELECT count(*) FROM effects`); n != 0 {
		t.Fatalf("%d effects of failed attempts, want 0", n)
	}
	if n := f.db.int(t, `SELECT count(*) FROM durable_inbox`); n != 0 {
		t.Fatalf("%d inbox rows after dead-lettering, want 0", n)
	}
	id := envelope(1, "").ID
	dl, err := ib.DeadLetter(context.Background(), "orders", id)
	if err != nil {
		t.Fatal(err)
	}
	if dl.Reason != deadletter.ReasonHandlerError || dl.Attempts != 3 || len(dl.Errors) != 3 || !dl.Pending() || dl.Topic != "t" ||
		string(dl.Payload) != string(envelope(1, "").Payload) {
		t.Fatalf("dead letter %+v", dl)
	}
	for i, e := range dl.Errors {
		if e.Attempt != i+1 || !strings.HasPrefix(e.Error, "failure ") || e.At.Before(before.Add(-time.Second)) {
			t.Fatalf("error %d: %+v", i, e)
		}
	}
	if dl.LastError != dl.Errors[2].Error {
		t.Fatalf("LastError %q, want the last attempt's %q", dl.LastError, dl.Errors[2].Error)
	}
	if n := f.db.int(t, `SELECT count(*) FROM durable_dead_letters WHERE side = 'inbox' AND reason = 'handler_error'`); n != 2 {
		t.Fatalf("%d dead-letter rows, want 2", n)
	}
	if _, err := ib.DeadLetter(context.Background(), "orders", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeadLetter of an unknown id = %v", err)
	}

	// Replay one: back once, fresh.
	ctx := context.Background()
	if n, err := ib.Replay(ctx, DeadLetterFilter{Source: "orders", IDs: []string{id}}); err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v; want 1", n, err)
	}
	if n, err := ib.Replay(ctx, DeadLetterFilter{Source: "orders", IDs: []string{id}}); err != nil || n != 0 {
		t.Fatalf("second Replay = %d, %v; want 0", n, err)
	}
	r := row(t, ib, "orders", id)
	if r.State != dialects.InboxStateReady || r.Attempts != 0 || r.ReplayedAt.IsZero() || len(r.Errors) != 3 {
		t.Fatalf("replayed row %+v", r)
	}
	if n := f.db.int(t, `SELECT count(*) FROM durable_inbox`); n != 1 {
		t.Fatalf("%d inbox rows after two replays, want 1", n)
	}
	if s := stats(t, ib); s.Counts != (Counts{Ready: 1, Dead: 1}) {
		t.Fatalf("stats after replay %+v", s)
	}
	// Still failing: dead again, the same dead letter, six errors.
	stop = start(t, ib)
	waitFor(t, "the replayed message to fail again", 60*time.Second, func() bool { return stats(t, ib).Dead == 2 })
	stop()
	dl, err = ib.DeadLetter(ctx, "orders", id)
	if err != nil || len(dl.Errors) != 6 || !dl.Pending() || dl.ReplayedAt.IsZero() {
		t.Fatalf("dead letter after failing again: %+v, %v", dl, err)
	}
	if n := f.db.int(t, `SELECT count(*) FROM durable_dead_letters`); n != 2 {
		t.Fatalf("%d dead-letter rows, want 2 (updated in place)", n)
	}
	// Fixed: replay both, each handled once.
	fixed.Store(true)
	if n, err := ib.Replay(ctx, DeadLetterFilter{}); err != nil || n != 2 {
		t.Fatalf("Replay all = %d, %v; want 2", n, err)
	}
	began := time.Now()
	start(t, ib)
	st := lastMinuteSlack(settled(t, ib, 60*time.Second), began)
	if st.Counts != (Counts{Handled: 2, HandledLastMinute: 2}) {
		t.Fatalf("stats %+v, want 2 handled and no pending dead letters", st)
	}
	assertEffectsOnce(t, f, []string{envelope(1, "").ID, envelope(2, "").ID})
	if got := deadLetters(t, ib, DeadLetterFilter{}); len(got) != 0 {
		t.Fatalf("pending dead letters after the fix: %d", len(got))
	}
	if got := deadLetters(t, ib, DeadLetterFilter{IncludeReplayed: true}); len(got) != 2 {
		t.Fatalf("dead letters kept for the record: %d, want 2", len(got))
	}
	// A resend of a replayed, handled message is a duplicate.
	if s := statuses(deliver(t, ib, batch("orders", envelope(1, "t"))), 1); s[0] != transport.Duplicate {
		t.Fatalf("resend after replay: %v", s[0])
	}
	if n, err := ib.PurgeDeadLetters(ctx, DeadLetterFilter{IncludeReplayed: true, Reason: deadletter.ReasonHandlerError}); err != nil || n != 2 {
		t.Fatalf("PurgeDeadLetters = %d, %v; want 2", n, err)
	}
}

// TestFailureKinds: a panic, a timeout, an undecodable payload, an unknown
// topic, a permanent error, an expired message and a snooze each end as
// asserted in the tables, and the workers keep going.
func TestFailureKinds(t *testing.T) {
	each(t, testFailureKinds[pgx.Tx], testFailureKinds[*sql.Tx])
}

type order struct {
	N int `json:"n"`
}

func testFailureKinds[TTx any](t *testing.T, f *fixture[TTx]) {
	cfg := fastConfig(t)
	cfg.MaxAttempts = 2
	cfg.Topics = map[string]TopicPolicy{"slow": {HandlerTimeout: 50 * time.Millisecond, MaxAttempts: 1}}
	ib, mux := newInbox(t, f, cfg)
	mux.HandleFunc("panic", func(ctx context.Context, tx TTx, m *Message) error {
		if err := effect(f)(ctx, tx, m); err != nil {
			return err
		}
		panic("handler bug")
	})
	mux.HandleFunc("slow", func(ctx context.Context, tx TTx, m *Message) error {
		<-ctx.Done()
		return ctx.Err()
	})
	mux.Handle("json", JSON(func(ctx context.Context, tx TTx, m *Message, o order) error {
		return f.txExec(ctx, tx, `INSERT INTO effects (id, n) VALUES ($1, $2)`, m.ID, o.N)
	}))
	mux.HandleFunc("perm", func(ctx context.Context, tx TTx, m *Message) error {
		return Permanent(errors.New("not for us"))
	})
	var snoozed atomic.Int32
	mux.HandleFunc("snooze", func(ctx context.Context, tx TTx, m *Message) error {
		if snoozed.Add(1) <= 3 {
			if m.Attempt != 1 {
				return Permanent(fmt.Errorf("a snooze counted an attempt: %d", m.Attempt))
			}
			return Retry(time.Millisecond)
		}
		return effect(f)(ctx, tx, m)
	})
	mux.HandleFunc("ok", effect(f))
	expired := envelope(6, "ok")
	expired.ExpiresAt = time.Now().Add(-time.Second)
	bad := envelope(3, "json")
	bad.Payload = []byte("{not json")
	deliver(t, ib, batch("orders", envelope(1, "panic"), envelope(2, "slow"), bad, envelope(4, "nobody"),
		envelope(5, "perm"), expired, envelope(7, "snooze"), envelope(8, "json"), envelope(9, "ok")))
	began := time.Now()
	start(t, ib)
	st := lastMinuteSlack(settled(t, ib, 60*time.Second), began)
	if st.Counts != (Counts{Handled: 3, Dead: 6, HandledLastMinute: 3}) {
		t.Fatalf("stats %+v, want 3 handled, 6 dead", st)
	}
	assertEffectsOnce(t, f, []string{envelope(7, "").ID, envelope(8, "").ID, envelope(9, "").ID})
	if n := f.db.int(t, `SELECT n FROM effects WHERE id = $1`, envelope(8, "").ID); n != 8 {
		t.Fatalf("JSON handler stored n=%d, want 8", n)
	}
	want := map[string]struct {
		reason   string
		attempts int
		errs     int
		contains string
	}{
		envelope(1, "").ID: {deadletter.ReasonHandlerError, 2, 2, "panic: handler bug"},
		envelope(2, "").ID: {deadletter.ReasonHandlerError, 1, 1, "timed out after 50ms"},
		envelope(3, "").ID: {deadletter.ReasonDecodeError, 1, 1, "cannot decode payload"},
		envelope(4, "").ID: {deadletter.ReasonNoHandler, 1, 1, `no handler for topic "nobody"`},
		envelope(5, "").ID: {deadletter.ReasonPermanent, 1, 1, "not for us"},
		envelope(6, "").ID: {deadletter.ReasonExpired, 0, 1, "expired at"},
	}
	dls := deadLetters(t, ib, DeadLetterFilter{})
	if len(dls) != len(want) {
		t.Fatalf("%d dead letters, want %d", len(dls), len(want))
	}
	for _, dl := range dls {
		w, ok := want[dl.ID]
		if !ok {
			t.Fatalf("unexpected dead letter %s", dl.ID)
		}
		if dl.Reason != w.reason || dl.Attempts != w.attempts || len(dl.Errors) != w.errs || !strings.Contains(dl.LastError, w.contains) {
			t.Fatalf("dead letter %s: reason %s attempts %d errors %d last %q; want %+v", dl.ID, dl.Reason, dl.Attempts, len(dl.Errors), dl.LastError, w)
		}
	}
	if pe := deadLetters(t, ib, DeadLetterFilter{IDs: []string{envelope(1, "").ID}})[0]; !strings.Contains(pe.LastError, "inbox.testFailureKinds") {
		t.Fatalf("panic error without the handler's stack: %q", pe.LastError)
	}
	if s := row(t, ib, "orders", envelope(7, "").ID); s.Attempts != 1 || len(s.Errors) != 0 {
		t.Fatalf("snoozed message: attempts %d, errors %v; want 1 and none", s.Attempts, s.Errors)
	}
	// Unknown topic, replayed after a handler is deployed: handled.
	mux.HandleFunc("nobody", effect(f))
	if n, err := ib.Replay(context.Background(), DeadLetterFilter{Reason: deadletter.ReasonNoHandler}); err != nil || n != 1 {
		t.Fatalf("Replay no_handler = %d, %v", n, err)
	}
	settled(t, ib, 60*time.Second)
	if n := f.db.int(t, `SELECT count(*) FROM effects WHERE id = $1`, envelope(4, "").ID); n != 1 {
		t.Fatalf("replayed no_handler message: %d effects, want 1", n)
	}
}
