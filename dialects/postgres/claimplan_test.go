package postgres_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/internal/testdb"
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
	d := postgres.New(pool)
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
