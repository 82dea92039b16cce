package deadletter_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/migrations"
)

// An operator's tool: list what the relay could not deliver to billing
// in the last day, replay the rejected ones once billing is fixed, and
// forget the inbox's dead letters older than a month.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	d, err := postgres.New(pool, nil)
	if err != nil {
		log.Fatal(err)
	}
	store, err := deadletter.New(d, nil)
	if err != nil {
		log.Fatal(err)
	}

	dead, err := store.List(ctx, deadletter.Query{
		Side: deadletter.SideOutbox, Destination: "billing", Since: time.Now().Add(-24 * time.Hour),
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, dl := range dead {
		fmt.Printf("%s %s %s: %s\n", dl.ID, dl.Topic, dl.Reason, dl.LastError)
	}

	n, err := store.Replay(ctx, deadletter.Query{
		Side: deadletter.SideOutbox, Destination: "billing", Reason: deadletter.ReasonRejected,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("replayed", n)

	n, err = store.Purge(ctx, deadletter.Query{
		Side: deadletter.SideInbox, Before: time.Now().AddDate(0, -1, 0), IncludeReplayed: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("purged", n)
}

// A Store needs only a dialect, whatever its transaction type; here
// SQLite's, on a database without dead letters yet.
func ExampleStore_Get() {
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
	ctx := context.Background()
	if _, err := migrations.Up(ctx, db, migrations.SQLite); err != nil {
		log.Fatal(err)
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		log.Fatal(err)
	}
	store, err := deadletter.New(d, nil)
	if err != nil {
		log.Fatal(err)
	}

	_, err = store.Get(ctx, deadletter.SideInbox, "orders", "order-42")
	fmt.Println(errors.Is(err, deadletter.ErrNotFound))
	n, err := store.Replay(ctx, deadletter.Query{Side: deadletter.SideInbox, Source: "orders"})
	fmt.Println(n, err)
	// Output:
	// true
	// 0 <nil>
}
