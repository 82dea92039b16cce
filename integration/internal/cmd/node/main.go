// Command node is the service the fault suite runs as a subprocess: a durable
// Node on SQLite or Postgres, in one of two roles.
//
// As a sender (-role sender, node name "orders") it relays its outbox to the
// peer "billing" at -peer (one connection), or over the instances listed in
// -peers (comma-separated; durable.Peer.Addrs, a tcp.Balancer), and, at -rate transactions per second, writes one
// business row into the orders table and enqueues one message in the same
// transaction. After each commit returns it prints "C <id>", after a
// deliberate rollback "R <id>", and after a commit whose outcome is unknown
// (the connection broke during COMMIT) "U <id>". The orders table is the
// truth the test checks against: a message exists iff its row committed.
//
// As a receiver (-role receiver, node name "billing") it listens on -listen
// and handles topic "order.placed": the handler writes an effect row
// (effects table, no unique constraint, so a double effect shows; its
// handled_by column names the instance, -instance), then may
// fail on purpose (-fail), which must roll the effect back, or hang past the
// inbox's lease and at times its handler timeout (-stuck), panic (-panic), or
// run a failing statement and return nil anyway (-swallow); a poison message
// writes its effect and then fails permanently, so it must end in the dead
// letters with no effect; a killer message ({"kill":true}) makes the handler
// SIGKILL the process after writing its effect, every time it is handled
// ("DIE killer <id>"). For messages with an ordering key the handler
// also records the key's last sequence number and writes a row into
// order_violations when a message arrives after a later one of its key.
//
// SIGUSR1 arms a crash at an exact point of the application's code: a
// sender kills itself (SIGKILL) right after its next COMMIT returned, before
// the relay could send the message ("DIE after-commit <id>"); a receiver
// kills itself inside its next handler call, after the effect was written
// and before the inbox completes the message ("DIE in-handler <id>").
//
// The fault suite builds it with the tag durable_crashpoints, which turns
// on the library's own crash points: DURABLE_CRASHPOINT=name:N in its
// environment makes it print "CRASHPOINT <name>" on stderr and SIGKILL
// itself the N-th time the library gets to the point (see
// internal/crashpoint).
//
// The test creates the tables and runs the migrations; this program only
// opens the database. It prints "READY ..." once it runs, and keeps running
// through database outages: a Node whose Run fails is built again.
// SIGTERM or SIGINT stops it gracefully.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport/tcp"
)

// Topic is the topic of every message.
const Topic = "order.placed"

// Payload is the body of every message.
type Payload struct {
	Seq    int64  `json:"seq"`              // per key (or per writer) sequence number
	Poison bool   `json:"poison,omitempty"` // the handler fails permanently
	Kill   bool   `json:"kill,omitempty"`   // the handler kills the process, every time
	Writer string `json:"writer"`           // the enqueue goroutine that wrote it
}

type options struct {
	role, dialect, dsn, name string
	listen, peer, secret     string
	peers, instance          string
	rate                     float64
	writers                  int
	seed                     uint64
	rollback, poison, keyed  float64
	fail, stuck, swallow     float64
	panics                   float64
	slow                     time.Duration
	inline                   string
	maxAttempts, batch       int
	verbose                  bool
	defaults                 bool
}

