package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-migrate/migrate/v4"
	migratesqlite "github.com/golang-migrate/migrate/v4/database/sqlite"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
)

// statusJSON runs migrate status --json and decodes it.
func statusJSON(t *testing.T, args ...string) statusResult {
	t.Helper()
	r := mustSucceed(t, append([]string{"migrate", "status", "--json"}, args...)...)
	var st statusResult
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	return st
}

// wantStatus checks that every migration is in state and that the version
// fields agree.
func wantStatus(t *testing.T, st statusResult, state string) {
	t.Helper()
	if len(st.Migrations) == 0 || st.Latest != st.Migrations[len(st.Migrations)-1].Version {
		t.Fatalf("status lists no migrations or a wrong latest: %+v", st)
	}
	for _, m := range st.Migrations {
		if m.State != state {
			t.Errorf("migration %d %s: state %s, want %s", m.Version, m.Name, m.State, state)
		}
		if state == "applied" && (m.AppliedAt == nil || time.Since(*m.AppliedAt) > time.Hour || time.Until(*m.AppliedAt) > time.Minute) {
			t.Errorf("migration %d: applied_at %v, want about now", m.Version, m.AppliedAt)
		}
		if state == "pending" && m.AppliedAt != nil {
			t.Errorf("migration %d: pending with applied_at %v", m.Version, m.AppliedAt)
		}
	}
	want, pending := st.Latest, 0
	if state == "pending" {
		want, pending = 0, len(st.Migrations)
	}
	if st.Version != want || st.SchemaVersion != want || st.Pending != pending {
		t.Errorf("status: version %d, schema_version %d, pending %d; want %d, %d, %d", st.Version, st.SchemaVersion, st.Pending, want, want, pending)
	}
	if st.VersionTable != migrations.GooseTable {
		t.Errorf("version_table %q, want %q", st.VersionTable, migrations.GooseTable)
	}
}

// TestMigrateCycle runs up → status → down → status → up through the binary
// on a fresh Postgres schema and a fresh SQLite file, checking the schema
// with the dialects' own startup check at each step.
func TestMigrateCycle(t *testing.T) {
	t.Run("postgres", func(t *testing.T) {
		dsn, schema := testdb.PostgresSchema(t)
		db := []string{"--dsn", dsn}
		wantStatus(t, statusJSON(t, db...), "pending")
		wantErrorPrefix(t, durable(t, append([]string{"migrate", "check"}, db...)...), exitSchema,
			"postgres schema is at version 0, need version 4: missing migration 0001_init")
		migrateCycle(t, "postgres", db)
		// Everything went into the test's schema, goose's table included.
		pool := testdb.OpenPostgres(t, dsn, false)
		var tables []string
		rows, err := pool.Query(context.Background(), `SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1`, schema)
		if err != nil {
			t.Fatal(err)
		}
		tables, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"durable_outbox", "durable_schema_version", migrations.GooseTable} {
			if !slices.Contains(tables, want) {
				t.Errorf("schema %s lacks %s after up: %v", schema, want, tables)
			}
		}
	})
	t.Run("sqlite", func(t *testing.T) {
		path := testdb.SQLitePath(t)
		migrateCycle(t, "sqlite", []string{"--dsn", path})
		// The file was created with durable's settings: the dialect accepts it.
		db, err := sql.Open("sqlite", sqlite.DSN(path))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		d, err := sqlite.New(db, nil)
		if err != nil {
			t.Fatalf("sqlite.New on the migrated file: %v", err)
		}
		if err := d.CheckSchema(context.Background()); err != nil {
			t.Fatalf("CheckSchema after the cycle: %v", err)
		}
	})
}

