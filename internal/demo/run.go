// Package demo is the exchange `durable demo` runs: two services, orders
// and billing, each a durable Node on its own database, connected over TCP;
// orders enqueue messages that billing handles, a share of them poison. Run
// returns a Summary of what arrived, what was dead-lettered, and whether
// anything was lost or doubled. The command sets up the databases (SQLite
// files or Postgres schemas, migrated as `durable migrate up` does) and
// prints the summary.
package demo

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lib "github.com/durable-go/durable" // the root package; "durable" is the tests' helper
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/outbox"
)

// Backend is what the exchange needs of a database flavour: the two
// services' dialects, a way to write in their transactions, and
// database/sql views of both databases to read the results with.
type Backend[TTx any] struct {
	Kind            string // migrations.SQLite or migrations.Postgres
	Orders, Billing dialects.Dialect[TTx]
	Reads           [2]*sql.DB // orders, billing
	Exec            func(ctx context.Context, tx TTx, q string, args ...any) error

	Where   string   // the databases, for the summary
	Files   []string // SQLite files
	Schemas []string // Postgres schemas
	Inspect string   // the command that shows the dead letters
}

// Options are the workload's settings (the command's flags).
type Options struct {
	Messages    int           // orders, one message each
	PoisonRate  float64       // share of orders whose handler always fails
	Enqueuers   int           // goroutines placing orders
	TxSize      int           // orders per transaction
	MaxAttempts int           // attempts of a failing message
	MaxTime     time.Duration // give up after this long
	Verbose     bool          // log the nodes' events at Info level
}

// placeholder returns the i-th (from 1) bind parameter of the flavour.
func (b *Backend[TTx]) placeholder(i int) string {
	if b.Kind == migrations.SQLite {
		return "?"
	}
	return "$" + strconv.Itoa(i)
}

// The demo's business tables. invoices has no unique constraint on
// message_id on purpose: a duplicate effect would be stored, and counted,
// rather than prevented by the table.
const (
	demoOrdersTable = `CREATE TABLE orders (
	id           bigint  PRIMARY KEY,
	message_id   text    NOT NULL,
	customer     text    NOT NULL,
	amount_cents bigint  NOT NULL,
	poison       integer NOT NULL,
	committed_ns bigint  NOT NULL
)`
	demoInvoicesTable = `CREATE TABLE invoices (
	message_id   text    NOT NULL,
	order_id     bigint  NOT NULL,
	amount_cents bigint  NOT NULL,
	committed_ns bigint  NOT NULL,
	started_ns   bigint  NOT NULL,
	attempt      integer NOT NULL
)`
)

const (
	demoTopic = "order.placed"
	// demoCommitHeader carries the time, in Unix nanoseconds, at which the
	// order's transaction wrote its messages, just before its commit: the
	// start of the commit → handler latency.
	demoCommitHeader = "demo-committed-ns"
)

// Order is the payload of an order.placed message.
type Order struct {
	ID          int64  `json:"id"`
	Customer    string `json:"customer"`
	AmountCents int64  `json:"amount_cents"`
	// Poison makes billing's handler fail on every attempt.
	Poison bool `json:"poison,omitempty"`
}

// poisonCount is the number of poison orders among n at rate.
func poisonCount(n int, rate float64) int {
	return min(n, int(float64(n)*rate+1e-9))
}

// isPoison reports whether order i (from 0) of n is poison: exactly p of the
// n orders are, spread evenly, the same ones on every run.
func isPoison(i, n, p int) bool {
	return (i+1)*p/n > i*p/n
}

