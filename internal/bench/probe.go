package bench

import (
	"context"
	"database/sql"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
)

// The stages a benchmark message passes, in order, each stamped once per
// message by the probe (the first time it happens). The commit is stamped
// by the workload itself, the others by dialect wrappers that see the
// library's own calls: the bench changes nothing in the library, it only
// watches the statements the relay, the inbox and its workers run.
const (
	bstCommit   = iota // the app transaction that enqueued it committed
	bstClaim           // the relay's claim returned it
	bstReceived        // the receiver began storing its batch (InsertInbox)
	bstStored          // the receiver's Deliver transaction committed
	bstAcked           // the relay records the peer's ACK (AckOutbox)
	bstWorker          // an inbox worker claimed it
	bstHandler         // its handler started
	bstDone            // the handler's batch transaction committed
	benchStages
)

// benchSeqHeader carries a message's index in the run; the probe and the
// handler read it to stamp the message's stages. The commit instant is known
// only once the transaction that wrote the header committed, so the probe
// keeps it under that index (sender and receiver share the process) rather
// than in the header itself.
const benchSeqHeader = "bench-seq"

// benchProbe records, per message of one workload run, when it passed each
// stage. Stamps are nanoseconds since the probe's base (monotonic), plus one
// so that zero means "not yet".
type benchProbe struct {
	n     int
	base  time.Time
	t     [benchStages][]atomic.Int64
	count [benchStages]atomic.Int64 // messages stamped per stage
	dups  atomic.Int64              // handler calls after the first, per message

	warm     atomic.Int64  // warm-up messages handled
	done     chan struct{} // closed when every message reached bstDone
	doneOnce sync.Once

	ops [benchOps]benchOpStat // the library's database calls, by kind

	mu      sync.Mutex
	pending map[any]benchPendingTx // open transaction → what its commit stamps
	watched map[pgx.Tx]pgx.Tx      // a handler's watched transaction → the dialect's (see benchPGDialect.WatchTx)
	seqs    map[int64]int32        // outbox seq → index, for AckOutbox
}

// The database calls of the pipeline the probe counts and times.
const (
	bopRelayClaim     = iota // ClaimOutbox
	bopRelayAck              // AckOutbox
	bopInboxInsert           // InsertInbox (in Deliver's transaction)
	bopInboxClaim            // ClaimInbox
	bopInboxLock             // LockInbox (first statement of a worker's batch)
	bopInboxSavepoint        // InboxSavepoint (one per message handled)
	bopInboxFinish           // FinishInbox (settles a batch)
	bopCommit                // Commit of a Deliver or a worker batch
	benchOps
)

var benchOpNames = [benchOps]string{"relay claim", "relay ack", "inbox insert", "inbox claim", "inbox lock",
	"inbox savepoint", "inbox finish", "inbox commit"}

// benchOpStat counts the calls of one kind: how many, how many returned no
// rows, the rows they handled and the time they took.
type benchOpStat struct {
	calls, empty, rows, nanos atomic.Int64
}

func (p *benchProbe) op(kind int, start time.Time, rows int) {
	o := &p.ops[kind]
	o.calls.Add(1)
	o.nanos.Add(int64(time.Since(start)))
	o.rows.Add(int64(rows))
	if rows == 0 {
		o.empty.Add(1)
	}
}

// benchPendingTx is what the commit of an open transaction stamps: per
// stage, the messages (a Deliver that handles inline stamps both stored and
// done).
type benchPendingTx struct {
	idx [benchStages][]int32
}

func newBenchProbe(n int) *benchProbe {
	p := &benchProbe{
		n:       n,
		base:    time.Now(),
		done:    make(chan struct{}),
		pending: make(map[any]benchPendingTx),
		seqs:    make(map[int64]int32),
	}
	for s := range p.t {
		p.t[s] = make([]atomic.Int64, n)
	}
	if n == 0 {
		close(p.done)
	}
	return p
}

func (p *benchProbe) now() int64 { return int64(time.Since(p.base)) + 1 }

