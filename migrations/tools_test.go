package migrations_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/golang-migrate/migrate/v4"
	_ "github.com/golang-migrate/migrate/v4/database/pgx/v5" // pgx5:// URLs
	migratesqlite "github.com/golang-migrate/migrate/v4/database/sqlite"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/pressly/goose/v3"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/migrations/internal/goosegen"
)

// TestUpDownUp runs durable's migrations up, down and up again through goose
// and through golang-migrate on each dialect, each in its own empty database,
// then checks that both tools built the same schema.
func TestUpDownUp(t *testing.T) {
	for _, dialect := range []string{migrations.Postgres, migrations.SQLite} {
		t.Run(dialect, func(t *testing.T) {
			snaps := map[string][]string{}
			for _, name := range []string{"goose", "golang-migrate"} {
				t.Run(name, func(t *testing.T) {
					snaps[name] = upDownUp(t, dialect, name)
				})
			}
			g, m := snaps["goose"], snaps["golang-migrate"]
			if g == nil || m == nil {
				return // skipped or already failed
			}
			if d := diffLines("goose", g, "golang-migrate", m); d != "" {
				t.Errorf("the %s schema after goose differs from the schema after golang-migrate:\n%s", dialect, d)
			}
		})
	}
}

func upDownUp(t *testing.T, dialect, toolName string) []string {
	d := newDatabase(t, dialect)
	tl := newTool(t, toolName, d)
	latest := latestVersion(t, dialect)

	if err := tl.up(); err != nil {
		t.Fatalf("%s up: %v", tl.name, err)
	}
	checkVersion(t, d, tl, latest)
	first := snapshot(t, dialect, d.db)
	for _, want := range []string{"durable_schema_version", "durable_outbox", "durable_inbox", "durable_dead_letters", "durable_leases"} {
		if !slices.Contains(tables(t, dialect, d.db), want) {
			t.Errorf("after up, table %s is missing", want)
		}
	}

	if err := tl.down(); err != nil {
		t.Fatalf("%s down: %v", tl.name, err)
	}
	checkVersion(t, d, tl, 0)
	if left := snapshot(t, dialect, d.db); len(left) > 0 {
		t.Errorf("after down, durable objects are left:\n  %s", joinLines(left))
	}
	if got := tables(t, dialect, d.db); !slices.Equal(got, []string{tl.table}) {
		t.Errorf("after down, tables = %v, want only %s's version table %s", got, tl.name, tl.table)
	}

	if err := tl.up(); err != nil {
		t.Fatalf("%s up after down: %v", tl.name, err)
	}
	checkVersion(t, d, tl, latest)
	second := snapshot(t, dialect, d.db)
	if diff := diffLines("the first up", first, "the second up", second); diff != "" {
		t.Errorf("up → down → up did not rebuild the same schema:\n%s", diff)
	}
	return second
}

// checkVersion checks the version the tool reports, the version stored in
// its own table (named durable_*, in the test schema, with no table of the
// tool's default name beside it) and the version in durable_schema_version.
func checkVersion(t *testing.T, d *database, tl *tool, want int64) {
	t.Helper()
	got, err := tl.version()
	if err != nil {
		t.Fatalf("%s version: %v", tl.name, err)
	}
	if got != want {
		t.Errorf("%s reports version %d, want %d", tl.name, got, want)
	}
	all := tables(t, d.dialect, d.db)
	if !slices.Contains(all, tl.table) {
		t.Fatalf("%s's version table %s is not in the test database: tables = %v", tl.name, tl.table, all)
	}
	for _, other := range []string{tl.defaultTable, tl.otherTable} {
		if slices.Contains(all, other) {
			t.Errorf("%s created table %s; its version table must be %s only", tl.name, other, tl.table)
		}
	}
	var stored int64
	if err := d.db.QueryRow(tl.storedVersion).Scan(&stored); err != nil {
		t.Fatalf("%s: read %s: %v", tl.name, tl.table, err)
	}
	if stored != want {
		t.Errorf("%s holds version %d, want %d", tl.table, stored, want)
	}
	if want > 0 {
		var schemaVersion int64
		if err := d.db.QueryRow(`SELECT max(version) FROM durable_schema_version`).Scan(&schemaVersion); err != nil {
			t.Fatalf("read durable_schema_version: %v", err)
		}
		if schemaVersion != want {
			t.Errorf("durable_schema_version is at %d, want %d", schemaVersion, want)
		}
	}
}

// database is one empty test database: a fresh Postgres schema (search_path
// set in the URL) or a new SQLite file.
type database struct {
	dialect string
	db      *sql.DB // catalog queries, and goose
	dsn     string  // Postgres URL or SQLite file path
}