// Run runs the exchange on b and returns its summary. The progress bar
// and the nodes' logs go to p, which writes to stderr.
func Run[TTx any](parent context.Context, o *Options, b *Backend[TTx], p *Progress) (*Summary, error) {
	for i, ddl := range []string{demoOrdersTable, demoInvoicesTable} {
		if _, err := b.Reads[i].ExecContext(parent, ddl); err != nil {
			return nil, fmt.Errorf("create the demo's tables: %w", err)
		}
	}

	// The poison orders are dead-lettered on purpose and the summary counts
	// them, so the inbox's per-message warnings about them would only be
	// noise: by default only errors are shown.
	level := slog.LevelError
	if o.Verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(p, &slog.HandlerOptions{Level: level}))
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen on 127.0.0.1: %w", err)
	}
	mux := inbox.NewMux[TTx]()
	billing, err := lib.NewNode(b.Billing, &lib.Config[TTx]{
		Name:     "billing",
		Listener: ln,
		Secret:   secret,
		Handler:  mux,
		Inbox: inbox.Config{
			// Handle each delivered batch in the transaction that stores
			// it; a batch holding a poison order falls back to the workers.
			Inline:       true,
			PollInterval: 100 * time.Millisecond,
			MaxAttempts:  o.MaxAttempts,
			// Short and fixed, so that the poison orders reach the dead
			// letters within the demo's seconds (the default starts at 2 s
			// and doubles).
			Backoff: func(attempt int) time.Duration { return time.Duration(attempt) * 100 * time.Millisecond },
		},
		Logger: log,
	})
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	insertInvoice := fmt.Sprintf(`INSERT INTO invoices (message_id, order_id, amount_cents, committed_ns, started_ns, attempt) VALUES (%s, %s, %s, %s, %s, %s)`,
		b.placeholder(1), b.placeholder(2), b.placeholder(3), b.placeholder(4), b.placeholder(5), b.placeholder(6))
	mux.Handle(demoTopic, inbox.JSON(func(ctx context.Context, tx TTx, m *inbox.Message, ord Order) error {
		started := time.Now().UnixNano()
		if ord.Poison {
			return fmt.Errorf("order %d: card declined (a poison order: it fails on every attempt)", ord.ID)
		}
		committed, _ := strconv.ParseInt(m.Headers[demoCommitHeader], 10, 64)
		return b.Exec(ctx, tx, insertInvoice, m.ID, ord.ID, ord.AmountCents, committed, started, m.Attempt)
	}))
	orders, err := lib.NewNode(b.Orders, &lib.Config[TTx]{
		Name:   "orders",
		Peers:  map[string]lib.Peer{"billing": {Addr: ln.Addr().String()}},
		Secret: secret,
		Relay:  outbox.RelayConfig{PollInterval: 100 * time.Millisecond},
		Logger: log,
	})
	if err != nil {
		_ = ln.Close()
		return nil, err
	}

	// The nodes run until the exchange is over (or fails), then stop
	// gracefully before the results are read.
	nodeCtx, stopNodes := context.WithCancel(context.WithoutCancel(parent))
	defer stopNodes()
	nodeErr := make(chan error, 2)
	var nodes sync.WaitGroup
	for _, n := range []interface{ Run(context.Context) error }{billing, orders} {
		nodes.Go(func() { nodeErr <- n.Run(nodeCtx) })
	}
	stop := func() error {
		stopNodes()
		nodes.Wait()
		close(nodeErr)
		var first error
		for err := range nodeErr {
			// A node stopped while starting reports the cancellation
			// (Node.Run returns its schema check's error).
			if err != nil && first == nil && !errors.Is(err, context.Canceled) {
				first = err
			}
		}
		return first
	}

	ctx, cancel := context.WithTimeout(parent, o.MaxTime)
	defer cancel()
	n := o.Messages
	poison := poisonCount(n, o.PoisonRate)
	var committed atomic.Int64
	start := time.Now()

	// Enqueuers: each takes the next transaction's share of the orders.
	insertOrders := func(rows int) string {
		var q strings.Builder
		q.WriteString("INSERT INTO orders (id, message_id, customer, amount_cents, poison, committed_ns) VALUES ")
		for r := range rows {
			if r > 0 {
				q.WriteString(", ")
			}
			q.WriteByte('(')
			for c := range 6 {
				if c > 0 {
					q.WriteString(", ")
				}
				q.WriteString(b.placeholder(r*6 + c + 1))
			}
			q.WriteByte(')')
		}
		return q.String()
	}
	place := func(lo, hi int) (err error) {
		tx, err := b.Orders.Begin(ctx)
		if err != nil {
			return err
		}
		committedTx := false
		defer func() {
			if !committedTx {
				_ = b.Orders.Rollback(context.WithoutCancel(ctx), tx)
			}
		}()
		stamp := time.Now().UnixNano()
		ords := make([]Order, 0, hi-lo)
		msgs := make([]*outbox.Message, 0, hi-lo)
		for i := lo; i < hi; i++ {
			ord := Order{
				ID:          int64(i + 1),
				Customer:    fmt.Sprintf("customer-%03d", i%997),
				AmountCents: int64(500 + (i*7919)%50_000),
				Poison:      isPoison(i, n, poison),
			}
			payload, err := json.Marshal(ord)
			if err != nil {
				return err
			}
			ords = append(ords, ord)
			msgs = append(msgs, &outbox.Message{
				Destination: "billing",
				Topic:       demoTopic,
				Headers:     map[string]string{demoCommitHeader: strconv.FormatInt(stamp, 10)},
				Payload:     payload,
			})
		}
		// Enqueue first so that the orders rows can record the message ids
		// Enqueue assigns; both are in tx, so the order does not matter.
		if err := orders.Enqueue(ctx, tx, msgs...); err != nil {
			return fmt.Errorf("enqueue: %w", err)
		}
		args := make([]any, 0, 6*len(ords))
		for i, ord := range ords {
			poisonFlag := 0
			if ord.Poison {
				poisonFlag = 1
			}
			args = append(args, ord.ID, msgs[i].ID, ord.Customer, ord.AmountCents, poisonFlag, stamp)
		}
		if err := b.Exec(ctx, tx, insertOrders(len(ords)), args...); err != nil {
			return fmt.Errorf("insert orders: %w", err)
		}
		if err := b.Orders.Commit(ctx, tx); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		committedTx = true
		committed.Add(int64(hi - lo))
		return nil
	}
	txs := (n + o.TxSize - 1) / o.TxSize
	var nextTx atomic.Int64
	enqDone := make(chan error, 1)
	go func() {
		var wg sync.WaitGroup
		errs := make(chan error, o.Enqueuers)
		for range o.Enqueuers {
			wg.Go(func() {
				for {
					k := int(nextTx.Add(1) - 1)
					if k >= txs || ctx.Err() != nil {
						return
					}
					lo := k * o.TxSize
					if err := place(lo, min(n, lo+o.TxSize)); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		enqDone <- <-errs // nil when none failed
	}()

	// Watch billing's database until every committed order is handled or
	// dead-lettered.
	var (
		enqueueEnd time.Time
		runErr     error
		timedOut   bool
	)
	enqRunning := true
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	watch := func() (handled, dead int64, err error) {
		err = b.Reads[1].QueryRowContext(ctx, `SELECT
	(SELECT count(*) FROM durable_inbox WHERE state = 'handled'),
	(SELECT count(*) FROM durable_dead_letters WHERE side = 'inbox')`).Scan(&handled, &dead)
		return handled, dead, err
	}
	ended := func() { // ctx ended: interrupted, or out of time
		if parent.Err() != nil {
			runErr = errors.New("interrupted")
		} else {
			timedOut = true
		}
	}
loop:
	for {
		select {
		case <-ctx.Done():
			ended()
			break loop
		case err := <-nodeErr:
			if err == nil {
				err = errors.New("stopped early")
			}
			runErr = fmt.Errorf("a node stopped: %w", err)
			nodeErr <- nil // stop counts every node
			break loop
		case err := <-enqDone:
			enqRunning = false
			enqueueEnd = time.Now()
			if err != nil && ctx.Err() != nil {
				ended()
				break loop
			}
			if err != nil {
				runErr = fmt.Errorf("placing orders: %w", err)
				break loop
			}
		case <-tick.C:
		}
		handled, dead, err := watch()
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			runErr = fmt.Errorf("reading billing's progress: %w", err)
			break loop
		}
		c := committed.Load()
		p.update(c, int64(n), handled, dead, time.Since(start))
		if !enqRunning && handled+dead >= c {
			break loop
		}
	}
	if enqRunning {
		cancel()
		<-enqDone
	}
	total := time.Since(start)
	stopErr := stop()
	p.Clear()
	if runErr != nil {
		return nil, runErr
	}
	if stopErr != nil {
		return nil, stopErr
	}

	rctx, rcancel := context.WithTimeout(context.WithoutCancel(parent), time.Minute)
	defer rcancel()
	s, err := collectDemo(rctx, b)
	if err != nil {
		return nil, fmt.Errorf("reading the results: %w", err)
	}
	s.Dialect = b.Kind
	s.Where = b.Where
	s.Files = b.Files
	s.Schemas = b.Schemas
	s.Inspect = b.Inspect
	s.Messages = n
	s.Poison = poison
	s.Enqueuers = o.Enqueuers
	s.TxSize = o.TxSize
	s.Transactions = txs
	s.MaxAttempts = o.MaxAttempts
	s.TimedOut = timedOut
	s.EnqueueSeconds = enqueueEnd.Sub(start).Seconds()
	if enqueueEnd.IsZero() {
		s.EnqueueSeconds = 0
	}
	s.TotalSeconds = total.Seconds()
	s.OK = s.Lost == 0 && s.DuplicateEffects == 0 && s.UnexpectedEffects == 0 && !timedOut
	return s, nil
}

// collectDemo reads the outcome from both databases once the nodes stopped.
// Duplicates are counted by SQL on the effect table; lost and unexpected
// messages by comparing the two databases' message ids.
func collectDemo[TTx any](ctx context.Context, b *Backend[TTx]) (*Summary, error) {
	ordersDB, billingDB := b.Reads[0], b.Reads[1]
	s := &Summary{}

	// orders: every committed order and its message.
	orderIDs := make(map[string]bool)
	var firstCommit int64
	err := queryRows(ctx, ordersDB, `SELECT message_id, committed_ns FROM orders`, func(r *sql.Rows) error {
		var id string
		var ns int64
		if err := r.Scan(&id, &ns); err != nil {
			return err
		}
		orderIDs[id] = true
		if firstCommit == 0 || ns < firstCommit {
			firstCommit = ns
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.Enqueued = int64(len(orderIDs))
	if err := ordersDB.QueryRowContext(ctx, `SELECT count(*) FROM durable_outbox WHERE sent_at IS NULL`).Scan(&s.OutboxUnsent); err != nil {
		return nil, err
	}
	dead := make(map[string]bool)
	// The sending side's dead letters (rejected or expired before sending):
	// none are expected, but such a message is not lost.
	err = queryRows(ctx, ordersDB, `SELECT id FROM durable_dead_letters WHERE side = 'outbox'`, func(r *sql.Rows) error {
		var id string
		err := r.Scan(&id)
		dead[id] = true
		s.DeadLetteredOutbox++
		return err
	})
	if err != nil {
		return nil, err
	}

	// billing: the inbox, the dead letters and the effects.
	if err := billingDB.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(CASE WHEN state = 'handled' THEN 1 ELSE 0 END), 0) FROM durable_inbox WHERE source = 'orders'`).
		Scan(&s.Delivered, &s.Handled); err != nil {
		return nil, err
	}
	err = queryRows(ctx, billingDB, `SELECT id, attempts FROM durable_dead_letters WHERE side = 'inbox' AND source = 'orders'`, func(r *sql.Rows) error {
		var id string
		var attempts int64
		if err := r.Scan(&id, &attempts); err != nil {
			return err
		}
		dead[id] = true
		s.DeadLettered++
		s.FailedAttempts += attempts
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.Delivered += s.DeadLettered // dead letters left the inbox table
	s.DeadLettered += s.DeadLetteredOutbox
	if err := billingDB.QueryRowContext(ctx, `SELECT count(*) FROM (SELECT message_id FROM invoices GROUP BY message_id HAVING count(*) > 1) AS d`).
		Scan(&s.DuplicateEffects); err != nil {
		return nil, err
	}
	effects := make(map[string]bool)
	var latencies []int64
	var lastStarted int64
	err = queryRows(ctx, billingDB, `SELECT message_id, committed_ns, started_ns FROM invoices`, func(r *sql.Rows) error {
		var id string
		var committed, started int64
		if err := r.Scan(&id, &committed, &started); err != nil {
			return err
		}
		s.Effects++
		effects[id] = true
		if !orderIDs[id] {
			s.UnexpectedEffects++
		}
		latencies = append(latencies, max(0, started-committed))
		lastStarted = max(lastStarted, started)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for id := range orderIDs {
		if !effects[id] && !dead[id] {
			s.Lost++
		}
	}
	if s.Effects > 0 && lastStarted > firstCommit {
		span := time.Duration(lastStarted - firstCommit)
		s.ThroughputSeconds = span.Seconds()
		s.Throughput = float64(len(effects)) / span.Seconds()
	}
	slices.Sort(latencies)
	s.LatencyP50MS = percentileMS(latencies, 0.50)
	s.LatencyP99MS = percentileMS(latencies, 0.99)
	if len(latencies) > 0 {
		s.LatencyMaxMS = float64(latencies[len(latencies)-1]) / 1e6
	}
	return s, nil
}

func queryRows(ctx context.Context, db *sql.DB, q string, each func(*sql.Rows) error) error {
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := each(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// percentileMS is the nearest-rank percentile of sorted nanoseconds, in
// milliseconds; 0 when there are none.
func percentileMS(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	return float64(sorted[min(max(i, 0), len(sorted)-1)]) / 1e6
}
