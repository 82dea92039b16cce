package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/durable-go/durable/dialects"
)

// Dialect is the Postgres dialect over a pgx/v5 pool, with pgx.Tx as the
// transaction type. Build it with New; it is safe for concurrent use.
//
// Its exported methods implement dialects.Dialect (and the optional
// interfaces of package dialects) for durable's own packages (outbox, inbox,
// durable.Node, migrations); they are not meant to be called directly.
type Dialect struct {
	pool *pgxpool.Pool
	core
}

var (
	_ dialects.Dialect[pgx.Tx]  = (*Dialect)(nil)
	_ dialects.Notifier[pgx.Tx] = (*Dialect)(nil)
	_ dialects.Listener         = (*Dialect)(nil)

	_ dialects.OutboxTxLister[pgx.Tx] = (*Dialect)(nil)
	_ dialects.TxGuard[pgx.Tx]        = (*Dialect)(nil)
	_ dialects.TxWatcher[pgx.Tx]      = (*Dialect)(nil)
)

// GuardTx returns tx as an inbox handler sees it: a pgx.Tx whose Commit and
// Rollback return dialects.ErrHandlerEndsTx and leave tx open, everything
// else passed through (a nested Begin, a savepoint, still works). See
// dialects.TxGuard.
func (d *Dialect) GuardTx(tx pgx.Tx) pgx.Tx { return guardedTx{tx} }

// guardedTx is a transaction a handler cannot end.
type guardedTx struct{ pgx.Tx }

func (guardedTx) Commit(context.Context) error   { return dialects.ErrHandlerEndsTx }
func (guardedTx) Rollback(context.Context) error { return dialects.ErrHandlerEndsTx }

// WatchTx returns tx guarded as GuardTx does, calling first before the
// first use of it; see dialects.TxWatcher. A failing first makes the
// methods that return an error return it; SendBatch, LargeObjects and Conn
// run anyway (first fails only on a transaction that no longer works).
func (d *Dialect) WatchTx(tx pgx.Tx, first func(context.Context) error) pgx.Tx {
	return &watchedTx{guardedTx: guardedTx{tx}, first: first}
}

// watchedTx is a guardedTx that calls first before its first use.
type watchedTx struct {
	guardedTx
	first func(context.Context) error // nil once called
	err   error                       // first's error
}

// use calls first if it has not been called yet, and returns its error.
func (w *watchedTx) use(ctx context.Context) error {
	if f := w.first; f != nil {
		w.first = nil
		w.err = f(ctx)
	}
	return w.err
}

func (w *watchedTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := w.use(ctx); err != nil {
		return nil, err
	}
	return w.Tx.Begin(ctx)
}

func (w *watchedTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := w.use(ctx); err != nil {
		return 0, err
	}
	return w.Tx.CopyFrom(ctx, table, columns, src)
}

func (w *watchedTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	// first fails only on a transaction that no longer works: the batch
	// then fails on its own.
	_ = w.use(ctx)
	return w.Tx.SendBatch(ctx, b)
}

func (w *watchedTx) LargeObjects() pgx.LargeObjects {
	_ = w.use(context.Background()) // its error surfaces at the next use of tx
	return w.Tx.LargeObjects()
}

func (w *watchedTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := w.use(ctx); err != nil {
		return nil, err
	}
	return w.Tx.Prepare(ctx, name, sql)
}

