package inbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// TestOneCallPerAttempt: in a batch where one handler fails, every handler
// runs once: the failing one is rolled back to its savepoint alone, the
// others' effects commit once, the failed message counts one attempt, the
// others none extra.
func TestOneCallPerAttempt(t *testing.T) {
	each(t, testOneCallPerAttempt[pgx.Tx], testOneCallPerAttempt[*sql.Tx])
}

func testOneCallPerAttempt[TTx any](t *testing.T, f *fixture[TTx]) {
	ib, mux := newInbox(t, f, nil)
	var mu sync.Mutex
	calls := map[string]int{}
	count := func(m *Message) {
		mu.Lock()
		calls[m.ID]++
		mu.Unlock()
	}
	mux.HandleFunc("bad", func(ctx context.Context, tx TTx, m *Message) error {
		count(m)
		if err := effect(f)(ctx, tx, m); err != nil {
			return err
		}
		return errors.New("bad message")
	})
	mux.HandleFunc("ok", func(ctx context.Context, tx TTx, m *Message) error {
		count(m)
		return effect(f)(ctx, tx, m)
	})
	q := ib.queues[len(ib.queues)-1]
	e1, e2, e3 := envelope(1, "ok"), envelope(2, "bad"), envelope(3, "ok")
	deliver(t, ib, batch("orders", e1, e2, e3))
	token, rs, err := ib.claim(context.Background(), q, "test")
	if err != nil || len(rs) != 3 {
		t.Fatalf("claim: %d rows, %v", len(rs), err)
	}
	ib.process(context.Background(), q, "test", token, rs)
	assertEffectsOnce(t, f, []string{e1.ID, e3.ID})
	if calls[e1.ID] != 1 || calls[e2.ID] != 1 || calls[e3.ID] != 1 {
		t.Fatalf("calls %v; want 1 each", calls)
	}
	for _, e := range []string{e1.ID, e3.ID} {
		if r := row(t, ib, "orders", e); r.State != dialects.InboxStateHandled || r.Attempts != 1 || len(r.Errors) != 0 {
			t.Fatalf("row %s: %+v; want handled after 1 attempt", e, r)
		}
	}
	if r := row(t, ib, "orders", e2.ID); r.State != dialects.InboxStateReady || r.Attempts != 1 || len(r.Errors) != 1 || r.LastError != "bad message" {
		t.Fatalf("failed row %+v; want ready after 1 failed attempt", r)
	}

}

// TestGoodBatch: a batch of good handlers runs each once and commits.
func TestGoodBatch(t *testing.T) {
	each(t, testGoodBatch[pgx.Tx], testGoodBatch[*sql.Tx])
}

func testGoodBatch[TTx any](t *testing.T, f *fixture[TTx]) {
	ib, mux := newInbox(t, f, nil)
	var mu sync.Mutex
	calls := 0
	mux.HandleFunc("ok", func(ctx context.Context, tx TTx, m *Message) error {
		mu.Lock()
		calls++
		mu.Unlock()
		return effect(f)(ctx, tx, m)
	})
	e4, e5 := envelope(4, "ok"), envelope(5, "ok")
	deliver(t, ib, batch("other", e4, e5))
	q := ib.queues[len(ib.queues)-1]
	token, rs, err := ib.claim(context.Background(), q, "test")
	if err != nil || len(rs) != 2 {
		t.Fatalf("claim: %d rows, %v", len(rs), err)
	}
	ib.process(context.Background(), q, "test", token, rs)
	if calls != 2 {
		t.Fatalf("%d calls, want 2", calls)
	}
	assertEffectsOnce(t, f, []string{e4.ID, e5.ID})
}

// TestBrokenTxBlamed (Postgres): a handler that swallows an error and
// returns nil leaves the transaction aborted. The next savepoint step finds
// it: the breaker's work is rolled back and it alone fails; the handler
// after it runs once, on a usable transaction, and succeeds.
func TestBrokenTxBlamed(t *testing.T) {
	each(t, testBrokenTxBlamed[pgx.Tx], testBrokenTxBlamed[*sql.Tx])
}

