package inbox

import (
	"context"
	"database/sql"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// TestIsolateRescued: messages whose last attempt was lost (their worker
// died: here a claim whose lease is left to expire) are handled one per
// transaction, each with one more attempt; messages that were not rescued
// still share a batch.
func TestIsolateRescued(t *testing.T) {
	each(t, testIsolateRescued[pgx.Tx], testIsolateRescued[*sql.Tx])
}

func testIsolateRescued[TTx any](t *testing.T, f *fixture[TTx]) {
	cfg := fastConfig(t)
	cfg.Concurrency = 1
	cfg.RescueInterval = 50 * time.Millisecond
	ib, mux := newInbox(t, f, cfg)
	var mu sync.Mutex
	batchOf := map[string]any{} // message id → its handler's transaction
	mux.HandleFunc("ok", func(ctx context.Context, tx TTx, m *Message) error {
		mu.Lock()
		// The batch's transaction: each handler gets its own wrapper of a
		// pgx.Tx (dialects.TxWatcher), so ask Postgres which it is.
		var id any = tx
		if q, ok := id.(pgx.Tx); ok {
			var xid int64
			if err := q.QueryRow(ctx, `SELECT txid_current()`).Scan(&xid); err != nil {
				return err
			}
			id = xid
		}
		batchOf[m.ID] = id
		mu.Unlock()
		return nil
	})
	ctx := context.Background()
	var lost, fresh []transport.Envelope
	for i := range 4 {
		lost = append(lost, envelope(i, "ok"))
	}
	if _, err := ib.Deliver(ctx, batch("orders", lost...)); err != nil {
		t.Fatal(err)
	}
	// A worker that claims them and dies: its lease runs out.
	claimed, err := ib.store.ClaimInbox(ctx, dialects.InboxClaim{Token: "dead", Worker: "dead-worker", Limit: 10, Lease: 50 * time.Millisecond})
	if err != nil || len(claimed) != len(lost) {
		t.Fatalf("claim = %d rows, %v", len(claimed), err)
	}
	time.Sleep(100 * time.Millisecond) // the lease expires; the wait below is for the rescue itself
	for i := 10; i < 14; i++ {
		fresh = append(fresh, envelope(i, "ok"))
	}
	if _, err := ib.Deliver(ctx, batch("orders", fresh...)); err != nil {
		t.Fatal(err)
	}
	start(t, ib)
	waitFor(t, "every message handled", 60*time.Second, func() bool { return stats(t, ib).Handled == 8 })

	mu.Lock()
	defer mu.Unlock()
	seen := map[any]string{}
	for _, e := range lost {
		tx := batchOf[e.ID]
		if other, ok := seen[tx]; ok {
			t.Errorf("rescued messages %s and %s ran in one transaction, want one each", other, e.ID)
		}
		seen[tx] = e.ID
		if r := row(t, ib, "orders", e.ID); r.Attempts != 2 || !strings.HasSuffix(r.LastError, dialects.RescuedError) {
			t.Errorf("rescued %s: attempts %d, last error %q; want 2 (the lost one and its own run)", e.ID, r.Attempts, r.LastError)
		}
	}
	shared := batchOf[fresh[0].ID]
	for _, e := range fresh[1:] {
		if batchOf[e.ID] != shared {
			t.Errorf("fresh messages %s and %s ran in different transactions, want one batch", fresh[0].ID, e.ID)
		}
	}
}
