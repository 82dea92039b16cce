package durabletest_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/durabletest"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fixture is a migrated database of one dialect with an effects table,
// where the test handlers record what they did.
type fixture[TTx any] struct {
	d dialects.Dialect[TTx]
	// effect records id in the effects table, in tx.
	effect func(ctx context.Context, tx TTx, id string) error
	// effects counts the committed effects of id.
	effects func(t *testing.T, id string) int
	// sqlite: the dialect has one connection, so nothing may read outside
	// a transaction still open.
	sqlite bool
}

const effectsTable = `CREATE TABLE effects (id TEXT NOT NULL)`

// each runs test on SQLite, pgx and pgx's database/sql driver.
func each(t *testing.T, pgxTest func(*testing.T, *fixture[pgx.Tx]), sqlTest func(*testing.T, *fixture[*sql.Tx])) {
	t.Run("sqlite", func(t *testing.T) { sqlTest(t, openSQLite(t, true)) })
	t.Run("pgx", func(t *testing.T) { pgxTest(t, openPgx(t)) })
	t.Run("pgx-stdlib", func(t *testing.T) { sqlTest(t, openPgSQL(t)) })
}

// openSQLite returns SQLite on a new file, migrated when asked.
func openSQLite(t *testing.T, migrate bool) *fixture[*sql.Tx] {
	t.Helper()
	db, err := sql.Open("sqlite", sqlite.DSN(filepath.Join(t.TempDir(), "app.db")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if migrate {
		for _, stmt := range testdb.UpSQL(t, migrations.SQLite) {
			if _, err := db.Exec(stmt); err != nil {
				t.Fatalf("migrate: %v", err)
			}
		}
	}
	if _, err := db.Exec(effectsTable); err != nil {
		t.Fatal(err)
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture[*sql.Tx]{d: d, sqlite: true, effect: sqlEffect("?"), effects: sqlEffects(db, "?")}
}

// openPgx returns the pgx flavour of Postgres on a new schema.
func openPgx(t *testing.T) *fixture[pgx.Tx] {
	t.Helper()
	pool, _ := testdb.PostgresPool(t, true)
	if _, err := pool.Exec(context.Background(), effectsTable); err != nil {
		t.Fatal(err)
	}
	d, err := postgres.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture[pgx.Tx]{
		d: d,
		effect: func(ctx context.Context, tx pgx.Tx, id string) error {
			_, err := tx.Exec(ctx, `INSERT INTO effects (id) VALUES ($1)`, id)
			return err
		},
		effects: func(t *testing.T, id string) int {
			t.Helper()
			var n int
			if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM effects WHERE id = $1`, id).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		},
	}
}

// openPgSQL returns the database/sql flavour of Postgres on a new schema.
func openPgSQL(t *testing.T) *fixture[*sql.Tx] {
	t.Helper()
	pool, schema := testdb.PostgresPool(t, true)
	if _, err := pool.Exec(context.Background(), effectsTable); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", testdb.WithSearchPath(t, testdb.PostgresURL(t), schema))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	d, err := postgres.NewSQL(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture[*sql.Tx]{d: d, effect: sqlEffect("$1"), effects: sqlEffects(db, "$1")}
}

func sqlEffect(param string) func(ctx context.Context, tx *sql.Tx, id string) error {
	return func(ctx context.Context, tx *sql.Tx, id string) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO effects (id) VALUES (`+param+`)`, id)
		return err
	}
}

func sqlEffects(db *sql.DB, param string) func(t *testing.T, id string) int {
	return func(t *testing.T, id string) int {
		t.Helper()
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM effects WHERE id = `+param, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fakeTB records the failure of a helper. Its Fatalf ends the goroutine,
// as testing.T's does, unless returns is set.
type fakeTB struct {
	returns bool
	failed  bool
	msg     string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	if f.failed {
		f.msg += "\n(and) " + fmt.Sprintf(format, args...)
	} else {
		f.msg = fmt.Sprintf(format, args...)
	}
	f.failed = true
	if !f.returns {
		runtime.Goexit()
	}
}

// mustFail runs check with a fakeTB in a goroutine of its own and returns
// the failure message; t fails when check did not fail.
func mustFail(t *testing.T, check func(tb durabletest.TB)) string {
	t.Helper()
	f := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		check(f)
	}()
	<-done
	if !f.failed {
		t.Fatal("the helper passed; want it to fail")
	}
	return f.msg
}
