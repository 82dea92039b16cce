package postgres_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/transport"
)

// TestClaimPlanAfterEmptyStart: a relay starts on an empty outbox, and its
// claim statements are prepared once per connection. A plan made then must
// not be kept once rows wait: a generic plan made on the empty table walked
// the whole backlog to join the candidates (5.9 s for a claim on 20,000
// rows). On one connection, after claims on the empty outbox, a 1,000-row
// claim on 50,000 waiting rows must read index entries in proportion to its
// limit, not to the backlog (counted in pg_stat_user_indexes, which the
// same backend flushes on request).
func TestClaimPlanAfterEmptyStart(t *testing.T) {
	const backlog, limit = 50_000, 1000
	ctx := ctxFor(t)
	_, schema := testdb.PostgresPool(t, true)
	cfg, err := pgxpool.ParseConfig(testdb.WithSearchPath(t, testdb.PostgresURL(t), schema))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // one backend: the claims' cached plans and the statistics read below
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	d := newPgx(t, pool, nil)
	claim := func() []dialects.ClaimedRow {
		t.Helper()
		rows, err := d.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: "billing", Token: "relay-a", Limit: limit, Lease: time.Minute})
		if err != nil {
			t.Fatalf("claim: %v", err)
		}
		return rows
	}
	for range 8 { // past the five executions after which Postgres may switch to a generic plan
		if rows := claim(); len(rows) != 0 {
			t.Fatalf("claim on the empty outbox returned %d rows", len(rows))
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO durable_outbox (id, destination, topic, payload)
		SELECT 'm' || g, 'billing', 'orders.placed', '\x00' FROM generate_series(1, $1::int) g`, backlog); err != nil {
		t.Fatal(err)
	}
	indexReads := func() int64 {
		t.Helper()
		if _, err := pool.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `SELECT pg_stat_clear_snapshot()`); err != nil {
			t.Fatal(err)
		}
		var n int64
		if err := pool.QueryRow(ctx, `SELECT coalesce(sum(idx_tup_read), 0)::bigint FROM pg_stat_user_indexes
			WHERE relid = 'durable_outbox'::regclass`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := indexReads()
	if rows := claim(); len(rows) != limit {
		t.Fatalf("claim on %d waiting rows returned %d, want %d", backlog, len(rows), limit)
	}
	read := indexReads() - before
	// A claim reads the limit's worth of unkeyed entries and looks each
	// candidate up by its primary key twice (lock, update): about 3,000.
	if read > 10*limit {
		t.Fatalf("a %d-row claim read %d index entries of durable_outbox with %d rows waiting; want at most %d: the plan walks the backlog", limit, read, backlog, 10*limit)
	}
	t.Logf("a %d-row claim read %d index entries with %d rows waiting", limit, read, backlog)
}

// TestInsertInboxPlanAfterEmptyStart: InsertInbox is prepared once per
// connection, and its first deliveries meet an empty inbox. A plan made
// then must not read the whole inbox at every later delivery: the key
// check of a row asked to be stored handled was a NOT EXISTS that a plan
// made on the small table hashed, reading every row of the inbox (four
// times) for a one-row batch. On one connection, after deliveries to the
// empty inbox, one keyed row delivered with 20,000 handled rows of its key
// stored must read (almost) no row sequentially.
func TestInsertInboxPlanAfterEmptyStart(t *testing.T) {
	const handled = 20_000
	ctx := ctxFor(t)
	_, schema := testdb.PostgresPool(t, true)
	cfg, err := pgxpool.ParseConfig(testdb.WithSearchPath(t, testdb.PostgresURL(t), schema))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // one backend: the statement's cached plan and the statistics read below
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	d := newPgx(t, pool, nil)
	// deliver stores n rows asked to be stored handled, the first under
	// the key "hot", in one transaction.
	deliver := func(id string, n int) {
		t.Helper()
		tx, err := d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = d.Rollback(ctx, tx) }()
		rows := make([]dialects.InboxRow, n)
		for i := range rows {
			rows[i] = dialects.InboxRow{
				Envelope: transport.Envelope{
					ID:      fmt.Sprintf("%s-%d", id, i),
					Topic:   "t",
					Key:     fmt.Sprintf("k-%s-%d", id, i),
					Payload: []byte("x"),
				},
				Source:     "orders",
				State:      dialects.InboxStateHandled,
				LeaseToken: "tok",
			}
		}
		rows[0].Key = "hot"
		stored, err := d.InsertInbox(ctx, tx, rows)
		if err != nil || len(stored) != n || !stored[0] {
			t.Fatalf("InsertInbox %s = %v, %v", id, stored, err)
		}
		if err := d.Commit(ctx, tx); err != nil {
			t.Fatal(err)
		}
	}
	// Batches of 100, as a busy sender sends them: their custom plans cost
	// more than the generic plan (which guesses 10 rows), so after five
	// executions Postgres keeps the generic one.
	for i := range 8 {
		deliver(fmt.Sprintf("warm%d", i), 100)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO durable_inbox (source, id, topic, key, payload, created_at, state, attempts, handled_at)
		SELECT 'orders', 'old-' || g, 't', 'hot', '\x00', now(), 'handled', 1, now() FROM generate_series(1, $1::int) g`, handled); err != nil {
		t.Fatal(err)
	}
	seqReads := func() int64 {
		t.Helper()
		if _, err := pool.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `SELECT pg_stat_clear_snapshot()`); err != nil {
			t.Fatal(err)
		}
		var n int64
		if err := pool.QueryRow(ctx, `SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables
			WHERE relid = 'durable_inbox'::regclass`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := seqReads()
	deliver("new", 1)
	if read := seqReads() - before; read > handled/10 {
		t.Fatalf("delivering one keyed row read %d rows of durable_inbox sequentially with %d stored: the key check scans the inbox", read, handled)
	}
}
