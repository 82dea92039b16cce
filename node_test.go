package durable_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/internal/testport"
	"github.com/durable-go/durable/migrations"
	"github.com/durable-go/durable/outbox"
)

// TestMain fails the run if goroutines outlive the tests. goleak.VerifyTestMain retries for
// well under a second, which a loaded machine can need just to schedule the goroutines that a
// test's cleanup told to end; this waits up to 30s for them before it reports a leak.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := goleak.Find()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "goleak: goroutines still running 30s after the tests ended: %v\n", err)
				code = 1
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	os.Exit(code)
}

// countLog counts the log records whose message contains sub.
type countLog struct {
	sub string
	mu  sync.Mutex
	n   int
}

func (l *countLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *countLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *countLog) WithGroup(string) slog.Handler            { return l }
func (l *countLog) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, l.sub) {
		l.mu.Lock()
		l.n++
		l.mu.Unlock()
	}
	return nil
}

func (l *countLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

var secret = []byte("node-test-secret")

func openSQLite(t *testing.T) (*sql.DB, *sqlite.Dialect) {
	t.Helper()
	db, err := sql.Open("sqlite", sqlite.DSN(testdb.SQLitePath(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	for _, stmt := range testdb.UpSQL(t, migrations.SQLite) {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return db, d
}

// openPostgres is postgres.New(pool, nil), failing t on an error.
func openPostgres(t *testing.T, pool *pgxpool.Pool) *postgres.Dialect {
	t.Helper()
	d, err := postgres.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func listener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// fastConfig shortens the polling and retry intervals for tests, and lengthens the timeouts
// of legitimate work (handshakes, sends) so that a loaded machine does not make a test's run
// differ from the one it counts on (a send that times out is sent again, for one).
func fastConfig[TTx any](c durable.Config[TTx]) *durable.Config[TTx] {
	c.Secret = secret
	c.Relay.PollInterval = 50 * time.Millisecond
	c.Inbox.PollInterval = 50 * time.Millisecond
	c.Inbox.Backoff = func(int) time.Duration { return 10 * time.Millisecond }
	c.Inbox.MaxAttempts = 3
	if c.Relay.SendTimeout == 0 && c.Relay.Lease == 0 {
		c.Relay.SendTimeout, c.Relay.Lease = time.Minute, 2*time.Minute
	}
	if c.Client.HandshakeTimeout == 0 {
		c.Client.HandshakeTimeout = time.Minute
	}
	if c.Server.AuthTimeout == 0 {
		c.Server.AuthTimeout = time.Minute
	}
	return &c
}

// runNode runs n until the test ends and fails the test if Run fails.
func runNode[TTx any](t *testing.T, n *durable.Node[TTx]) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Node.Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Node.Run did not return after cancel")
		}
	})
}

func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNodeSQLite: two services on their own SQLite files exchange messages
// through real TCP; every business row gets exactly one effect row, the
// poison message ends in billing's dead letters, nothing is left in flight.
func TestNodeSQLite(t *testing.T) {
	const n = 300 // SQLite under -race is slow (modernc runs with checkptr); the count is not the point here
	ordersDB, ordersD := openSQLite(t)
	billingDB, billingD := openSQLite(t)
	for _, db := range []*sql.DB{ordersDB, billingDB} {
		if _, err := db.Exec(`CREATE TABLE orders (id INTEGER PRIMARY KEY); CREATE TABLE effects (message_id TEXT NOT NULL, order_id INTEGER NOT NULL)`); err != nil {
			t.Fatal(err)
		}
	}
	ln := listener(t)
	billingMux := inbox.NewMux[*sql.Tx]()
	billing, err := durable.NewNode(billingD, fastConfig(durable.Config[*sql.Tx]{Handler: billingMux, Name: "billing", Listener: ln}))
	if err != nil {
		t.Fatal(err)
	}
	billingMux.HandleFunc("order.placed", func(ctx context.Context, tx *sql.Tx, m *inbox.Message) error {
		if string(m.Payload) == "poison" {
			return errors.New("cannot bill a poison order")
		}
		var id int
		if _, err := fmt.Sscan(string(m.Payload), &id); err != nil {
			return inbox.Permanent(err)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO effects (message_id, order_id) VALUES (?, ?)`, m.ID, id)
		return err
	})
	orders, err := durable.NewNode(ordersD, fastConfig(durable.Config[*sql.Tx]{
		Name:  "orders",
		Peers: map[string]durable.Peer{"billing": {Addr: ln.Addr().String()}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	runNode(t, billing)
	runNode(t, orders)

	ctx := context.Background()
	for i := range n + 1 {
		tx, err := ordersDB.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		payload := fmt.Sprint(i)
		if i == n {
			payload = "poison"
		}
		if _, err := tx.Exec(`INSERT INTO orders (id) VALUES (?)`, i); err != nil {
			t.Fatal(err)
		}
		if err := orders.Enqueue(ctx, tx, &outbox.Message{Destination: "billing", Topic: "order.placed", Payload: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if err := orders.Enqueue(ctx, nil, &outbox.Message{Destination: "nowhere", Topic: "x"}); !errors.Is(err, outbox.ErrUnknownDestination) {
		t.Fatalf("Enqueue to a destination that is not a peer = %v, want ErrUnknownDestination", err)
	}

	count := func(db *sql.DB, q string) (int, error) {
		var c int
		err := db.QueryRow(q).Scan(&c)
		return c, err
	}
	waitFor(t, "every order billed and the poison dead-lettered", func() (bool, error) {
		effects, err := count(billingDB, `SELECT count(*) FROM effects`)
		if err != nil {
			return false, err
		}
		dead, err := count(billingDB, `SELECT count(*) FROM durable_dead_letters`)
		return effects == n && dead == 1, err
	})
	if c, _ := count(billingDB, `SELECT count(*) FROM (SELECT message_id FROM effects GROUP BY message_id HAVING count(*) > 1)`); c != 0 {
		t.Fatalf("%d messages had more than one effect", c)
	}
	if c, _ := count(billingDB, `SELECT count(DISTINCT order_id) FROM effects`); c != n {
		t.Fatalf("%d distinct orders billed, want %d", c, n)
	}
	waitFor(t, "the outbox to empty", func() (bool, error) {
		c, err := count(ordersDB, `SELECT count(*) FROM durable_outbox`)
		return c == 0, err
	})
	dl, err := billing.Inbox().DeadLetters(ctx, inbox.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 1 || string(dl[0].Payload) != "poison" || dl[0].Source != "orders" || dl[0].Attempts != 3 {
		t.Fatalf("dead letters = %+v, want the poison message from orders after 3 attempts", dl)
	}
}

// TestNodePostgres: the same exchange between two schemas of the test server,
// with pgx pools.
func TestNodePostgres(t *testing.T) {
	const n = 1000
	ordersPool, _ := testdb.PostgresPool(t, true)
	billingPool, _ := testdb.PostgresPool(t, true)
	ctx := context.Background()
	if _, err := billingPool.Exec(ctx, `CREATE TABLE effects (message_id text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	ln := listener(t)
	billingMux := inbox.NewMux[pgx.Tx]()
	billing, err := durable.NewNode(openPostgres(t, billingPool), fastConfig(durable.Config[pgx.Tx]{Handler: billingMux, Name: "billing", Listener: ln}))
	if err != nil {
		t.Fatal(err)
	}
	billingMux.HandleFunc("order.placed", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		_, err := tx.Exec(ctx, `INSERT INTO effects (message_id) VALUES ($1)`, m.ID)
		return err
	})
	cfg := fastConfig(durable.Config[pgx.Tx]{
		Name:  "orders",
		Peers: map[string]durable.Peer{"billing": {Addr: ln.Addr().String()}},
	})
	cfg.Outbox.Notify = true
	orders, err := durable.NewNode(openPostgres(t, ordersPool), cfg)
	if err != nil {
		t.Fatal(err)
	}
	runNode(t, billing)
	runNode(t, orders)

	var ids []string
	for range n / 100 {
		tx, err := ordersPool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		msgs := make([]*outbox.Message, 100)
		for i := range msgs {
			msgs[i] = &outbox.Message{Destination: "billing", Topic: "order.placed", Payload: []byte("x")}
		}
		if err := orders.Enqueue(ctx, tx, msgs...); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			ids = append(ids, m.ID)
		}
	}
	waitFor(t, "every message handled", func() (bool, error) {
		var c int
		err := billingPool.QueryRow(ctx, `SELECT count(*) FROM effects`).Scan(&c)
		return c >= n, err
	})
	var distinct, total, matched int
	if err := billingPool.QueryRow(ctx, `SELECT count(DISTINCT message_id), count(*), count(*) FILTER (WHERE message_id = ANY($1)) FROM effects`, ids).Scan(&distinct, &total, &matched); err != nil {
		t.Fatal(err)
	}
	if distinct != n || total != n || matched != n {
		t.Fatalf("effects: %d distinct, %d total, %d of the enqueued ids; want %d each", distinct, total, matched, n)
	}
	var source string
	if err := billingPool.QueryRow(ctx, `SELECT DISTINCT source FROM durable_inbox`).Scan(&source); err != nil || source != "orders" {
		t.Fatalf("inbox source = %q (%v), want orders", source, err)
	}
}

// TestNodeConfig: configuration mistakes are refused up front.
func TestNodeConfig(t *testing.T) {
	_, d := openSQLite(t)
	cases := []struct {
		name string
		cfg  durable.Config[*sql.Tx]
	}{
		{"no name", durable.Config[*sql.Tx]{}},
		{"peer without address", durable.Config[*sql.Tx]{Name: "a", Secret: secret, Peers: map[string]durable.Peer{"b": {}}}},
		{"listener without authentication", durable.Config[*sql.Tx]{Name: "a", Listen: "127.0.0.1:0"}},
	}
	for _, c := range cases {
		if _, err := durable.NewNode[*sql.Tx](d, &c.cfg); err == nil {
			t.Errorf("%s: NewNode succeeded", c.name)
		}
	}
	if _, err := durable.NewNode[*sql.Tx](nil, &durable.Config[*sql.Tx]{Name: "a"}); err == nil {
		t.Error("nil dialect accepted")
	}
	// A receive-only node refuses to enqueue.
	n, err := durable.NewNode(d, &durable.Config[*sql.Tx]{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enqueue(context.Background(), nil, &outbox.Message{Destination: "b", Topic: "t"}); !errors.Is(err, durable.ErrNoPeers) {
		t.Fatalf("Enqueue on a node without peers = %v, want ErrNoPeers", err)
	}
}

// TestNodeUnmigrated: Run refuses a database without the schema, naming the
// migration.
func TestNodeUnmigrated(t *testing.T) {
	db, err := sql.Open("sqlite", sqlite.DSN(testdb.SQLitePath(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := durable.NewNode(d, &durable.Config[*sql.Tx]{Name: "a", Listener: listener(t), Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Run(context.Background()); !errors.Is(err, dialects.ErrSchema) {
		t.Fatalf("Run on an unmigrated database = %v, want ErrSchema", err)
	}
}

// TestNodeCancelledWhileStarting: a Run whose context ends before it got
// going is a graceful stop, not an error.
func TestNodeCancelledWhileStarting(t *testing.T) {
	_, d := openSQLite(t)
	n, err := durable.NewNode(d, &durable.Config[*sql.Tx]{Name: "a", Listener: listener(t), Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := n.Run(ctx); err != nil {
		t.Fatalf("Run with a cancelled context = %v, want nil", err)
	}
}

// forward accepts on ln and pipes every connection to target, until the
// test ends.
func forward(t *testing.T, ln net.Listener, target string) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	closed := false
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			// A connection accepted while the cleanup closes the others
			// (the pool's health check dials at any time) is closed here,
			// or its copies would never end.
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				u.Close()
				return
			}
			conns = append(conns, c, u)
			wg.Go(func() { _, _ = io.Copy(u, c); u.Close() })
			wg.Go(func() { _, _ = io.Copy(c, u); c.Close() })
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// TestNodeWaitsForDatabase: a node started while its database does not
// answer (connection refused) waits, reports not ready, and starts once
// the database answers, without Run returning.
func TestNodeWaitsForDatabase(t *testing.T) {
	connURL, _ := testdb.PostgresSchema(t)
	testdb.OpenPostgres(t, connURL, true) // migrate through the real address
	real, err := url.Parse(connURL)
	if err != nil {
		t.Fatal(err)
	}
	// A port nobody listens on yet: the database "is down".
	late := testport.Reserve(t)
	viaLate := *real
	viaLate.Host = late.Addr()
	pool := testdb.OpenPostgres(t, viaLate.String(), false)

	waits := &countLog{sub: "the database does not answer"}
	n, err := durable.NewNode(openPostgres(t, pool), fastConfig(durable.Config[pgx.Tx]{Name: "late", Listener: listener(t), Logger: slog.New(waits)}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()

	waitFor(t, "a few failed checks", func() (bool, error) { return waits.count() >= 3, nil })
	select {
	case err := <-done:
		t.Fatalf("Run returned while the database was down: %v", err)
	default:
	}
	h := n.Health(ctx)
	if h.Err == nil || h.Checks[durable.CheckDatabase] == "ok" || n.Addr() != nil {
		t.Fatalf("while the database is down: health %+v, addr %v; want the database check failing and no listener yet", h.Checks, n.Addr())
	}

	// The database comes up at the address.
	up, err := late.Listen()
	if err != nil {
		t.Fatalf("listening on %s: %v", late.Addr(), err)
	}
	forward(t, up, real.Host)
	waitFor(t, "the node to be ready", func() (bool, error) {
		return n.Ready(ctx) == nil, nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v after a graceful stop", err)
	}
}

// TestNodeStartTimeout: with StartTimeout, Run gives up on a database that
// does not answer and returns the last error.
func TestNodeStartTimeout(t *testing.T) {
	pool, _ := testdb.UnreachablePostgres(t)
	cfg := fastConfig(durable.Config[pgx.Tx]{Name: "a", Listener: listener(t), StartTimeout: 300 * time.Millisecond})
	n, err := durable.NewNode(openPostgres(t, pool), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Run's own context only bounds a hang: a Run that ignored StartTimeout would end with it
	// and return nil (a graceful stop), not the refused connection.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	err = n.Run(ctx)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Run = %v, want the refused connection", err)
	}
	// The lower bound is exact; the upper one leaves a loaded machine room.
	if d := time.Since(start); d < 300*time.Millisecond || d > 30*time.Second {
		t.Fatalf("Run gave up after %v, want about StartTimeout", d)
	}
}

// TestNodeWrongDatabase: an answer that is an error (here: the database does
// not exist) ends Run at once; waiting would not help.
func TestNodeWrongDatabase(t *testing.T) {
	base, err := url.Parse(testdb.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	base.Path = "/durable_no_such_database"
	pool := testdb.OpenPostgres(t, base.String(), false)
	waits := &countLog{sub: "the database does not answer"}
	n, err := durable.NewNode(openPostgres(t, pool), fastConfig(durable.Config[pgx.Tx]{Name: "a", Listener: listener(t), Logger: slog.New(waits)}))
	if err != nil {
		t.Fatal(err)
	}
	// Run's own context only bounds a hang: a Run that kept waiting would end with it and
	// return nil (a graceful stop), not the answer.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	err = n.Run(ctx)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "3D000" {
		t.Fatalf("Run = %v, want the server's 3D000 (database does not exist)", err)
	}
	// "At once" is counted in attempts, not in time: not one retry.
	if w := waits.count(); w != 0 {
		t.Fatalf("Run waited for the database %d times before returning its answer, want at once", w)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("Run took %v to return an answer, want at once", d)
	}
}
