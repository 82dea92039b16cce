package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"

	"github.com/durable-go/durable/dialects"
)

// SQLDialect is the Postgres dialect over database/sql with pgx's driver
// (github.com/jackc/pgx/v5/stdlib, driver name "pgx"), with *sql.Tx as the
// transaction type. Build it with NewSQL; it is safe for concurrent use.
//
// It runs the same statements as Dialect, except that every batch is
// written with INSERT … FROM unnest: database/sql offers no COPY, and a
// *sql.Tx does not expose its connection.
//
// Like Dialect's, its exported methods implement dialects.Dialect (and the
// optional interfaces of package dialects) for durable's own packages; they
// are not meant to be called directly.
type SQLDialect struct {
	db *sql.DB
	core
}

var (
	_ dialects.Dialect[*sql.Tx]  = (*SQLDialect)(nil)
	_ dialects.Notifier[*sql.Tx] = (*SQLDialect)(nil)
	_ dialects.Listener          = (*SQLDialect)(nil)

	_ dialects.OutboxTxLister[*sql.Tx] = (*SQLDialect)(nil)
)

// NewSQL returns the dialect for db, which must have been opened with pgx's
// database/sql driver:
//
//	import _ "github.com/jackc/pgx/v5/stdlib"
//	db, err := sql.Open("pgx", dsn)
//
// Other Postgres drivers are not supported: the dialect passes Go slices as
// Postgres arrays, which pgx's driver encodes natively.
//
// cfg configures the dialect as for New (nil: the defaults). NewSQL does no
// I/O; it returns an error for a nil db and one matching ErrSchemaName for
// an invalid Config.Schema. It does not keep cfg.
func NewSQL(db *sql.DB, cfg *Config) (*SQLDialect, error) {
	if db == nil {
		return nil, errors.New("durable: postgres: NewSQL: nil db")
	}
	c, err := newCore(sqlQuerier{db}, sqlConn(db), cfg)
	if err != nil {
		return nil, err
	}
	return &SQLDialect{db: db, core: c}, nil
}

// Begin starts a transaction on db with the default isolation level.
func (d *SQLDialect) Begin(ctx context.Context) (*sql.Tx, error) {
	return d.db.BeginTx(ctx, nil)
}

// Commit commits tx.
func (d *SQLDialect) Commit(_ context.Context, tx *sql.Tx) error {
	return tx.Commit()
}

// Rollback rolls tx back. Rolling back a committed or rolled back
// transaction returns nil.
func (d *SQLDialect) Rollback(_ context.Context, tx *sql.Tx) error {
	if err := tx.Rollback(); err != nil && !errors.Is(err, sql.ErrTxDone) {
		return err
	}
	return nil
}

// InsertOutbox writes rows to durable_outbox in tx, all or nothing, in one
// statement whatever their number. A (destination, id) that is already
// stored or repeats within rows fails the call with a
// *dialects.DuplicateError naming the first such row; tx then holds nothing
// of the call and stays usable. Defaults are those of Dialect.InsertOutbox.
func (d *SQLDialect) InsertOutbox(ctx context.Context, tx *sql.Tx, rows []dialects.OutboxRow) error {
	if len(rows) == 0 {
		return nil
	}
	return d.insertUnnest(ctx, sqlQuerier{tx}, rows)
}

// NotifyOutbox queues, in tx, one notification on OutboxChannel per distinct
// destination, with the destination as payload, in one statement. Postgres
// delivers them when tx commits and drops them when it rolls back.
func (d *SQLDialect) NotifyOutbox(ctx context.Context, tx *sql.Tx, destinations []string) error {
	return d.notifyOutbox(ctx, sqlQuerier{tx}, destinations)
}

// ListOutboxTx is Dialect.ListOutboxTx for a *sql.Tx.
func (d *SQLDialect) ListOutboxTx(ctx context.Context, tx *sql.Tx, q dialects.OutboxQuery) ([]dialects.OutboxRow, error) {
	return d.listOutbox(ctx, sqlQuerier{tx}, q)
}

// InsertInbox is Dialect.InsertInbox for a *sql.Tx.
func (d *SQLDialect) InsertInbox(ctx context.Context, tx *sql.Tx, rows []dialects.InboxRow) ([]bool, error) {
	return d.insertInbox(ctx, sqlQuerier{tx}, rows)
}

// LockInbox is Dialect.LockInbox for a *sql.Tx.
func (d *SQLDialect) LockInbox(ctx context.Context, tx *sql.Tx, token string, keys []dialects.InboxKey) ([]dialects.InboxKey, error) {
	return d.lockInbox(ctx, sqlQuerier{tx}, token, keys)
}

// InboxSavepoint is Dialect.InboxSavepoint for a *sql.Tx.
func (d *SQLDialect) InboxSavepoint(ctx context.Context, tx *sql.Tx, a dialects.SavepointAction) error {
	return d.inboxSavepoint(ctx, sqlQuerier{tx}, a)
}

// FinishInbox is Dialect.FinishInbox for a *sql.Tx.
func (d *SQLDialect) FinishInbox(ctx context.Context, tx *sql.Tx, token string, outcomes []dialects.InboxOutcome) (int, error) {
	return d.finishInbox(ctx, sqlQuerier{tx}, token, outcomes)
}

// sqlConn lends a connection of db; a broken one is discarded, never
// returned to the pool with a transaction open.
func sqlConn(db *sql.DB) ownConn {
	return func(ctx context.Context) (querier, func(bool), error) {
		conn, err := db.Conn(ctx)
		if err != nil {
			return nil, nil, err
		}
		return sqlQuerier{conn}, func(broken bool) {
			if broken {
				_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			}
			_ = conn.Close()
		}, nil
	}
}

// sqlQuerier adapts a *sql.DB, *sql.Conn or *sql.Tx.
type sqlQuerier struct {
	q interface {
		ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
		QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	}
}

func (s sqlQuerier) exec(ctx context.Context, query string, args ...any) error {
	_, err := s.q.ExecContext(ctx, query, args...)
	return err
}

func (s sqlQuerier) query(ctx context.Context, query string, args ...any) (rows, error) {
	rs, err := s.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rs}, nil
}

// sqlRows gives *sql.Rows the Close of pgx.Rows. Callers read rows to the
// end, where pgx's driver reports a failed statement through Err.
type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { _ = r.Rows.Close() }
