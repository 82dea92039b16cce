package durable_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/outbox"
)

// The scale-out tests run several instances of each of two services, each
// instance a Node with its own connection pool, as separate processes would:
// three "orders" senders on one database and three "billing" receivers on
// another, every sender's peer listing the three receivers (Peer.Addrs).
// A backlog is enqueued while the destination is paused, so that every
// relay is running when the work becomes claimable; then it is resumed.

const scaleInstances = 3

// scaleEffect is a row of the effects table: one handling of a message.
type scaleEffect struct {
	id, key       string
	seq, instance int
}

// scaleEnv is what a scale-out test needs of one database engine. Side is
// "orders" (the senders' database) or "billing" (the receivers').
type scaleEnv[TTx any] struct {
	n     int // messages in the backlog
	perTx int // messages per enqueue transaction
	// batch is the relays' and the workers' BatchSize: the backlog must
	// outlast many claims of every instance (a relay holds at most
	// BatchSize × InFlight rows at once, and leaves the rest to the others).
	batch int
	// workers is each receiver's inbox.Config.Concurrency (0: the default).
	workers int
	notify  bool // outbox.Config.Notify (Postgres)
	// anyHandled asks only that every receiver handle some messages, not
	// a floor: on SQLite the workers of the three processes take the
	// file's write lock in no fixed turn (a waiting process sleeps and
	// retries, per busy_timeout), so their shares vary more.
	anyHandled bool
	// node returns a new dialect on side's database, with a connection
	// pool of its own.
	node func(t *testing.T, side string) dialects.NodeDialect[TTx]
	// control pauses and resumes destinations on the orders database.
	control dialects.Controller
	// inTx runs fn in a transaction on the orders database and commits.
	inTx func(ctx context.Context, fn func(TTx) error) error
	// effect records, in the handler's transaction, that instance handled m.
	effect func(ctx context.Context, tx TTx, m *inbox.Message, seq, instance int) error
	// count returns the one integer that q selects on side's database.
	count func(side, q string) (int, error)
	// effects returns the effects rows in the order they were written.
	effects func() ([]scaleEffect, error)
	// leases returns durable_leases on side's database: holder by name.
	leases func(side string) (map[string]string, error)
}

// scaleKey returns the ordering key of message i ("" for none) and its
// place among the messages of that key: every third message has one of 25
// keys.
func scaleKey(i int) (string, int) {
	if i%3 != 0 {
		return "", 0
	}
	const keys = 25
	return fmt.Sprintf("k%02d", (i/3)%keys), i / 3 / keys
}

// counterSum sums counter name over every scope at the data points whose
// attributes include attrs (k1, v1, ...).
func counterSum(t *testing.T, reader *sdkmetric.ManualReader, name string, attrs ...string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			s, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				t.Fatalf("%s is a %T, not an int64 counter", name, m.Data)
			}
			for _, dp := range s.DataPoints {
				if hasAttrs(dp.Attributes, attrs) {
					total += dp.Value
				}
			}
		}
	}
	return total
}

// teeLog passes every record on to the default handler and counts those
// whose message contains one of subs.
type teeLog struct {
	slog.Handler
	subs []string
	n    *atomic.Int64
}

func newTeeLog(subs ...string) *teeLog {
	return &teeLog{Handler: slog.Default().Handler(), subs: subs, n: new(atomic.Int64)}
}

func (l *teeLog) Handle(ctx context.Context, r slog.Record) error {
	for _, s := range l.subs {
		if strings.Contains(r.Message, s) {
			l.n.Add(1)
		}
	}
	return l.Handler.Handle(ctx, r)
}

func (l *teeLog) WithAttrs(a []slog.Attr) slog.Handler {
	return &teeLog{Handler: l.Handler.WithAttrs(a), subs: l.subs, n: l.n}
}

func (l *teeLog) WithGroup(g string) slog.Handler {
	return &teeLog{Handler: l.Handler.WithGroup(g), subs: l.subs, n: l.n}
}

// leaseHolders records every holder seen of each lease name.
type leaseHolders map[string]map[string]bool

func (l leaseHolders) add(m map[string]string) {
	for name, holder := range m {
		if l[name] == nil {
			l[name] = map[string]bool{}
		}
		l[name][holder] = true
	}
}

