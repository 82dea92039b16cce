// Package migrations embeds durable's SQL schema for each dialect and serves
// it to golang-migrate (as an fs.FS for its iofs source) and to goose (as an
// fs.FS of annotated files for goose.NewProvider).
//
// The files under postgres/ and sqlite/ (NNNN_name.up.sql, NNNN_name.down.sql)
// are the single source of truth; the goose files under goose/<dialect> are
// generated from them by `go generate ./migrations` and a test fails when the
// two drift apart.
//
// This package imports neither goose nor golang-migrate: it only hands out
// file systems, so an application compiles just the tool it uses.
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
// iofs.New(fsys, ".").
func FS(dialect string) (fs.FS, error) {
	return sub(dialect, dialect)
}

// GooseFS returns the goose migrations of dialect ("postgres" or "sqlite"):
// NNNN_name.sql files annotated with -- +goose Up / Down, at the root, ready
// for goose.NewProvider(dialect, db, fsys).
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
