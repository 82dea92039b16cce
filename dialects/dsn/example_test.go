package dsn_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects/dsn"
	"github.com/durable-go/durable/migrations"
)

// A tool that takes a DSN, as `durable --dsn` does: Open tells the dialect
// from the DSN's form, Admin builds it, and deadletter works on it.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "durable-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	db, err := dsn.Open(ctx, filepath.Join(dir, "app.db"), &dsn.Config{Create: true})
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := migrations.Up(ctx, db.SQL, db.Dialect); err != nil {
		log.Fatal(err)
	}
	d, err := db.Admin()
	if err != nil {
		log.Fatal(err)
	}
	if err := d.CheckSchema(ctx); err != nil {
		log.Fatal(err)
	}
	store, err := deadletter.New(d, nil)
	if err != nil {
		log.Fatal(err)
	}
	dead, err := store.List(ctx, deadletter.Query{Side: deadletter.SideOutbox})
	fmt.Println(db.Dialect, len(dead), err)

	_, err = dsn.Open(ctx, "mysql://db/app", nil)
	fmt.Println(err)
	// Output:
	// sqlite 0 <nil>
	// unsupported DSN mysql://...; durable speaks postgres:// URLs and SQLite files
}

// Dialect classifies a DSN without opening anything.
func ExampleDialect() {
	for _, s := range []string{"postgres://db/app", "host=db dbname=app", "./app.db", "file:app.db?mode=ro"} {
		d, _ := dsn.Dialect(s, "")
		fmt.Println(d)
	}
	_, err := dsn.Dialect("postgres://db/app", dsn.SQLite)
	fmt.Println(err)
	// Output:
	// postgres
	// postgres
	// sqlite
	// sqlite
	// dialect sqlite does not match the DSN, a postgres:// URL
}
