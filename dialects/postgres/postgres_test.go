package postgres_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/dialecttest"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/internal/pgcopy"
	"github.com/durable-go/durable/internal/testdb"
)

// openPgx returns the pgx flavour on a fresh schema.
func openPgx(t *testing.T, migrate bool) *postgres.Dialect {
	pool, _ := testdb.PostgresPool(t, migrate)
	return newPgx(t, pool, nil)
}

// openSQL returns the database/sql flavour on a fresh schema, migrated
// through a pgx pool by the harness.
func openSQL(t *testing.T, migrate bool) *postgres.SQLDialect {
	_, schema := testdb.PostgresPool(t, migrate)
	return newSQL(t, sqlDB(t, testdb.WithSearchPath(t, testdb.PostgresURL(t), schema)), nil)
}

// newPgx is postgres.New, failing t on an error.
func newPgx(t testing.TB, pool *pgxpool.Pool, cfg *postgres.Config) *postgres.Dialect {
	t.Helper()
	d, err := postgres.New(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// newSQL is postgres.NewSQL, failing t on an error.
func newSQL(t testing.TB, db *sql.DB, cfg *postgres.Config) *postgres.SQLDialect {
	t.Helper()
	d, err := postgres.NewSQL(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func sqlDB(t *testing.T, url string) *sql.DB {
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestConformancePgx(t *testing.T) {
	dialecttest.Run(t, dialecttest.Harness[pgx.Tx]{
		Open:           func(t *testing.T) dialects.Dialect[pgx.Tx] { return openPgx(t, true) },
		OpenUnmigrated: func(t *testing.T) dialects.Dialect[pgx.Tx] { return openPgx(t, false) },
	})
}

func TestConformanceSQL(t *testing.T) {
	dialecttest.Run(t, dialecttest.Harness[*sql.Tx]{
		Open:           func(t *testing.T) dialects.Dialect[*sql.Tx] { return openSQL(t, true) },
		OpenUnmigrated: func(t *testing.T) dialects.Dialect[*sql.Tx] { return openSQL(t, false) },
	})
}

// ctxFor bounds a test's database work: a bound on hangs, not on speed.
func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func randomName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func rows(destination string, from, n int) []dialects.OutboxRow {
	out := make([]dialects.OutboxRow, n)
	for i := range out {
		out[i] = dialecttest.Row(from+i, destination)
	}
	return out
}

// TestDuplicates checks both write paths (unnest, COPY) of both flavours: a
// duplicate against a committed row and one within the call each fail the
// whole call with a DuplicateError naming the first duplicate, and leave the
// transaction usable, with the work it did before the call and nothing of
// the call.
func TestDuplicates(t *testing.T) {
	t.Run("pgx", func(t *testing.T) { testDuplicates(t, openPgx(t, true)) })
	t.Run("sql", func(t *testing.T) { testDuplicates(t, openSQL(t, true)) })
}

func testDuplicates[TTx any](t *testing.T, d dialects.Dialect[TTx]) {
	ctx := ctxFor(t)
	// Large batches take the COPY path on the pgx flavour.
	sizes := map[string]int{"small": 10, "large": pgcopy.Threshold + 10}
	for path, n := range sizes {
		for _, kind := range []string{"committed", "within"} {
			t.Run(path+"/"+kind, func(t *testing.T) {
				dest := path + "-" + kind
				commit(t, d, rows(dest, 0, 3))
				call := rows(dest, 100, n)
				want := ""
				switch kind {
				case "committed":
					call[n/2] = dialecttest.Row(1, dest)
					call[n-1] = dialecttest.Row(2, dest) // a later duplicate is not the one named
					want = call[n/2].ID
				case "within":
					call[n-1] = call[n/3]
					want = call[n/3].ID
				}
				tx, err := d.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer func() { _ = d.Rollback(ctx, tx) }()
				before := dialecttest.Row(50, dest)
				if err := d.InsertOutbox(ctx, tx, []dialects.OutboxRow{before}); err != nil {
					t.Fatal(err)
				}
				err = d.InsertOutbox(ctx, tx, call)
				var de *dialects.DuplicateError
				if !errors.As(err, &de) || !errors.Is(err, dialects.ErrDuplicateID) || de.ID != want || de.Destination != dest {
					t.Fatalf("InsertOutbox = %v, want a DuplicateError for %s@%s", err, want, dest)
				}
				after := dialecttest.Row(60, dest)
				if err := d.InsertOutbox(ctx, tx, []dialects.OutboxRow{after}); err != nil {
					t.Fatalf("tx unusable after the DuplicateError: %v", err)
				}
				if err := d.Commit(ctx, tx); err != nil {
					t.Fatal(err)
				}
				got, err := d.ListOutbox(ctx, dialects.OutboxQuery{Destination: dest})
				if err != nil {
					t.Fatal(err)
				}
				wantIDs := []string{dialecttest.Row(0, "").ID, dialecttest.Row(1, "").ID, dialecttest.Row(2, "").ID, before.ID, after.ID}
				if len(got) != len(wantIDs) {
					t.Fatalf("after the failed call: %d rows, want %d", len(got), len(wantIDs))
				}
				for i := range wantIDs {
					if got[i].ID != wantIDs[i] {
						t.Fatalf("row %d is %s, want %s", i, got[i].ID, wantIDs[i])
					}
				}
			})
		}
	}
}

func commit[TTx any](t *testing.T, d dialects.Dialect[TTx], rows []dialects.OutboxRow) {
	t.Helper()
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.InsertOutbox(ctx, tx, rows); err != nil {
		_ = d.Rollback(ctx, tx)
		t.Fatal(err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
}

// TestCopyLargeBatch writes 10,000 rows in one call through COPY, with
// defaulted times, and reads them back in order.
func TestCopyLargeBatch(t *testing.T) {
	d := openPgx(t, true)
	ctx := ctxFor(t)
	want := rows("billing", 0, 10_000)
	want[7].CreatedAt, want[7].DeliverAt, want[7].ExpiresAt = time.Time{}, time.Time{}, time.Time{}
	want[8].Headers, want[8].Payload = nil, nil
	start := time.Now()
	commit(t, d, want)
	t.Logf("10,000 rows in one InsertOutbox call: %v", time.Since(start))
	got, err := d.ListOutbox(ctx, dialects.OutboxQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d rows, want %d", len(got), len(want))
	}
	r7 := got[7]
	// Defaulted to the time of the insert: between start and now (with a
	// minute's slack for the server's clock), however long the insert took.
	if r7.CreatedAt.Before(start.Add(-time.Minute)) || r7.CreatedAt.After(time.Now().Add(time.Minute)) ||
		!r7.CreatedAt.Equal(r7.DeliverAt) || !r7.ExpiresAt.IsZero() {
		t.Errorf("defaulted times: created %v deliver %v expires %v, want now, now, zero", r7.CreatedAt, r7.DeliverAt, r7.ExpiresAt)
	}
	if len(got[8].Headers) != 0 || len(got[8].Payload) != 0 {
		t.Errorf("nil headers and payload read back as %v, %x", got[8].Headers, got[8].Payload)
	}
	for i := range want {
		if i == 7 {
			continue
		}
		w := want[i]
		if err := dialecttest.Equal(got[i], w); err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
	}
}

// TestNotify listens on OutboxChannel and checks that a notification
// arrives after commit, once per distinct destination, and never after a
// rollback.
func TestNotify(t *testing.T) {
	t.Run("pgx", func(t *testing.T) { testNotify(t, openPgx(t, true)) })
	t.Run("sql", func(t *testing.T) { testNotify(t, openSQL(t, true)) })
}

func testNotify[TTx any](t *testing.T, d dialects.Dialect[TTx]) {
	ctx := ctxFor(t)
	n := d.(dialects.Notifier[TTx])
	listener, err := pgx.Connect(ctx, testdb.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(ctx)
	if _, err := listener.Exec(ctx, "LISTEN "+postgres.OutboxChannel); err != nil {
		t.Fatal(err)
	}
	// Other tests may notify on the same channel: look only for ours.
	rolledBack, committed := randomName("rb-"), randomName("ok-")

	for _, c := range []struct {
		dest   string
		commit bool
	}{{rolledBack, false}, {committed, true}} {
		tx, err := d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.NotifyOutbox(ctx, tx, []string{c.dest, c.dest, c.dest + "-2"}); err != nil {
			t.Fatal(err)
		}
		if c.commit {
			err = d.Commit(ctx, tx)
		} else {
			err = d.Rollback(ctx, tx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	got := map[string]int{}
	deadline := time.Now().Add(time.Minute) // a bound on a hang, not on speed
	for got[committed] == 0 || got[committed+"-2"] == 0 {
		wctx, cancel := context.WithDeadline(ctx, deadline)
		msg, err := listener.WaitForNotification(wctx)
		cancel()
		if err != nil {
			t.Fatalf("waiting for the notifications of the committed tx: %v (got %v)", err, got)
		}
		if msg.Channel == postgres.OutboxChannel {
			got[msg.Payload]++
		}
	}
	// Notifications of one session arrive in commit order: anything of the
	// rolled back transaction would have come before. Drain what is queued.
	for {
		wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		msg, err := listener.WaitForNotification(wctx)
		cancel()
		if err != nil {
			break
		}
		got[msg.Payload]++
	}
	if got[committed] != 1 || got[committed+"-2"] != 1 {
		t.Errorf("committed tx: notifications %v, want one per distinct destination", got)
	}
	if got[rolledBack] != 0 || got[rolledBack+"-2"] != 0 {
		t.Errorf("rolled back tx was notified: %v", got)
	}
}

// TestSchema keeps durable in a schema of its own, with an awkward
// name, and reaches it from connections whose search_path does not include
// it.
func TestSchema(t *testing.T) {
	base := testdb.PostgresURL(t)
	schema := `Durable "Q" ` + randomName("")
	ctx := ctxFor(t)
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	ident := pgx.Identifier{schema}.Sanitize()
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+ident); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), base)
		if err != nil {
			t.Log(err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), "DROP SCHEMA "+ident+" CASCADE"); err != nil {
			t.Log(err)
		}
	})
	if _, err := conn.Exec(ctx, "SET search_path = "+ident); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range testdb.UpSQL(t, "postgres") {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	// Connections on an empty schema of their own: without the option they
	// see no durable table at all.
	_, empty := testdb.PostgresSchema(t)
	url := testdb.WithSearchPath(t, base, empty)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	db := sqlDB(t, url)

	t.Run("pgx", func(t *testing.T) {
		if err := newPgx(t, pool, nil).CheckSchema(ctx); !errors.Is(err, dialects.ErrSchema) {
			t.Fatalf("without Config.Schema: CheckSchema = %v, want ErrSchema", err)
		}
		testSchemaRoundTrip(t, newPgx(t, pool, &postgres.Config{Schema: schema}), "pgx", pgcopy.Threshold)
	})
	t.Run("sql", func(t *testing.T) {
		if err := newSQL(t, db, nil).CheckSchema(ctx); !errors.Is(err, dialects.ErrSchema) {
			t.Fatalf("without Config.Schema: CheckSchema = %v, want ErrSchema", err)
		}
		testSchemaRoundTrip(t, newSQL(t, db, &postgres.Config{Schema: schema}), "sql", 3)
	})
	t.Run("missing", func(t *testing.T) {
		d := newPgx(t, pool, &postgres.Config{Schema: randomName("nosuch_")})
		if err := d.CheckSchema(ctx); !errors.Is(err, dialects.ErrSchema) {
			t.Fatalf("CheckSchema on a schema that does not exist = %v, want ErrSchema", err)
		}
		tx, err := d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = d.Rollback(ctx, tx) }()
		if err := d.InsertOutbox(ctx, tx, rows("x", 0, 1)); !errors.Is(err, dialects.ErrSchema) {
			t.Fatalf("InsertOutbox on a schema that does not exist = %v, want ErrSchema", err)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		for _, name := range []string{strings.Repeat("s", 64), "a\x00b"} {
			cfg := &postgres.Config{Schema: name}
			if d, err := postgres.New(pool, cfg); !errors.Is(err, postgres.ErrSchemaName) || d != nil {
				t.Errorf("New with Schema %q = %v, %v; want nil, ErrSchemaName", name, d, err)
			}
			if d, err := postgres.NewSQL(db, cfg); !errors.Is(err, postgres.ErrSchemaName) || d != nil {
				t.Errorf("NewSQL with Schema %q = %v, %v; want nil, ErrSchemaName", name, d, err)
			}
			if cfg.Schema != name {
				t.Errorf("New changed Config.Schema from %q to %q", name, cfg.Schema)
			}
		}
		// 63 bytes is Postgres's limit, and allowed.
		newPgx(t, pool, &postgres.Config{Schema: strings.Repeat("s", 63)})
	})
	t.Run("nil", func(t *testing.T) {
		if _, err := postgres.New(nil, nil); err == nil {
			t.Error("New(nil, nil) succeeded")
		}
		if _, err := postgres.NewSQL(nil, nil); err == nil {
			t.Error("NewSQL(nil, nil) succeeded")
		}
	})
}

func testSchemaRoundTrip[TTx any](t *testing.T, d dialects.Dialect[TTx], dest string, n int) {
	ctx := ctxFor(t)
	if err := d.CheckSchema(ctx); err != nil {
		t.Fatalf("CheckSchema: %v", err)
	}
	commit(t, d, rows(dest, 0, n))
	got, err := d.ListOutbox(ctx, dialects.OutboxQuery{Destination: dest})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("got %d rows, want %d", len(got), n)
	}
	// A duplicate is found in the named schema too.
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Rollback(ctx, tx) }()
	if err := d.InsertOutbox(ctx, tx, rows(dest, n-1, 2)); !errors.Is(err, dialects.ErrDuplicateID) {
		t.Fatalf("duplicate in the named schema: %v", err)
	}
}

// TestSchemaVersions checks CheckSchema against an unmigrated database, an
// empty version table and a newer schema, and that every operation meeting
// a missing table names the missing migration.
func TestSchemaVersions(t *testing.T) {
	ctx := ctxFor(t)
	t.Run("unmigrated", func(t *testing.T) {
		d := openPgx(t, false)
		tx, err := d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = d.Rollback(ctx, tx) }()
		_, listErr := d.ListOutbox(ctx, dialects.OutboxQuery{})
		for op, err := range map[string]error{
			"CheckSchema":        d.CheckSchema(ctx),
			"ListOutbox":         listErr,
			"InsertOutbox(copy)": d.InsertOutbox(ctx, tx, rows("x", 0, pgcopy.Threshold)),
		} {
			var se *dialects.SchemaError
			if !errors.As(err, &se) || se.Have != 0 || se.Want != dialects.SchemaVersion {
				t.Errorf("%s = %v, want a SchemaError from version 0", op, err)
				continue
			}
			if !strings.Contains(err.Error(), "0001_init") {
				t.Errorf("%s: %q does not name the missing migration", op, err)
			}
		}
	})
	t.Run("empty", func(t *testing.T) {
		pool, _ := testdb.PostgresPool(t, true)
		if _, err := pool.Exec(ctx, "DELETE FROM durable_schema_version"); err != nil {
			t.Fatal(err)
		}
		err := newPgx(t, pool, nil).CheckSchema(ctx)
		var se *dialects.SchemaError
		if !errors.As(err, &se) || se.Have != 0 {
			t.Fatalf("CheckSchema = %v, want a SchemaError with Have 0", err)
		}
	})
	// A newer schema is accepted (the compatibility promise of
	// dialects.SchemaVersion), and the build works on it.
	t.Run("newer", func(t *testing.T) {
		pool, _ := testdb.PostgresPool(t, true)
		if _, err := pool.Exec(ctx, "INSERT INTO durable_schema_version (version, name) VALUES (99, '0099_future')"); err != nil {
			t.Fatal(err)
		}
		for _, d := range []interface{ CheckSchema(context.Context) error }{newPgx(t, pool, nil), newSQL(t, stdlib.OpenDBFromPool(pool), nil)} {
			if err := d.CheckSchema(ctx); err != nil {
				t.Fatalf("CheckSchema on a newer schema = %v, want nil", err)
			}
		}
		d := newPgx(t, pool, nil)
		tx, err := d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.InsertOutbox(ctx, tx, rows("newer", 0, 1)); err != nil {
			t.Fatal(err)
		}
		if err := d.Commit(ctx, tx); err != nil {
			t.Fatal(err)
		}
		if got, err := d.ListOutbox(ctx, dialects.OutboxQuery{Destination: "newer"}); err != nil || len(got) != 1 {
			t.Fatalf("ListOutbox on a newer schema = %d rows, %v", len(got), err)
		}
		// An operation that meets a table missing from the newer schema
		// says so.
		if _, err := pool.Exec(ctx, "DROP TABLE durable_leases"); err != nil {
			t.Fatal(err)
		}
		_, err = d.AcquireLease(ctx, "x", "me", time.Minute)
		var se *dialects.SchemaError
		if !errors.As(err, &se) || se.Have != 99 || !strings.Contains(err.Error(), "newer than this build (version 4), and lacks a table or column") {
			t.Fatalf("AcquireLease without its table on a newer schema = %v", err)
		}
	})
}

// TestDamagedSchema drops a column behind durable's back: the statement that
// meets it fails with a SchemaError carrying the recorded version.
func TestDamagedSchema(t *testing.T) {
	pool, schema := testdb.PostgresPool(t, true)
	if _, err := pool.Exec(ctxFor(t), "ALTER TABLE durable_outbox DROP COLUMN key"); err != nil {
		t.Fatal(err)
	}
	t.Run("pgx", func(t *testing.T) { testDamagedSchema(t, newPgx(t, pool, nil)) })
	db := sqlDB(t, testdb.WithSearchPath(t, testdb.PostgresURL(t), schema))
	t.Run("sql", func(t *testing.T) { testDamagedSchema(t, newSQL(t, db, nil)) })
}

func testDamagedSchema[TTx any](t *testing.T, d dialects.Dialect[TTx]) {
	ctx := ctxFor(t)
	if err := d.CheckSchema(ctx); err != nil {
		t.Fatalf("CheckSchema only reads the version, yet: %v", err)
	}
	for _, n := range []int{1, pgcopy.Threshold} {
		tx, err := d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		err = d.InsertOutbox(ctx, tx, rows("x", 0, n))
		_ = d.Rollback(ctx, tx)
		var se *dialects.SchemaError
		var pgErr *pgconn.PgError
		if !errors.As(err, &se) || se.Have != dialects.SchemaVersion || !errors.As(err, &pgErr) || pgErr.Code != "42703" {
			t.Fatalf("InsertOutbox of %d rows = %v, want a SchemaError at version %d wrapping undefined_column", n, err, dialects.SchemaVersion)
		}
	}
	if _, err := d.ListOutbox(ctx, dialects.OutboxQuery{}); !errors.Is(err, dialects.ErrSchema) {
		t.Fatalf("ListOutbox = %v, want ErrSchema", err)
	}
}

// TestBadDSN documents that connection errors are pgx's own: a malformed
// DSN is refused when the pool is built, an unreachable server on first use
// (Ping, or any operation of the dialect).
func TestBadDSN(t *testing.T) {
	ctx := ctxFor(t)
	if _, err := pgxpool.New(ctx, "postgres://u@127.0.0.1:notaport/db"); err == nil {
		t.Fatal("pgxpool.New accepted a malformed DSN")
	} else {
		t.Logf("malformed DSN: %v", err)
	}
	unreachable := "postgres://u@127.0.0.1:1/db?connect_timeout=2"
	pool, err := pgxpool.New(ctx, unreachable)
	if err != nil {
		t.Fatalf("pgxpool.New connects lazily, yet: %v", err)
	}
	defer pool.Close()
	var ce *pgconn.ConnectError
	if err := pool.Ping(ctx); !errors.As(err, &ce) {
		t.Fatalf("Ping of an unreachable server = %v, want a *pgconn.ConnectError", err)
	}
	if err := newPgx(t, pool, nil).CheckSchema(ctx); !errors.As(err, &ce) || errors.Is(err, dialects.ErrSchema) {
		t.Fatalf("CheckSchema on an unreachable server = %v, want pgx's *pgconn.ConnectError", err)
	} else {
		t.Logf("unreachable server: %v", err)
	}
	db := sqlDB(t, unreachable)
	if err := newSQL(t, db, nil).CheckSchema(ctx); err == nil || errors.Is(err, dialects.ErrSchema) {
		t.Fatalf("CheckSchema through database/sql on an unreachable server = %v", err)
	}
}

// TestReplayOutboxNotifies: replaying outbox dead letters wakes the relays
// listening on OutboxChannel, once per destination, at commit.
func TestReplayOutboxNotifies(t *testing.T) {
	d := openPgx(t, true)
	ctx := ctxFor(t)
	listener, err := pgx.Connect(ctx, testdb.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(ctx)
	if _, err := listener.Exec(ctx, "LISTEN "+postgres.OutboxChannel); err != nil {
		t.Fatal(err)
	}
	dest := randomName("replay-")
	rows := []dialects.OutboxRow{dialecttest.Row(1, dest), dialecttest.Row(2, dest)}
	for i := range rows {
		rows[i].DeliverAt, rows[i].ExpiresAt = time.Now().Add(-time.Second), time.Time{}
	}
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.InsertOutbox(ctx, tx, rows); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	claimed, err := d.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: dest, Token: "t", Limit: 10, Lease: time.Minute})
	if err != nil || len(claimed) != 2 {
		t.Fatalf("claim = %d rows, %v", len(claimed), err)
	}
	letters := []dialects.OutboxDeadLetter{{Seq: claimed[0].Seq, Reason: dialects.ReasonRejected, Error: "no"},
		{Seq: claimed[1].Seq, Reason: dialects.ReasonRejected, Error: "no"}}
	if n, err := d.DeadLetterOutbox(ctx, "t", letters); err != nil || n != 2 {
		t.Fatalf("dead-letter move = %d, %v", n, err)
	}
	if n, err := d.ReplayDeadLetters(ctx, dialects.DeadLetterQuery{Side: dialects.SideOutbox, Destination: dest}); err != nil || n != 2 {
		t.Fatalf("replay = %d, %v; want 2", n, err)
	}
	// Wait for the first notification as long as it takes (a minute bounds
	// a hang), then for a second one within a short quiet period: a slow
	// machine can only make that miss a duplicate, not fail the test.
	got := 0
	for wait := time.Minute; ; {
		wctx, cancel := context.WithTimeout(ctx, wait)
		msg, err := listener.WaitForNotification(wctx)
		cancel()
		if err != nil {
			break
		}
		if msg.Channel == postgres.OutboxChannel && msg.Payload == dest {
			got++
			wait = time.Second
		}
	}
	if got != 1 {
		t.Fatalf("%d notifications for %s, want 1", got, dest)
	}
}
