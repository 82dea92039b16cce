package durable_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/outbox"
)

// openService opens a SQLite database for one service in dir, applies durable's migrations
// and the service's own table, and returns it with its dialect.
func openService(ctx context.Context, dir, name, table string) (*sql.DB, *sqlite.Dialect) {
	db, err := sql.Open("sqlite", sqlite.DSN(filepath.Join(dir, name+".db")))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := migrations.Up(ctx, db, migrations.SQLite); err != nil {
		log.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, table); err != nil {
		log.Fatal(err)
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		log.Fatal(err)
	}
	return db, d
}

// Two services, orders and billing, each with its own database: orders writes an order and
// enqueues its message in one transaction; billing's handler writes the invoice in the
// transaction that marks the message handled. On Postgres the same code takes
// postgres.New(pool, nil) and pgx.Tx.
func Example() {
	ctx, stop := context.WithCancel(context.Background())
	dir, err := os.MkdirTemp("", "durable-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ordersDB, orders := openService(ctx, dir, "orders", `CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER NOT NULL)`)
	defer ordersDB.Close()
	billingDB, billing := openService(ctx, dir, "billing", `CREATE TABLE invoices (order_id INTEGER PRIMARY KEY, total INTEGER NOT NULL)`)
	defer billingDB.Close()
	secret := []byte("a secret of the two services")
	quiet := slog.New(slog.DiscardHandler)

	// billing receives on a port of its own.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	invoiced := make(chan int, 1)
	mux := inbox.NewMux[*sql.Tx]()
	mux.Handle("order.placed", inbox.JSON(func(ctx context.Context, tx *sql.Tx, m *inbox.Message, o struct{ Order, Total int }) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO invoices (order_id, total) VALUES (?, ?)`, o.Order, o.Total); err != nil {
			return err
		}
		select { // a message is handled once, but a handler may run again after a failure
		case invoiced <- o.Order:
		default:
		}
		return nil
	}))
	b, err := durable.NewNode(billing, &durable.Config[*sql.Tx]{Name: "billing", Listener: ln, Secret: secret, Handler: mux, Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}

	// orders sends to billing.
	o, err := durable.NewNode(orders, &durable.Config[*sql.Tx]{
		Name:   "orders",
		Secret: secret,
		Peers:  map[string]durable.Peer{"billing": {Addr: ln.Addr().String()}},
		Logger: quiet,
	})
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { done <- b.Run(ctx) }()
	go func() { done <- o.Run(ctx) }()

	// The business write and the message commit together, or neither does.
	tx, err := ordersDB.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, total) VALUES (42, 4200)`); err != nil {
		log.Fatal(err)
	}
	if err := o.Enqueue(ctx, tx, &outbox.Message{Destination: "billing", Topic: "order.placed", Payload: []byte(`{"order":42,"total":4200}`)}); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}

	select {
	case order := <-invoiced:
		fmt.Println("billing invoiced order", order)
	case <-time.After(time.Minute):
		log.Fatal("no invoice after a minute")
	}
	stop()
	for range 2 {
		if err := <-done; err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// billing invoiced order 42
}
