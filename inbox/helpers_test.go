package inbox

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// raw runs statements on a test database outside any inbox transaction.
type raw interface {
	exec(t testing.TB, q string, args ...any)
	int(t testing.TB, q string, args ...any) int64
	strings(t testing.TB, q string, args ...any) []string
}

// fixture is a migrated database of one dialect with an effects table.
type fixture[TTx any] struct {
	name string
	d    dialects.Dialect[TTx]
	db   raw
	// txExec runs a statement in a handler's transaction.
	txExec func(ctx context.Context, tx TTx, q string, args ...any) error
}

// effectsTable records handler effects; seq gives their commit order.
const effectsTable = `CREATE TABLE effects (
	seq integer PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
	id text NOT NULL,
	k text NOT NULL DEFAULT '',
	n integer NOT NULL DEFAULT 0)`

const effectsTableSQLite = `CREATE TABLE effects (
	seq INTEGER PRIMARY KEY AUTOINCREMENT,
	id TEXT NOT NULL,
	k TEXT NOT NULL DEFAULT '',
	n INTEGER NOT NULL DEFAULT 0)`

type pgxRaw struct{ pool *pgxpool.Pool }

func (p pgxRaw) exec(t testing.TB, q string, args ...any) {
	t.Helper()
	if _, err := p.pool.Exec(context.Background(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func (p pgxRaw) int(t testing.TB, q string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := p.pool.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

func (p pgxRaw) strings(t testing.TB, q string, args ...any) []string {
	t.Helper()
	rows, err := p.pool.Query(context.Background(), q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return out
}

type sqlRaw struct{ db *sql.DB }

func (s sqlRaw) exec(t testing.TB, q string, args ...any) {
	t.Helper()
	if _, err := s.db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func (s sqlRaw) int(t testing.TB, q string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := s.db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

func (s sqlRaw) strings(t testing.TB, q string, args ...any) []string {
	t.Helper()
	rows, err := s.db.Query(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func pgxExec(ctx context.Context, tx pgx.Tx, q string, args ...any) error {
	_, err := tx.Exec(ctx, q, args...)
	return err
}

func sqlExec(ctx context.Context, tx *sql.Tx, q string, args ...any) error {
	_, err := tx.ExecContext(ctx, q, args...)
	return err
}

// openPgx returns the pgx flavour on a fresh schema; params are added to
// the pool's URL.
func openPgx(t testing.TB, params string) *fixture[pgx.Tx] {
	u, _ := testdb.PostgresSchema(t)
	pool := testdb.OpenPostgres(t, u+params, true)
	db := pgxRaw{pool}
	db.exec(t, effectsTable)
	return &fixture[pgx.Tx]{name: "postgres-pgx", d: pgDialect(t, pool), db: db, txExec: pgxExec}
}

// pgDialect is postgres.New(pool, nil), failing t on an error.
func pgDialect(t testing.TB, pool *pgxpool.Pool) *postgres.Dialect {
	t.Helper()
	d, err := postgres.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func openPgSQL(t testing.TB) *fixture[*sql.Tx] {
	u, _ := testdb.PostgresSchema(t)
	db, err := sql.Open("pgx", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	r := sqlRaw{db}
	for _, stmt := range testdb.UpSQL(t, migrations.Postgres) {
		r.exec(t, stmt)
	}
	r.exec(t, effectsTable)
	d, err := postgres.NewSQL(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture[*sql.Tx]{name: "postgres-sql", d: d, db: r, txExec: sqlExec}
}

func openSQLite(t testing.TB) *fixture[*sql.Tx] {
	db, err := sql.Open("sqlite", sqlite.DSN(testdb.SQLitePath(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	r := sqlRaw{db}
	for _, stmt := range testdb.UpSQL(t, migrations.SQLite) {
		r.exec(t, stmt)
	}
	r.exec(t, effectsTableSQLite)
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture[*sql.Tx]{name: "sqlite", d: d, db: r, txExec: sqlExec}
}

// each runs a test on pgx, Postgres through database/sql, and SQLite.
func each(t *testing.T, pg func(*testing.T, *fixture[pgx.Tx]), std func(*testing.T, *fixture[*sql.Tx])) {
	t.Run("postgres-pgx", func(t *testing.T) { pg(t, openPgx(t, "")) })
	t.Run("postgres-sql", func(t *testing.T) { std(t, openPgSQL(t)) })
	t.Run("sqlite", func(t *testing.T) { std(t, openSQLite(t)) })
}

// quiet is a logger for tests: warnings and errors only, to the test log.
func quiet(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

var _ io.Writer = testWriter{}

// fastConfig is a Config for tests: short polls and backoff.
func fastConfig(t testing.TB) *Config {
	return &Config{
		PollInterval: 100 * time.Millisecond,
		Backoff:      func(int) time.Duration { return 5 * time.Millisecond },
		Logger:       quiet(t),
		// A topic without a handler is dead-lettered at once, as the tests
		// expect, except those of NoHandlerGrace itself.
		NoHandlerGrace: -1,
	}
}

// newInbox returns an inbox on f with cfg (nil: fastConfig) and the Mux it
// hands messages to.
func newInbox[TTx any](t testing.TB, f *fixture[TTx], cfg *Config) (*Inbox[TTx], *Mux[TTx]) {
	t.Helper()
	if cfg == nil {
		cfg = fastConfig(t)
	}
	mux := NewMux[TTx]()
	ib, err := New(f.d, mux, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return ib, mux
}

// start runs ib until the test ends (or stop is called) and checks that Run
// returns nil.
func start[TTx any](t testing.TB, ib *Inbox[TTx]) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ib.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v, want nil", err)
				}
			case <-time.After(60 * time.Second):
				t.Errorf("Run did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func envelope(i int, topic string) transport.Envelope {
	return transport.Envelope{
		ID:          fmt.Sprintf("m-%06d", i),
		Topic:       topic,
		Headers:     map[string]string{"n": fmt.Sprint(i)},
		Payload:     fmt.Appendf(nil, `{"n":%d}`, i),
		CreatedAt:   time.Now().UTC(),
		SendAttempt: 1,
	}
}

func batch(source string, envs ...transport.Envelope) *transport.Batch {
	return &transport.Batch{Source: source, Envelopes: envs}
}

func deliver[TTx any](t testing.TB, ib *Inbox[TTx], b *transport.Batch) transport.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := ib.Deliver(ctx, b)
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	return res
}

func statuses(res transport.Result, n int) []transport.Status {
	out := make([]transport.Status, n)
	for i := range out {
		out[i] = res.Outcome(i).Status
	}
	return out
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func stats[TTx any](t testing.TB, ib *Inbox[TTx]) Stats {
	t.Helper()
	s, err := ib.Stats(context.Background())
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	return s
}

// lastMinuteSlack returns st for an exact comparison whose
// HandledLastMinute is its Handled: every message of the test was handled
// after began. Read less than 50s after began, st is returned as is, and
// HandledLastMinute must equal Handled. Later, on a slow machine, some
// messages may have been handled more than a minute before the stats were
// read: a HandledLastMinute in (0, Handled] then counts as Handled.
func lastMinuteSlack(st Stats, began time.Time) Stats {
	if time.Since(began) >= 50*time.Second && st.HandledLastMinute > 0 && st.HandledLastMinute <= st.Handled {
		st.HandledLastMinute = st.Handled
	}
	return st
}

// recv receives from ch, failing the test if nothing comes within a minute.
func recv[T any](t testing.TB, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(time.Minute):
		t.Fatalf("timed out after a minute waiting for %s", what)
		panic("unreachable")
	}
}

// claimCounter wraps an inbox's store and counts the claims that returned.
type claimCounter[TTx any] struct {
	dialects.InboxStore[TTx]
	n atomic.Int64
}

func (c *claimCounter[TTx]) ClaimInbox(ctx context.Context, q dialects.InboxClaim) ([]dialects.InboxRow, error) {
	rows, err := c.InboxStore.ClaimInbox(ctx, q)
	c.n.Add(1)
	return rows, err
}

// settled waits until no message is ready or running.
func settled[TTx any](t testing.TB, ib *Inbox[TTx], timeout time.Duration) Stats {
	t.Helper()
	var s Stats
	waitFor(t, "the inbox to settle", timeout, func() bool {
		s = stats(t, ib)
		return s.Ready == 0 && s.Running == 0 && s.Retrying == 0
	})
	return s
}

func rows[TTx any](t testing.TB, ib *Inbox[TTx], q dialects.InboxQuery) []dialects.InboxRow {
	t.Helper()
	r, err := ib.d.(dialects.Inspector).ListInbox(context.Background(), q)
	if err != nil {
		t.Fatalf("ListInbox: %v", err)
	}
	return r
}

func row[TTx any](t testing.TB, ib *Inbox[TTx], source, id string) dialects.InboxRow {
	t.Helper()
	r := rows(t, ib, dialects.InboxQuery{Source: source, IDs: []string{id}})
	if len(r) != 1 {
		t.Fatalf("%d inbox rows for %s/%s, want 1", len(r), source, id)
	}
	return r[0]
}

func deadLetters[TTx any](t testing.TB, ib *Inbox[TTx], f DeadLetterFilter) []deadletter.DeadLetter {
	t.Helper()
	dl, err := ib.DeadLetters(context.Background(), f)
	if err != nil {
		t.Fatalf("DeadLetters: %v", err)
	}
	return dl
}

// effect is a handler that records its message in effects, in tx.
func effect[TTx any](f *fixture[TTx]) HandlerFunc[TTx] {
	return func(ctx context.Context, tx TTx, m *Message) error {
		return f.txExec(ctx, tx, `INSERT INTO effects (id, k) VALUES ($1, $2)`, m.ID, m.Key)
	}
}

// assertEffectsOnce checks that effects holds exactly ids, once each.
func assertEffectsOnce[TTx any](t testing.TB, f *fixture[TTx], ids []string) {
	t.Helper()
	total := f.db.int(t, `SELECT count(*) FROM effects`)
	distinct := f.db.int(t, `SELECT count(DISTINCT id) FROM effects`)
	if total != int64(len(ids)) || distinct != int64(len(ids)) {
		t.Fatalf("effects: %d rows, %d distinct ids; want %d, once each", total, distinct, len(ids))
	}
	got := map[string]bool{}
	for _, id := range f.db.strings(t, `SELECT id FROM effects`) {
		got[id] = true
	}
	for _, id := range ids {
		if !got[id] {
			t.Fatalf("no effect for %s", id)
		}
	}
}