func migrateCycle(t *testing.T, dialect string, db []string) {
	args := func(a ...string) []string { return append(a, db...) }

	r := mustSucceed(t, args("migrate", "up")...)
	if !strings.Contains(r.stdout, "applied 0001_init (") || !strings.Contains(r.stdout, "applied 0002_outbox_claim (") ||
		!strings.Contains(r.stdout, "applied 0003_nodes (") || !strings.Contains(r.stdout, "applied 0004_control (") ||
		!strings.Contains(r.stdout, "durable schema at version 4 of 4: up to date") {
		t.Errorf("up printed:\n%s", r.stdout)
	}
	r = mustSucceed(t, args("migrate", "status")...)
	if !regexp.MustCompile(`(?m)^1 +0001_init +applied +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$`).MatchString(r.stdout) ||
		!regexp.MustCompile(`(?m)^2 +0002_outbox_claim +applied +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$`).MatchString(r.stdout) ||
		!regexp.MustCompile(`(?m)^3 +0003_nodes +applied +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$`).MatchString(r.stdout) ||
		!regexp.MustCompile(`(?m)^4 +0004_control +applied +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$`).MatchString(r.stdout) {
		t.Errorf("status after up:\n%s", r.stdout)
	}
	wantStatus(t, statusJSON(t, db...), "applied")
	r = mustSucceed(t, args("migrate", "check")...)
	if !strings.HasSuffix(r.stdout, ": durable schema at version 4, as this build needs\n") {
		t.Errorf("check printed %q", r.stdout)
	}
	var chk checkResult
	if err := json.Unmarshal([]byte(mustSucceed(t, args("migrate", "check", "--json")...).stdout), &chk); err != nil || !chk.OK || chk.Version != 4 || chk.Dialect != dialect {
		t.Errorf("check --json: %+v, %v", chk, err)
	}

	// Up again: nothing to do.
	r = mustSucceed(t, args("migrate", "up")...)
	if !strings.HasPrefix(r.stdout, "nothing to do on "+dialect+" ") {
		t.Errorf("second up printed:\n%s", r.stdout)
	}

	// Down needs --yes without a terminal, and then changes nothing.
	wantError(t, durable(t, args("migrate", "down")...), exitUsage, confirmDown)
	wantStatus(t, statusJSON(t, db...), "applied")

	r = mustSucceed(t, args("migrate", "down", "--yes", "--json")...)
	var run runResult
	if err := json.Unmarshal([]byte(r.stdout), &run); err != nil {
		t.Fatalf("down --json: %v\n%s", err, r.stdout)
	}
	// Down rolls back the latest migration only.
	if run.Direction != "down" || len(run.Migrations) != 1 || run.Migrations[0].Name != "0004_control" || run.Version != 3 || run.Latest != 4 {
		t.Errorf("down --json: %+v", run)
	}
	if st := statusJSON(t, db...); st.Version != 3 || st.SchemaVersion != 3 || st.Pending != 1 {
		t.Errorf("status after down: version %d, schema_version %d, pending %d; want 3, 3, 1", st.Version, st.SchemaVersion, st.Pending)
	}
	wantErrorPrefix(t, durable(t, args("migrate", "check")...), exitSchema, dialect+" schema is at version 3, need version 4: missing migration 0004_control;")
	r = mustSucceed(t, args("migrate", "down", "--to", "0", "--yes")...)
	if !strings.Contains(r.stdout, "rolled back 0001_init (") || !strings.Contains(r.stdout, "durable schema at version 0 of 4: 4 pending") {
		t.Errorf("second down printed:\n%s", r.stdout)
	}
	wantStatus(t, statusJSON(t, db...), "pending")
	wantErrorPrefix(t, durable(t, args("migrate", "check")...), exitSchema, dialect+" schema is at version 0, need version 4: missing migration 0001_init")

	// Down with nothing applied: nothing to do.
	r = mustSucceed(t, args("migrate", "down", "--all", "--yes")...)
	if !strings.HasPrefix(r.stdout, "nothing to do on ") {
		t.Errorf("down on an empty schema printed:\n%s", r.stdout)
	}

	r = mustSucceed(t, args("migrate", "up", "--to", "1", "--json")...)
	if err := json.Unmarshal([]byte(r.stdout), &run); err != nil || run.Direction != "up" || len(run.Migrations) != 1 || run.Version != 1 {
		t.Errorf("up --to 1 --json: %+v, %v\n%s", run, err, r.stdout)
	}
	wantErrorPrefix(t, durable(t, args("migrate", "check")...), exitSchema, dialect+" schema is at version 1, need version 4")
	mustSucceed(t, args("migrate", "up")...)
	wantStatus(t, statusJSON(t, db...), "applied")
	mustSucceed(t, args("migrate", "check")...)

	wantError(t, durable(t, args("migrate", "up", "--to", "5")...), exitUsage, "--to 5: there is no migration 5; the latest is 4")
	wantError(t, durable(t, args("migrate", "down", "--to", "5", "--yes")...), exitUsage, "--to 5: there is no migration 5; the latest is 4")

	r = mustSucceed(t, args("migrate", "down", "--all", "--yes")...)
	if !strings.Contains(r.stdout, "rolled back 0002_outbox_claim (") || !strings.Contains(r.stdout, "rolled back 0001_init (") ||
		!strings.Contains(r.stdout, "durable schema at version 0 of 4: 4 pending") {
		t.Errorf("down --all printed:\n%s", r.stdout)
	}
	mustSucceed(t, args("migrate", "up")...)
	wantStatus(t, statusJSON(t, db...), "applied")
}

