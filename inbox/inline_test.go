package inbox

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// inlineConfig is fastConfig with inline handling on and workers that only
// wake up on their own after a long time, so that a message handled before
// Deliver returns was handled inline. Its InlineTimeout is long enough for
// a loaded machine: an inline batch falls back to the workers only when a
// test means it to.
func inlineConfig(t testing.TB) *Config {
	c := fastConfig(t)
	c.Inline = true
	c.PollInterval = time.Hour
	c.InlineTimeout = 30 * time.Second
	return c
}

// calls counts handler calls per message id.
type calls struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *calls) add(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[id]++
}

func (c *calls) get(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[id]
}

// TestInline: while Run runs, a delivered batch is handled in the Deliver
// transaction: every message is handled when Deliver returns, once, after
// one attempt; a resend is a duplicate and its handler is not called again;
// the effects commit once.
func TestInline(t *testing.T) {
	each(t, testInline[pgx.Tx], testInline[*sql.Tx])
}

func testInline[TTx any](t *testing.T, f *fixture[TTx]) {
	ib, mux := newInbox(t, f, inlineConfig(t))
	var c calls
	mux.HandleFunc("ok", func(ctx context.Context, tx TTx, m *Message) error {
		c.add(m.ID)
		if m.Attempt != 1 {
			t.Errorf("message %s: Attempt %d, want 1", m.ID, m.Attempt)
		}
		return effect(f)(ctx, tx, m)
	})
	start(t, ib)
	waitFor(t, "Run to start inline handling", 30*time.Second, ib.inline.Load)
	var envs []transport.Envelope
	var ids []string
	for i := range 20 {
		e := envelope(i, "ok")
		envs = append(envs, e)
		ids = append(ids, e.ID)
	}
	res := deliver(t, ib, batch("orders", envs...))
	for i, s := range statuses(res, len(envs)) {
		if s != transport.Accepted {
			t.Fatalf("envelope %d: status %v, want accepted", i, s)
		}
	}
	// Handled before Deliver returned: no worker was involved.
	for _, id := range ids {
		if r := row(t, ib, "orders", id); r.State != dialects.InboxStateHandled || r.Attempts != 1 || r.HandledAt.IsZero() || len(r.Errors) != 0 {
			t.Fatalf("row %s after Deliver: state %s, attempts %d, handled_at %v, errors %d; want handled after 1 attempt",
				id, r.State, r.Attempts, r.HandledAt, len(r.Errors))
		}
	}
	assertEffectsOnce(t, f, ids)
	// A resend: duplicates, no handler call.
	res = deliver(t, ib, batch("orders", envs[3], envs[7]))
	if s := statuses(res, 2); s[0] != transport.Duplicate || s[1] != transport.Duplicate {
		t.Fatalf("resend statuses %v, want duplicates", s)
	}
	for _, id := range ids {
		if n := c.get(id); n != 1 {
			t.Fatalf("handler of %s called %d times, want 1", id, n)
		}
	}
	assertEffectsOnce(t, f, ids)
	if s := stats(t, ib); s.Handled != 20 || s.Ready != 0 || s.Running != 0 {
		t.Fatalf("stats %+v, want 20 handled", s)
	}
}

// TestInlineFailure: a failing handler fails its own message only, and
// every handler runs once per attempt. After Deliver the good messages are
// handled inline (their effects committed once), the bad one has counted a
// failed attempt with its error and waits for a worker; the worker's retry
// is its second and last attempt (MaxAttempts 2), which dead-letters it.
// Nobody's handler runs twice for one attempt.
func TestInlineFailure(t *testing.T) {
	each(t, testInlineFailure[pgx.Tx], testInlineFailure[*sql.Tx])
}

