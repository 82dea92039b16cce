package integration

import (
	"context"
	crand "crypto/rand"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx", for the test's own queries
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/integration/internal/faultproxy"
	"github.com/durable-go/durable/integration/internal/history"
	"github.com/durable-go/durable/integration/internal/pgserver"
	"github.com/durable-go/durable/integration/internal/proc"
	"github.com/durable-go/durable/internal/crashpoint"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
)

// scenario is one run of the fault suite: services, load and faults.
type scenario struct {
	dialect   string        // "sqlite" or "postgres"
	seed      uint64        // drives every random choice of the test
	length    time.Duration // of the fault phase
	senders   int           // sender processes on the sender's database
	receivers int           // receiver processes on the receiver's database
	rate      float64       // business transactions per second, per sender process
	writers   int           // enqueue goroutines per sender process
	dbFaults  bool          // restart and kill the Postgres servers
	stuck     float64       // share of handler calls that hang past the inbox lease
	windows   bool          // fail unless each window was hit exactly (full length; see crashWindows)
	args      []string      // more arguments for every helper, before a service's own
	// proxyPerReceiver puts a faultproxy of its own in front of each
	// receiver, at a stable address, and gives the senders all of them as
	// the peer's instances (durable.Peer.Addrs: a tcp.Balancer); network
	// faults then act on one receiver's proxy or on all. Without it, the
	// senders dial one proxy (durable.Peer.Addr) that the test switches
	// between the receivers.
	proxyPerReceiver bool
}

// side is one service's database: the test's handle on it, and what the
// helper processes are given to open it.
type side struct {
	name string // "orders" or "billing"
	dsn  string // SQLite file or Postgres URL, for the helpers
	db   *sql.DB
	pg   *pgserver.Server // nil on SQLite
}

// openSide creates, migrates and prepares the database of one service:
// SQLite, a file in the test's directory; Postgres, a private server of its
// own, so that the fault loop can restart or kill it.
func openSide(t *testing.T, dialect, name string, tables []string) *side {
	t.Helper()
	s := &side{name: name}
	var err error
	switch dialect {
	case "sqlite":
		s.dsn = filepath.Join(t.TempDir(), name+".db")
		s.db, err = sql.Open("sqlite", sqlite.DSN(s.dsn))
	case "postgres":
		s.pg = pgserver.Start(t, &pgserver.Options{Name: name})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if s.dsn, err = s.pg.CreateDatabase(ctx, name); err != nil {
			t.Fatal(err)
		}
		s.db, err = sql.Open("pgx", s.dsn)
	default:
		t.Fatalf("unknown dialect %q", dialect)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.db.Close() })
	mig := migrations.SQLite
	if dialect == "postgres" {
		mig = migrations.Postgres
	}
	for _, stmt := range append(testdb.UpSQL(t, mig), tables...) {
		if _, err := s.db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, stmt)
		}
	}
	return s
}

// ordersTables is the sending service's business table: one row per message,
// written in the transaction that enqueues it.
var ordersTables = []string{
	`CREATE TABLE orders (id TEXT PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL, seq BIGINT NOT NULL)`,
}

// billingTables are the receiving service's tables: effects (no unique
// constraint; handled_by names the receiver instance that wrote it), and the
// per-key order bookkeeping of the handler.
var billingTables = append(history.EffectsTable("effects"),
	`ALTER TABLE effects ADD COLUMN handled_by TEXT NOT NULL DEFAULT ''`,
	`CREATE TABLE key_seen (source TEXT NOT NULL, key TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (source, key))`,
	`CREATE TABLE order_violations (message_id TEXT NOT NULL, key TEXT NOT NULL, seq BIGINT NOT NULL, last_seq BIGINT NOT NULL)`,
)