// TestMigrateSchemaFlag migrates a schema named by --schema that does not
// exist yet: up creates it, and every command then finds durable there.
// TestCheckNewerSchema: a schema newer than this build passes migrate check
// (a migration never breaks the release before it), which says so.
func TestCheckNewerSchema(t *testing.T) {
	path := testdb.SQLitePath(t)
	mustSucceed(t, "migrate", "up", "--dsn", path)
	db, err := sql.Open("sqlite", sqlite.DSN(path))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`INSERT INTO durable_schema_version (version, name) VALUES (99, '0099_future')`); err != nil {
		t.Fatal(err)
	}
	r := mustSucceed(t, "migrate", "check", "--dsn", path)
	if !strings.HasSuffix(r.stdout, ": durable schema at version 99, newer than this build's 4, which runs on it\n") {
		t.Errorf("check printed %q", r.stdout)
	}
	var chk checkResult
	if err := json.Unmarshal([]byte(mustSucceed(t, "migrate", "check", "--json", "--dsn", path).stdout), &chk); err != nil || !chk.OK || chk.Version != 99 {
		t.Errorf("check --json: %+v, %v", chk, err)
	}
}

func TestMigrateSchemaFlag(t *testing.T) {
	base := testdb.PostgresURL(t)
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	schema := "durable_cli_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Logf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
			t.Logf("drop schema %s: %v", schema, err)
		}
	})
	db := []string{"--dsn", base, "--schema", schema}

	wantErrorPrefix(t, durable(t, append([]string{"migrate", "check"}, db...)...), exitSchema, "postgres schema is at version 0, need version 4")
	r := mustSucceed(t, append([]string{"migrate", "up", "--json"}, db...)...)
	var run runResult
	if err := json.Unmarshal([]byte(r.stdout), &run); err != nil || run.CreatedSchema != schema || run.Version != 4 {
		t.Fatalf("up --schema --json: %+v, %v\n%s", run, err, r.stdout)
	}
	if want := "(schema " + schema + ")"; !strings.HasSuffix(run.Database, want) {
		t.Errorf("database %q does not end with %q", run.Database, want)
	}
	st := statusJSON(t, db...)
	wantStatus(t, st, "applied")
	mustSucceed(t, append([]string{"migrate", "check"}, db...)...)
	// The same schema through search_path in the DSN.
	mustSucceed(t, "migrate", "check", "--dsn", testdb.WithSearchPath(t, base, schema))

	r = mustSucceed(t, append([]string{"migrate", "up"}, db...)...)
	if strings.Contains(r.stdout, "created schema") {
		t.Errorf("second up created the schema again:\n%s", r.stdout)
	}
	mustSucceed(t, append([]string{"migrate", "down", "--all", "--yes"}, db...)...)
	wantStatus(t, statusJSON(t, db...), "pending")
}

// expectedSQL is what migrate sql prints for dialect: the golang-migrate
// files, each after a comment line naming it.
func expectedSQL(t *testing.T, dialect string, down bool) string {
	t.Helper()
	fsys, err := migrations.FS(dialect)
	if err != nil {
		t.Fatal(err)
	}
	dir, suffix := "up", ".up.sql"
	if down {
		dir, suffix = "down", ".down.sql"
	}
	names, err := fs.Glob(fsys, "*"+suffix)
	if err != nil || len(names) == 0 {
		t.Fatalf("no %s migrations: %v", suffix, err)
	}
	slices.Sort(names)
	if down {
		slices.Reverse(names)
	}
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteString("\n")
		}
		data, err := fs.ReadFile(fsys, n)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "-- durable migration %s (%s, %s): run it in one transaction\n", strings.TrimSuffix(n, suffix), dir, dialect)
		b.Write(data)
		if !bytes.HasSuffix(data, []byte("\n")) {
			b.WriteString("\n")
		}
	}
	return b.String()
}

