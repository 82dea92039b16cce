package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"log"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/transport"
)

func Example() {
	dir, err := os.MkdirTemp("", "durable-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// Open with the recommended DSN: WAL, busy timeout, immediate transactions.
	db, err := sql.Open("sqlite", sqlite.DSN(filepath.Join(dir, "app.db")))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// Apply durable's migrations (goose or golang-migrate do this in an app).
	fsys, _ := migrations.FS(migrations.SQLite)
	ups, _ := fs.Glob(fsys, "*.up.sql")
	for _, name := range ups {
		up, _ := fs.ReadFile(fsys, name)
		if _, err := db.Exec(string(up)); err != nil {
			log.Fatal(err)
		}
	}

	d, err := sqlite.New(db, nil)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := d.CheckSchema(ctx); err != nil {
		log.Fatal(err)
	}

	// The application's own writes and the outbox rows commit together.
	tx, err := d.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer d.Rollback(ctx, tx)
	if _, err := tx.ExecContext(ctx, "CREATE TABLE orders (id TEXT PRIMARY KEY)"); err != nil {
		log.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO orders (id) VALUES ('o-1')"); err != nil {
		log.Fatal(err)
	}
	err = d.InsertOutbox(ctx, tx, []dialects.OutboxRow{{
		Envelope: transport.Envelope{
			ID:      "msg-1",
			Topic:   "order.placed",
			Payload: []byte(`{"order":"o-1"}`),
		},
		Destination: "billing",
	}})
	if err != nil {
		log.Fatal(err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		log.Fatal(err)
	}

	rows, err := d.ListOutbox(ctx, dialects.OutboxQuery{Destination: "billing"})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range rows {
		fmt.Printf("%d %s %s %s\n", r.Seq, r.ID, r.Topic, r.Payload)
	}
	// Output:
	// 1 msg-1 order.placed {"order":"o-1"}
}
