package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/dialecttest"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/transport"
)

// openDB opens path with the recommended DSN, closed at cleanup.
func openDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func migrate(t *testing.T, db *sql.DB) {
	t.Helper()
	for _, stmt := range testdb.UpSQL(t, "sqlite") {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("migrate: %v", err)
		}
	}
}

// open returns a dialect on a fresh file, migrated when asked.
func open(t *testing.T, migrated bool) (*sqlite.Dialect, string) {
	t.Helper()
	path := testdb.SQLitePath(t)
	db := openDB(t, sqlite.DSN(path))
	if migrated {
		migrate(t, db)
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d, path
}

// ctxFor bounds a test's database work. It bounds hangs, not speed: under
// -race on a loaded machine the 4,000 transactions of TestConcurrentWriters
// alone can take well over 30s.
func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestConformance(t *testing.T) {
	dialecttest.Run(t, dialecttest.Harness[*sql.Tx]{
		Open: func(t *testing.T) dialects.Dialect[*sql.Tx] {
			d, _ := open(t, true)
			return d
		},
		OpenUnmigrated: func(t *testing.T) dialects.Dialect[*sql.Tx] {
			d, _ := open(t, false)
			return d
		},
	})
}

func insertCommit(ctx context.Context, d *sqlite.Dialect, rows ...dialects.OutboxRow) error {
	tx, err := d.Begin(ctx)
	if err != nil {
		return err
	}
	if err := d.InsertOutbox(ctx, tx, rows); err != nil {
		_ = d.Rollback(ctx, tx)
		return err
	}
	return d.Commit(ctx, tx)
}

func count(t *testing.T, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM durable_outbox").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestDSN(t *testing.T) {
	for _, c := range []struct{ path, want string }{
		{"/tmp/app.db", "file:///tmp/app.db?"},
		{"data/app.db", "file:data/app.db?"},
		{"/odd/a?b#c%d e&f=g.db", "file:///odd/a%3Fb%23c%25d e&f=g.db?"},
	} {
		got := sqlite.DSN(c.path)
		if !strings.HasPrefix(got, c.want) || !strings.HasSuffix(got, "?"+sqlite.DSNParams) {
			t.Errorf("DSN(%q) = %q, want prefix %q and the params", c.path, got, c.want)
		}
	}
}

// A file name with URI metacharacters opens exactly that file, with the
// DSN's settings applied.
func TestDSNOddPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "odd dir %41?x#y&z=1", "a?b#c%d&e.db")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	db := openDB(t, sqlite.DSN(path))
	migrate(t, db)
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := d.CheckSchema(ctxFor(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at the given path: %v", err)
	}
}