func testInlineFailure[TTx any](t *testing.T, f *fixture[TTx]) {
	cfg := inlineConfig(t)
	cfg.MaxAttempts = 2
	cfg.Backoff = func(int) time.Duration { return 0 }
	ib, mux := newInbox(t, f, cfg)
	var c calls
	mux.HandleFunc("ok", func(ctx context.Context, tx TTx, m *Message) error {
		c.add(m.ID)
		return effect(f)(ctx, tx, m)
	})
	mux.HandleFunc("bad", func(ctx context.Context, tx TTx, m *Message) error {
		c.add(m.ID)
		if err := effect(f)(ctx, tx, m); err != nil {
			return err
		}
		return errors.New("bad message")
	})
	start(t, ib)
	waitFor(t, "Run to start inline handling", 30*time.Second, ib.inline.Load)
	e1, e2, e3 := envelope(1, "ok"), envelope(2, "bad"), envelope(3, "ok")
	res := deliver(t, ib, batch("orders", e1, e2, e3))
	if s := statuses(res, 3); s[0] != transport.Accepted || s[1] != transport.Accepted || s[2] != transport.Accepted {
		t.Fatalf("statuses %v, want accepted", s)
	}
	// Handled inline before Deliver returned, whatever the workers do next.
	for _, e := range []transport.Envelope{e1, e3} {
		if r := row(t, ib, "orders", e.ID); r.State != dialects.InboxStateHandled || r.Attempts != 1 || len(r.Errors) != 0 {
			t.Fatalf("row %s after Deliver: state %s, attempts %d, errors %d; want handled inline after 1 attempt", e.ID, r.State, r.Attempts, len(r.Errors))
		}
	}
	if c.get(e1.ID) != 1 || c.get(e3.ID) != 1 {
		t.Fatalf("calls %v after Deliver; want e1 and e3 once", c.n)
	}
	// The bad message failed its first attempt inline; the worker makes the
	// second, and the last.
	waitFor(t, "the workers to dead-letter the bad message", 60*time.Second, func() bool {
		s := stats(t, ib)
		return s.Handled == 2 && s.Dead == 1 && s.Ready+s.Retrying+s.Running == 0
	})
	if c.get(e1.ID) != 1 || c.get(e2.ID) != 2 || c.get(e3.ID) != 1 {
		t.Fatalf("calls %v; want e1 1, e2 2 (one per attempt), e3 1", c.n)
	}
	assertEffectsOnce(t, f, []string{e1.ID, e3.ID})
	dl := deadLetters(t, ib, DeadLetterFilter{})
	if len(dl) != 1 || dl[0].ID != e2.ID || dl[0].Attempts != 2 || dl[0].Reason != deadletter.ReasonHandlerError ||
		len(dl[0].Errors) != 2 || dl[0].Errors[0].Attempt != 1 || dl[0].Errors[0].Error != "bad message" || dl[0].Errors[1].Attempt != 2 {
		t.Fatalf("dead letters %+v; want e2 after 2 attempts (handler_error), each attempt's error recorded", dl)
	}
}

// TestInlineStoresForWorkers: messages that are not handled inline are
// stored ready, in the same delivery as those that are: a keyed message
// behind an unfinished one of its key, a message of a topic without a
// handler, of a topic with a Queue of its own, one that is due later, one
// that expired; and every delivery while Run does not run.
func TestInlineStoresForWorkers(t *testing.T) {
	each(t, testInlineStoresForWorkers[pgx.Tx], testInlineStoresForWorkers[*sql.Tx])
}