func main() {
	var o options
	flag.StringVar(&o.role, "role", "", "sender or receiver")
	flag.StringVar(&o.dialect, "dialect", "sqlite", "sqlite or postgres")
	flag.StringVar(&o.dsn, "dsn", "", "SQLite file path or Postgres URL")
	flag.StringVar(&o.name, "name", "", "node name (default: orders for a sender, billing for a receiver)")
	flag.StringVar(&o.listen, "listen", "127.0.0.1:0", "receiver: listen address")
	flag.StringVar(&o.peer, "peer", "", "sender: address of the billing peer")
	flag.StringVar(&o.peers, "peers", "", "sender: addresses of the billing peer's instances, comma-separated (instead of -peer)")
	flag.StringVar(&o.instance, "instance", "", "receiver: the instance's name, recorded with each effect")
	flag.StringVar(&o.secret, "secret", "fault-suite-secret", "shared secret")
	flag.Float64Var(&o.rate, "rate", 0, "sender: transactions per second in all (0: only relay)")
	flag.IntVar(&o.writers, "writers", 1, "sender: enqueue goroutines")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the random choices")
	flag.Float64Var(&o.rollback, "rollback", 0.03, "sender: share of transactions rolled back after Enqueue")
	flag.Float64Var(&o.poison, "poison", 0.01, "sender: share of poison messages")
	flag.Float64Var(&o.keyed, "keyed", 0.3, "sender: share of messages with an ordering key")
	flag.Float64Var(&o.fail, "fail", 0.03, "receiver: share of handler calls that fail after writing the effect")
	flag.DurationVar(&o.slow, "slow", 4*time.Millisecond, "receiver: longest random pause in the handler")
	flag.Float64Var(&o.swallow, "swallow", 0.01, "receiver: share of handler calls that run a failing statement, ignore the error and return nil")
	flag.Float64Var(&o.panics, "panic", 0.005, "receiver: share of handler calls that panic after writing the effect")
	flag.Float64Var(&o.stuck, "stuck", 0, "receiver: share of handler calls that hang for 3 to 6s, past the inbox lease (3s) and at times the handler timeout (5s)")
	flag.StringVar(&o.inline, "inline", "seed", "receiver: inline handling on, off, or seed (on for even seeds)")
	flag.IntVar(&o.maxAttempts, "max-attempts", 100, "receiver: inbox MaxAttempts")
	flag.IntVar(&o.batch, "batch", 0, "receiver: inbox BatchSize (0: the default)")
	flag.BoolVar(&o.verbose, "v", false, "log at debug level")
	flag.BoolVar(&o.defaults, "defaults", false, "keep the library's default timings (leases, polling, timeouts, backoff) instead of the suite's short ones")
	flag.Parse()
	if o.name == "" {
		o.name = map[string]string{"sender": "orders", "receiver": "billing"}[o.role]
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(1)
	}
}

// db is what the roles need of a dialect's transaction type.
type db[TTx any] struct {
	d        dialects.Dialect[TTx]
	exec     func(ctx context.Context, tx TTx, q string, args ...any) error
	queryInt func(ctx context.Context, tx TTx, q string, args ...any) (int64, bool, error)
	// uncertain reports whether a failed commit may have committed.
	uncertain func(err error) bool
	notify    bool
	close     func()
}

func run(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	armOnSIGUSR1()
	switch o.dialect {
	case "sqlite":
		d, err := openSQLite(o.dsn)
		if err != nil {
			return err
		}
		defer d.close()
		return serve(ctx, o, log, d)
	case "postgres":
		d, err := openPostgres(ctx, o.dsn)
		if err != nil {
			return err
		}
		defer d.close()
		return serve(ctx, o, log, d)
	}
	return fmt.Errorf("unknown dialect %q", o.dialect)
}

func openSQLite(path string) (*db[*sql.Tx], error) {
	sdb, err := sql.Open("sqlite", sqlite.DSN(path))
	if err != nil {
		return nil, err
	}
	// New probes the settings inside a write transaction, so it fails with
	// SQLITE_BUSY while another process holds the write lock longer than
	// the busy timeout (a hanging handler does): try again, as a supervisor
	// restarting the service would.
	var d *sqlite.Dialect
	for start := time.Now(); ; {
		if d, err = sqlite.New(sdb, nil); err == nil {
			break
		}
		if time.Since(start) > time.Minute {
			sdb.Close()
			return nil, err
		}
		printLine("OPEN-RETRY %s", oneLine(err))
		time.Sleep(100 * time.Millisecond)
	}
	return &db[*sql.Tx]{
		d: d,
		exec: func(ctx context.Context, tx *sql.Tx, q string, args ...any) error {
			_, err := tx.ExecContext(ctx, q, args...)
			return err
		},
		queryInt: func(ctx context.Context, tx *sql.Tx, q string, args ...any) (int64, bool, error) {
			var v int64
			err := tx.QueryRowContext(ctx, q, args...).Scan(&v)
			if errors.Is(err, sql.ErrNoRows) {
				return 0, false, nil
			}
			return v, err == nil, err
		},
		// A process-local file: COMMIT either happened or returned an error.
		uncertain: func(error) bool { return false },
		close:     func() { sdb.Close() },
	}, nil
}

func openPostgres(ctx context.Context, url string) (*db[pgx.Tx], error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 12
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	d, err := postgres.New(pool, nil)
	if err != nil {
		return nil, err
	}
	return &db[pgx.Tx]{
		d: d,
		exec: func(ctx context.Context, tx pgx.Tx, q string, args ...any) error {
			_, err := tx.Exec(ctx, q, args...)
			return err
		},
		queryInt: func(ctx context.Context, tx pgx.Tx, q string, args ...any) (int64, bool, error) {
			var v int64
			err := tx.QueryRow(ctx, q, args...).Scan(&v)
			if errors.Is(err, pgx.ErrNoRows) {
				return 0, false, nil
			}
			return v, err == nil, err
		},
		// The connection may break after the server committed and before
		// it answered; only an error from the server itself is certain.
		uncertain: func(err error) bool {
			var pgErr interface{ SQLState() string }
			return !errors.As(err, &pgErr)
		},
		notify: true,
		close:  pool.Close,
	}, nil
}