func TestMigrateSQL(t *testing.T) {
	for _, dialect := range []string{"postgres", "sqlite"} {
		t.Run(dialect, func(t *testing.T) {
			for _, down := range []bool{false, true} {
				args := []string{"migrate", "sql", "--dialect", dialect}
				if down {
					args = append(args, "--down")
				}
				if got, want := mustSucceed(t, args...).stdout, expectedSQL(t, dialect, down); got != want {
					t.Errorf("durable %s:\n%s\nwant:\n%s", strings.Join(args, " "), got, want)
				}
			}
			// The SQL of the files, byte for byte, in --json.
			var ms []sqlMigration
			r := mustSucceed(t, "migrate", "sql", "--dialect", dialect, "--version", "1", "--json")
			if err := json.Unmarshal([]byte(r.stdout), &ms); err != nil || len(ms) != 1 {
				t.Fatalf("sql --json: %v\n%s", err, r.stdout)
			}
			fsys, _ := migrations.FS(dialect)
			file, err := fs.ReadFile(fsys, "0001_init.up.sql")
			if err != nil {
				t.Fatal(err)
			}
			if ms[0].Version != 1 || ms[0].Name != "0001_init" || ms[0].Direction != "up" || ms[0].SQL != string(file) {
				t.Errorf("sql --json: %+v", ms[0])
			}
		})
	}
	// The dialect inferred from a DSN, with no database behind it.
	if got, want := mustSucceed(t, "migrate", "sql", "--dsn", "postgres://nobody@127.0.0.1:1/none").stdout, expectedSQL(t, "postgres", false); got != want {
		t.Errorf("sql with a postgres DSN printed another dialect's SQL")
	}
	wantError(t, durable(t, "migrate", "sql"), exitUsage, "which dialect? pass --dialect postgres or --dialect sqlite")
	wantError(t, durable(t, "migrate", "sql", "--dialect", "sqlite", "--version", "9"), exitUsage, "--version 9: there is no migration 9")
}

// closedPort returns a local TCP port where nothing listens, for the rest
// of the test: a socket bound to it and never listening holds it, so that
// no other process is given it meanwhile, and connections to it are
// refused.
func closedPort(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(sa.(*syscall.SockaddrInet4).Port)
}

