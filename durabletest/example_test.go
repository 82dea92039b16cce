package durabletest_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/durabletest"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
)

// openExample opens a migrated SQLite database in a temporary folder, with
// the app's tables, and an outbox on it; close removes it.
func openExample() (db *sql.DB, d *sqlite.Dialect, ob *outbox.Outbox[*sql.Tx], close func()) {
	dir, err := os.MkdirTemp("", "durabletest-example")
	if err != nil {
		log.Fatal(err)
	}
	db, err = sql.Open("sqlite", sqlite.DSN(filepath.Join(dir, "app.db")))
	if err != nil {
		log.Fatal(err)
	}
	fsys, err := migrations.FS(migrations.SQLite)
	if err != nil {
		log.Fatal(err)
	}
	// Every up migration, in order (an application would use goose,
	// golang-migrate or durable migrate up).
	ups, err := fs.Glob(fsys, "*.up.sql")
	if err != nil {
		log.Fatal(err)
	}
	var stmts []string
	for _, name := range ups {
		up, err := fs.ReadFile(fsys, name)
		if err != nil {
			log.Fatal(err)
		}
		stmts = append(stmts, string(up))
	}
	for _, stmt := range append(stmts,
		`CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER NOT NULL)`,
		`CREATE TABLE invoices (order_id INTEGER PRIMARY KEY, total INTEGER NOT NULL)`,
	) {
		if _, err := db.Exec(stmt); err != nil {
			log.Fatal(err)
		}
	}
	if d, err = sqlite.New(db, nil); err != nil {
		log.Fatal(err)
	}
	if ob, err = outbox.New(d, nil); err != nil {
		log.Fatal(err)
	}
	return db, d, ob, func() {
		db.Close()
		os.RemoveAll(dir)
	}
}

// printTB stands in for the *testing.T of a test, printing a failure
// instead of failing the test, to show the message.
type printTB struct{}

func (printTB) Helper()                           {}
func (printTB) Fatalf(format string, args ...any) { fmt.Printf(format+"\n", args...) }

type orderPlaced struct {
	Order int `json:"order"`
	Total int `json:"total"`
}