// out serializes the lines the test parses.
var out sync.Mutex

// dieNext is armed by SIGUSR1: see the package documentation.
var dieNext atomic.Bool

// die prints why and kills this process at once: no deferred function, no
// graceful anything.
func die(where, id string) {
	printLine("DIE %s %s", where, id)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}

func armOnSIGUSR1() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1)
	go func() {
		for range ch {
			dieNext.Store(true)
		}
	}()
}

func printLine(format string, args ...any) {
	out.Lock()
	fmt.Printf(format+"\n", args...)
	out.Unlock()
}

func serve[TTx any](ctx context.Context, o options, log *slog.Logger, d *db[TTx]) error {
	cfg := durable.Config[TTx]{
		Name:            o.name,
		Secret:          []byte(o.secret),
		Logger:          log,
		ShutdownTimeout: 3 * time.Second,
	}
	// Timings short enough that a killed process's leases expire and a
	// stalled connection is given up within seconds.
	// The leases name the process, so that the test can tell what a killed
	// process was holding.
	cfg.Relay = outbox.RelayConfig{
		ID:           fmt.Sprintf("%s-%d", o.name, os.Getpid()),
		PollInterval: 200 * time.Millisecond,
		Lease:        4 * time.Second,
		SendTimeout:  2 * time.Second,
		RetryMin:     20 * time.Millisecond,
		RetryMax:     500 * time.Millisecond,
		DrainTimeout: time.Second,
	}
	cfg.Outbox.Notify = d.notify
	cfg.Client.DialTimeout = time.Second
	cfg.Client.HandshakeTimeout = time.Second
	cfg.Client.WriteTimeout = time.Second
	cfg.Client.ReadTimeout = 2 * time.Second
	cfg.Client.PingInterval = 500 * time.Millisecond
	cfg.Client.AckTimeout = 2 * time.Second
	cfg.Client.BackoffMin = 20 * time.Millisecond
	cfg.Client.BackoffMax = 300 * time.Millisecond
	cfg.Server.AuthTimeout = 2 * time.Second
	cfg.Server.IdleTimeout = 5 * time.Second
	cfg.Server.WriteTimeout = time.Second
	cfg.Inbox = inbox.Config{
		Name:           fmt.Sprintf("%s-%d", o.name, os.Getpid()),
		PollInterval:   200 * time.Millisecond,
		HandlerTimeout: 5 * time.Second,
		MaxAttempts:    o.maxAttempts, // 100 by default: transient failures never exhaust it; only poison dead-letters
		BatchSize:      o.batch,
		Backoff:        func(int) time.Duration { return time.Duration(10+rand.IntN(40)) * time.Millisecond },
		Lease:          3 * time.Second,
		RescueInterval: 500 * time.Millisecond,
		// Every other start of a process handles inline (the seed grows
		// by one per start), so that both paths of the inbox face the
		// faults; well under the sender's AckTimeout.
		Inline:        o.seed%2 == 0,
		InlineTimeout: 500 * time.Millisecond,
	}
	if o.defaults {
		// Only what names the process and what the flags choose: every
		// timing is the library's default, as in a service that sets none.
		cfg.ShutdownTimeout = 0
		cfg.Relay = outbox.RelayConfig{ID: cfg.Relay.ID}
		cfg.Client = tcp.ClientConfig{}
		cfg.Server = tcp.ServerConfig{}
		cfg.Inbox = inbox.Config{Name: cfg.Inbox.Name, MaxAttempts: o.maxAttempts, BatchSize: o.batch, Inline: cfg.Inbox.Inline}
	}
	switch o.inline {
	case "on", "off":
		cfg.Inbox.Inline = o.inline == "on"
	case "seed":
	default:
		return fmt.Errorf("-inline %q: want on, off or seed", o.inline)
	}
	// A Node turns inline handling on unless told not to.
	cfg.DisableInline = !cfg.Inbox.Inline

	switch o.role {
	case "sender":
		var peer durable.Peer
		switch {
		case o.peer != "" && o.peers != "":
			return errors.New("a sender takes -peer or -peers, not both")
		case o.peer != "":
			peer.Addr = o.peer
		case o.peers != "":
			peer.Addrs = strings.Split(o.peers, ",")
		default:
			return errors.New("a sender needs -peer or -peers")
		}
		cfg.Peers = map[string]durable.Peer{"billing": peer}
		nodes := make(chan *durable.Node[TTx], 1)
		var wg sync.WaitGroup
		if o.rate > 0 {
			wg.Go(func() { enqueueLoop(ctx, o, log, d, nodes) })
		}
		printLine("READY role=sender pid=%d", os.Getpid())
		err := supervise(ctx, log, cfg, d, nil, func(n *durable.Node[TTx]) {
			select { // the newest node enqueues
			case <-nodes:
			default:
			}
			nodes <- n
		})
		wg.Wait()
		return err
	case "receiver":
		ln, err := net.Listen("tcp", o.listen)
		if err != nil {
			return err
		}
		mux := inbox.NewMux[TTx]()
		mux.HandleFunc(Topic, handler(o, d))
		printLine("READY role=receiver addr=%s pid=%d", ln.Addr(), os.Getpid())
		cfg.Handler = mux
		return supervise(ctx, log, cfg, d, ln, nil)
	}
	return fmt.Errorf("unknown role %q", o.role)
}

