package dsn_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/dsn"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/internal/testport"
	"github.com/durable-go/durable/migrations"
)

func TestKindOf(t *testing.T) {
	for _, c := range []struct {
		dsn     string
		kind    dsn.Kind
		dialect string
	}{
		{"./app.db", dsn.Path, dsn.SQLite},
		{"/var/lib/app.db?_pragma=busy_timeout(5000)", dsn.Path, dsn.SQLite},
		{"file:app.db?mode=ro", dsn.SQLiteURI, dsn.SQLite},
		{"FILE:app.db", dsn.SQLiteURI, dsn.SQLite},
		{"postgres://u:p@db/app", dsn.PostgresURL, dsn.Postgres},
		{"PostgreSQL://db/app", dsn.PostgresURL, dsn.Postgres},
		{"host=db dbname=app", dsn.KeyValue, dsn.Postgres},
		{"mysql://db/app", dsn.OtherURL, ""},
		{"postgres//db/app", dsn.BadPostgresURL, ""},
		{"postgresql:/db/app", dsn.BadPostgresURL, ""},
		{"dir.v2/a=b.db", dsn.Path, dsn.SQLite},
	} {
		if k := dsn.KindOf(c.dsn); k != c.kind || k.Dialect() != c.dialect {
			t.Errorf("KindOf(%q) = %v (dialect %q), want %v (%q)", c.dsn, k, k.Dialect(), c.kind, c.dialect)
		}
	}
}

func TestDialect(t *testing.T) {
	for _, c := range []struct {
		dsn, want, got string
		err            string // the error's message; empty: none
		unsupported    bool
		mismatch       *dsn.MismatchError
	}{
		{dsn: "./app.db", got: dsn.SQLite},
		{dsn: "postgres://db/app", got: dsn.Postgres},
		{dsn: "host=db", want: dsn.Postgres, got: dsn.Postgres},
		{dsn: "a=b", want: dsn.SQLite, got: dsn.SQLite}, // a file whose name has '='
		{dsn: "mysql://u:secret@db/app", unsupported: true,
			err: "unsupported DSN mysql://...; durable speaks postgres:// URLs and SQLite files"},
		{dsn: "postgres//u:secret@db/app", want: dsn.SQLite, unsupported: true,
			err: "the DSN is not understood: it begins like a Postgres URL (postgres//...) but not with postgres:// or postgresql://"},
		{dsn: "postgres://db/app", want: dsn.SQLite, err: "dialect sqlite does not match the DSN, a postgres:// URL",
			mismatch: &dsn.MismatchError{Dialect: dsn.SQLite, Kind: dsn.PostgresURL, Scheme: "postgres://..."}},
		{dsn: "host=db dbname=app", want: dsn.SQLite, err: "dialect sqlite does not match the DSN, a Postgres key=value string",
			mismatch: &dsn.MismatchError{Dialect: dsn.SQLite, Kind: dsn.KeyValue, Scheme: "(unrecognised)"}},
		{dsn: "mysql://db", want: dsn.SQLite, err: "dialect sqlite does not match the DSN mysql://...",
			mismatch: &dsn.MismatchError{Dialect: dsn.SQLite, Kind: dsn.OtherURL, Scheme: "mysql://..."}},
		{dsn: "file:app.db", want: dsn.Postgres, err: "dialect postgres does not match the DSN, a SQLite file: URI",
			mismatch: &dsn.MismatchError{Dialect: dsn.Postgres, Kind: dsn.SQLiteURI, Scheme: "(unrecognised)"}},
	} {
		got, err := dsn.Dialect(c.dsn, c.want)
		if c.err == "" {
			if err != nil || got != c.got {
				t.Errorf("Dialect(%q, %q) = %q, %v; want %q", c.dsn, c.want, got, err, c.got)
			}
			continue
		}
		if err == nil || err.Error() != c.err || errors.Is(err, dsn.ErrUnsupported) != c.unsupported {
			t.Errorf("Dialect(%q, %q) = %q, %v; want error %q (unsupported %v)", c.dsn, c.want, got, err, c.err, c.unsupported)
			continue
		}
		var me *dsn.MismatchError
		if errors.As(err, &me) != (c.mismatch != nil) || (me != nil && *me != *c.mismatch) {
			t.Errorf("Dialect(%q, %q): %#v, want %#v", c.dsn, c.want, me, c.mismatch)
		}
	}
}

// openErr opens s and returns the *dsn.Error it fails with.
func openErr(t *testing.T, s string, cfg *dsn.Config) *dsn.Error {
	t.Helper()
	db, err := dsn.Open(context.Background(), s, cfg)
	if err == nil {
		db.Close()
		t.Fatalf("Open(%q) succeeded", s)
	}
	var e *dsn.Error
	if !errors.As(err, &e) {
		t.Fatalf("Open(%q) = %v, not a *dsn.Error", s, err)
	}
	return e
}

