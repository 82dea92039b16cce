package inbox

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/internal/pgcopy"
	"github.com/durable-go/durable/transport"
)

// TestHandlerCannotEndTx (pgx, found in review): a handler's Commit and Rollback of the
// transaction it was given return dialects.ErrHandlerEndsTx and leave it open, so the writes
// of the handlers before it are not committed early (they ran again and committed twice) and,
// inline, the messages after it are not stored as handled without their handler (acknowledged
// and lost). database/sql's *sql.Tx cannot be guarded; its handlers are told not to end tx.
func TestHandlerCannotEndTx(t *testing.T) {
	for _, name := range []string{"commit", "rollback"} {
		end := func(ctx context.Context, tx pgx.Tx) error {
			if name == "commit" {
				return tx.Commit(ctx)
			}
			return tx.Rollback(ctx)
		}
		t.Run(name+"/workers", func(t *testing.T) {
			f := openPgx(t, "")
			cfg := fastConfig(t)
			cfg.MaxAttempts = 2
			cfg.Concurrency = 1
			ib, mux := newInbox(t, f, cfg)
			mux.HandleFunc("ok", effect(f))
			var endErr error
			mux.HandleFunc("rogue", func(ctx context.Context, tx pgx.Tx, m *Message) error {
				if err := effect(f)(ctx, tx, m); err != nil {
					return err
				}
				endErr = end(ctx, tx)
				return nil // ignores the refusal: its effect commits once, with its completion
			})
			deliver(t, ib, batch("orders", envelope(1, "ok"), envelope(2, "rogue"), envelope(3, "ok")))
			start(t, ib)
			if st := settled(t, ib, 60*time.Second); st.Handled != 3 || st.Dead != 0 {
				t.Fatalf("stats %+v, want 3 handled", st)
			}
			if !errors.Is(endErr, dialects.ErrHandlerEndsTx) {
				t.Fatalf("the handler's %s returned %v, want ErrHandlerEndsTx", name, endErr)
			}
			assertEffectsOnce(t, f, []string{envelope(1, "").ID, envelope(2, "").ID, envelope(3, "").ID})
		})
		t.Run(name+"/inline", func(t *testing.T) {
			f := openPgx(t, "")
			cfg := fastConfig(t)
			cfg.Inline = true
			ib, mux := newInbox(t, f, cfg)
			mux.HandleFunc("ok", effect(f))
			mux.HandleFunc("rogue", func(ctx context.Context, tx pgx.Tx, m *Message) error { return end(ctx, tx) })
			start(t, ib)
			waitFor(t, "inline on", 30*time.Second, ib.inline.Load)
			deliver(t, ib, batch("orders", envelope(1, "rogue"), envelope(2, "ok")))
			settled(t, ib, 60*time.Second)
			if r := row(t, ib, "orders", envelope(2, "").ID); r.State != dialects.InboxStateHandled {
				t.Fatalf("the message after the rogue: state %s, want handled", r.State)
			}
			assertEffectsOnce(t, f, []string{envelope(2, "").ID})
		})
	}
}

// TestHandlerEnqueuesOnGuardedTx: a handler given the guarded pgx transaction still enqueues
// onward messages in it, by a plain insert and by COPY inside a savepoint (from
// pgcopy.Threshold rows on), and they commit with the message's completion.
func TestHandlerEnqueuesOnGuardedTx(t *testing.T) {
	f := openPgx(t, "")
	d := f.d.(*postgres.Dialect)
	ib, mux := newInbox(t, f, fastConfig(t))
	mux.HandleFunc("fan-out", func(ctx context.Context, tx pgx.Tx, m *Message) error {
		if _, ok := tx.(interface{ Conn() *pgx.Conn }); !ok {
			return errors.New("no Conn")
		}
		rows := make([]dialects.OutboxRow, pgcopy.Threshold)
		for i := range rows {
			rows[i] = dialects.OutboxRow{Envelope: transport.Envelope{ID: fmt.Sprintf("%s-%d", m.ID, i), Topic: "t", Payload: []byte("x")}, Destination: "next"}
		}
		if err := d.InsertOutbox(ctx, tx, rows[:1]); err != nil {
			return err
		}
		return d.InsertOutbox(ctx, tx, rows[1:])
	})
	deliver(t, ib, batch("orders", envelope(1, "fan-out")))
	start(t, ib)
	if st := settled(t, ib, 60*time.Second); st.Handled != 1 {
		t.Fatalf("stats %+v, want 1 handled", st)
	}
	if n := f.db.int(t, `SELECT count(*) FROM durable_outbox WHERE destination = 'next'`); n != int64(pgcopy.Threshold) {
		t.Fatalf("%d onward messages committed, want %d", n, pgcopy.Threshold)
	}
}
