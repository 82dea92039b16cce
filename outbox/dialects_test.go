package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/outbox"
)

type (
	pgxTx = pgx.Tx
	sqlTx = *sql.Tx
)

var pgxTarget = target[pgxTx]{name: "postgres-pgx", open: func(t *testing.T, migrated bool) dialects.Dialect[pgxTx] {
	pool, _ := testdb.PostgresPool(t, migrated)
	return pgDialect(t, pool)
}}

// pgDialect is postgres.New(pool, nil), failing t on an error.
func pgDialect(t testing.TB, pool *pgxpool.Pool) *postgres.Dialect {
	t.Helper()
	d, err := postgres.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

var pgSQLTarget = target[sqlTx]{name: "postgres-sql", open: func(t *testing.T, migrated bool) dialects.Dialect[sqlTx] {
	u, _ := testdb.PostgresSchema(t)
	db, err := sql.Open("pgx", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if migrated {
		for _, stmt := range testdb.UpSQL(t, migrations.Postgres) {
			if _, err := db.Exec(stmt); err != nil {
				t.Fatal(err)
			}
		}
	}
	d, err := postgres.NewSQL(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}}

var sqliteTarget = target[sqlTx]{name: "sqlite", open: func(t *testing.T, migrated bool) dialects.Dialect[sqlTx] {
	db, err := sql.Open("sqlite", sqlite.DSN(testdb.SQLitePath(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if migrated {
		for _, stmt := range testdb.UpSQL(t, migrations.SQLite) {
			if _, err := db.Exec(stmt); err != nil {
				t.Fatal(err)
			}
		}
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}}

// TestNotifyAtCommit: with Config.Notify, a LISTEN connection hears about
// committed enqueues and never about rolled-back ones.
func TestNotifyAtCommit(t *testing.T) {
	pool, _ := testdb.PostgresPool(t, true)
	ctx := ctxT(t)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN "+postgres.OutboxChannel); err != nil {
		t.Fatal(err)
	}
	ob := newOutbox(t, pgDialect(t, pool), &outbox.Config{Notify: true})
	// The channel is shared by every schema on the server, and other tests
	// notify too: use destination names no one else uses.
	_, schema := testdb.PostgresSchema(t)
	rolledBack, committed := "rolled-back-"+schema, "committed-"+schema
	m := msg(1)
	m.Destination = rolledBack
	if err := enqueueTx(t, ob, false, m); err != nil {
		t.Fatal(err)
	}
	m = msg(2)
	m.Destination = committed
	if err := enqueueTx(t, ob, true, m); err != nil {
		t.Fatal(err)
	}
	ours := func(payload string) bool { return payload == rolledBack || payload == committed }
	var heard []string
	// Listen until the committed enqueue's notification came (30s bounds a
	// hang, not the machine's speed); a notification of the rolled-back
	// one, enqueued first, would have come before it. Then listen a little
	// longer for anything else: a slow machine may miss a late extra, but
	// cannot fail this test spuriously.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for !slices.Contains(heard, committed) {
		n, err := conn.Conn().WaitForNotification(wctx)
		if err != nil {
			t.Fatalf("no notification of the committed enqueue within 30s (%v); heard %q", err, heard)
		}
		if ours(n.Payload) {
			heard = append(heard, n.Payload)
		}
	}
	more, cancelMore := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancelMore()
	for {
		n, err := conn.Conn().WaitForNotification(more)
		if err != nil {
			break // nothing more within the window
		}
		if ours(n.Payload) {
			heard = append(heard, n.Payload)
		}
	}
	if len(heard) != 1 || heard[0] != committed {
		t.Fatalf("notifications heard: %q, want exactly [%q] (a rolled-back enqueue must not notify)", heard, committed)
	}
}

// TestWrongDSN: a bad connection string fails with a clear error at the first
// use, and nothing is written anywhere.
func TestWrongDSN(t *testing.T) {
	ctx := ctxT(t)
	if _, err := pgxpool.ParseConfig("postgres://u@host:notaport/db"); err == nil {
		t.Error("malformed Postgres DSN parsed")
	}
	pool, err := pgxpool.New(ctx, "postgres://nobody@127.0.0.1:1/nowhere?connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ob := newOutbox(t, pgDialect(t, pool), nil)
	err = ob.CheckSchema(ctx)
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) || errors.Is(err, outbox.ErrSchema) {
		t.Errorf("CheckSchema with an unreachable server = %v, want a *pgconn.ConnectError", err)
	}
	if _, err := ob.Dialect().(dialects.TxBeginner[pgxTx]).Begin(ctx); !errors.As(err, &ce) {
		t.Errorf("Begin with an unreachable server = %v, want a *pgconn.ConnectError", err)
	}

	db, err := sql.Open("sqlite", sqlite.DSN(filepath.Join(t.TempDir(), "no", "such", "dir", "x.db")))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := sqlite.New(db, nil); err == nil || !strings.Contains(err.Error(), "unable to open") {
		t.Errorf("sqlite.New on an unopenable path = %v, want the driver's open error", err)
	}
	plain, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "plain.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := sqlite.New(plain, nil); !errors.Is(err, sqlite.ErrDSN) {
		t.Errorf("sqlite.New without WAL/busy_timeout/_txlock = %v, want ErrDSN", err)
	}
}