// supervise runs a Node until ctx ends, building a new one whenever Run
// fails (the database may be down at start, or go away).
func supervise[TTx any](ctx context.Context, log *slog.Logger, cfg durable.Config[TTx], d *db[TTx], ln net.Listener, started func(*durable.Node[TTx])) error {
	var addr string
	if ln != nil {
		addr = ln.Addr().String()
	}
	for first := true; ; first = false {
		if ln == nil && addr != "" {
			// Run closed the previous listener: listen again on the same
			// address; the port may take a moment to be free.
			var err error
			for ln, err = net.Listen("tcp", addr); err != nil; ln, err = net.Listen("tcp", addr) {
				if !sleep(ctx, 50*time.Millisecond) {
					return nil
				}
			}
		}
		c := cfg
		c.Listener = ln
		n, err := durable.NewNode(d.d, &c)
		if err != nil {
			return err
		}
		if started != nil {
			started(n)
		}
		err = n.Run(ctx)
		ln = nil
		if ctx.Err() != nil {
			if err != nil {
				log.Warn("node stopped with an error", "err", err)
			}
			return nil
		}
		// The test counts these lines: a Node should ride out outages.
		printLine("RUN-ERROR first=%v %v", first, oneLine(err))
		if !sleep(ctx, 200*time.Millisecond) {
			return nil
		}
	}
}

func oneLine(err error) string {
	if err == nil {
		return "<nil>"
	}
	return strconv.Quote(err.Error())
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// enqueueLoop writes business rows and messages at o.rate across o.writers
// goroutines until ctx ends.
func enqueueLoop[TTx any](ctx context.Context, o options, log *slog.Logger, d *db[TTx], nodes chan *durable.Node[TTx]) {
	var node *durable.Node[TTx]
	select {
	case node = <-nodes:
	case <-ctx.Done():
		return
	}
	var mu sync.Mutex
	current := func() *durable.Node[TTx] {
		mu.Lock()
		defer mu.Unlock()
		select {
		case n := <-nodes:
			node = n
		default:
		}
		return node
	}
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) * float64(o.writers) / o.rate)
	for w := range o.writers {
		wg.Go(func() {
			// Keys belong to one writer of one process, so that a key's
			// messages commit in the order of their sequence numbers.
			writer := fmt.Sprintf("%d-%d", os.Getpid(), w)
			rng := rand.New(rand.NewPCG(o.seed, uint64(os.Getpid())<<8|uint64(w)))
			seqs := map[string]int64{}
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				var key string
				if rng.Float64() < o.keyed {
					key = fmt.Sprintf("k%s-%d", writer, rng.IntN(4))
				}
				p := Payload{Poison: rng.Float64() < o.poison, Writer: writer}
				rollback := rng.Float64() < o.rollback
				// Sequence numbers advance only on commit, so a key's
				// committed messages are numbered without gaps.
				p.Seq = seqs[key] + 1
				switch committed := enqueueOne(ctx, log, d, current(), key, p, rollback); committed {
				case "C", "U":
					seqs[key] = p.Seq
				}
			}
		})
	}
	wg.Wait()
}

