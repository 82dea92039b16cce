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
	"github.com/durable-go/durable/outbox"
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
	// missing: [0001_init 0002_outbox_claim 0003_nodes 0004_control] true
	// after migrations.Up: <nil>
}

// A consumer takes only the role it calls, so a wrapper that observes a
// dialect implements that role and no more: here outbox.New gets an
// Enqueuer that counts the rows it writes. The transaction type (*sql.Tx)
// is inferred from the wrapper's methods.
func ExampleEnqueuer() {
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

	counted := &countingEnqueuer{Enqueuer: d}
	ob, err := outbox.New(counted, nil) // an *outbox.Outbox[*sql.Tx]
	if err != nil {
		log.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	err = ob.Enqueue(ctx, tx, &outbox.Message{Destination: "billing", Topic: "order.placed", Payload: []byte(`{"order":1}`)})
	if err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("rows written:", counted.rows)
	// Output: rows written: 1
}

// countingEnqueuer passes everything to the dialect it embeds and counts
// the outbox rows InsertOutbox wrote.
type countingEnqueuer struct {
	dialects.Enqueuer[*sql.Tx]
	rows int
}

func (c *countingEnqueuer) InsertOutbox(ctx context.Context, tx *sql.Tx, rows []dialects.OutboxRow) error {
	err := c.Enqueuer.InsertOutbox(ctx, tx, rows)
	if err == nil {
		c.rows += len(rows)
	}
	return err
}

// MigrationNames returns a copy: what a caller does with it changes nothing
// else.
func ExampleMigrationNames() {
	names := dialects.MigrationNames()
	fmt.Println(names[dialects.SchemaVersion-1], len(names) == dialects.SchemaVersion)
	// Output: 0004_control true
}

// An operator's tool pauses a destination: every relay of the database
// stops claiming and sending its messages within one poll interval, until
// it is resumed. The action goes to the audit too.
func ExampleController() {
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
	var c dialects.Controller = d
	for range 2 {
		paused, err := c.Pause(ctx, dialects.Pause{Kind: dialects.PauseDestination, Name: "billing", PausedBy: "alice", Reason: "maintenance"})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("paused:", paused)
	}
	if err := c.AppendAudit(ctx, dialects.AuditEntry{Actor: "alice", Action: "pause", Target: "destination billing", Count: 1}); err != nil {
		log.Fatal(err)
	}
	pauses, err := c.ListPauses(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range pauses {
		fmt.Println(p.Kind, p.Name, p.PausedBy, p.Reason)
	}
	audit, err := c.ListAudit(ctx, dialects.AuditQuery{Limit: 10})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(audit[0].Actor, audit[0].Action, audit[0].Target, audit[0].Count)
	resumed, err := c.Resume(ctx, dialects.PauseDestination, "billing")
	fmt.Println("resumed:", resumed, err)
	// Output:
	// paused: true
	// paused: false
	// destination billing alice maintenance
	// alice pause destination billing 1
	// resumed: true <nil>
}