// cluster is the running scenario: two databases, the services, the proxies
// between the relays and the receivers, and what the services reported.
type cluster struct {
	t     *testing.T
	sc    scenario
	bin   string
	start time.Time
	// secret is this cluster's shared secret, its own: a sender of another
	// scenario running beside it (the soak runs the SQLite and the Postgres
	// ones at once) that reaches this cluster's proxy fails to
	// authenticate instead of delivering its messages here.
	secret string

	orders, billing *side
	// proxy is the one proxy every relay dials, which the test points at
	// one receiver at a time; nil with a proxy per receiver
	// (sc.proxyPerReceiver, see service.proxy).
	proxy *faultproxy.Proxy
	// proxies are all the proxies: proxy, or each receiver's, in the order
	// of receivers.
	proxies   []*faultproxy.Proxy
	senders   []*service
	receivers []*service

	mu         sync.Mutex
	printed    map[string]byte // message id → 'C' committed, 'U' unknown, 'R' rolled back, as the sender printed
	runErrors  []string        // RUN-ERROR lines: a Node's Run failed and was started again
	unexpected []string        // helpers that exited without being told to
	faults     map[string]int  // faults applied, by name
	caught     caught          // what the SIGKILLs interrupted
	died       map[string]int  // DIE lines: services that killed themselves at a crash point, by point
	points     pointCounts     // the library's crash points: armed, reached, missed, skipped
	target     *service        // the receiver the proxy forwards new connections to (one proxy only)
	partitions partitionCounts // partition-receiver faults (a proxy per receiver only)

	// hook, when set before run, sees every line the services print.
	hook func(s *service, stream, line string)

	// serial is held while the crash loop or the crash-point loop kills,
	// stops or starts services, so that the two never act on one at once.
	serial sync.Mutex
}

func newCluster(t *testing.T, sc scenario) *cluster {
	t.Helper()
	c := &cluster{
		t:       t,
		sc:      sc,
		bin:     helperBinary(t),
		printed: make(map[string]byte),
		faults:  make(map[string]int),
		died:    make(map[string]int),
		points:  newPointCounts(),
		secret:  crand.Text(),
	}
	// The two databases are independent; on Postgres each needs initdb.
	var wg sync.WaitGroup
	wg.Go(func() { c.orders = openSide(t, sc.dialect, "orders", ordersTables) })
	c.billing = openSide(t, sc.dialect, "billing", billingTables)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for i := range sc.receivers {
		c.receivers = append(c.receivers, &service{c: c, role: "receiver", name: fmt.Sprintf("billing%d", i+1)})
	}
	for i := range sc.senders {
		c.senders = append(c.senders, &service{c: c, role: "sender", name: fmt.Sprintf("orders%d", i+1)})
	}
	return c
}

// logf logs a timeline event.
func (c *cluster) logf(format string, args ...any) {
	c.t.Helper()
	c.t.Logf("%6.1fs  %s", time.Since(c.start).Seconds(), fmt.Sprintf(format, args...))
}

// run starts the receivers, the proxies and the senders.
func (c *cluster) run() {
	c.t.Helper()
	c.start = time.Now()
	for _, r := range c.receivers {
		if err := r.startService(); err != nil {
			c.t.Fatal(err)
		}
	}
	newProxy := func(target string) *faultproxy.Proxy {
		p, err := faultproxy.New(target)
		if err != nil {
			c.t.Fatal(err)
		}
		c.t.Cleanup(func() { p.Close() })
		c.proxies = append(c.proxies, p)
		return p
	}
	if c.sc.proxyPerReceiver {
		for _, r := range c.receivers {
			p := newProxy(r.address())
			r.mu.Lock()
			r.proxy = p
			r.mu.Unlock()
		}
	} else {
		c.proxy = newProxy(c.receivers[0].address())
		c.target = c.receivers[0]
	}
	for _, s := range c.senders {
		s.extra = []string{"-rate", fmt.Sprint(c.sc.rate)}
		if err := s.startService(); err != nil {
			c.t.Fatal(err)
		}
	}
}

