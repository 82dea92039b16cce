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
type Dialect struct {
	pool *pgxpool.Pool
	core
}

var (
	_ dialects.Dialect[pgx.Tx]  = (*Dialect)(nil)
	_ dialects.Notifier[pgx.Tx] = (*Dialect)(nil)
)

// New returns the dialect for pool. The pool's own configuration (DSN,
// search_path, pool size) is used as is; see WithSchema to name the schema of
// the durable tables instead of relying on search_path.
func New(pool *pgxpool.Pool, opts ...Option) *Dialect {
	return &Dialect{pool: pool, core: newCore(pgxQuerier{pool}, opts)}
}

// Name returns "postgres".
func (d *Dialect) Name() string { return name }

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

// CheckSchema verifies that the durable migrations ran up to
// dialects.SchemaVersion, and returns a *dialects.SchemaError naming the
// missing migration otherwise (or saying the schema is newer than this build).
func (d *Dialect) CheckSchema(ctx context.Context) error {
	return d.checkSchema(ctx)
}

// InsertOutbox writes rows to durable_outbox in tx, all or nothing, in one
// statement, or from CopyThreshold rows on with COPY inside a savepoint (one
// subtransaction per such call). A (destination, id)
// that is already stored or repeats within rows fails the call with a
// *dialects.DuplicateError naming the first such row; tx then holds nothing
// of the call and stays usable. Zero CreatedAt and DeliverAt mean now (the
// transaction's start), zero ExpiresAt never, nil Headers none. The delivery
// state fields (Seq, Attempts, Locked*, LastError, SentAt) are not written.
func (d *Dialect) InsertOutbox(ctx context.Context, tx pgx.Tx, rows []dialects.OutboxRow) error {
	if d.err != nil {
		return d.err
	}
	switch {
	case len(rows) == 0:
		return nil
	case len(rows) >= CopyThreshold:
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
		values[0], values[1], values[2], values[3], values[4], values[5] = r.ID, r.Destination, r.Topic, r.Key, h, payloadOf(r)
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

// ListOutbox returns the rows of durable_outbox matching q in enqueue (seq)
// order, every column included; NULL times are zero.
func (d *Dialect) ListOutbox(ctx context.Context, q dialects.OutboxQuery) ([]dialects.OutboxRow, error) {
	return d.listOutbox(ctx, q)
}

// NotifyOutbox queues, in tx, one notification on OutboxChannel per distinct
// destination, with the destination as payload, in one statement. Postgres
// delivers them when tx commits and drops them when it rolls back.
func (d *Dialect) NotifyOutbox(ctx context.Context, tx pgx.Tx, destinations []string) error {
	return d.notifyOutbox(ctx, pgxQuerier{tx}, destinations)
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