func TestOpenSQLite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.db")

	e := openErr(t, path, nil)
	if !errors.Is(e, dsn.ErrNotExist) || e.Error() != "sqlite database "+path+" does not exist" || e.Target != "sqlite "+path {
		t.Fatalf("missing file: %v (target %q)", e, e.Target)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open created the file: %v", err)
	}
	e = openErr(t, filepath.Join(dir, "nope", "app.db"), &dsn.Config{Create: true})
	if want := "cannot create sqlite database " + filepath.Join(dir, "nope", "app.db") + ": directory " + filepath.Join(dir, "nope") + " does not exist"; e.Error() != want {
		t.Fatalf("missing directory: %q, want %q", e, want)
	}
	if e = openErr(t, dir, nil); e.Error() != "cannot open sqlite database "+dir+": it is a directory" {
		t.Fatalf("directory: %v", e)
	}
	junk := filepath.Join(dir, "junk.db")
	if err := os.WriteFile(junk, []byte(strings.Repeat("not a database ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	if e = openErr(t, junk, nil); e.Error() != junk+" is not a SQLite database" {
		t.Fatalf("junk: %v", e)
	}

	ctx := context.Background()
	db, err := dsn.Open(ctx, path, &dsn.Config{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if db.Dialect != dsn.SQLite || db.Target != "sqlite "+path || db.Pool != nil {
		t.Fatalf("DB = %+v", db)
	}
	a, err := db.Admin()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.CheckSchema(ctx); !errors.Is(err, dialects.ErrSchema) {
		t.Fatalf("CheckSchema before migrating = %v, want ErrSchema", err)
	}
	if _, err := migrations.Up(ctx, db.SQL, db.Dialect); err != nil {
		t.Fatal(err)
	}
	if err := a.CheckSchema(ctx); err != nil || a.Name() != "sqlite" {
		t.Fatalf("CheckSchema after migrating = %v (dialect %s)", err, a.Name())
	}
	if st, err := a.InboxStats(ctx); err != nil || st.InboxCounts != (dialects.InboxCounts{}) || len(st.Topics) != 0 {
		t.Fatalf("InboxStats = %+v, %v", st, err)
	}
}

func TestOpenPostgres(t *testing.T) {
	u, _ := testdb.PostgresSchema(t)
	ctx := context.Background()
	schema := "dsn_" + strings.ReplaceAll(t.Name(), "/", "_")
	schema = strings.ToLower(schema)

	db, err := dsn.Open(ctx, u, &dsn.Config{Schema: schema, Create: true, MaxConns: 2, RuntimeParams: map[string]string{"TimeZone": "UTC"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = db.SQL.Exec("DROP SCHEMA " + schema + " CASCADE"); db.Close() })
	if db.Dialect != dsn.Postgres || !db.CreatedSchema || db.Schema != schema || !strings.HasSuffix(db.Target, "(schema "+schema+")") ||
		db.Pool.Config().MaxConns != 2 {
		t.Fatalf("DB = %+v", db)
	}
	var cur, tz string
	if err := db.SQL.QueryRow("SELECT current_schema(), current_setting('TimeZone')").Scan(&cur, &tz); err != nil || cur != schema || tz != "UTC" {
		t.Fatalf("current_schema %q, TimeZone %q, %v", cur, tz, err)
	}
	if _, err := migrations.Up(ctx, db.SQL, db.Dialect); err != nil {
		t.Fatal(err)
	}
	a, err := db.Admin()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.CheckSchema(ctx); err != nil || a.Name() != "postgres" {
		t.Fatalf("CheckSchema = %v (dialect %s)", err, a.Name())
	}

	// Opened again, the schema exists: not created.
	again, err := dsn.Open(ctx, u, &dsn.Config{Schema: schema, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	again.Close()
	if again.CreatedSchema {
		t.Fatal("an existing schema reported created")
	}

	addr := testport.Reserve(t).Addr()
	e := openErr(t, "postgres://postgres:secret@"+addr+"/test?sslmode=disable", nil)
	if want := "cannot connect to postgres " + addr + "/test: dial tcp " + addr + ": connect: connection refused"; e.Error() != want ||
		e.Target != "postgres "+addr+"/test" || strings.Contains(e.Error(), "secret") {
		t.Fatalf("unreachable: %q (target %q), want %q", e, e.Target, want)
	}
	if e = openErr(t, "postgres://db:notaport/app", nil); !strings.HasPrefix(e.Error(), "invalid postgres DSN: ") {
		t.Fatalf("invalid: %v", e)
	}
}