func TestNewRejectsDSN(t *testing.T) {
	for _, c := range []struct {
		name, params, want string
	}{
		{"plain path", "", "journal_mode(WAL)"},
		{"no WAL", "?_pragma=busy_timeout(5000)&_txlock=immediate", "journal_mode(WAL)"},
		{"no busy timeout", "?_pragma=journal_mode(WAL)&_txlock=immediate", "busy_timeout"},
		{"deferred", "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)", "_txlock=immediate"},
		{"explicit deferred", "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_txlock=deferred", "_txlock=immediate"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := testdb.SQLitePath(t)
			db := openDB(t, "file:"+path+c.params)
			migrate(t, db)
			_, err := sqlite.New(db, nil)
			var de *sqlite.DSNError
			if !errors.Is(err, sqlite.ErrDSN) || !errors.As(err, &de) {
				t.Fatalf("New = %v, want a *DSNError", err)
			}
			if !strings.Contains(de.Param, c.want) || !strings.Contains(err.Error(), "sqlite.DSN(path)") {
				t.Fatalf("error %q: want it to name %s and point to sqlite.DSN", err, c.want)
			}
			if got := db.Stats().MaxOpenConnections; got != 1 {
				t.Fatalf("MaxOpenConnections = %d after a failed New, want 1", got)
			}
			// SkipDSNCheck accepts it.
			d, err := sqlite.New(db, &sqlite.Config{SkipDSNCheck: true})
			if err != nil {
				t.Fatalf("New with SkipDSNCheck: %v", err)
			}
			if err := insertCommit(ctxFor(t), d, dialecttest.Row(1, "billing")); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestNewBusy: while another connection holds the write lock longer than
// the busy timeout, New fails with an error that says so (it checks the
// settings in a write transaction), and succeeds once the lock is free.
func TestNewBusy(t *testing.T) {
	path := testdb.SQLitePath(t)
	holder := openDB(t, sqlite.DSN(path))
	migrate(t, holder)
	tx, err := holder.Begin() // _txlock=immediate: takes the write lock
	if err != nil {
		t.Fatal(err)
	}
	db := openDB(t, "file:"+path+"?_pragma=busy_timeout(100)&_pragma=journal_mode(WAL)&_txlock=immediate")
	_, err = sqlite.New(db, nil)
	if err == nil || !strings.Contains(err.Error(), "held the database's write lock for longer than busy_timeout (100 ms)") {
		t.Fatalf("New while the write lock is held = %v, want the busy explanation", err)
	}
	if errors.Is(err, sqlite.ErrDSN) {
		t.Fatalf("New while busy = %v: not a DSN problem", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlite.New(db, nil); err != nil {
		t.Fatalf("New once the lock is free: %v", err)
	}
}

// The check must not leave a changed connection in the pool, and New leaves
// one connection.
func TestNewPool(t *testing.T) {
	path := testdb.SQLitePath(t)
	db := openDB(t, sqlite.DSN(path))
	db.SetMaxOpenConns(1) // as a user following the docs might
	if _, err := sqlite.New(db, nil); err != nil {
		t.Fatal(err)
	}
	if got := db.Stats().MaxOpenConnections; got != 1 {
		t.Fatalf("MaxOpenConnections = %d, want 1", got)
	}
	var timeout int
	if err := db.QueryRow("PRAGMA busy_timeout").Scan(&timeout); err != nil {
		t.Fatal(err)
	}
	if timeout != 5000 {
		t.Fatalf("pooled connection has busy_timeout %d, want 5000", timeout)
	}
}

func TestSchemaVersions(t *testing.T) {
	ctx := ctxFor(t)
	d, _ := open(t, true)
	db := d.DB()
	if _, err := db.Exec("INSERT INTO durable_schema_version (version, name) VALUES (99, '0099_future')"); err != nil {
		t.Fatal(err)
	}
	// A newer schema is accepted (the compatibility promise of
	// dialects.SchemaVersion), and the build works on it.
	if err := d.CheckSchema(ctx); err != nil {
		t.Fatalf("CheckSchema on a newer schema = %v, want nil", err)
	}
	if _, err := d.ListOutbox(ctx, dialects.OutboxQuery{}); err != nil {
		t.Fatalf("ListOutbox on a newer schema: %v", err)
	}
	var se *dialects.SchemaError
	if _, err := db.Exec("DELETE FROM durable_schema_version"); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckSchema(ctx); !errors.As(err, &se) || se.Have != 0 || !strings.Contains(err.Error(), "0001_init") {
		t.Fatalf("CheckSchema with no version row = %v", err)
	}

	u, _ := open(t, false)
	_, err := u.ListOutbox(ctx, dialects.OutboxQuery{})
	if !errors.As(err, &se) || se.Have != 0 || se.Err == nil || !strings.Contains(err.Error(), "0001_init") {
		t.Fatalf("ListOutbox unmigrated = %v, want a SchemaError wrapping the driver error", err)
	}
}

// Calls around the chunk size (lowered to 3 rows), with duplicates of every
// kind at every position: all or nothing, and the transaction stays usable.
func TestInsertChunks(t *testing.T) {
	defer sqlite.SetChunkRows(3)()
	ctx := ctxFor(t)
	d, _ := open(t, true)
	// Committed before every call: msg-000000.
	if err := insertCommit(ctx, d, dialecttest.Row(0, "billing")); err != nil {
		t.Fatal(err)
	}
	next := 1
	for _, n := range []int{1, 2, 3, 4, 6, 7, 10} {
		rows := make([]dialects.OutboxRow, n)
		for i := range rows {
			rows[i] = dialecttest.Row(next+i, "billing")
		}
		next += n
		for dupAt := range n {
			for _, within := range []bool{false, true} {
				if within && dupAt == 0 {
					continue
				}
				call := append([]dialects.OutboxRow(nil), rows...)
				want := dialecttest.Row(0, "billing") // committed
				if within {
					want = call[dupAt/2]
				}
				call[dupAt] = want
				before := count(t, d.DB())
				tx, err := d.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				err = d.InsertOutbox(ctx, tx, call)
				var de *dialects.DuplicateError
				if !errors.As(err, &de) || de.ID != want.ID || de.Destination != "billing" {
					t.Fatalf("n=%d dup at %d (within %v): err %v, want DuplicateError for %s", n, dupAt, within, err, want.ID)
				}
				var inTx int
				if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM durable_outbox").Scan(&inTx); err != nil || inTx != before {
					t.Fatalf("n=%d dup at %d: tx sees %d rows (%v), want %d", n, dupAt, inTx, err, before)
				}
				if err := d.InsertOutbox(ctx, tx, []dialects.OutboxRow{dialecttest.Row(1_000_000+next*100+dupAt*2+b2i(within), "billing")}); err != nil {
					t.Fatalf("tx unusable after the duplicate: %v", err)
				}
				if err := d.Commit(ctx, tx); err != nil {
					t.Fatal(err)
				}
				if got := count(t, d.DB()); got != before+1 {
					t.Fatalf("n=%d dup at %d: %d rows after, want %d", n, dupAt, got, before+1)
				}
			}
		}
		// Without the duplicate the call goes in whole, in order.
		if err := insertCommit(ctx, d, rows...); err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		got, err := d.ListOutbox(ctx, dialects.OutboxQuery{Limit: n + 1, IDs: ids(rows)})
		if err != nil || len(got) != n {
			t.Fatalf("n=%d: listed %d rows, %v", n, len(got), err)
		}
		for i := range rows {
			if err := dialecttest.Equal(got[i], rows[i]); err != nil {
				t.Fatalf("n=%d: %v", n, err)
			}
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func ids(rows []dialects.OutboxRow) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}

// runWriters runs writers goroutines, each committing perWriter
// transactions of one row through d, and returns every error.
func runWriters(t *testing.T, ds []*sqlite.Dialect, writers, perWriter int) []error {
	t.Helper()
	ctx := ctxFor(t)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		errs   []error
		nextID atomic.Int64
	)
	for w := range writers {
		d := ds[w%len(ds)]
		wg.Go(func() {
			for range perWriter {
				id := int(nextID.Add(1))
				if err := insertCommit(ctx, d, dialecttest.Row(id, "billing")); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return errs
}

func reportErrors(t *testing.T, errs []error) {
	t.Helper()
	if len(errs) == 0 {
		return
	}
	busy := 0
	for _, err := range errs {
		if strings.Contains(err.Error(), "SQLITE_BUSY") || strings.Contains(err.Error(), "locked") {
			busy++
		}
	}
	t.Fatalf("%d errors (%d SQLITE_BUSY), first: %v", len(errs), busy, errs[0])
}

// The acceptance test: 8 goroutines × 500 transactions on one file.
func TestConcurrentWriters(t *testing.T) {
	const writers, perWriter = 8, 500
	d, _ := open(t, true)
	start := time.Now()
	errs := runWriters(t, []*sqlite.Dialect{d}, writers, perWriter)
	elapsed := time.Since(start)
	reportErrors(t, errs)
	if got := count(t, d.DB()); got != writers*perWriter {
		t.Fatalf("%d rows, want %d", got, writers*perWriter)
	}
	t.Logf("%d transactions in %v (%.0f/s)", writers*perWriter, elapsed, writers*perWriter/elapsed.Seconds())
}

// Two pools on one file, as two processes would have: the busy timeout and
// immediate transactions keep them from failing.
func TestTwoPools(t *testing.T) {
	const writers, perWriter = 8, 150
	d1, path := open(t, true)
	d2, err := sqlite.New(openDB(t, sqlite.DSN(path)), nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	errs := runWriters(t, []*sqlite.Dialect{d1, d2}, writers, perWriter)
	elapsed := time.Since(start)
	reportErrors(t, errs)
	if got := count(t, d1.DB()); got != writers*perWriter {
		t.Fatalf("%d rows, want %d", got, writers*perWriter)
	}
	t.Logf("%d transactions over two pools in %v", writers*perWriter, elapsed)
}

// A read-then-write transaction of the application, racing a writer of
// another pool, must not fail: BEGIN IMMEDIATE took the lock up front.
func TestReadThenWrite(t *testing.T) {
	d1, path := open(t, true)
	d2, err := sqlite.New(openDB(t, sqlite.DSN(path)), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t)
	var wg sync.WaitGroup
	errc := make(chan error, 400)
	for w, d := range []*sqlite.Dialect{d1, d2} {
		wg.Go(func() {
			for i := range 100 {
				tx, err := d.Begin(ctx)
				if err != nil {
					errc <- err
					continue
				}
				var n int
				if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM durable_outbox").Scan(&n); err != nil {
					errc <- err
				}
				if err := d.InsertOutbox(ctx, tx, []dialects.OutboxRow{dialecttest.Row(w*1000+i, "billing")}); err != nil {
					errc <- err
				}
				if err := d.Commit(ctx, tx); err != nil {
					errc <- err
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	reportErrors(t, errs)
	if got := count(t, d1.DB()); got != 200 {
		t.Fatalf("%d rows, want 200", got)
	}
}

func TestStoredFormat(t *testing.T) {
	ctx := ctxFor(t)
	d, _ := open(t, true)
	r := dialecttest.Row(1, "billing")
	r.CreatedAt = time.Date(2026, 3, 4, 5, 6, 7, 891_999_999, time.FixedZone("X", 3600))
	r.Headers = map[string]string{"b": "<&>", "a": "1"}
	if err := insertCommit(ctx, d, r, dialects.OutboxRow{Envelope: transport.Envelope{ID: "n", Topic: "t"}, Destination: "billing"}); err != nil {
		t.Fatal(err)
	}
	var created, headers, expires string
	var payloadType string
	if err := d.DB().QueryRow("SELECT created_at, headers, expires_at, typeof(payload) FROM durable_outbox WHERE id = ?", r.ID).
		Scan(&created, &headers, &expires, &payloadType); err != nil {
		t.Fatal(err)
	}
	if created != "2026-03-04 04:06:07.891" || headers != `{"a":"1","b":"<&>"}` || expires != "2026-01-03 03:04:05.000" || payloadType != "blob" {
		t.Fatalf("stored %q %q %q %s", created, headers, expires, payloadType)
	}
	var nullExpires sql.NullString
	var emptyHeaders, payloadLen string
	if err := d.DB().QueryRow("SELECT expires_at, headers, length(payload) FROM durable_outbox WHERE id = 'n'").
		Scan(&nullExpires, &emptyHeaders, &payloadLen); err != nil {
		t.Fatal(err)
	}
	if nullExpires.Valid || emptyHeaders != "{}" || payloadLen != "0" {
		t.Fatalf("defaults stored as %v %q %s", nullExpires, emptyHeaders, payloadLen)
	}
	// Times written by SQLite itself compare with ours.
	var due int
	if err := d.DB().QueryRow("SELECT count(*) FROM durable_outbox WHERE deliver_at <= strftime('%Y-%m-%d %H:%M:%f', 'now')").Scan(&due); err != nil || due != 2 {
		t.Fatalf("due rows %d, %v", due, err)
	}
}

func TestNilTx(t *testing.T) {
	d, _ := open(t, true)
	ctx := ctxFor(t)
	if err := d.InsertOutbox(ctx, nil, []dialects.OutboxRow{dialecttest.Row(1, "b")}); err == nil {
		t.Fatal("InsertOutbox(nil tx) succeeded")
	}
	if err := d.Rollback(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlite.New(nil, nil); err == nil {
		t.Fatal("New(nil) succeeded")
	}
}

// BenchmarkInsertOne: one-row insert-and-commit from two goroutines,
// with the hot statements prepared (after CheckSchema, as Run does) and
// without.
func BenchmarkInsertOne(b *testing.B) {
	for _, prepared := range []bool{true, false} {
		b.Run(fmt.Sprintf("prepared=%v", prepared), func(b *testing.B) { benchInsertOne(b, prepared) })
	}
}

func benchInsertOne(b *testing.B, prepared bool) {
	path := filepath.Join(b.TempDir(), "bench.db")
	db, err := sql.Open("sqlite", sqlite.DSN(path))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	for _, stmt := range testdb.UpSQL(b, "sqlite") {
		if _, err := db.Exec(stmt); err != nil {
			b.Fatal(err)
		}
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if prepared {
		if err := d.CheckSchema(ctx); err != nil {
			b.Fatal(err)
		}
	}
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := insertCommit(ctx, d, dialecttest.Row(int(n.Add(1)), "billing")); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
