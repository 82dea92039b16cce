package acceptance

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
)

// store is everything the tests need of a dialect: the whole Dialect (the
// console's store among it) on database/sql, so that both databases share
// one transaction type and one test body.
type store = dialects.Dialect[*sql.Tx]

// env is one database with durable's tables and the application's, its
// dialect, and a placeholder style for the tests' own SQL.
type env struct {
	name string // "sqlite" or "postgres"
	db   *sql.DB
	d    store
	pg   bool // $1 placeholders instead of ?
}

// openSQLite opens a migrated SQLite database in a file of the test.
func openSQLite(t *testing.T) *env {
	t.Helper()
	db, err := sql.Open("sqlite", sqlite.DSN(testdb.SQLitePath(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e := &env{name: "sqlite", db: db}
	e.migrate(t, migrations.SQLite)
	if e.d, err = sqlite.New(db, nil); err != nil {
		t.Fatal(err)
	}
	return e
}

// openPostgres opens a migrated schema of its own on the test server
// (skipped without one, failed under CI), through pgx's database/sql driver.
func openPostgres(t *testing.T) *env {
	t.Helper()
	u, _ := testdb.PostgresSchema(t)
	db, err := sql.Open("pgx", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e := &env{name: "postgres", db: db, pg: true}
	e.migrate(t, migrations.Postgres)
	if e.d, err = postgres.NewSQL(db, nil); err != nil {
		t.Fatal(err)
	}
	return e
}

// migrate applies durable's up migrations and creates the application's
// table: effects, one row per message a handler handled.
func (e *env) migrate(t *testing.T, dialect string) {
	t.Helper()
	for _, stmt := range append(testdb.UpSQL(t, dialect),
		`CREATE TABLE effects (id TEXT PRIMARY KEY, topic TEXT NOT NULL)`) {
		if _, err := e.db.Exec(stmt); err != nil {
			t.Fatalf("%s: migrate: %v", e.name, err)
		}
	}
}

// q rewrites the ? placeholders of query for the env's database.
func (e *env) q(query string) string {
	if !e.pg {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// queryInt runs a query of one integer.
func (e *env) queryInt(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	if err := e.db.QueryRow(e.q(query), args...).Scan(&n); err != nil {
		t.Fatalf("%s: %s: %v", e.name, query, err)
	}
	return n
}

// handled reports whether the application handled message id: its effect
// row is there.
func (e *env) handled(t *testing.T, id string) bool {
	t.Helper()
	return e.queryInt(t, `SELECT count(*) FROM effects WHERE id = ?`, id) == 1
}

// waitFor polls cond until it holds; it fails t after a generous deadline,
// saying what was awaited. It bounds a wait, it measures nothing.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The seeded data: names every test refers to.
const (
	source     = "orders"    // the sender of the inbox dead letters
	backlogTo  = "warehouse" // a destination no node knows: its rows wait
	rejectedTo = "legacy"    // the destination of the outbox dead letters
	billing    = "billing"   // a peer of the running node (itself)
	audit      = "audit"     // another name for the same peer
	topicOrder = "order.placed"
	topicRefnd = "refund.issued"

	replayID = "order-1001"  // an inbox dead letter the test replays
	keepID   = "order-1002"  // one nobody may replay (the refusals)
	refundID = "refund-2001" // a permanent failure of another topic
	xssID    = "order-666"   // markup in payload, header and error

	// xssPayload would set window.__pwned if the console let it run.
	xssPayload = `<script>window.__pwned=1</script>{"order":666}`
	xssHeader  = `<img src=x onerror="window.__pwned=2">`
	xssError   = `decode: <script>window.__pwned=3</script>`
)

// seeded counts, for the overview's assertions.
const (
	backlogCount  = 3 // unsent rows for backlogTo
	outboxDead    = 2 // rejected, for rejectedTo
	inboxHandlerE = 2 // replayID, keepID: handler_error
)

// seed fills the database before the node starts (so that no worker races
// the seeding): a backlog for a destination nobody serves, outbox dead
// letters, and inbox dead letters of three reasons, one of them carrying
// markup everywhere.
func (e *env) seed(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	ob, err := outbox.New(e.d, nil)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := e.d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range backlogCount {
		if err := ob.Enqueue(ctx, tx, &outbox.Message{ID: fmt.Sprintf("ship-%d", 3001+i), Destination: backlogTo, Topic: "shipment.requested",
			Key: fmt.Sprintf("order-%d", 1001+i), Payload: fmt.Appendf(nil, `{"order":%d}`, 1001+i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range outboxDead {
		if err := ob.Enqueue(ctx, tx, &outbox.Message{ID: fmt.Sprintf("legacy-%d", 4001+i), Destination: rejectedTo, Topic: "invoice.created",
			Payload: fmt.Appendf(nil, `{"invoice":%d}`, 4001+i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	claimed, err := e.d.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: rejectedTo, Token: "seed", Limit: outboxDead, Lease: time.Minute})
	if err != nil || len(claimed) != outboxDead {
		t.Fatalf("claim the outbox rows to dead-letter: %d rows, %v", len(claimed), err)
	}
	letters := make([]dialects.OutboxDeadLetter, len(claimed))
	for i, c := range claimed {
		letters[i] = dialects.OutboxDeadLetter{Seq: c.Seq, Reason: dialects.ReasonRejected, Error: "peer legacy: schema v1 is no longer accepted"}
	}
	if n, err := e.d.DeadLetterOutbox(ctx, "seed", letters); err != nil || n != outboxDead {
		t.Fatalf("DeadLetterOutbox = %d, %v", n, err)
	}

	e.deadLetterInbox(t, transport.Envelope{ID: replayID, Topic: topicOrder, Key: "order-1001",
		Headers: map[string]string{"content-type": "application/json", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		Payload: []byte(`{"order":1001,"total":4200,"items":[{"sku":"A-1","qty":2}]}`)},
		dialects.ReasonHandlerError, "inventory service unavailable: connection refused", "inventory service unavailable: timeout after 5s")
	e.deadLetterInbox(t, transport.Envelope{ID: keepID, Topic: topicOrder, Key: "order-1002", Payload: []byte(`{"order":1002,"total":990}`)},
		dialects.ReasonHandlerError, "inventory service unavailable: connection refused")
	e.deadLetterInbox(t, transport.Envelope{ID: refundID, Topic: topicRefnd, Payload: []byte(`{"refund":2001,"amount":125000}`)},
		dialects.ReasonPermanent, "refund over the automatic limit")
	e.deadLetterInbox(t, transport.Envelope{ID: xssID, Topic: topicOrder, Headers: map[string]string{"x-note": xssHeader}, Payload: []byte(xssPayload)},
		dialects.ReasonDecodeError, xssError)
}

// deadLetterInbox stores msg in the inbox as received from source and
// moves it to the dead letters through the dialect, as a worker does: one
// failed attempt per error of errs before the last, then the last as the
// dead letter's error.
func (e *env) deadLetterInbox(t *testing.T, msg transport.Envelope, reason string, errs ...string) {
	t.Helper()
	ctx := context.Background()
	msg.CreatedAt = time.Now().Add(-3 * time.Minute).Truncate(time.Millisecond)
	tx, err := e.d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.InsertInbox(ctx, tx, []dialects.InboxRow{{Envelope: msg, Source: source}}); err != nil {
		t.Fatalf("InsertInbox %s: %v", msg.ID, err)
	}
	if err := e.d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	for i, m := range errs {
		token := fmt.Sprintf("seed-%s-%d", msg.ID, i)
		rows, err := e.d.ClaimInbox(ctx, dialects.InboxClaim{Token: token, Worker: "seed", Limit: 1, Lease: time.Minute, Topics: []string{msg.Topic}})
		if err != nil || len(rows) != 1 || rows[0].ID != msg.ID {
			t.Fatalf("claim %s: %d rows, %v", msg.ID, len(rows), err)
		}
		out := dialects.InboxOutcome{Source: source, ID: msg.ID, Kind: dialects.InboxRetry, Error: m}
		if i == len(errs)-1 {
			out.Kind, out.Reason = dialects.InboxDead, reason
		}
		tx, err := e.d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := e.d.FinishInbox(ctx, tx, token, []dialects.InboxOutcome{out}); err != nil || n != 1 {
			t.Fatalf("FinishInbox %s: %d, %v", msg.ID, n, err)
		}
		if err := e.d.Commit(ctx, tx); err != nil {
			t.Fatal(err)
		}
	}
}

// startNode runs the application's node until the test ends: it listens,
// handles both topics by writing an effect row, and sends to itself under
// two destination names (billing and audit), so that a pause of one can be
// told from the other's traffic. The backlog's destination stays unknown.
func (e *env) startNode(t *testing.T) *durable.Node[*sql.Tx] {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := inbox.NewMux[*sql.Tx]()
	effect := func(ctx context.Context, tx *sql.Tx, msg *inbox.Message) error {
		_, err := tx.ExecContext(ctx, e.q(`INSERT INTO effects (id, topic) VALUES (?, ?)`), msg.ID, msg.Topic)
		return err
	}
	mux.HandleFunc(topicOrder, effect)
	mux.HandleFunc(topicRefnd, effect)
	peer := durable.Peer{Addr: ln.Addr().String()}
	n, err := durable.NewNode(e.d, &durable.Config[*sql.Tx]{
		Name:                     "shop",
		Listener:                 ln,
		Handler:                  mux,
		Peers:                    map[string]durable.Peer{billing: peer, audit: peer},
		AllowUnknownDestinations: true,
		Secret:                   []byte("acceptance-test-secret"),
		Logger:                   slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() { runErr = n.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if runErr != nil && !errors.Is(runErr, context.Canceled) {
			t.Errorf("node: %v", runErr)
		}
	})
	return n
}

// enqueue commits one message of topic order.placed to destination.
func (e *env) enqueue(t *testing.T, n *durable.Node[*sql.Tx], destination, id string) {
	t.Helper()
	ctx := context.Background()
	tx, err := e.d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enqueue(ctx, tx, &outbox.Message{ID: id, Destination: destination, Topic: topicOrder, Payload: fmt.Appendf(nil, `{"id":%q}`, id)}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
}

// testLog writes a node's logs to the test's log (the node stops before the
// test ends).
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