// onLine parses what the services print: on stdout, their commits and
// crashes at the application's crash points; on stderr, their deaths at the
// library's (see internal/crashpoint).
func (c *cluster) onLine(svc *service, stream, line string) {
	if c.hook != nil {
		c.hook(svc, stream, line)
	}
	if stream == "stderr" {
		if point, ok := strings.CutPrefix(line, "CRASHPOINT "); ok {
			c.mu.Lock()
			c.points.fired[point]++
			c.mu.Unlock()
		}
		return
	}
	if stream != "stdout" {
		return
	}
	if len(line) > 2 && line[1] == ' ' && strings.IndexByte("CUR", line[0]) >= 0 {
		c.mu.Lock()
		c.printed[line[2:]] = line[0]
		c.mu.Unlock()
		return
	}
	if where, ok := strings.CutPrefix(line, "DIE "); ok {
		where, _, _ = strings.Cut(where, " ")
		c.mu.Lock()
		c.died[where]++
		c.mu.Unlock()
		return
	}
	if strings.HasPrefix(line, "RUN-ERROR") {
		c.mu.Lock()
		c.runErrors = append(c.runErrors, svc.name+": "+line)
		c.mu.Unlock()
	}
}

// retarget points the proxy at a running receiver: the current target if it
// still runs, otherwise one chosen by rng (nil: the first). It reports the
// receiver chosen, or nil when none runs. With a proxy per receiver it does
// nothing and returns nil: each receiver's proxy follows it (startArmed).
func (c *cluster) retarget(rng *rand.Rand, force bool) *service {
	if c.proxy == nil {
		return nil
	}
	c.mu.Lock()
	cur := c.target
	c.mu.Unlock()
	if !force && cur != nil && cur.running() {
		// It may have been restarted on a new port.
		c.proxy.SetTarget(cur.address())
		return cur
	}
	var live []*service
	for _, r := range c.receivers {
		if r.running() && (!force || r != cur) {
			live = append(live, r)
		}
	}
	if len(live) == 0 {
		return nil
	}
	next := live[0]
	if rng != nil {
		next = live[rng.IntN(len(live))]
	}
	c.mu.Lock()
	c.target = next
	c.mu.Unlock()
	c.proxy.SetTarget(next.address())
	return next
}

func (c *cluster) countFault(name string) {
	c.mu.Lock()
	c.faults[name]++
	c.mu.Unlock()
}

// service is one helper process slot (a sender or a receiver), started,
// killed and restarted by the test.
type service struct {
	c    *cluster
	role string
	name string

	mu     sync.Mutex
	p      *proc.Process
	told   *atomic.Bool      // set when the test kills or stops p
	addr   string            // a receiver's listen address
	proxy  *faultproxy.Proxy // a receiver's own proxy (sc.proxyPerReceiver), else nil
	starts int
	extra  []string // more arguments, given at every start
}

// startService starts the helper with s.extra and waits for its READY line.
func (s *service) startService() error { return s.startArmed("") }

// startArmed starts the helper with s.extra and the library's crash point
// arm ("name:N", see internal/crashpoint; "" arms none), and waits for its
// READY line. An armed process is expected to kill itself: its exit is left
// to the one who armed it (armCrashPoint), not counted as unexpected.
func (s *service) startArmed(arm string) error {
	c := s.c
	s.mu.Lock()
	s.starts++
	n := s.starts
	extra := s.extra
	s.mu.Unlock()
	args := []string{
		"-role", s.role,
		"-dialect", c.sc.dialect,
		"-seed", fmt.Sprint(c.sc.seed + uint64(n)),
		"-secret", c.secret,
	}
	switch s.role {
	case "sender":
		args = append(args, "-dsn", c.orders.dsn, "-writers", fmt.Sprint(c.sc.writers))
		if c.proxy != nil {
			args = append(args, "-peer", c.proxy.Addr())
		} else {
			addrs := make([]string, len(c.proxies))
			for i, p := range c.proxies {
				addrs[i] = p.Addr()
			}
			args = append(args, "-peers", strings.Join(addrs, ","))
		}
	case "receiver":
		args = append(args, "-dsn", c.billing.dsn, "-stuck", fmt.Sprint(c.sc.stuck), "-instance", s.name)
	}
	args = append(append(args, c.sc.args...), extra...)
	p := proc.Start(c.t, c.bin, proc.Options{
		Name: fmt.Sprintf("%s#%d", s.name, n),
		Args: args,
		// Set even when empty: an arm in the test's own environment
		// must not reach every helper.
		Env:    []string{crashpoint.EnvVar + "=" + arm},
		OnLine: func(stream, line string) { c.onLine(s, stream, line) },
		Logf: func(format string, a ...any) {
			// The per-message lines are for onLine, not the log.
			if len(a) == 2 {
				if l, ok := a[1].(string); ok && len(l) > 2 && l[1] == ' ' && strings.IndexByte("CUR", l[0]) >= 0 {
					return
				}
			}
			c.t.Logf(format, a...)
		},
	})
	ready, err := p.WaitReady(60 * time.Second)
	if err != nil {
		p.Kill()
		return fmt.Errorf("%s: %w", s.name, err)
	}
	told := new(atomic.Bool)
	told.Store(arm != "")
	s.mu.Lock()
	s.p = p
	s.told = told
	if s.role == "receiver" {
		s.addr = ready.Get("addr")
		if s.proxy != nil {
			// The receiver's own proxy keeps its address and follows
			// the receiver to its new port.
			s.proxy.SetTarget(s.addr)
		}
	}
	s.mu.Unlock()
	go func() {
		<-p.Done()
		if !told.Load() && !p.Killed() {
			c.mu.Lock()
			c.unexpected = append(c.unexpected, fmt.Sprintf("%s#%d exited by itself: %v", s.name, n, p.Wait()))
			c.mu.Unlock()
		}
	}()
	return nil
}