// silentServer returns the address of a TCP server that accepts
// connections and never answers, as a hung database does.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestErrors checks that every way of pointing durable at the wrong database,
// or of calling it wrongly, gives one line on stderr and the documented exit
// code. None of these needs a database server.
func TestErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.db")
	notDB := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(notDB, []byte("not a database, just text that is long enough to have a header\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	port := closedPort(t)
	silent := silentServer(t)
	pgDSN := "postgres://postgres@127.0.0.1:" + port + "/test?sslmode=disable"

	tests := []struct {
		name string
		env  []string
		args []string
		code int
		line string
	}{
		{"bad postgres DSN", nil, []string{"migrate", "status", "--dsn", "postgres://%zz"}, exitDatabase,
			"invalid postgres DSN: cannot parse `postgres://%zz`: failed to parse as URL (invalid percent-encoded token: \"%zz\")"},
		{"postgres unreachable", nil, []string{"migrate", "up", "--dsn", pgDSN}, exitDatabase,
			"cannot connect to postgres 127.0.0.1:" + port + "/test: dial tcp 127.0.0.1:" + port + ": connect: connection refused"},
		{"postgres silent", nil, []string{"migrate", "status", "--timeout", "500ms", "--dsn", "postgres://postgres@" + silent + "/test?sslmode=disable"}, exitDatabase,
			"cannot connect to postgres " + silent + "/test: no answer within 500ms (--timeout)"},
		{"sqlite dialect, postgres DSN", nil, []string{"migrate", "status", "--dialect", "sqlite", "--dsn", pgDSN}, exitDatabase,
			"--dialect sqlite does not match the DSN, a postgres:// URL; pass --dialect postgres, or a SQLite file path"},
		{"sqlite dialect, postgres key=value", nil, []string{"migrate", "up", "--dialect", "sqlite", "--dsn", "host=127.0.0.1 dbname=test"}, exitDatabase,
			"--dialect sqlite does not match the DSN, a Postgres key=value string; pass --dialect postgres, or a SQLite file path"},
		{"postgres key=value unreachable", nil, []string{"migrate", "status", "--dsn", "host=127.0.0.1 port=" + port + " dbname=test user=postgres sslmode=disable"}, exitDatabase,
			"cannot connect to postgres 127.0.0.1:" + port + "/test: dial tcp 127.0.0.1:" + port + ": connect: connection refused"},
		{"postgres dialect, sqlite path", nil, []string{"migrate", "up", "--dialect", "postgres", "--dsn", missing}, exitDatabase,
			"--dialect postgres does not match the DSN, a SQLite file path; pass --dialect sqlite, or a postgres:// URL"},
		{"postgres dialect, sqlite URI", nil, []string{"migrate", "check", "--dialect", "postgres", "--dsn", "file:" + missing + "?_txlock=immediate"}, exitDatabase,
			"--dialect postgres does not match the DSN, a SQLite file path; pass --dialect sqlite, or a postgres:// URL"},
		{"postgres URL without its colon", nil, []string{"migrate", "up", "--dsn", "postgres//postgres:secret@127.0.0.1/test"}, exitDatabase,
			"the DSN is not understood: it begins like a Postgres URL (postgres//...) but not with postgres:// or postgresql://"},
		{"postgres URL with one slash", nil, []string{"migrate", "status", "--dialect", "sqlite", "--dsn", "postgresql:/db/test"}, exitDatabase,
			"the DSN is not understood: it begins like a Postgres URL (postgresql:/...) but not with postgres:// or postgresql://"},
		{"other scheme", nil, []string{"migrate", "status", "--dsn", "mysql://root@db/app"}, exitDatabase,
			"unsupported DSN mysql://...; durable speaks postgres:// URLs and SQLite files"},
		{"sqlite file missing", nil, []string{"migrate", "status", "--dsn", missing}, exitDatabase,
			"sqlite database " + missing + " does not exist (durable migrate up creates it)"},
		{"sqlite file missing, from DURABLE_DSN", []string{dsnEnv + "=" + missing}, []string{"migrate", "check"}, exitDatabase,
			"sqlite database " + missing + " does not exist (durable migrate up creates it)"},
		{"sqlite directory missing", nil, []string{"migrate", "up", "--dsn", filepath.Join(dir, "no", "app.db")}, exitDatabase,
			"cannot create sqlite database " + filepath.Join(dir, "no", "app.db") + ": directory " + filepath.Join(dir, "no") + " does not exist"},
		{"not a sqlite file", nil, []string{"migrate", "up", "--dsn", notDB}, exitDatabase,
			notDB + " is not a SQLite database"},
		{"no DSN", nil, []string{"migrate", "status"}, exitUsage,
			"no database given: pass --dsn, or set DURABLE_DSN"},
		{"down without --yes", nil, []string{"migrate", "down", "--dsn", missing}, exitUsage, confirmDown},
		{"down --all without --yes", nil, []string{"migrate", "down", "--all", "--dsn", pgDSN}, exitUsage, confirmDown},
		{"bad dialect", nil, []string{"migrate", "status", "--dialect", "mysql", "--dsn", missing}, exitUsage,
			`--dialect "mysql": want postgres or sqlite`},
		{"schema with sqlite", nil, []string{"migrate", "status", "--dialect", "sqlite", "--schema", "x", "--dsn", missing}, exitUsage,
			"--schema applies to postgres only"},
		{"unknown flag", nil, []string{"migrate", "status", "--bogus"}, exitUsage,
			"unknown flag: --bogus (see 'durable migrate status --help')"},
		{"unknown command", nil, []string{"migrate", "upp"}, exitUsage,
			`unknown command "upp" for "durable migrate"; did you mean "up"?`},
		{"unknown top-level command", nil, []string{"migrat"}, exitUsage,
			`unknown command "migrat" for "durable"; did you mean "migrate"?`},
		{"extra argument", nil, []string{"migrate", "up", "now"}, exitUsage,
			`unknown command "now" for "durable migrate up" (see 'durable migrate up --help')`},
		{"bad flag value", nil, []string{"migrate", "up", "--to", "x"}, exitUsage,
			`invalid argument "x" for "--to" flag: strconv.ParseInt: parsing "x": invalid syntax (see 'durable migrate up --help')`},
		{"--to and --all", nil, []string{"migrate", "down", "--to", "0", "--all", "--yes"}, exitUsage,
			"if any flags in the group [to all] are set none of the others can be; [all to] were all set (see 'durable migrate down --help')"},
		{"up --to beyond the latest", nil, []string{"migrate", "up", "--to", "99", "--dsn", missing}, exitUsage,
			"--to 99: there is no migration 99; the latest is 4"},
		{"up --to 0", nil, []string{"migrate", "up", "--to", "0", "--dsn", missing}, exitUsage,
			"--to 0: the first migration is 1"},
		{"negative timeout", nil, []string{"migrate", "status", "--timeout", "-1s", "--dsn", missing}, exitUsage,
			"--timeout -1s: must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantError(t, durableEnv(t, tt.env, tt.args...), tt.code, tt.line)
		})
	}
	if _, err := os.Stat(missing); err == nil {
		t.Errorf("a failed command created %s", missing)
	}
}

