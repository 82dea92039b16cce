package inbox

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestHandlerEndsTxInnocentNotBlamed (found in review): a handler that
// ends the batch transaction (commits or rolls it back) and returns nil is
// the culprit, not the message after it. The next savepoint step fails,
// and so does the rollback to the savepoint, which went with the
// transaction: the batch is broken, and the last handler that returned nil
// is blamed. With MaxAttempts 1 the rogue is dead-lettered (reason
// handler_error) and the innocent message is handled.
func TestHandlerEndsTxInnocentNotBlamed(t *testing.T) {
	t.Run("postgres-pgx", func(t *testing.T) {
		testHandlerEndsTxInnocentNotBlamed(t, openPgx(t, ""), func(ctx context.Context, tx pgx.Tx) error { return tx.Rollback(ctx) })
	})
	t.Run("sqlite", func(t *testing.T) {
		testHandlerEndsTxInnocentNotBlamed(t, openSQLite(t), func(ctx context.Context, tx *sql.Tx) error { return tx.Rollback() })
	})
}

func testHandlerEndsTxInnocentNotBlamed[TTx any](t *testing.T, f *fixture[TTx], endTx func(context.Context, TTx) error) {
	cfg := fastConfig(t)
	cfg.MaxAttempts = 1
	cfg.Concurrency = 1
	ib, mux := newInbox(t, f, cfg)
	mux.HandleFunc("ok", effect(f))
	mux.HandleFunc("rogue", func(ctx context.Context, tx TTx, m *Message) error { return endTx(ctx, tx) })
	deliver(t, ib, batch("orders", envelope(1, "rogue"), envelope(2, "ok")))
	start(t, ib)
	settled(t, ib, 60*time.Second)
	innocent := envelope(2, "").ID
	if dl, err := ib.DeadLetter(context.Background(), "orders", innocent); err == nil {
		t.Fatalf("innocent message %s (its handler only ran on a tx another handler had ended) was dead-lettered: reason %s, error %q",
			innocent, dl.Reason, dl.LastError)
	}
	if _, err := ib.DeadLetter(context.Background(), "orders", envelope(1, "").ID); err != nil {
		t.Fatalf("the rogue was not dead-lettered: %v", err)
	}
}
