package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
	"github.com/durable-go/durable/transport/tcp"
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
	names, _ := fs.Glob(up, "*.up.sql") // every migration, in order
	for _, name := range names {
		schema, _ := fs.ReadFile(up, name)
		db.Exec(string(schema))
	}
	db.Exec(`CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)`)

	d, err := sqlite.New(db, nil)
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

// A relay sends committed messages to their destination's peer over TCP and
// deletes them from the outbox once the peer acknowledged them. Here the
// peer is a tcp.Server in the same process whose Handler prints what it
// receives; in a real system it is the inbox of another service.
func ExampleRelay() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "durable-relay-example")
	defer os.RemoveAll(dir)
	db, _ := sql.Open("sqlite", sqlite.DSN(filepath.Join(dir, "app.db")))
	defer db.Close()
	up, _ := migrations.FS(migrations.SQLite)
	names, _ := fs.Glob(up, "*.up.sql") // every migration, in order
	for _, name := range names {
		schema, _ := fs.ReadFile(up, name)
		db.Exec(string(schema))
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	ob, _ := outbox.New(d, nil)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	// The peer.
	received := make(chan transport.Envelope, 1)
	srv, _ := tcp.NewServer(transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		for _, e := range b.Envelopes {
			received <- e
		}
		return transport.Result{}, nil // stored: acknowledge the batch
	}), &tcp.ServerConfig{Insecure: true, Logger: quiet})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() { srv.Close(); <-served }()

	// The relay: one Sender per destination; Outbox wakes it on Enqueue.
	billing, _ := tcp.NewClient(ln.Addr().String(), &tcp.ClientConfig{NodeID: "shop", Logger: quiet})
	defer billing.Close(ctx)
	relay, err := outbox.NewRelay(d, map[string]transport.Sender{"billing": billing}, &outbox.RelayConfig{
		Outbox: ob,
		Logger: quiet,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(runCtx) }()

	tx, _ := db.BeginTx(ctx, nil)
	ob.Enqueue(ctx, tx, &outbox.Message{
		ID:          "order-1-placed",
		Destination: "billing",
		Topic:       "order.placed",
		Payload:     []byte(`{"order":1,"total":4200}`),
	})
	tx.Commit()

	var e transport.Envelope
	select {
	case e = <-received:
	case err := <-done:
		stop()
		fmt.Println("Run returned early:", err)
		return
	case <-time.After(time.Minute):
		fmt.Println("nothing received within a minute")
		stop()
		<-done
		return
	}
	fmt.Println("received:", e.ID, e.Topic, string(e.Payload), "attempt", e.SendAttempt)

	stop() // graceful: the batch in flight is acknowledged first
	fmt.Println("Run returned:", <-done)
	rows, _ := d.ListOutbox(ctx, dialects.OutboxQuery{})
	fmt.Println("left in the outbox:", len(rows))
	// Output:
	// received: order-1-placed order.placed {"order":1,"total":4200} attempt 1
	// Run returned: <nil>
	// left in the outbox: 0
}

// A message the peer refuses for good becomes an outbox dead letter, with
// the peer's reason. Once the cause is fixed, Replay puts it back into the
// outbox and the relay sends it again.
func ExampleOutbox_Replay() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "durable-replay-example")
	defer os.RemoveAll(dir)
	db, _ := sql.Open("sqlite", sqlite.DSN(filepath.Join(dir, "app.db")))
	defer db.Close()
	up, _ := migrations.FS(migrations.SQLite)
	names, _ := fs.Glob(up, "*.up.sql") // every migration, in order
	for _, name := range names {
		schema, _ := fs.ReadFile(up, name)
		db.Exec(string(schema))
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	ob, _ := outbox.New(d, nil)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	// The peer refuses its first batch: it does not know the customer yet.
	calls := 0
	received := make(chan transport.Envelope, 1)
	srv, _ := tcp.NewServer(transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		calls++
		if calls == 1 {
			return transport.Result{Outcomes: []transport.Outcome{{Status: transport.Rejected, Reason: "unknown customer 7"}}}, nil
		}
		received <- b.Envelopes[0]
		return transport.Result{}, nil
	}), &tcp.ServerConfig{Insecure: true, Logger: quiet})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() { srv.Close(); <-served }()

	billing, _ := tcp.NewClient(ln.Addr().String(), &tcp.ClientConfig{NodeID: "shop", Logger: quiet})
	defer billing.Close(ctx)
	relay, _ := outbox.NewRelay(d, map[string]transport.Sender{"billing": billing}, &outbox.RelayConfig{Outbox: ob, Logger: quiet})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(runCtx) }()
	defer func() { stop(); <-done }()

	tx, _ := db.BeginTx(ctx, nil)
	ob.Enqueue(ctx, tx, &outbox.Message{ID: "invoice-7", Destination: "billing", Topic: "invoice.due", Payload: []byte(`{"customer":7}`)})
	tx.Commit()

	var dead []deadletter.DeadLetter
	for deadline := time.Now().Add(time.Minute); len(dead) == 0; {
		if time.Now().After(deadline) {
			fmt.Println("no dead letter within a minute")
			return
		}
		time.Sleep(10 * time.Millisecond)
		dead, _ = ob.DeadLetters(ctx, outbox.DeadLetterFilter{Destination: "billing"})
	}
	fmt.Println("dead letter:", dead[0].ID, dead[0].Reason, dead[0].LastError)

	n, _ := ob.Replay(ctx, outbox.DeadLetterFilter{IDs: []string{"invoice-7"}})
	fmt.Println("replayed:", n)
	select {
	case e := <-received:
		fmt.Println("received:", e.ID, string(e.Payload))
	case <-time.After(time.Minute):
		fmt.Println("nothing received within a minute")
	}
	// Output:
	// dead letter: invoice-7 rejected unknown customer 7
	// replayed: 1
	// received: invoice-7 {"customer":7}
}