// TestSQLiteOwnDSN: a user's own SQLite DSN is used as given; migrations run
// on it, and check reports the settings durable's dialect needs but lacks.
func TestSQLiteOwnDSN(t *testing.T) {
	path := testdb.SQLitePath(t)
	own := "file:" + path + "?_pragma=busy_timeout(1000)"
	mustSucceed(t, "migrate", "up", "--dsn", own)
	wantStatus(t, statusJSON(t, "--dsn", own), "applied")
	wantErrorPrefix(t, durable(t, "migrate", "check", "--dsn", own), exitDatabase,
		"sqlite database opened without _pragma=journal_mode(WAL) (found journal_mode=delete)")
	// The plain path gets durable's settings, and passes.
	mustSucceed(t, "migrate", "check", "--dsn", path)
}

// TestForeignHistory: a schema applied by another tool (here the SQL run by
// hand, as when it is copied into an application's migrations) is reported,
// not migrated again over existing tables.
func TestForeignHistory(t *testing.T) {
	path := testdb.SQLitePath(t)
	db, err := sql.Open("sqlite", sqlite.DSN(path))
	if err != nil {
		t.Fatal(err)
	}
	// Versions 1 and 2, by copied SQL: durable_schema_version knows them, goose does not.
	fsys, err := migrations.FS(migrations.SQLite)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"0001_init.up.sql", "0002_outbox_claim.up.sql"} {
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(string(body)); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	// Status counts them applied, by another tool, and 0003 and 0004 pending.
	st := statusJSON(t, "--dsn", path)
	if st.Version != 2 || st.SchemaVersion != 2 || st.Pending != 2 || len(st.Migrations) != 4 ||
		st.Migrations[0].By != "another tool" || st.Migrations[1].By != "another tool" || st.Migrations[2].State != "pending" {
		t.Errorf("status --json on a foreign history: %+v", st)
	}
	r := mustSucceed(t, "migrate", "status", "--dsn", path)
	if !strings.Contains(r.stdout, "note: versions 1 to 2 were applied by another tool (golang-migrate or copied SQL) and are not in "+migrations.GooseTable+" yet; the next `durable migrate up` records them there") {
		t.Errorf("status does not point out the other tool:\n%s", r.stdout)
	}

	// Up records them for goose and applies 0003.
	r = durable(t, "migrate", "up", "--dsn", path)
	if r.code != exitOK || r.stderr != "durable: durable_schema_version records version 2 but "+migrations.GooseTable+" recorded 0 (applied by golang-migrate or copied SQL); recorded versions up to 2 there\n" ||
		!strings.Contains(r.stdout, "applied 0003_nodes (") || strings.Contains(r.stdout, "applied 0001_init") {
		t.Errorf("up on a foreign history: %v", r)
	}
	wantStatus(t, statusJSON(t, "--dsn", path), "applied")
	mustSucceed(t, "migrate", "check", "--dsn", path)
	// goose can roll it back now.
	r = mustSucceed(t, "migrate", "down", "--all", "--yes", "--dsn", path)
	if !strings.Contains(r.stdout, "rolled back 0001_init (") {
		t.Errorf("down --all after the adoption printed:\n%s", r.stdout)
	}
	wantStatus(t, statusJSON(t, "--dsn", path), "pending")
}