// stamp records stage s of message i at t, unless it was recorded already.
func (p *benchProbe) stamp(s int, i int32, t int64) bool {
	if i < 0 || int(i) >= p.n || !p.t[s][i].CompareAndSwap(0, t) {
		return false
	}
	if c := p.count[s].Add(1); s == bstDone && c == int64(p.n) {
		p.doneOnce.Do(func() { close(p.done) })
	}
	return true
}

// index reads a message's index from its headers; -1 for messages that are
// not the workload's (the warm-up).
func benchIndex(h map[string]string) int32 {
	v, ok := h[benchSeqHeader]
	if !ok {
		return -1
	}
	i, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return -1
	}
	return int32(i)
}

// txKey is the identity of a transaction in p.pending: a pgx transaction's
// connection, since inbox handlers get it wrapped (dialects.TxGuard) while the
// dialect commits the transaction itself; a *sql.Tx itself. A transaction a
// handler got watched (dialects.TxWatcher) is looked up instead of asked for
// its connection, which would count as the handler's use of it. Called
// with p.mu held.
func (p *benchProbe) txKey(tx any) any {
	if t, ok := tx.(pgx.Tx); ok {
		if raw, ok := p.watched[t]; ok {
			delete(p.watched, t)
			tx = raw
		}
	}
	if c, ok := tx.(interface{ Conn() *pgx.Conn }); ok {
		return c.Conn()
	}
	return tx
}

// watch records that the handler's transaction w wraps the dialect's tx.
func (p *benchProbe) watch(w, tx pgx.Tx) {
	p.mu.Lock()
	if p.watched == nil {
		p.watched = make(map[pgx.Tx]pgx.Tx)
	}
	p.watched[w] = tx
	p.mu.Unlock()
}

// addPending makes the commit of tx stamp stage s of the messages idx.
func (p *benchProbe) addPending(tx any, s int, idx ...int32) {
	p.mu.Lock()
	tx = p.txKey(tx)
	pt := p.pending[tx]
	pt.idx[s] = append(pt.idx[s], idx...)
	p.pending[tx] = pt
	p.mu.Unlock()
}

func (p *benchProbe) takePending(tx any) (benchPendingTx, bool) {
	p.mu.Lock()
	tx = p.txKey(tx)
	pt, ok := p.pending[tx]
	delete(p.pending, tx)
	p.mu.Unlock()
	return pt, ok
}

func (p *benchProbe) committed(tx any, err error) {
	pt, ok := p.takePending(tx)
	if !ok || err != nil {
		return
	}
	t := p.now()
	for s := range pt.idx {
		for _, i := range pt.idx[s] {
			p.stamp(s, i, t)
		}
	}
}

func (p *benchProbe) relayClaimed(rows []dialects.ClaimedRow) {
	t := p.now()
	p.mu.Lock()
	for i := range rows {
		if x := benchIndex(rows[i].Headers); x >= 0 {
			p.seqs[rows[i].Seq] = x
		}
	}
	p.mu.Unlock()
	for i := range rows {
		p.stamp(bstClaim, benchIndex(rows[i].Headers), t)
	}
}

func (p *benchProbe) acked(seqs []int64) {
	t := p.now()
	p.mu.Lock()
	idx := make([]int32, 0, len(seqs))
	for _, s := range seqs {
		if x, ok := p.seqs[s]; ok {
			idx = append(idx, x)
			delete(p.seqs, s)
		}
	}
	p.mu.Unlock()
	for _, x := range idx {
		p.stamp(bstAcked, x, t)
	}
}

func (p *benchProbe) receiving(rows []dialects.InboxRow) {
	t := p.now()
	for i := range rows {
		p.stamp(bstReceived, benchIndex(rows[i].Headers), t)
	}
}

func (p *benchProbe) inserted(tx any, rows []dialects.InboxRow, stored []bool) {
	idx := make([]int32, 0, len(rows))
	for i := range rows {
		if i < len(stored) && stored[i] {
			if x := benchIndex(rows[i].Headers); x >= 0 {
				idx = append(idx, x)
			}
		}
	}
	p.addPending(tx, bstStored, idx...)
}