func (s *service) process() *proc.Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p
}

func (s *service) address() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

func (s *service) running() bool {
	p := s.process()
	return p != nil && !p.Exited()
}

// tell marks the running process as being stopped by the test and returns
// it.
func (s *service) tell() *proc.Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.told != nil {
		s.told.Store(true)
	}
	return s.p
}

// kill sends SIGKILL, waits for the exit and looks at what the process left
// behind.
func (s *service) kill() {
	p := s.tell()
	if p == nil || p.Exited() {
		return
	}
	p.Kill()
	s.c.afterKill(s, p.Pid())
}

// caught counts what the SIGKILLs interrupted, as the leases the killed
// processes left in the databases show.
type caught struct {
	senderKills, senderKillsInFlight, outboxRowsInFlight    int
	receiverKills, receiverKillsMidBatch, inboxRowsMidBatch int
}

func (k caught) String() string {
	return fmt.Sprintf("%d of %d sender kills left %d outbox rows claimed and not yet deleted (between claim/send and delete); "+
		"%d of %d receiver kills left %d inbox rows leased to a worker (between claim and completion)",
		k.senderKillsInFlight, k.senderKills, k.outboxRowsInFlight,
		k.receiverKillsMidBatch, k.receiverKills, k.inboxRowsMidBatch)
}

// afterKill counts the rows the killed process held a lease on. A database
// that is down at the moment is not counted.
func (c *cluster) afterKill(s *service, pid int) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var n int
	var err error
	switch s.role {
	case "sender":
		n, err = queryInt(ctx, c.orders.db, `SELECT count(*) FROM durable_outbox WHERE sent_at IS NULL AND locked_by LIKE $1`, fmt.Sprintf("orders-%d/%%", pid))
	case "receiver":
		n, err = queryInt(ctx, c.billing.db, `SELECT count(*) FROM durable_inbox WHERE state = 'running' AND locked_by LIKE $1`, fmt.Sprintf("billing-%d/%%", pid))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := &c.caught
	switch {
	case err != nil:
	case s.role == "sender":
		k.senderKills++
		k.outboxRowsInFlight += n
		if n > 0 {
			k.senderKillsInFlight++
		}
	default:
		k.receiverKills++
		k.inboxRowsMidBatch += n
		if n > 0 {
			k.receiverKillsMidBatch++
		}
	}
}

// stop sends SIGTERM and waits; a service that does not exit in time, or
// exits with an error, is a finding.
func (s *service) stop(timeout time.Duration) error {
	p := s.tell()
	if p == nil || p.Exited() {
		return nil
	}
	if err := p.Stop(timeout); err != nil {
		return fmt.Errorf("%s: graceful stop: %w", p.Name(), err)
	}
	return nil
}
