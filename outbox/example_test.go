package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/outbox"
)

// Enqueue a message in the same transaction as a business write: both commit
// together, or neither exists.
func ExampleOutbox_Enqueue() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "durable-example")
	defer os.RemoveAll(dir)
	db, _ := sql.Open("sqlite", sqlite.DSN(filepath.Join(dir, "app.db")))
	defer db.Close()
	up, _ := migrations.FS(migrations.SQLite)
	schema, _ := fs.ReadFile(up, "0001_init.up.sql")
	db.Exec(string(schema))
	db.Exec(`CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)`)

	d, err := sqlite.New(db)
	if err != nil {
		fmt.Println(err)
		return
	}
	ob, _ := outbox.New(d, nil)

	tx, _ := db.BeginTx(ctx, nil)
	tx.ExecContext(ctx, `INSERT INTO orders (id, total) VALUES (1, 4200)`)
	err = ob.Enqueue(ctx, tx, &outbox.Message{
		ID:          "order-1-placed",
		Destination: "billing",
		Topic:       "order.placed",
		Payload:     []byte(`{"order":1,"total":4200}`),
	})
	if err != nil {
		tx.Rollback()
		fmt.Println(err)
		return
	}
	tx.Commit()

	rows, _ := d.ListOutbox(ctx, dialects.OutboxQuery{})
	for _, r := range rows {
		fmt.Println(r.ID, r.Destination, r.Topic, string(r.Payload))
	}
	// Output: order-1-placed billing order.placed {"order":1,"total":4200}
}