// placeOrder is the code under test: it writes an order and enqueues its
// message in tx.
func placeOrder(ctx context.Context, tx *sql.Tx, ob *outbox.Outbox[*sql.Tx], order, total int) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, total) VALUES (?, ?)`, order, total); err != nil {
		return err
	}
	body, err := json.Marshal(orderPlaced{Order: order, Total: total})
	if err != nil {
		return err
	}
	return ob.Enqueue(ctx, tx, &outbox.Message{
		ID:          fmt.Sprintf("order-%d-placed", order),
		Destination: "billing",
		Topic:       "order.placed",
		Key:         fmt.Sprintf("order-%d", order),
		Payload:     body,
	})
}

// A test of the sending side asserts the message its transaction
// committed, and what a failing assertion reports.
func ExampleRequireEnqueued() {
	ctx := context.Background()
	db, d, ob, close := openExample()
	defer close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := placeOrder(ctx, tx, ob, 42, 4200); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}

	var t durabletest.TB = printTB{} // in a test: t, the *testing.T
	m := durabletest.RequireEnqueued(ctx, t, d, durabletest.Want{
		Destination: "billing",
		Topic:       "order.placed",
		JSON:        map[string]any{"total": 4200, "order": 42},
	})
	fmt.Println("enqueued:", m.ID, m.Key)

	durabletest.RequireEnqueued(ctx, t, d, durabletest.Want{Destination: "billing", Topic: "order.shipped"})
	// Output:
	// enqueued: order-42-placed order-42
	// durabletest: RequireEnqueued: no outbox message matches Want{Destination: "billing", Topic: "order.shipped"}; the outbox holds 1:
	//   1. id "order-42-placed" → "billing", topic "order.placed", key "order-42", payload "{\"order\":42,\"total\":4200}": topic "order.placed", want "order.shipped"
}

// Inside the app's transaction, before it commits, the Tx variants see
// what it enqueued.
func ExampleRequireEnqueuedTx() {
	ctx := context.Background()
	db, d, ob, close := openExample()
	defer close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	for _, order := range []int{1, 2} {
		if err := placeOrder(ctx, tx, ob, order, 100*order); err != nil {
			log.Fatal(err)
		}
	}

	var t durabletest.TB = printTB{} // in a test: t, the *testing.T
	msgs := durabletest.RequireManyEnqueuedTx(ctx, t, d, tx, []durabletest.Want{
		{Topic: "order.placed", JSON: orderPlaced{Order: 1, Total: 100}},
		{Topic: "order.placed", JSON: orderPlaced{Order: 2, Total: 200}},
	})
	for _, m := range msgs {
		fmt.Println(m.ID)
	}
	durabletest.RequireNotEnqueuedTx(ctx, t, d, tx, durabletest.Want{Destination: "shipping"})
	// Output:
	// order-1-placed
	// order-2-placed
}

// A test of the receiving side runs the app's handlers on messages, as the
// inbox does in production, and asserts their outcome and effects.
func ExampleWork() {
	ctx := context.Background()
	db, d, _, close := openExample()
	defer close()
	// The handler under test.
	mux := inbox.NewMux[*sql.Tx]()
	mux.Handle("order.placed", inbox.JSON(func(ctx context.Context, tx *sql.Tx, m *inbox.Message, o orderPlaced) error {
		if o.Total <= 0 {
			return inbox.Permanent(errors.New("no invoice for a free order"))
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO invoices (order_id, total) VALUES (?, ?)`, o.Order, o.Total)
		return err
	}))
	ib, err := inbox.New(d, mux, &inbox.Config{
		MaxAttempts: 3,
		Backoff:     func(int) time.Duration { return 0 }, // retry at once in tests
		Logger:      slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}

	var t durabletest.TB = printTB{} // in a test: t, the *testing.T
	results := durabletest.Work(ctx, t, ib,
		&inbox.Message{Envelope: transport.Envelope{ID: "order-1-placed", Topic: "order.placed", Payload: []byte(`{"order":1,"total":4200}`)}, Source: "shop"},
		&inbox.Message{Envelope: transport.Envelope{ID: "order-2-placed", Topic: "order.placed", Payload: []byte(`{"order":2,"total":0}`)}, Source: "shop"},
		&inbox.Message{Envelope: transport.Envelope{ID: "order-3-placed", Topic: "order.placed", Payload: []byte(`{"order":`)}, Source: "shop"},
	)
	for _, r := range results {
		fmt.Printf("%s: %s after %d attempt(s)", r.ID, r.State, r.Attempts)
		if r.State == durabletest.DeadLettered {
			fmt.Printf(", reason %s", r.Reason)
		}
		fmt.Println()
	}
	var invoices int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM invoices`).Scan(&invoices); err != nil {
		log.Fatal(err)
	}
	fmt.Println("invoices:", invoices)
	// Output:
	// order-1-placed: handled after 1 attempt(s)
	// order-2-placed: dead_lettered after 1 attempt(s), reason permanent
	// order-3-placed: dead_lettered after 1 attempt(s), reason decode_error
	// invoices: 1
}

// exampleT stands in for the *testing.T of a test that uses a Pair: it runs the cleanups when
// the example ends, as the test would when it ends.
type exampleT struct {
	printTB
	cleanups []func()
}

func (t *exampleT) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }

func (t *exampleT) end() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// An integration test of two services: the shop's code enqueues an order, and billing's
// handler, reached through the real relay, TCP transport and inbox, writes the invoice.
func ExamplePair() {
	ctx := context.Background()
	shopDB, shop, _, closeShop := openExample()
	defer closeShop()
	billingDB, billing, _, closeBilling := openExample()
	defer closeBilling()
	t := &exampleT{} // in a test: t, the *testing.T
	defer t.end()

	quiet := slog.New(slog.DiscardHandler)
	mux := inbox.NewMux[*sql.Tx]() // billing's handler, the code under test
	mux.Handle("order.placed", inbox.JSON(func(ctx context.Context, tx *sql.Tx, m *inbox.Message, o orderPlaced) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO invoices (order_id, total) VALUES (?, ?)`, o.Order, o.Total)
		return err
	}))
	p := durabletest.NewPair(t, shop, billing, &durabletest.PairConfig[*sql.Tx, *sql.Tx]{
		Sender:   durable.Config[*sql.Tx]{Name: "shop", Logger: quiet},
		Receiver: durable.Config[*sql.Tx]{Name: "billing", Logger: quiet, Handler: mux},
	})
	p.Start()

	tx, err := shopDB.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := placeOrder(ctx, tx, p.Sender.Outbox(), 7, 1500); err != nil { // the code under test
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}

	p.WaitSettled(ctx, t)
	var total int
	if err := billingDB.QueryRowContext(ctx, `SELECT total FROM invoices WHERE order_id = 7`).Scan(&total); err != nil {
		log.Fatal(err)
	}
	fmt.Println("invoice total:", total)
	// Output:
	// invoice total: 1500
}