// instanceOf returns the instance named by a lease holder "prefix-i/…", or -1.
func instanceOf(holder, prefix string) int {
	rest, ok := strings.CutPrefix(holder, prefix+"-")
	if !ok {
		return -1
	}
	i, err := strconv.Atoi(strings.SplitN(rest, "/", 2)[0])
	if err != nil || i < 0 || i >= scaleInstances {
		return -1
	}
	return i
}

// share formats counts as each one's share of total.
func share(counts []int64, total int) string {
	parts := make([]string, len(counts))
	for i, c := range counts {
		parts[i] = fmt.Sprintf("%d (%.1f%%)", c, 100*float64(c)/float64(total))
	}
	return strings.Join(parts, ", ")
}

// testScaleOut runs three senders and three receivers through a backlog of
// env.n messages and checks, exactly: each message handled once, per-key
// order, nothing left and nothing dead-lettered, no message sent or
// received twice, every instance's part in sending, storing and handling,
// and one housekeeping leader per database for the whole run.
func testScaleOut[TTx any](t *testing.T, env scaleEnv[TTx]) {
	ctx := context.Background()
	n := env.n
	// No node may take a running one for stopped (the six run in one
	// process, as Nodes of one service may).
	released := newTeeLog("released the claims of a stopped node", "row in durable_nodes was gone")
	logger := slog.New(released)

	// Receivers: the workers handle everything (inline handling off), so
	// that the deliveries and the workers' claims are spread each on its
	// own. Handled messages are purged at once, by the housekeeping leader.
	var (
		recvAddrs   []string
		recvReaders [scaleInstances]*sdkmetric.ManualReader
	)
	for i := range scaleInstances {
		ln := listener(t)
		recvAddrs = append(recvAddrs, ln.Addr().String())
		recvReaders[i] = sdkmetric.NewManualReader()
		mux := inbox.NewMux[TTx]()
		mux.HandleFunc("order.placed", func(ctx context.Context, tx TTx, m *inbox.Message) error {
			seq, err := strconv.Atoi(string(m.Payload))
			if err != nil {
				return inbox.Permanent(err)
			}
			return env.effect(ctx, tx, m, seq, i)
		})
		cfg := fastConfig(durable.Config[TTx]{
			Name: "billing", Listener: ln, Handler: mux, DisableInline: true, Logger: logger,
			MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(recvReaders[i])),
		})
		cfg.Inbox.Name = fmt.Sprintf("billing-%d", i) // names the lease holder
		cfg.Inbox.BatchSize = env.batch
		cfg.Inbox.Concurrency = env.workers
		cfg.Inbox.Retention = time.Millisecond
		cfg.Inbox.CleanupInterval = 50 * time.Millisecond
		node, err := durable.NewNode(env.node(t, "billing"), cfg)
		if err != nil {
			t.Fatal(err)
		}
		runNode(t, node)
	}

	// Senders, with the destination paused until the backlog is in.
	if ok, err := env.control.Pause(ctx, dialects.Pause{Kind: dialects.PauseDestination, Name: "billing", PausedBy: "test"}); err != nil || !ok {
		t.Fatalf("pause billing: %v, %v", ok, err)
	}
	var (
		senders     [scaleInstances]*durable.Node[TTx]
		sendReaders [scaleInstances]*sdkmetric.ManualReader
	)
	for i := range scaleInstances {
		sendReaders[i] = sdkmetric.NewManualReader()
		cfg := fastConfig(durable.Config[TTx]{
			Name:          "orders",
			Logger:        logger,
			Peers:         map[string]durable.Peer{"billing": {Addrs: recvAddrs}},
			MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(sendReaders[i])),
		})
		cfg.Relay.ID = fmt.Sprintf("orders-%d", i) // names the lease holder
		cfg.Relay.BatchSize = env.batch
		cfg.Outbox.Notify = env.notify
		node, err := durable.NewNode(env.node(t, "orders"), cfg)
		if err != nil {
			t.Fatal(err)
		}
		senders[i] = node
		runNode(t, node)
	}
	// Every relay runs and has seen the pause.
	for i, s := range senders {
		waitFor(t, fmt.Sprintf("sender %d's relay to see the pause", i), func() (bool, error) {
			st, err := s.Relay().Stats(ctx)
			return st.Destinations["billing"].PausedByOperator, err
		})
	}

	// The backlog, enqueued through every sender in turn (they share the
	// outbox table).
	ids := make(map[string]int, n) // id → message number
	for tx := range n / env.perTx {
		var msgs []*outbox.Message
		for j := range env.perTx {
			i := tx*env.perTx + j
			key, seq := scaleKey(i)
			if key == "" {
				seq = i
			}
			msgs = append(msgs, &outbox.Message{Destination: "billing", Topic: "order.placed", Key: key, Payload: []byte(strconv.Itoa(seq))})
		}
		if err := env.inTx(ctx, func(t TTx) error { return senders[tx%scaleInstances].Enqueue(ctx, t, msgs...) }); err != nil {
			t.Fatalf("enqueue: %v", err)
		}
		for j, m := range msgs {
			ids[m.ID] = tx*env.perTx + j
		}
	}
	if len(ids) != n {
		t.Fatalf("%d distinct ids enqueued, want %d", len(ids), n)
	}

	start := time.Now()
	if ok, err := env.control.Resume(ctx, dialects.PauseDestination, "billing"); err != nil || !ok {
		t.Fatalf("resume billing: %v, %v", ok, err)
	}
	// Until everything is handled and cleaned up, the housekeeping leases
	// are looked at: each must have one holder for the whole run.
	holders := map[string]leaseHolders{"orders": {}, "billing": {}}
	look := func() error {
		for side, seen := range holders {
			m, err := env.leases(side)
			if err != nil {
				return err
			}
			seen.add(m)
		}
		return nil
	}
	waitFor(t, "every message handled, the outbox and the inbox empty", func() (bool, error) {
		if err := look(); err != nil {
			return false, err
		}
		effects, err := env.count("billing", `SELECT count(*) FROM effects`)
		if err != nil || effects < n {
			return false, err
		}
		left, err := env.count("orders", `SELECT count(*) FROM durable_outbox`)
		if err != nil || left > 0 {
			return false, err
		}
		left, err = env.count("billing", `SELECT count(*) FROM durable_inbox`)
		return left == 0, err
	})
	elapsed := time.Since(start)
	if c := released.n.Load(); c != 0 {
		t.Errorf("%d times a node released the claims of a running one, or found its own row gone", c)
	}
	if err := look(); err != nil {
		t.Fatal(err)
	}

	// Exactly once, in order per key.
	effects, err := env.effects()
	if err != nil {
		t.Fatal(err)
	}
	if len(effects) != n {
		t.Fatalf("%d effects, want %d", len(effects), n)
	}
	handled := make([]int64, scaleInstances)
	seen := make(map[string]bool, n)
	next := map[string]int{} // key → the seq its next effect must have
	for _, e := range effects {
		i, ok := ids[e.id]
		switch {
		case !ok:
			t.Fatalf("effect of a message never enqueued: %+v", e)
		case seen[e.id]:
			t.Fatalf("message %s (number %d) handled twice", e.id, i)
		}
		seen[e.id] = true
		key, seq := scaleKey(i)
		if e.key != key {
			t.Fatalf("message %d handled with key %q, want %q", i, e.key, key)
		}
		if key != "" {
			if seq != e.seq || seq != next[key] {
				t.Fatalf("key %s: message %d (seq %d, handled as %d) handled when seq %d was due", key, i, seq, e.seq, next[key])
			}
			next[key]++
		}
		handled[e.instance]++
	}
	for _, side := range []string{"orders", "billing"} {
		if c, err := env.count(side, `SELECT count(*) FROM durable_dead_letters`); err != nil || c != 0 {
			t.Fatalf("%s: %d dead letters (%v), want none", side, c, err)
		}
	}

	// No message sent, stored or acknowledged twice; every instance took
	// part.
	sent := make([]int64, scaleInstances)
	stored := make([]int64, scaleInstances)
	var retried, ackDup, recvDup, done int64
	for i := range scaleInstances {
		sent[i] = counterSum(t, sendReaders[i], "durable.relay.sent")
		retried += counterSum(t, sendReaders[i], "durable.relay.retried")
		ackDup += counterSum(t, sendReaders[i], "durable.relay.acked", "durable.status", "duplicate")
		stored[i] = counterSum(t, recvReaders[i], "durable.inbox.received", "durable.status", "stored")
		recvDup += counterSum(t, recvReaders[i], "durable.inbox.received", "durable.status", "duplicate")
		if h := counterSum(t, recvReaders[i], "durable.inbox.handled", "durable.outcome", "done"); h != handled[i] {
			t.Errorf("receiver %d: metric says %d handled, the effects table %d", i, h, handled[i])
		}
		done += handled[i]
	}
	t.Logf("%d messages in %v; sent per sender: %s; stored per receiver: %s; handled per receiver: %s",
		n, elapsed.Round(time.Millisecond), share(sent, n), share(stored, n), share(handled, n))
	var totalSent, totalStored int64
	for i := range scaleInstances {
		totalSent += sent[i]
		totalStored += stored[i]
	}
	if totalSent != int64(n) || retried != 0 || ackDup != 0 || recvDup != 0 || totalStored != int64(n) {
		t.Errorf("sent %d envelopes (%d released for a retry), %d acknowledged as duplicates, %d received as duplicates, %d stored; want %d sent and stored once each",
			totalSent, retried, ackDup, recvDup, totalStored, n)
	}
	// Fair spread: with a backlog of n/BatchSize claims, every relay claims
	// as long as rows are left, and every receiver gets batches and runs
	// workers. The floor is far below a third, for a loaded machine.
	floor := int64(n / 20)
	handledFloor := floor
	if env.anyHandled {
		handledFloor = 1
	}
	for i := range scaleInstances {
		if sent[i] < floor || stored[i] < floor || handled[i] < handledFloor {
			t.Errorf("instance %d: sent %d, stored %d, handled %d; want at least %d (5%%) sent and stored, %d handled", i, sent[i], stored[i], handled[i], floor, handledFloor)
		}
	}

	// Housekeeping: one leader per database for the whole run, one of the
	// running instances, and only it purged.
	for side, lease := range map[string]string{"orders": "durable.outbox.retention", "billing": "durable.inbox.retention"} {
		seen := holders[side][lease]
		if len(seen) != 1 {
			t.Fatalf("%s: lease %s had holders %v during the run, want one", side, lease, seen)
		}
		for h := range seen {
			if instanceOf(h, side) < 0 {
				t.Fatalf("%s: lease %s held by %q, not one of the instances", side, lease, h)
			}
		}
	}
	var leader int
	for h := range holders["billing"]["durable.inbox.retention"] {
		leader = instanceOf(h, "billing")
	}
	for i := range scaleInstances {
		purged := counterSum(t, recvReaders[i], "durable.housekeeping.deleted", "durable.table", "inbox")
		want := int64(0)
		if i == leader {
			want = int64(n)
		}
		if purged != want {
			t.Errorf("receiver %d (leader %d) purged %d handled messages, want %d", i, leader, purged, want)
		}
	}
}