// enqueueOne runs one business transaction and reports how it ended: "C"
// committed, "R" rolled back (on purpose or after an error before COMMIT),
// "U" unknown.
func enqueueOne[TTx any](ctx context.Context, log *slog.Logger, d *db[TTx], n *durable.Node[TTx], key string, p Payload, rollback bool) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, _ := json.Marshal(p)
	tx, err := d.d.Begin(ctx)
	if err != nil {
		log.Debug("begin", "err", err)
		return "R"
	}
	m := &outbox.Message{Destination: "billing", Topic: Topic, Key: key, Payload: body}
	kind := "normal"
	if p.Poison {
		kind = "poison"
	}
	if err := n.Enqueue(ctx, tx, m); err != nil {
		log.Debug("enqueue", "err", err)
		_ = d.d.Rollback(context.Background(), tx)
		return "R"
	}
	if err := d.exec(ctx, tx, `INSERT INTO orders (id, kind, key, seq) VALUES ($1, $2, $3, $4)`, m.ID, kind, key, p.Seq); err != nil {
		log.Debug("insert order", "err", err)
		_ = d.d.Rollback(context.Background(), tx)
		return "R"
	}
	if rollback {
		if err := d.d.Rollback(ctx, tx); err != nil {
			log.Debug("rollback", "err", err)
		}
		printLine("R %s", m.ID)
		return "R"
	}
	if err := d.d.Commit(ctx, tx); err != nil {
		if d.uncertain(err) {
			printLine("U %s", m.ID)
			return "U"
		}
		log.Debug("commit", "err", err)
		return "R"
	}
	printLine("C %s", m.ID)
	if dieNext.CompareAndSwap(true, false) {
		die("after-commit", m.ID)
	}
	return "C"
}

// handler writes the effect, then fails when the message is poison (for
// good) or by chance (to be retried); the inbox must roll the effect back in
// both cases.
func handler[TTx any](o options, d *db[TTx]) func(ctx context.Context, tx TTx, m *inbox.Message) error {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(o.seed, uint64(os.Getpid())))
	random := func() (fail, swallow, panics bool, pause time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		fail = rng.Float64() < o.fail
		swallow = rng.Float64() < o.swallow
		panics = rng.Float64() < o.panics
		if o.slow > 0 {
			pause = time.Duration(rng.Int64N(int64(o.slow)))
		}
		if rng.Float64() < o.stuck {
			pause = 3*time.Second + time.Duration(rng.Int64N(int64(3*time.Second)))
		}
		return fail, swallow, panics, pause
	}
	return func(ctx context.Context, tx TTx, m *inbox.Message) error {
		var p Payload
		if err := json.Unmarshal(m.Payload, &p); err != nil {
			return inbox.Permanent(fmt.Errorf("payload: %w", err))
		}
		if err := d.exec(ctx, tx, `INSERT INTO effects (message_id, source, handled_by) VALUES ($1, $2, $3)`, m.ID, m.Source, o.instance); err != nil {
			return err
		}
		if dieNext.CompareAndSwap(true, false) {
			die("in-handler", m.ID)
		}
		if p.Kill {
			die("killer", m.ID)
		}
		if m.Key != "" {
			last, ok, err := d.queryInt(ctx, tx, `SELECT seq FROM key_seen WHERE source = $1 AND key = $2`, m.Source, m.Key)
			if err != nil {
				return err
			}
			if ok && p.Seq <= last {
				if err := d.exec(ctx, tx, `INSERT INTO order_violations (message_id, key, seq, last_seq) VALUES ($1, $2, $3, $4)`, m.ID, m.Key, p.Seq, last); err != nil {
					return err
				}
			}
			if err := d.exec(ctx, tx, `INSERT INTO key_seen (source, key, seq) VALUES ($1, $2, $3)
				ON CONFLICT (source, key) DO UPDATE SET seq = excluded.seq`, m.Source, m.Key, p.Seq); err != nil {
				return err
			}
		}
		fail, swallow, panics, pause := random()
		if pause > 0 {
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-ctx.Done(): // the handler timeout
				t.Stop()
				return ctx.Err()
			}
		}
		if p.Poison {
			return inbox.Permanent(errors.New("poison message"))
		}
		if swallow {
			// A handler that ignores a failed statement: on Postgres the
			// transaction is now aborted, and the inbox must notice it at
			// the next savepoint, undo this message and retry it; SQLite
			// carries on, and the effect stands.
			_ = d.exec(ctx, tx, `INSERT INTO no_such_table VALUES (1)`)
			return nil
		}
		if panics {
			panic("handler panics on purpose")
		}
		if fail {
			return errors.New("transient failure (on purpose)")
		}
		return nil
	}
}
