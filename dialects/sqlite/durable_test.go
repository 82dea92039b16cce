package sqlite_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/transport"
)

func synchronous(t *testing.T, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) int {
	t.Helper()
	var v int
	if err := q.QueryRowContext(context.Background(), "PRAGMA synchronous").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestBeginDurable: a transaction of BeginDurable commits with synchronous=FULL (2), and the
// connection is back at the DSN's NORMAL (1) once the dialect's Commit or Rollback ended it,
// also after a failed statement; a DSN that asks for FULL keeps it.
func TestBeginDurable(t *testing.T) {
	ctx := ctxFor(t)
	d, _ := open(t, true)
	db := d.DB()
	if got := synchronous(t, db); got != 1 {
		t.Fatalf("sqlite.DSN gives synchronous %d, want 1 (NORMAL)", got)
	}
	for _, end := range []string{"commit", "rollback", "commit after an error"} {
		tx, err := d.BeginDurable(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := synchronous(t, tx); got != 2 {
			t.Fatalf("%s: synchronous %d inside BeginDurable's transaction, want 2 (FULL)", end, got)
		}
		if _, err := tx.Exec(`INSERT INTO durable_leases (name, holder, expires_at) VALUES (?, 'me', '2099-01-01 00:00:00.000')`, end); err != nil {
			t.Fatal(err)
		}
		switch end {
		case "commit":
			err = d.Commit(ctx, tx)
		case "rollback":
			err = d.Rollback(ctx, tx)
		default:
			if _, err := tx.Exec(`INSERT INTO no_such_table VALUES (1)`); err == nil {
				t.Fatal("insert into a missing table succeeded")
			}
			err = d.Commit(ctx, tx)
		}
		if err != nil {
			t.Fatalf("%s: %v", end, err)
		}
		// The pool's one connection is free again, and back at NORMAL.
		if got := synchronous(t, db); got != 1 {
			t.Fatalf("after %s: synchronous %d, want 1 again", end, got)
		}
		// Ending it again changes nothing.
		if err := d.Rollback(ctx, tx); err != nil {
			t.Fatalf("second end after %s: %v", end, err)
		}
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM durable_leases`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d rows committed (%v), want 2", n, err)
	}
	// An ordinary transaction keeps the DSN's setting.
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := synchronous(t, tx); got != 1 {
		t.Fatalf("synchronous %d inside Begin's transaction, want 1", got)
	}
	_ = d.Rollback(ctx, tx)

	// A DSN asking for FULL keeps it.
	full := openDB(t, strings.Replace(sqlite.DSN(testdb.SQLitePath(t)), "synchronous(NORMAL)", "synchronous(FULL)", 1))
	fd, err := sqlite.New(full, nil)
	if err != nil {
		t.Fatal(err)
	}
	tx, err = fd.BeginDurable(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := fd.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if got := synchronous(t, full); got != 2 {
		t.Fatalf("a FULL DSN after BeginDurable: synchronous %d, want 2", got)
	}
}

// TestClaimSyncs: the relay's claim commits with synchronous=FULL, which writes the log out to
// disk with every commit before it, so nothing is sent that a power loss could take back; the
// claim of expired rows, which go to the dead letters, does not need it. The connection is
// back at NORMAL afterwards.
func TestClaimSyncs(t *testing.T) {
	ctx := ctxFor(t)
	d, _ := open(t, true)
	var seen []int
	defer sqlite.OnBeginDurable(func(tx *sql.Tx) { seen = append(seen, synchronous(t, tx)) })()
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	expired := time.Now().Add(-time.Minute)
	err = d.InsertOutbox(ctx, tx, []dialects.OutboxRow{
		{Envelope: transport.Envelope{ID: "a", Topic: "t", Payload: []byte("x")}, Destination: "billing"},
		{Envelope: transport.Envelope{ID: "b", Topic: "t", Payload: []byte("x"), ExpiresAt: expired}, Destination: "billing"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 0 {
		t.Fatalf("Begin and InsertOutbox went through BeginDurable: %v", seen)
	}
	rows, err := d.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: "billing", Token: "tok", Limit: 10, Lease: time.Minute})
	if err != nil || len(rows) != 2 {
		t.Fatalf("claim: %d rows, %v", len(rows), err)
	}
	if len(seen) != 1 || seen[0] != 2 {
		t.Fatalf("claim: synchronous %v in BeginDurable's transactions, want [2]", seen)
	}
	if got := synchronous(t, d.DB()); got != 1 {
		t.Fatalf("after the claim: synchronous %d, want 1", got)
	}
	if _, err := d.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: "billing", Token: "tok2", Limit: 10, Lease: time.Minute, ExpiredOnly: true}); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 {
		t.Fatalf("the claim of expired rows went through BeginDurable: %v", seen)
	}
}