// TestScaleOutPostgres: three senders on one outbox and three receivers on
// one inbox, each with its own pgx pool, share a backlog of 2,000 messages
// with no duplicate at any level and every instance doing a fair part; the
// housekeeping of each database has one leader.
func TestScaleOutPostgres(t *testing.T) {
	urls := map[string]string{}
	var control *postgres.Dialect
	admin := map[string]*pgxpool.Pool{}
	for _, side := range []string{"orders", "billing"} {
		u, _ := testdb.PostgresSchema(t)
		urls[side] = u
		pool := testdb.OpenPostgres(t, u, true)
		admin[side] = pool
		if side == "orders" {
			control = openPostgres(t, pool)
		}
	}
	billing := admin["billing"]
	if _, err := billing.Exec(context.Background(), `CREATE TABLE effects (n bigserial PRIMARY KEY, message_id text NOT NULL, key text NOT NULL, seq int NOT NULL, instance int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	env := scaleEnv[pgx.Tx]{
		n: 2000, perTx: 50, batch: 32, workers: 2, notify: true,
		node: func(t *testing.T, side string) dialects.NodeDialect[pgx.Tx] {
			// A sender needs InFlight (4) connections and a few for its
			// housekeeping, heartbeat and gauges; a receiver one per worker
			// (held with the handlers) and one per delivery being stored
			// (up to 3 senders × InFlight), which must not wait for one
			// another for long. Small pools keep the six well within a
			// shared server's connection limit (100 by default).
			conns := map[string]int{"orders": 8, "billing": 12}[side]
			return openPostgres(t, testdb.OpenPostgres(t, urls[side]+"&pool_max_conns="+strconv.Itoa(conns), false))
		},
		control: control,
		inTx: func(ctx context.Context, fn func(pgx.Tx) error) error {
			return pgx.BeginFunc(ctx, admin["orders"], fn)
		},
		effect: func(ctx context.Context, tx pgx.Tx, m *inbox.Message, seq, instance int) error {
			_, err := tx.Exec(ctx, `INSERT INTO effects (message_id, key, seq, instance) VALUES ($1, $2, $3, $4)`, m.ID, m.Key, seq, instance)
			return err
		},
		count: func(side, q string) (int, error) {
			var c int
			err := admin[side].QueryRow(context.Background(), q).Scan(&c)
			return c, err
		},
		effects: func() ([]scaleEffect, error) {
			rows, err := billing.Query(context.Background(), `SELECT message_id, key, seq, instance FROM effects ORDER BY n`)
			if err != nil {
				return nil, err
			}
			return pgx.CollectRows(rows, func(r pgx.CollectableRow) (scaleEffect, error) {
				var e scaleEffect
				err := r.Scan(&e.id, &e.key, &e.seq, &e.instance)
				return e, err
			})
		},
		leases: func(side string) (map[string]string, error) {
			rows, err := admin[side].Query(context.Background(), `SELECT name, holder FROM durable_leases`)
			if err != nil {
				return nil, err
			}
			m := map[string]string{}
			var name, holder string
			_, err = pgx.ForEachRow(rows, []any{&name, &holder}, func() error { m[name] = holder; return nil })
			return m, err
		},
	}
	if raceEnabled { // the same backlog-to-claim ratio, a third of the rows
		env.n, env.perTx, env.batch = 600, 20, 8
	}
	testScaleOut(t, env)
}

// TestScaleOutSQLite: the same with three processes' worth of *sql.DB on
// each SQLite file. SQLite has one writer at a time (the file's lock,
// waited for up to sqlite.DSN's busy_timeout), so the instances take turns
// rather than add throughput, and the same exact outcome holds.
func TestScaleOutSQLite(t *testing.T) {
	paths := map[string]string{}
	admin := map[string]*sql.DB{}
	for _, side := range []string{"orders", "billing"} {
		db, _ := openSQLite(t)
		admin[side] = db
		var path string
		if err := db.QueryRow(`SELECT file FROM pragma_database_list WHERE name = 'main'`).Scan(&path); err != nil {
			t.Fatal(err)
		}
		paths[side] = path
	}
	billing := admin["billing"]
	if _, err := billing.Exec(`CREATE TABLE effects (n INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, instance INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	control, err := sqlite.New(admin["orders"], nil)
	if err != nil {
		t.Fatal(err)
	}
	env := scaleEnv[*sql.Tx]{
		n: 600, perTx: 20, batch: 8, anyHandled: true,
		node: func(t *testing.T, side string) dialects.NodeDialect[*sql.Tx] {
			db, err := sql.Open("sqlite", sqlite.DSN(paths[side]))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			d, err := sqlite.New(db, nil)
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
		control: control,
		inTx: func(ctx context.Context, fn func(*sql.Tx) error) error {
			tx, err := admin["orders"].BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			if err := fn(tx); err != nil {
				_ = tx.Rollback()
				return err
			}
			return tx.Commit()
		},
		effect: func(ctx context.Context, tx *sql.Tx, m *inbox.Message, seq, instance int) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO effects (message_id, key, seq, instance) VALUES (?, ?, ?, ?)`, m.ID, m.Key, seq, instance)
			return err
		},
		count: func(side, q string) (int, error) {
			var c int
			err := admin[side].QueryRow(q).Scan(&c)
			return c, err
		},
		effects: func() ([]scaleEffect, error) {
			rows, err := billing.Query(`SELECT message_id, key, seq, instance FROM effects ORDER BY n`)
			if err != nil {
				return nil, err
			}
			defer rows.Close()
			var out []scaleEffect
			for rows.Next() {
				var e scaleEffect
				if err := rows.Scan(&e.id, &e.key, &e.seq, &e.instance); err != nil {
					return nil, err
				}
				out = append(out, e)
			}
			return out, rows.Err()
		},
		leases: func(side string) (map[string]string, error) {
			rows, err := admin[side].Query(`SELECT name, holder FROM durable_leases`)
			if err != nil {
				return nil, err
			}
			defer rows.Close()
			m := map[string]string{}
			for rows.Next() {
				var name, holder string
				if err := rows.Scan(&name, &holder); err != nil {
					return nil, err
				}
				m[name] = holder
			}
			return m, rows.Err()
		},
	}
	if raceEnabled {
		env.n, env.perTx, env.batch = 240, 10, 4
	}
	testScaleOut(t, env)
}