func (p *benchProbe) workerClaimed(rows []dialects.InboxRow) {
	t := p.now()
	for i := range rows {
		p.stamp(bstWorker, benchIndex(rows[i].Headers), t)
	}
}

// handle is the benchmark's handler body: it does nothing but stamp.
func (p *benchProbe) handle(tx any, h map[string]string) {
	i := benchIndex(h)
	if i < 0 {
		p.warm.Add(1)
		return
	}
	if !p.stamp(bstHandler, i, p.now()) {
		p.dups.Add(1)
	}
	p.addPending(tx, bstDone, i)
}

// benchPGDialect is the Postgres dialect with the probe watching its calls. Every
// other method is the dialect's own (promoted), so the relay, the outbox
// and the inbox find the same capabilities (Relayer, Listener, Notifier,
// InboxStore) as on the bare dialect.
type benchPGDialect struct {
	*postgres.Dialect
	p *benchProbe
}

// WatchTx is the dialect's, remembering which transaction the watched one
// wraps, for txKey.
func (d *benchPGDialect) WatchTx(tx pgx.Tx, first func(context.Context) error) pgx.Tx {
	w := d.Dialect.WatchTx(tx, first)
	d.p.watch(w, tx)
	return w
}

func (d *benchPGDialect) Commit(ctx context.Context, tx pgx.Tx) error {
	start := time.Now()
	err := d.Dialect.Commit(ctx, tx)
	d.p.op(bopCommit, start, 1)
	d.p.committed(tx, err)
	return err
}

func (d *benchPGDialect) Rollback(ctx context.Context, tx pgx.Tx) error {
	d.p.takePending(tx)
	return d.Dialect.Rollback(ctx, tx)
}

func (d *benchPGDialect) ClaimOutbox(ctx context.Context, c dialects.OutboxClaim) ([]dialects.ClaimedRow, error) {
	start := time.Now()
	rows, err := d.Dialect.ClaimOutbox(ctx, c)
	d.p.op(bopRelayClaim, start, len(rows))
	d.p.relayClaimed(rows)
	return rows, err
}

func (d *benchPGDialect) AckOutbox(ctx context.Context, token string, seqs []int64, retain bool) (int, error) {
	d.p.acked(seqs)
	start := time.Now()
	n, err := d.Dialect.AckOutbox(ctx, token, seqs, retain)
	d.p.op(bopRelayAck, start, n)
	return n, err
}

func (d *benchPGDialect) InsertInbox(ctx context.Context, tx pgx.Tx, rows []dialects.InboxRow) ([]bool, error) {
	d.p.receiving(rows)
	start := time.Now()
	stored, err := d.Dialect.InsertInbox(ctx, tx, rows)
	d.p.op(bopInboxInsert, start, len(rows))
	if err == nil {
		d.p.inserted(tx, rows, stored)
	}
	return stored, err
}

func (d *benchPGDialect) LockInbox(ctx context.Context, tx pgx.Tx, token string, keys []dialects.InboxKey) ([]dialects.InboxKey, error) {
	start := time.Now()
	held, err := d.Dialect.LockInbox(ctx, tx, token, keys)
	d.p.op(bopInboxLock, start, len(held))
	return held, err
}

func (d *benchPGDialect) InboxSavepoint(ctx context.Context, tx pgx.Tx, a dialects.SavepointAction) error {
	start := time.Now()
	err := d.Dialect.InboxSavepoint(ctx, tx, a)
	d.p.op(bopInboxSavepoint, start, 1)
	return err
}

func (d *benchPGDialect) FinishInbox(ctx context.Context, tx pgx.Tx, token string, outcomes []dialects.InboxOutcome) (int, error) {
	start := time.Now()
	n, err := d.Dialect.FinishInbox(ctx, tx, token, outcomes)
	d.p.op(bopInboxFinish, start, n)
	return n, err
}

func (d *benchPGDialect) ClaimInbox(ctx context.Context, c dialects.InboxClaim) ([]dialects.InboxRow, error) {
	start := time.Now()
	rows, err := d.Dialect.ClaimInbox(ctx, c)
	d.p.op(bopInboxClaim, start, len(rows))
	d.p.workerClaimed(rows)
	return rows, err
}

