package postgres_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/transport"
)

// The examples need a migrated database; they have no Output comment, so
// `go test` compiles them without running them.

func ExampleNew() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err) // a malformed DSN, reported by pgxpool
	}
	defer pool.Close()

	d, err := postgres.New(pool, nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := d.CheckSchema(ctx); err != nil {
		log.Fatal(err) // unreachable server (pgx's error) or *dialects.SchemaError
	}

	tx, err := d.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer d.Rollback(ctx, tx) // nil once committed

	// The application's own writes go in the same transaction.
	if _, err := tx.Exec(ctx, `INSERT INTO orders (id, total) VALUES ($1, $2)`, 42, 1999); err != nil {
		log.Fatal(err)
	}
	err = d.InsertOutbox(ctx, tx, []dialects.OutboxRow{{
		Envelope: transport.Envelope{
			ID:      "order-42",
			Topic:   "order.placed",
			Payload: []byte(`{"order":42}`),
		},
		Destination: "billing",
	}})
	if errors.Is(err, dialects.ErrDuplicateID) {
		fmt.Println("order-42 was already enqueued for billing")
	} else if err != nil {
		log.Fatal(err)
	}
	// Wake the relays of billing when the transaction commits.
	if err := d.NotifyOutbox(ctx, tx, []string{"billing"}); err != nil {
		log.Fatal(err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		log.Fatal(err)
	}
}

func ExampleNewSQL() {
	ctx := context.Background()
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	d, err := postgres.NewSQL(db, nil)
	if err != nil {
		log.Fatal(err)
	}
	tx, err := d.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer d.Rollback(ctx, tx)
	err = d.InsertOutbox(ctx, tx, []dialects.OutboxRow{{
		Envelope: transport.Envelope{
			ID:      "order-42",
			Topic:   "order.placed",
			Payload: []byte(`{"order":42}`),
		},
		Destination: "billing",
	}})
	if err != nil {
		log.Fatal(err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		log.Fatal(err)
	}
}

// Durable's tables in a schema of their own: the migrations ran with
// search_path=durable, the application's connections keep their own
// search_path.
func ExampleConfig() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	d, err := postgres.New(pool, &postgres.Config{Schema: "durable"})
	if err != nil {
		log.Fatal(err) // an invalid schema name: errors.Is(err, postgres.ErrSchemaName)
	}
	if err := d.CheckSchema(ctx); err != nil {
		var se *dialects.SchemaError
		if errors.As(err, &se) {
			log.Fatalf("durable schema at version %d, missing %v", se.Have, se.Missing())
		}
		log.Fatal(err)
	}
	rows, err := d.ListOutbox(ctx, dialects.OutboxQuery{Destination: "billing", Limit: 10})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range rows {
		fmt.Println(r.Seq, r.ID, r.Topic, r.SentAt.IsZero())
	}
}