// TestGolangMigrateHistory: a database migrated by golang-migrate, as docs/migrations.md shows,
// is up to date for durable migrate status and check, and migrate up has nothing to apply.
func TestGolangMigrateHistory(t *testing.T) {
	path := testdb.SQLitePath(t)
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := migrations.FS(migrations.SQLite)
	if err != nil {
		t.Fatal(err)
	}
	src, err := iofs.New(fsys, ".")
	if err != nil {
		t.Fatal(err)
	}
	drv, err := migratesqlite.WithInstance(db, &migratesqlite.Config{MigrationsTable: migrations.MigrateTable})
	if err != nil {
		t.Fatal(err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "sqlite", drv)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Up(); err != nil {
		t.Fatal(err)
	}
	m.Close()

	wantStatus(t, statusJSON(t, "--dsn", path), "applied")
	mustSucceed(t, "migrate", "check", "--dsn", path)
	r := durable(t, "migrate", "up", "--dsn", path)
	if r.code != exitOK || !strings.Contains(r.stderr, "recorded versions up to 4 there") || !strings.HasPrefix(r.stdout, "nothing to do on sqlite ") {
		t.Errorf("up on a golang-migrate history: %v", r)
	}
	wantStatus(t, statusJSON(t, "--dsn", path), "applied")
}

// TestHelp: every command has --help with examples.
func TestHelp(t *testing.T) {
	for _, cmd := range [][]string{{}, {"migrate"}, {"migrate", "up"}, {"migrate", "down"}, {"migrate", "status"}, {"migrate", "sql"}, {"migrate", "check"}, {"pause"}, {"resume"}, {"pauses"}} {
		r := mustSucceed(t, append(cmd, "--help")...)
		for _, want := range []string{"Usage:", "Examples:", "durable " + strings.Join(cmd, " "), "--dsn", "--json", "--timeout"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("durable %s --help lacks %q", strings.Join(cmd, " "), want)
			}
		}
	}
	r := mustSucceed(t, "--help")
	for code := exitOK; code <= exitSchema; code++ {
		if !strings.Contains(r.stdout, fmt.Sprintf("\n  %d  ", code)) {
			t.Errorf("durable --help does not document exit code %d", code)
		}
	}
}

// TestDownConfirmation answers the question down asks on a terminal. It runs
// the command in-process, with a stdin that claims to be a terminal.
func TestDownConfirmation(t *testing.T) {
	path := testdb.SQLitePath(t)
	mustSucceed(t, "migrate", "up", "--dsn", path)
	ask := func(answer string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		a := newApp(strings.NewReader(answer), &stdout, &stderr)
		a.isTerminal = func() bool { return true }
		return a.execute(context.Background(), []string{"migrate", "down", "--all", "--dsn", path}), stdout.String(), stderr.String()
	}
	question := "This rolls back 0004_control, 0003_nodes, 0002_outbox_claim, 0001_init on sqlite " + path + ", dropping durable's tables and every message in them.\nType yes to continue: "
	for answer, line := range map[string]string{
		"no\n": "durable: not confirmed; nothing was rolled back\n",
		"":     "durable: no answer on stdin; nothing was rolled back (pass --yes to skip the question)\n",
	} {
		code, stdout, stderr := ask(answer)
		if code != exitFailure || stdout != "" || stderr != question+line {
			t.Errorf("answer %q: exit %d, stdout %q, stderr %q", answer, code, stdout, stderr)
		}
		wantStatus(t, statusJSON(t, "--dsn", path), "applied")
	}
	code, stdout, stderr := ask("yes\n")
	if code != exitOK || stderr != question || !strings.Contains(stdout, "rolled back 0002_outbox_claim") || !strings.Contains(stdout, "rolled back 0001_init") {
		t.Errorf("answer yes: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	wantStatus(t, statusJSON(t, "--dsn", path), "pending")
}