func testBrokenTxBlamed[TTx any](t *testing.T, f *fixture[TTx]) {
	if !strings.HasPrefix(f.name, "postgres") {
		t.Skip("an error does not abort a SQLite transaction")
	}
	for _, tail := range []bool{false, true} {
		f.db.exec(t, `DELETE FROM effects`)
		f.db.exec(t, `DELETE FROM durable_inbox`)
		ib, mux := newInbox(t, f, nil)
		mux.HandleFunc("breaker", func(ctx context.Context, tx TTx, m *Message) error {
			_ = f.txExec(ctx, tx, `SELECT 1/0`) // swallowed: tx is aborted
			return nil
		})
		var okCalls calls
		mux.HandleFunc("ok", func(ctx context.Context, tx TTx, m *Message) error {
			okCalls.add(m.ID)
			return effect(f)(ctx, tx, m)
		})
		src := fmt.Sprintf("broken-%v", tail)
		envs := []transport.Envelope{envelope(1, "ok"), envelope(2, "breaker")}
		if !tail {
			envs = append(envs, envelope(3, "ok"))
		}
		deliver(t, ib, batch(src, envs...))
		q := ib.queues[len(ib.queues)-1]
		token, rs, err := ib.claim(context.Background(), q, "test")
		if err != nil || len(rs) != len(envs) {
			t.Fatalf("claim: %d rows, %v", len(rs), err)
		}
		ib.process(context.Background(), q, "test", token, rs)
		want := []string{envs[0].ID}
		if !tail {
			want = append(want, envs[2].ID)
		}
		assertEffectsOnce(t, f, want)
		for _, id := range want {
			if n := okCalls.get(id); n != 1 {
				t.Fatalf("tail %v: handler of %s called %d times, want 1", tail, id, n)
			}
		}
		for _, e := range envs {
			r := row(t, ib, src, e.ID)
			if e.Topic == "breaker" {
				if r.State != dialects.InboxStateReady || r.Attempts != 1 || len(r.Errors) != 1 || !strings.Contains(r.LastError, "returned nil, but its transaction failed") {
					t.Fatalf("tail %v: breaker row %+v", tail, r)
				}
			} else if r.State != dialects.InboxStateHandled || r.Attempts != 1 || len(r.Errors) != 0 {
				t.Fatalf("tail %v: row %s: %+v; want handled after 1 attempt", tail, e.ID, r)
			}
		}
	}
}

// TestFailureWithoutTx: a handler that fails without having used its
// transaction (where the dialect watches it, it set no savepoint) undoes
// nothing of the handlers before it; a handler that uses tx after it still
// gets a savepoint of its own, so a failure after it rolls back its own
// work only.
func TestFailureWithoutTx(t *testing.T) {
	each(t, testFailureWithoutTx[pgx.Tx], testFailureWithoutTx[*sql.Tx])
}

