package inbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/transport"
)

type orderPlaced struct {
	Order int `json:"order"`
	Total int `json:"total"`
}

// A receiving service: batches delivered by the transport are stored in the
// inbox, and a handler turns each order into an invoice in the same
// transaction that marks the message handled.
func Example() {
	dir, err := os.MkdirTemp("", "durable-inbox-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", sqlite.DSN(filepath.Join(dir, "billing.db")))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	fsys, _ := migrations.FS(migrations.SQLite)
	ups, _ := fs.Glob(fsys, "*.up.sql") // every migration, in order
	for _, name := range ups {
		up, _ := fs.ReadFile(fsys, name)
		if _, err := db.Exec(string(up)); err != nil {
			log.Fatal(err)
		}
	}
	if _, err := db.Exec(`CREATE TABLE invoices (order_id INTEGER PRIMARY KEY, total INTEGER NOT NULL)`); err != nil {
		log.Fatal(err)
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		log.Fatal(err)
	}

	mux := inbox.NewMux[*sql.Tx]()
	mux.Handle("order.placed", inbox.JSON(func(ctx context.Context, tx *sql.Tx, m *inbox.Message, o orderPlaced) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO invoices (order_id, total) VALUES (?, ?)`, o.Order, o.Total)
		return err // nil: handled; an error: retried with backoff; inbox.Permanent(err): dead letter now
	}))
	ib, err := inbox.New(d, mux, &inbox.Config{
		PollInterval: 50 * time.Millisecond,
		Logger:       slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}

	// What a transport does on receipt: the batch is stored before it is
	// acknowledged. A resend of the same message is acknowledged again as a
	// duplicate and stored once.
	ctx := context.Background()
	b := &transport.Batch{Source: "shop", Envelopes: []transport.Envelope{{
		ID: "order-1-placed", Topic: "order.placed", Payload: []byte(`{"order":1,"total":4200}`), CreatedAt: time.Now(),
	}}}
	for range 2 {
		res, err := ib.Deliver(ctx, b)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("delivery:", res.Outcome(0).Status)
	}

	// Workers run until the context ends.
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ib.Run(runCtx) }()
	for deadline := time.Now().Add(time.Minute); ; {
		s, err := ib.Stats(ctx)
		if err != nil {
			log.Fatal(err)
		}
		if s.Handled == 1 {
			break
		}
		select {
		case err := <-done:
			log.Fatalf("Run returned before the message was handled: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			log.Fatal("the message was not handled within a minute")
		}
	}
	stop()
	if err := <-done; err != nil {
		log.Fatal(err)
	}

	var orderID, total int
	if err := db.QueryRow(`SELECT order_id, total FROM invoices`).Scan(&orderID, &total); err != nil {
		log.Fatal(err)
	}
	fmt.Println("invoice:", orderID, total)
	s, _ := ib.Stats(ctx) // in total, per topic and per queue
	fmt.Printf("stats: %+v\n", s.Counts)
	fmt.Printf("order.placed: %+v\n", s.Topics["order.placed"])
	// Output:
	// delivery: accepted
	// delivery: duplicate
	// invoice: 1 4200
	// stats: {Ready:0 Retrying:0 Running:0 Handled:1 Dead:0 HandledLastMinute:1}
	// order.placed: {Ready:0 Retrying:0 Running:0 Handled:1 Dead:0 HandledLastMinute:1}
}

// Dead letters are messages the inbox could not process; here one whose
// topic had no handler. Once a handler is deployed, replay it.
func ExampleInbox_Replay() {
	dir, _ := os.MkdirTemp("", "durable-inbox-example")
	defer os.RemoveAll(dir)
	db, _ := sql.Open("sqlite", sqlite.DSN(filepath.Join(dir, "app.db")))
	defer db.Close()
	fsys, _ := migrations.FS(migrations.SQLite)
	ups, _ := fs.Glob(fsys, "*.up.sql") // every migration, in order
	for _, name := range ups {
		up, _ := fs.ReadFile(fsys, name)
		db.Exec(string(up))
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		log.Fatal(err)
	}
	mux := inbox.NewMux[*sql.Tx]() // no handler yet
	ib, _ := inbox.New(d, mux, &inbox.Config{
		PollInterval: 20 * time.Millisecond,
		Logger:       slog.New(slog.DiscardHandler),
		// A topic without a handler goes to the dead letters at once
		// (by default it is retried for five minutes first).
		NoHandlerGrace: -1,
	})
	ctx := context.Background()
	ib.Deliver(ctx, &transport.Batch{Source: "shop", Envelopes: []transport.Envelope{{ID: "m1", Topic: "refund.issued"}}})

	runUntil := func(done func(inbox.Stats) bool) {
		runCtx, stop := context.WithCancel(ctx)
		finished := make(chan error, 1)
		go func() { finished <- ib.Run(runCtx) }()
		deadline := time.Now().Add(time.Minute)
		for s, _ := ib.Stats(ctx); !done(s); s, _ = ib.Stats(ctx) {
			select {
			case err := <-finished:
				log.Fatalf("Run returned early: %v", err)
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				log.Fatal("timed out after a minute")
			}
		}
		stop()
		<-finished
	}
	runUntil(func(s inbox.Stats) bool { return s.Dead == 1 })
	dl, _ := ib.DeadLetter(ctx, "shop", "m1")
	fmt.Println(dl.Reason, dl.Attempts, dl.LastError)

	mux.HandleFunc("refund.issued", func(ctx context.Context, tx *sql.Tx, m *inbox.Message) error { return nil })
	n, _ := ib.Replay(ctx, inbox.DeadLetterFilter{Reason: deadletter.ReasonNoHandler})
	fmt.Println("replayed:", n)
	runUntil(func(s inbox.Stats) bool { return s.Handled == 1 })
	s, _ := ib.Stats(ctx)
	fmt.Printf("stats: %+v\n", s.Counts)
	// Output:
	// no_handler 1 durable/inbox: no handler for topic "refund.issued"
	// replayed: 1
	// stats: {Ready:0 Retrying:0 Running:0 Handled:1 Dead:0 HandledLastMinute:1}
}