func newDatabase(t *testing.T, dialect string) *database {
	t.Helper()
	d := &database{dialect: dialect}
	var driver string
	switch dialect {
	case migrations.Postgres:
		d.dsn, _ = testdb.PostgresSchema(t)
		driver = "pgx"
	case migrations.SQLite:
		d.dsn = testdb.SQLitePath(t)
		driver = "sqlite"
	}
	db, err := sql.Open(driver, d.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	d.db = db
	return d
}

// tool runs durable's migrations through one migration tool.
type tool struct {
	name          string
	table         string // its version table
	defaultTable  string // the table it would use without our option
	otherTable    string // the other tool's version table
	storedVersion string // reads the applied version from table
	up, down      func() error
	upTo          func(v int64) error
	version       func() (int64, error)
}

func newTool(t *testing.T, name string, d *database) *tool {
	t.Helper()
	switch name {
	case "goose":
		return gooseTool(t, d)
	case "golang-migrate":
		return migrateTool(t, d)
	}
	t.Fatalf("unknown tool %q", name)
	return nil
}

func gooseTool(t *testing.T, d *database) *tool {
	t.Helper()
	fsys, err := migrations.GooseFS(d.dialect)
	if err != nil {
		t.Fatal(err)
	}
	gd := goose.DialectPostgres
	if d.dialect == migrations.SQLite {
		gd = goose.DialectSQLite3
	}
	p, err := goose.NewProvider(gd, d.db, fsys, goose.WithTableName(migrations.GooseTable))
	if err != nil {
		t.Fatalf("goose.NewProvider: %v", err)
	}
	// p.Close would close d.db, which newDatabase closes.
	ctx := context.Background()
	return &tool{
		name:          "goose",
		table:         migrations.GooseTable,
		defaultTable:  goose.DefaultTablename,
		otherTable:    migrations.MigrateTable,
		storedVersion: `SELECT coalesce(max(version_id), 0) FROM ` + migrations.GooseTable + ` WHERE is_applied`,
		up:            func() error { _, err := p.Up(ctx); return err },
		upTo:          func(v int64) error { _, err := p.UpTo(ctx, v); return err },
		down:          func() error { _, err := p.DownTo(ctx, 0); return err },
		version:       func() (int64, error) { return p.GetDBVersion(ctx) },
	}
}

func migrateTool(t *testing.T, d *database) *tool {
	t.Helper()
	fsys, err := migrations.FS(d.dialect)
	if err != nil {
		t.Fatal(err)
	}
	src, err := iofs.New(fsys, ".")
	if err != nil {
		t.Fatalf("iofs.New: %v", err)
	}
	var m *migrate.Migrate
	switch d.dialect {
	case migrations.Postgres:
		// The URL form, as users type it for the CLI: the pgx5 scheme, the
		// search_path of the test schema, x-migrations-table.
		u, err := url.Parse(d.dsn)
		if err != nil {
			t.Fatal(err)
		}
		u.Scheme = "pgx5"
		q := u.Query()
		q.Set("x-migrations-table", migrations.MigrateTable)
		u.RawQuery = q.Encode()
		m, err = migrate.NewWithSourceInstance("iofs", src, u.String())
		if err != nil {
			t.Fatalf("migrate.NewWithSourceInstance: %v", err)
		}
	case migrations.SQLite:
		// The WithInstance form. Closing the driver closes its *sql.DB, so
		// it gets its own.
		db, err := sql.Open("sqlite", d.dsn)
		if err != nil {
			t.Fatal(err)
		}
		drv, err := migratesqlite.WithInstance(db, &migratesqlite.Config{MigrationsTable: migrations.MigrateTable})
		if err != nil {
			t.Fatalf("sqlite.WithInstance: %v", err)
		}
		m, err = migrate.NewWithInstance("iofs", src, "sqlite", drv)
		if err != nil {
			t.Fatalf("migrate.NewWithInstance: %v", err)
		}
	}
	t.Cleanup(func() { m.Close() })
	return &tool{
		name:          "golang-migrate",
		table:         migrations.MigrateTable,
		defaultTable:  "schema_migrations",
		otherTable:    migrations.GooseTable,
		storedVersion: `SELECT coalesce(max(version), 0) FROM ` + migrations.MigrateTable + ` WHERE NOT dirty`,
		up:            m.Up,
		down:          m.Down,
		upTo:          func(v int64) error { return m.Migrate(uint(v)) },
		version: func() (int64, error) {
			v, dirty, err := m.Version()
			switch {
			case errors.Is(err, migrate.ErrNilVersion):
				return 0, nil
			case err != nil:
				return 0, err
			case dirty:
				return 0, fmt.Errorf("version %d is dirty", v)
			}
			return int64(v), nil
		},
	}
}

// latestVersion is the highest migration version of dialect.
func latestVersion(t *testing.T, dialect string) int64 {
	t.Helper()
	fsys, err := migrations.FS(dialect)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := goosegen.Collect(fsys)
	if err != nil {
		t.Fatal(err)
	}
	return int64(ms[len(ms)-1].Version)
}

func joinLines(ls []string) string { return strings.Join(ls, "\n  ") }