func testFailureWithoutTx[TTx any](t *testing.T, f *fixture[TTx]) {
	ib, mux := newInbox(t, f, nil)
	var c calls
	mux.HandleFunc("ok", func(ctx context.Context, tx TTx, m *Message) error {
		c.add(m.ID)
		return effect(f)(ctx, tx, m)
	})
	mux.HandleFunc("refuse", func(ctx context.Context, tx TTx, m *Message) error {
		c.add(m.ID)
		return errors.New("refused without touching tx")
	})
	mux.HandleFunc("writebad", func(ctx context.Context, tx TTx, m *Message) error {
		c.add(m.ID)
		if err := effect(f)(ctx, tx, m); err != nil {
			return err
		}
		return errors.New("failed after writing")
	})
	e1, e2, e3, e4, e5 := envelope(1, "ok"), envelope(2, "refuse"), envelope(3, "ok"), envelope(4, "writebad"), envelope(5, "refuse")
	deliver(t, ib, batch("orders", e1, e2, e3, e4, e5))
	q := ib.queues[len(ib.queues)-1]
	token, rs, err := ib.claim(context.Background(), q, "test")
	if err != nil || len(rs) != 5 {
		t.Fatalf("claim: %d rows, %v", len(rs), err)
	}
	ib.process(context.Background(), q, "test", token, rs)
	assertEffectsOnce(t, f, []string{e1.ID, e3.ID})
	for _, e := range []transport.Envelope{e1, e2, e3, e4, e5} {
		if n := c.get(e.ID); n != 1 {
			t.Fatalf("handler of %s called %d times, want 1", e.ID, n)
		}
		r := row(t, ib, "orders", e.ID)
		switch e.Topic {
		case "ok":
			if r.State != dialects.InboxStateHandled {
				t.Fatalf("row %s: state %s, want handled", e.ID, r.State)
			}
		default:
			if r.State != dialects.InboxStateReady || r.Attempts != 1 || len(r.Errors) != 1 {
				t.Fatalf("row %s: state %s, attempts %d, errors %d; want ready after 1 failed attempt", e.ID, r.State, r.Attempts, len(r.Errors))
			}
		}
	}
}

// TestNoHandlerGrace: a message whose topic has no handler is retried,
// without counting attempts, while NoHandlerGrace lasts, and handled once
// a handler is registered (a rolling deploy); once the grace is over, such
// a message goes to the dead letters (reason no_handler) with every
// retry's error in its history.
func TestNoHandlerGrace(t *testing.T) {
	each(t, testNoHandlerGrace[pgx.Tx], testNoHandlerGrace[*sql.Tx])
}

func testNoHandlerGrace[TTx any](t *testing.T, f *fixture[TTx]) {
	t.Run("deployed in time", func(t *testing.T) {
		cfg := fastConfig(t)
		cfg.NoHandlerGrace = time.Hour
		ib, mux := newInbox(t, f, cfg)
		e := envelope(1, "refund.issued")
		deliver(t, ib, batch("grace-a", e))
		start(t, ib)
		waitFor(t, "the message to fail for want of a handler", 60*time.Second, func() bool {
			r := row(t, ib, "grace-a", e.ID)
			return len(r.Errors) > 0
		})
		r := row(t, ib, "grace-a", e.ID)
		if r.State != dialects.InboxStateReady || r.Attempts != 0 || !strings.Contains(r.LastError, `no handler for topic "refund.issued"`) {
			t.Fatalf("row after a try without a handler: state %s, attempts %d, last error %q; want ready, no attempt counted, the no-handler error", r.State, r.Attempts, r.LastError)
		}
		if n := len(deadLetters(t, ib, DeadLetterFilter{Source: "grace-a"})); n != 0 {
			t.Fatalf("%d dead letters within the grace, want 0", n)
		}
		mux.HandleFunc("refund.issued", effect(f))
		waitFor(t, "the message to be handled once its handler exists", 60*time.Second, func() bool {
			return row(t, ib, "grace-a", e.ID).State == dialects.InboxStateHandled
		})
		assertEffectsOnce(t, f, []string{e.ID})
	})
	t.Run("grace over", func(t *testing.T) {
		cfg := fastConfig(t)
		cfg.NoHandlerGrace = 1500 * time.Millisecond
		ib, _ := newInbox(t, f, cfg)
		e := envelope(2, "refund.issued")
		deliver(t, ib, batch("grace-b", e))
		start(t, ib)
		waitFor(t, "the message to be dead-lettered after its grace", 60*time.Second, func() bool {
			return len(deadLetters(t, ib, DeadLetterFilter{Source: "grace-b"})) == 1
		})
		dl := deadLetters(t, ib, DeadLetterFilter{Source: "grace-b"})[0]
		if dl.ID != e.ID || dl.Reason != deadletter.ReasonNoHandler || len(dl.Errors) < 2 {
			t.Fatalf("dead letter %+v; want %s, no_handler, with the retries' errors (at least 2)", dl, e.ID)
		}
	})
}
