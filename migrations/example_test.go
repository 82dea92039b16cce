package migrations_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/golang-migrate/migrate/v4"
	_ "github.com/golang-migrate/migrate/v4/database/sqlite" // sqlite:// URLs, pure Go (modernc.org/sqlite)
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/pressly/goose/v3"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/migrations"
)

// Apply durable's schema with goose's Provider, keeping goose's bookkeeping
// for durable in durable_goose_db_version, apart from the application's own
// goose_db_version. On Postgres: sql.Open("pgx", dsn) (pgx's stdlib
// driver, or stdlib.OpenDBFromPool(pool)) and goose.DialectPostgres.
func ExampleGooseFS() {
	dir, err := os.MkdirTemp("", "durable-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", filepath.Join(dir, "app.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	fsys, err := migrations.GooseFS(migrations.SQLite)
	if err != nil {
		log.Fatal(err)
	}
	provider, err := goose.NewProvider(goose.DialectSQLite3, db, fsys,
		goose.WithTableName(migrations.GooseTable))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if _, err := provider.Up(ctx); err != nil {
		log.Fatal(err)
	}

	pending, err := provider.HasPending(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("pending:", pending)
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM durable_outbox`).Scan(&n); err != nil {
		log.Fatal(err)
	}
	fmt.Println("outbox rows:", n)
	// Output:
	// pending: false
	// outbox rows: 0
}

// Apply durable's schema with golang-migrate's iofs source, keeping
// migrate's bookkeeping for durable in durable_schema_migrations, apart from
// the application's own schema_migrations. On Postgres: import
// github.com/golang-migrate/migrate/v4/database/pgx/v5 and use
// "pgx5://user:password@host:5432/db?sslmode=disable&x-migrations-table=durable_schema_migrations".
func ExampleFS() {
	dir, err := os.MkdirTemp("", "durable-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	fsys, err := migrations.FS(migrations.SQLite)
	if err != nil {
		log.Fatal(err)
	}
	src, err := iofs.New(fsys, ".")
	if err != nil {
		log.Fatal(err)
	}
	m, err := migrate.NewWithSourceInstance("iofs", src,
		"sqlite://"+filepath.Join(dir, "app.db")+"?x-migrations-table="+migrations.MigrateTable)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	if err := m.Up(); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		log.Fatal(err)
	}

	_, dirty, err := m.Version()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("dirty:", dirty)
	err = m.Up() // already up to date
	fmt.Println("again:", err)
	// Output:
	// dirty: false
	// again: no change
}

// Apply durable's schema at a service's start, without a migration tool. A second call (another
// process starting at the same time included) finds nothing to do.
func ExampleUp() {
	dir, err := os.MkdirTemp("", "durable-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", filepath.Join(dir, "app.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	ctx := context.Background()
	st, err := migrations.Up(ctx, db, migrations.SQLite)
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range st.Applied {
		fmt.Println("applied", m.Name)
	}
	st, err = migrations.Up(ctx, db, migrations.SQLite)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("then: %d applied, version %d of %d\n", len(st.Applied), st.Version, st.Latest)
	// Output:
	// applied 0001_init
	// applied 0002_outbox_claim
	// applied 0003_nodes
	// applied 0004_control
	// then: 0 applied, version 4 of 4
}