func (w *watchedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := w.use(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return w.Tx.Exec(ctx, sql, args...)
}

func (w *watchedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := w.use(ctx); err != nil {
		return nil, err
	}
	return w.Tx.Query(ctx, sql, args...)
}

func (w *watchedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := w.use(ctx); err != nil {
		return failedRow{err}
	}
	return w.Tx.QueryRow(ctx, sql, args...)
}

func (w *watchedTx) Conn() *pgx.Conn {
	_ = w.use(context.Background()) // its error surfaces at the next use of tx
	return w.Tx.Conn()
}

// failedRow is a pgx.Row whose Scan returns err.
type failedRow struct{ err error }

func (r failedRow) Scan(...any) error { return r.err }

// New returns the dialect for pool, configured by cfg (nil: the defaults).
// The pool's own configuration (DSN, search_path, pool size) is used as is;
// Config.Schema names the schema of the durable tables instead of relying on
// search_path. New does no I/O; it returns an error for a nil pool and one
// matching ErrSchemaName for an invalid Config.Schema. It does not keep cfg.
func New(pool *pgxpool.Pool, cfg *Config) (*Dialect, error) {
	if pool == nil {
		return nil, errors.New("durable: postgres: New: nil pool")
	}
	c, err := newCore(pgxQuerier{pool}, pgxConn(pool), cfg)
	if err != nil {
		return nil, err
	}
	return &Dialect{pool: pool, core: c}, nil
}

// Begin starts a transaction on the pool.
func (d *Dialect) Begin(ctx context.Context) (pgx.Tx, error) {
	return d.pool.Begin(ctx)
}

// Commit commits tx.
func (d *Dialect) Commit(ctx context.Context, tx pgx.Tx) error {
	return tx.Commit(ctx)
}

// Rollback rolls tx back. Rolling back a committed or rolled back
// transaction returns nil.
func (d *Dialect) Rollback(ctx context.Context, tx pgx.Tx) error {
	if err := tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		return err
	}
	return nil
}

// InsertOutbox writes rows to durable_outbox in tx, all or nothing, in one
// statement, or from 500 rows on with COPY inside a savepoint (one
// subtransaction per such call). A (destination, id)
// that is already stored or repeats within rows fails the call with a
// *dialects.DuplicateError naming the first such row; tx then holds nothing
// of the call and stays usable. Zero CreatedAt and DeliverAt mean now (the
// transaction's start), zero ExpiresAt never, nil Headers none. The delivery
// state fields (Seq, Attempts, Locked*, LastError, SentAt) are not written.
func (d *Dialect) InsertOutbox(ctx context.Context, tx pgx.Tx, rows []dialects.OutboxRow) error {
	switch {
	case len(rows) == 0:
		return nil
	case len(rows) >= copyThreshold:
		return d.copyOutbox(ctx, tx, rows)
	default:
		return d.insertUnnest(ctx, pgxQuerier{tx}, rows)
	}
}

// copyOutbox writes rows with COPY inside a savepoint: a unique violation
// rolls back to the savepoint, so tx stays usable and holds nothing of the
// call, and becomes a DuplicateError.
func (d *Dialect) copyOutbox(ctx context.Context, tx pgx.Tx, rows []dialects.OutboxRow) error {
	var now time.Time
	for i := range rows {
		if rows[i].CreatedAt.IsZero() || rows[i].DeliverAt.IsZero() {
			if err := tx.QueryRow(ctx, sqlNow).Scan(&now); err != nil {
				return d.opError(ctx, "insert outbox", err)
			}
			break
		}
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		return fmt.Errorf("durable: postgres: insert outbox: savepoint: %w", err)
	}
	values := make([]any, len(copyColumns))
	src := pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
		r := &rows[i]
		h, err := headersJSON(r.Headers)
		if err != nil {
			return nil, fmt.Errorf("headers of %q: %w", r.ID, err)
		}
		values[0], values[1], values[2], values[3], values[4], values[5] = r.ID, r.Destination, r.Topic, r.Key, h, payloadOf(r.Payload)
		values[6], values[7], values[8] = orTime(r.CreatedAt, now), orTime(r.DeliverAt, now), nullTime(r.ExpiresAt)
		return values, nil
	})
	_, err = sp.CopyFrom(ctx, d.table, copyColumns, src)
	if err == nil {
		if err := sp.Commit(ctx); err != nil {
			return fmt.Errorf("durable: postgres: insert outbox: release savepoint: %w", err)
		}
		return nil
	}
	if rbErr := sp.Rollback(ctx); rbErr != nil {
		return fmt.Errorf("durable: postgres: insert outbox: %w (and rolling back to the savepoint: %v)", err, rbErr)
	}
	if isUniqueViolation(err) {
		return d.duplicate(ctx, pgxQuerier{tx}, rows, nil, nil)
	}
	return d.opError(ctx, "insert outbox", err)
}

