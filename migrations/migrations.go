// Package migrations embeds durable's SQL schema for each dialect and serves
// it to golang-migrate (as an fs.FS for its iofs source) and to goose (as an
// fs.FS of annotated files for goose.NewProvider).
//
// The files under postgres/ and sqlite/ (NNNN_name.up.sql, NNNN_name.down.sql)
// are the single source of truth; the goose files under goose/<dialect> are
// generated from them by `go generate ./migrations` and a test fails when the
// two drift apart. Both tools run each file, in each direction, as one
// statement in one transaction, so they build the same schema; a test
// compares the two schemas from the database catalog.
//
// This package imports neither goose nor golang-migrate: it only hands out
// file systems, so an application compiles just the tool it uses.
//
// # Version tables
//
// durable's migration history is kept apart from the application's own:
// goose records it in durable_goose_db_version ([GooseTable]) and
// golang-migrate in durable_schema_migrations ([MigrateTable]), so durable's
// version 1 never meets the application's version 1. Pass the name every
// time: without it each tool falls back to its default table
// (goose_db_version, schema_migrations) and mixes the two histories.
// Whatever the tool, every migration also records itself in
// durable_schema_version, the table the dialects check at startup.
//
// On Postgres the durable tables and the tool's version table are created in
// the connection's current schema, the first of its search_path. To keep
// durable in a schema of its own, create the schema, add search_path=name to
// the DSN you migrate with, and give the dialect the same schema (through
// search_path or postgres.Config.Schema).
//
// # Without a tool
//
// Up applies the migrations a database lacks, from Go, under a lock, and
// records them in both tools' version tables as well as
// durable_schema_version, so that either tool (or `durable migrate`) can
// take over later; Check reports without writing; Adopt records a history
// applied by one tool for the other.
//
//	st, err := migrations.Up(ctx, db, migrations.Postgres) // db: stdlib.OpenDBFromPool(pool)
//
// # goose, from Go
//
//	import (
//		"github.com/pressly/goose/v3"
//		_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
//	)
//
//	db, err := sql.Open("pgx", dsn) // or stdlib.OpenDBFromPool(pool)
//	fsys, err := migrations.GooseFS(migrations.Postgres)
//	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys,
//		goose.WithTableName(migrations.GooseTable))
//	results, err := p.Up(ctx)
//
// On SQLite use migrations.GooseFS(migrations.SQLite) with
// goose.DialectSQLite3 (goose's name for SQLite) and a *sql.DB from
// modernc.org/sqlite. The same store can be built by hand with
// database.NewStore(database.DialectPostgres, migrations.GooseTable) and
// passed with goose.WithStore to goose.NewProvider(goose.DialectCustom, ...).
//
// # golang-migrate, from Go
//
//	import (
//		"github.com/golang-migrate/migrate/v4"
//		_ "github.com/golang-migrate/migrate/v4/database/pgx/v5" // pgx5:// URLs
//		"github.com/golang-migrate/migrate/v4/source/iofs"
//	)
//
//	fsys, err := migrations.FS(migrations.Postgres)
//	src, err := iofs.New(fsys, ".")
//	m, err := migrate.NewWithSourceInstance("iofs", src,
//		"pgx5://user:password@host:5432/app?sslmode=disable&x-migrations-table="+migrations.MigrateTable)
//	err = m.Up() // migrate.ErrNoChange when nothing was pending
//
// On SQLite import github.com/golang-migrate/migrate/v4/database/sqlite,
// which is pure Go (modernc.org/sqlite; the sqlite3 driver next to it needs
// cgo), and use migrations.FS(migrations.SQLite) with
// "sqlite:///path/to/app.db?x-migrations-table=durable_schema_migrations".
// With a *sql.DB already open, pass the table in the driver's Config instead:
// pgx.WithInstance(db, &pgx.Config{MigrationsTable: migrations.MigrateTable})
// or sqlite.WithInstance(db, &sqlite.Config{MigrationsTable: ...}), then
// migrate.NewWithInstance("iofs", src, "pgx5", driver); m.Close closes that
// *sql.DB.
//
// # From a shell
//
// In a checkout of durable (or a copy of its migrations directory):
//
//	goose -dir migrations/goose/postgres -table durable_goose_db_version postgres "$DSN" up
//	goose -dir migrations/goose/sqlite -table durable_goose_db_version sqlite3 ./app.db up
//	migrate -path migrations/postgres -database "postgres://user:password@host:5432/app?sslmode=disable&x-migrations-table=durable_schema_migrations" up
//	migrate -path migrations/sqlite -database "sqlite://./app.db?x-migrations-table=durable_schema_migrations" up
//
// migrate also takes pgx5:// URLs. Its released binaries have no SQLite
// driver; build one, pure Go, with
//
//	CGO_ENABLED=0 go install -tags 'postgres pgx5 sqlite file' github.com/golang-migrate/migrate/v4/cmd/migrate@v4.20.1
//
// docs/migrations.md covers the same at more length, including copying the
// SQL into an application's own migration folder.
package migrations

import (
	"embed"
	"fmt"
	"io/fs"
)

//go:generate go run ./internal/gengoose

//go:embed postgres/*.sql sqlite/*.sql goose/postgres/*.sql goose/sqlite/*.sql
var files embed.FS

// Dialect names accepted by this package.
const (
	Postgres = "postgres"
	SQLite   = "sqlite"
)

// Version tables: durable's migrations keep their own bookkeeping so they
// never collide with an application's own goose or golang-migrate history.
const (
	// GooseTable is the version table to pass to goose (-table, or
	// goose.WithTableName / database.NewStore).
	GooseTable = "durable_goose_db_version"
	// MigrateTable is the version table to pass to golang-migrate
	// (x-migrations-table in the DSN, or MigrationsTable in the driver config).
	MigrateTable = "durable_schema_migrations"
)

// FS returns the golang-migrate migrations of dialect ("postgres" or
// "sqlite"): NNNN_name.up.sql and NNNN_name.down.sql at the root, ready for
// iofs.New(fsys, "."), with x-migrations-table=durable_schema_migrations
// (MigrateTable) in the database URL.
func FS(dialect string) (fs.FS, error) {
	return sub(dialect, dialect)
}

// GooseFS returns the goose migrations of dialect ("postgres" or "sqlite"):
// NNNN_name.sql files annotated with -- +goose Up / Down, at the root, ready
// for goose.NewProvider(goose.DialectPostgres or goose.DialectSQLite3, db,
// fsys, goose.WithTableName(GooseTable)). Note that goose names SQLite
// "sqlite3".
func GooseFS(dialect string) (fs.FS, error) {
	return sub(dialect, "goose/"+dialect)
}

func sub(dialect, dir string) (fs.FS, error) {
	switch dialect {
	case Postgres, SQLite:
		return fs.Sub(files, dir)
	default:
		return nil, fmt.Errorf("durable/migrations: unknown dialect %q (want %q or %q)", dialect, Postgres, SQLite)
	}
}
