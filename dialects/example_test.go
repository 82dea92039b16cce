package dialects_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/migrations"
)

// A service checks the schema at start; a database that lacks migrations gives a SchemaError
// that names them (errors.Is(err, dialects.ErrSchema) holds too).
func ExampleSchemaError() {
	dir, err := os.MkdirTemp("", "durable-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", sqlite.DSN(filepath.Join(dir, "app.db")))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	d, err := sqlite.New(db, nil)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	var se *dialects.SchemaError
	if err := d.CheckSchema(ctx); errors.As(err, &se) {
		fmt.Println("missing:", se.Missing(), errors.Is(err, dialects.ErrSchema))
	}
	if _, err := migrations.Up(ctx, db, migrations.SQLite); err != nil {
		log.Fatal(err)
	}
	fmt.Println("after migrations.Up:", d.CheckSchema(ctx))
	// Output:
	// missing: [0001_init 0002_outbox_claim 0003_nodes] true
	// after migrations.Up: <nil>
}