func testInlineStoresForWorkers[TTx any](t *testing.T, f *fixture[TTx]) {
	cfg := inlineConfig(t)
	cfg.Queues = []Queue{{Topics: []string{"queued"}}}
	ib, mux := newInbox(t, f, cfg)
	var mu sync.Mutex
	inline := map[string]bool{} // message id → handled inside Deliver
	record := func(ctx context.Context, tx TTx, m *Message) error {
		mu.Lock()
		inline[m.ID] = ctx.Value(inDeliverKey{}) != nil
		mu.Unlock()
		return effect(f)(ctx, tx, m)
	}
	for _, topic := range []string{"ok", "queued"} {
		mux.HandleFunc(topic, record)
	}
	dctx := context.WithValue(context.Background(), inDeliverKey{}, true)
	deliverMark := func(envs ...transport.Envelope) {
		t.Helper()
		if _, err := ib.Deliver(dctx, batch("orders", envs...)); err != nil {
			t.Fatalf("Deliver: %v", err)
		}
	}
	// Before Run: stored for the workers. It is due in an hour, so it stays
	// unfinished and holds its key k2 back.
	early := envelope(0, "ok")
	early.Key = "k2"
	early.DeliverAt = time.Now().Add(time.Hour)
	before := envelope(9, "ok")
	deliverMark(early, before)
	if r := row(t, ib, "orders", before.ID); r.State != dialects.InboxStateReady {
		t.Fatalf("delivered before Run: state %s, want ready", r.State)
	}

	start(t, ib)
	waitFor(t, "Run to start inline handling", 30*time.Second, ib.inline.Load)
	behind := envelope(2, "ok")
	behind.Key = "k2"
	free := envelope(3, "ok")
	free.Key = "k3"
	noHandler := envelope(4, "nobody")
	queued := envelope(5, "queued")
	later := envelope(6, "ok")
	later.DeliverAt = time.Now().Add(time.Hour)
	expired := envelope(7, "ok")
	expired.ExpiresAt = time.Now().Add(-time.Minute)
	plain := envelope(8, "ok")
	resent := envelope(10, "ok") // sent before: its first delivery may have killed the process
	resent.SendAttempt = 2
	deliverMark(behind, free, noHandler, queued, later, expired, plain, resent)
	for _, id := range []string{free.ID, plain.ID} {
		if r := row(t, ib, "orders", id); r.State != dialects.InboxStateHandled {
			t.Errorf("row %s: state %s after Deliver, want handled", id, r.State)
		}
	}
	for _, id := range []string{behind.ID, later.ID, early.ID} {
		if r := row(t, ib, "orders", id); r.State != dialects.InboxStateReady {
			t.Errorf("row %s: state %s, want ready (not due, or behind its key)", id, r.State)
		}
	}
	// The workers, woken by the delivery: the queue's worker handles its
	// topic, the default queue's dead-letters the rest.
	waitFor(t, "the workers", 60*time.Second, func() bool {
		s := stats(t, ib)
		return s.Dead == 2 && row(t, ib, "orders", queued.ID).State == dialects.InboxStateHandled &&
			row(t, ib, "orders", before.ID).State == dialects.InboxStateHandled &&
			row(t, ib, "orders", resent.ID).State == dialects.InboxStateHandled
	})
	reasons := map[string]string{}
	for _, d := range deadLetters(t, ib, DeadLetterFilter{}) {
		reasons[d.ID] = d.Reason
	}
	if reasons[noHandler.ID] != deadletter.ReasonNoHandler || reasons[expired.ID] != deadletter.ReasonExpired {
		t.Fatalf("dead letters %v; want %s no_handler and %s expired", reasons, noHandler.ID, expired.ID)
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string]bool{free.ID: true, plain.ID: true, queued.ID: false, before.ID: false, resent.ID: false}
	for id, w := range want {
		if got, ok := inline[id]; !ok || got != w {
			t.Errorf("message %s: handled inline = %v (called: %v), want %v", id, got, ok, w)
		}
	}
}

// inDeliverKey marks the context of a test's Deliver, which inline
// handlers inherit and workers' handlers do not.
type inDeliverKey struct{}

// TestInlineTimeout: when a delivery's handlers take longer than
// InlineTimeout, the running handler sees its ctx end and its attempt
// fails; the messages not started yet are stored for the workers without
// counting an attempt. The workers then handle both, each handler once per
// attempt.
func TestInlineTimeout(t *testing.T) {
	each(t, testInlineTimeout[pgx.Tx], testInlineTimeout[*sql.Tx])
}