// orTime returns t, or def when t is zero.
func orTime(t, def time.Time) time.Time {
	if t.IsZero() {
		return def
	}
	return t
}

// NotifyOutbox queues, in tx, one notification on OutboxChannel per distinct
// destination, with the destination as payload, in one statement. Postgres
// delivers them when tx commits and drops them when it rolls back.
func (d *Dialect) NotifyOutbox(ctx context.Context, tx pgx.Tx, destinations []string) error {
	return d.notifyOutbox(ctx, pgxQuerier{tx}, destinations)
}

// ListOutboxTx returns the rows of durable_outbox matching q that tx sees,
// those it enqueued included, in enqueue (seq) order; see
// dialects.OutboxTxLister.
func (d *Dialect) ListOutboxTx(ctx context.Context, tx pgx.Tx, q dialects.OutboxQuery) ([]dialects.OutboxRow, error) {
	return d.listOutbox(ctx, pgxQuerier{tx}, q)
}

// InsertInbox stores rows in tx with one INSERT … FROM unnest … ON CONFLICT
// DO NOTHING statement, whatever their number, and reports which were stored;
// see dialects.InboxStore. A second statement, run only when rows were
// stored, takes back a row whose message was moved to the dead letters by a
// transaction that committed while the insert waited for it.
func (d *Dialect) InsertInbox(ctx context.Context, tx pgx.Tx, rows []dialects.InboxRow) ([]bool, error) {
	return d.insertInbox(ctx, pgxQuerier{tx}, rows)
}

// LockInbox locks, with SELECT … FOR UPDATE in tx, the rows of keys still
// leased to token and returns them; see dialects.InboxStore.
func (d *Dialect) LockInbox(ctx context.Context, tx pgx.Tx, token string, keys []dialects.InboxKey) ([]dialects.InboxKey, error) {
	return d.lockInbox(ctx, pgxQuerier{tx}, token, keys)
}

// InboxSavepoint runs a savepoint step in tx; see dialects.SavepointAction.
func (d *Dialect) InboxSavepoint(ctx context.Context, tx pgx.Tx, a dialects.SavepointAction) error {
	return d.inboxSavepoint(ctx, pgxQuerier{tx}, a)
}

// FinishInbox settles a batch in one statement in tx; see
// dialects.InboxStore.
func (d *Dialect) FinishInbox(ctx context.Context, tx pgx.Tx, token string, outcomes []dialects.InboxOutcome) (int, error) {
	return d.finishInbox(ctx, pgxQuerier{tx}, token, outcomes)
}

// pgxConn lends a connection of pool; a broken one is closed instead of
// returned (pgxpool also destroys a connection left inside a transaction).
func pgxConn(pool *pgxpool.Pool) ownConn {
	return func(ctx context.Context) (querier, func(bool), error) {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return nil, nil, err
		}
		return pgxQuerier{conn}, func(broken bool) {
			if broken {
				_ = conn.Conn().Close(context.Background())
			}
			conn.Release()
		}, nil
	}
}

// pgxQuerier adapts a pgx pool, connection or transaction.
type pgxQuerier struct {
	q interface {
		Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
		Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	}
}

func (p pgxQuerier) exec(ctx context.Context, sql string, args ...any) error {
	_, err := p.q.Exec(ctx, sql, args...)
	return err
}

func (p pgxQuerier) query(ctx context.Context, sql string, args ...any) (rows, error) {
	return p.q.Query(ctx, sql, args...)
}