// benchSQLiteDialect is benchPGDialect for SQLite.
type benchSQLiteDialect struct {
	*sqlite.Dialect
	p *benchProbe
}

func (d *benchSQLiteDialect) Commit(ctx context.Context, tx *sql.Tx) error {
	start := time.Now()
	err := d.Dialect.Commit(ctx, tx)
	d.p.op(bopCommit, start, 1)
	d.p.committed(tx, err)
	return err
}

func (d *benchSQLiteDialect) Rollback(ctx context.Context, tx *sql.Tx) error {
	d.p.takePending(tx)
	return d.Dialect.Rollback(ctx, tx)
}

func (d *benchSQLiteDialect) ClaimOutbox(ctx context.Context, c dialects.OutboxClaim) ([]dialects.ClaimedRow, error) {
	start := time.Now()
	rows, err := d.Dialect.ClaimOutbox(ctx, c)
	d.p.op(bopRelayClaim, start, len(rows))
	d.p.relayClaimed(rows)
	return rows, err
}

func (d *benchSQLiteDialect) AckOutbox(ctx context.Context, token string, seqs []int64, retain bool) (int, error) {
	d.p.acked(seqs)
	start := time.Now()
	n, err := d.Dialect.AckOutbox(ctx, token, seqs, retain)
	d.p.op(bopRelayAck, start, n)
	return n, err
}

func (d *benchSQLiteDialect) InsertInbox(ctx context.Context, tx *sql.Tx, rows []dialects.InboxRow) ([]bool, error) {
	d.p.receiving(rows)
	start := time.Now()
	stored, err := d.Dialect.InsertInbox(ctx, tx, rows)
	d.p.op(bopInboxInsert, start, len(rows))
	if err == nil {
		d.p.inserted(tx, rows, stored)
	}
	return stored, err
}

func (d *benchSQLiteDialect) LockInbox(ctx context.Context, tx *sql.Tx, token string, keys []dialects.InboxKey) ([]dialects.InboxKey, error) {
	start := time.Now()
	held, err := d.Dialect.LockInbox(ctx, tx, token, keys)
	d.p.op(bopInboxLock, start, len(held))
	return held, err
}

func (d *benchSQLiteDialect) InboxSavepoint(ctx context.Context, tx *sql.Tx, a dialects.SavepointAction) error {
	start := time.Now()
	err := d.Dialect.InboxSavepoint(ctx, tx, a)
	d.p.op(bopInboxSavepoint, start, 1)
	return err
}

func (d *benchSQLiteDialect) FinishInbox(ctx context.Context, tx *sql.Tx, token string, outcomes []dialects.InboxOutcome) (int, error) {
	start := time.Now()
	n, err := d.Dialect.FinishInbox(ctx, tx, token, outcomes)
	d.p.op(bopInboxFinish, start, n)
	return n, err
}

func (d *benchSQLiteDialect) ClaimInbox(ctx context.Context, c dialects.InboxClaim) ([]dialects.InboxRow, error) {
	start := time.Now()
	rows, err := d.Dialect.ClaimInbox(ctx, c)
	d.p.op(bopInboxClaim, start, len(rows))
	d.p.workerClaimed(rows)
	return rows, err
}

var (
	_ dialects.Relayer             = (*benchPGDialect)(nil)
	_ dialects.Listener            = (*benchPGDialect)(nil)
	_ dialects.Notifier[pgx.Tx]    = (*benchPGDialect)(nil)
	_ dialects.InboxStore[pgx.Tx]  = (*benchPGDialect)(nil)
	_ dialects.Relayer             = (*benchSQLiteDialect)(nil)
	_ dialects.InboxStore[*sql.Tx] = (*benchSQLiteDialect)(nil)
	_ dialects.Dialect[*sql.Tx]    = (*benchSQLiteDialect)(nil)
	_ dialects.Dialect[pgx.Tx]     = (*benchPGDialect)(nil)
)