func testInlineTimeout[TTx any](t *testing.T, f *fixture[TTx]) {
	cfg := inlineConfig(t)
	cfg.InlineTimeout = 50 * time.Millisecond
	cfg.PollInterval = 100 * time.Millisecond
	// The handler's own timeout is far longer than deliver's deadline
	// (a minute): only InlineTimeout can end its first call in time for
	// Deliver to succeed.
	cfg.Topics = map[string]TopicPolicy{"slow": {HandlerTimeout: 10 * time.Minute}}
	ib, mux := newInbox(t, f, cfg)
	var c calls
	mux.HandleFunc("slow", func(ctx context.Context, tx TTx, m *Message) error {
		c.add(m.ID)
		if c.get(m.ID) == 1 {
			<-ctx.Done()
			return ctx.Err()
		}
		return effect(f)(ctx, tx, m)
	})
	start(t, ib)
	waitFor(t, "Run to start inline handling", 30*time.Second, ib.inline.Load)
	mux.HandleFunc("ok", func(ctx context.Context, tx TTx, m *Message) error {
		c.add(m.ID)
		return effect(f)(ctx, tx, m)
	})
	e, next := envelope(1, "slow"), envelope(2, "ok")
	deliver(t, ib, batch("orders", e, next))
	waitFor(t, "a worker to handle both", 60*time.Second, func() bool {
		return row(t, ib, "orders", e.ID).State == dialects.InboxStateHandled &&
			row(t, ib, "orders", next.ID).State == dialects.InboxStateHandled
	})
	assertEffectsOnce(t, f, []string{e.ID, next.ID})
	if n := c.get(e.ID); n != 2 {
		t.Fatalf("slow handler called %d times, want 2 (inline, timed out; then a worker)", n)
	}
	if n := c.get(next.ID); n != 1 {
		t.Fatalf("handler of the message after it called %d times, want 1 (by a worker)", n)
	}
	if r := row(t, ib, "orders", e.ID); r.Attempts != 2 || len(r.Errors) != 1 || !strings.Contains(r.Errors[0].Error, "InlineTimeout") {
		t.Fatalf("slow row: attempts %d, errors %+v; want 2 attempts, the first failed by InlineTimeout", r.Attempts, r.Errors)
	}
	if r := row(t, ib, "orders", next.ID); r.Attempts != 1 || len(r.Errors) != 0 {
		t.Fatalf("row after the slow one: attempts %d, errors %+v; want 1 attempt (not started inline: none counted)", r.Attempts, r.Errors)
	}
}

// TestInlineKeyOrderInBatch: of the messages of one key in one delivery,
// only the first may be handled inline; a later one never overtakes an
// earlier one that waits (here: due in an hour).
func TestInlineKeyOrderInBatch(t *testing.T) {
	each(t, testInlineKeyOrderInBatch[pgx.Tx], testInlineKeyOrderInBatch[*sql.Tx])
}

func testInlineKeyOrderInBatch[TTx any](t *testing.T, f *fixture[TTx]) {
	ib, mux := newInbox(t, f, inlineConfig(t))
	mux.HandleFunc("ok", effect(f))
	start(t, ib)
	waitFor(t, "Run to start inline handling", 30*time.Second, ib.inline.Load)
	first := envelope(1, "ok")
	first.Key = "k"
	first.DeliverAt = time.Now().Add(time.Hour)
	second := envelope(2, "ok")
	second.Key = "k"
	a, b := envelope(3, "ok"), envelope(4, "ok")
	a.Key, b.Key = "j", "j"
	deliver(t, ib, batch("orders", first, second, a, b))
	// (b, stored ready behind a, may already be a worker's.)
	want := map[string]string{first.ID: "ready", second.ID: "ready", a.ID: "handled"}
	for id, w := range want {
		if r := row(t, ib, "orders", id); r.State != w {
			t.Errorf("row %s: state %s after Deliver, want %s", id, r.State, w)
		}
	}
	// b goes to a worker once a (handled inline) no longer holds it back;
	// second stays behind first, which is due in an hour.
	waitFor(t, "a worker to handle b", 60*time.Second, func() bool {
		ib.wakeAll()
		return row(t, ib, "orders", b.ID).State == dialects.InboxStateHandled
	})
	if r := row(t, ib, "orders", second.ID); r.State != dialects.InboxStateReady {
		t.Fatalf("second of key k: state %s, want ready behind the first", r.State)
	}
	assertEffectsOnce(t, f, []string{a.ID, b.ID})
}
