// Package dialects defines the storage contract between durable's outbox and
// inbox and a concrete database. It is the only layer that holds SQL.
//
// A Dialect is generic over the transaction type of its driver, so that
// outbox.Enqueue and inbox handlers take exactly the user's transaction type,
// checked by the compiler:
//
//	postgres.New(pool)     // Dialect[pgx.Tx]   (pgx/v5 pool)
//	postgres.NewSQL(db)    // Dialect[*sql.Tx]  (pgx stdlib driver)
//	sqlite.New(db)         // Dialect[*sql.Tx]  (modernc.org/sqlite)
//
// Every dialect passes the conformance suite in package dialecttest.
package dialects

import (
	"context"
	"time"
)

// SchemaVersion is the migration version this build of durable needs. A
// dialect refuses to work against a database whose durable_schema_version
// table is missing or older (see SchemaError).
const SchemaVersion = 1

// Migrations lists the migration names, index i holding version i+1.
var Migrations = []string{"0001_init"}

// Dialect is the storage contract of durable for one database driver, with
// TTx the driver's transaction type.
//
// Methods that take a TTx run inside the caller's transaction and never
// commit or roll it back. Methods without a TTx use their own connection or
// transaction.
type Dialect[TTx any] interface {
	// Name is the dialect's name: "postgres" or "sqlite".
	Name() string

	// Begin starts a transaction on the dialect's database.
	Begin(ctx context.Context) (TTx, error)
	// Commit commits tx.
	Commit(ctx context.Context, tx TTx) error
	// Rollback rolls tx back. Rolling back a finished transaction is not an
	// error.
	Rollback(ctx context.Context, tx TTx) error

	// CheckSchema verifies that the durable migrations ran up to
	// SchemaVersion. It returns a *SchemaError (errors.Is ErrSchema) that
	// names the missing migration and how to apply it.
	CheckSchema(ctx context.Context) error

	// InsertOutbox writes rows to durable_outbox in tx, all or nothing. A
	// row whose (Destination, ID) already exists makes the whole call fail
	// with a *DuplicateError (errors.Is ErrDuplicateID) and leaves tx usable,
	// with nothing of the call written.
	InsertOutbox(ctx context.Context, tx TTx, rows []OutboxRow) error

	// ListOutbox returns outbox rows in enqueue order, for inspection and
	// tests. It is not the relay's claim path.
	ListOutbox(ctx context.Context, q OutboxQuery) ([]OutboxRow, error)
}

// Notifier is implemented by dialects that can wake relays at commit time
// (Postgres NOTIFY). Callers discover it by type assertion.
type Notifier[TTx any] interface {
	// NotifyOutbox queues a wake-up for the relays of the given destinations
	// that the database delivers when tx commits, and never if it rolls back.
	NotifyOutbox(ctx context.Context, tx TTx, destinations []string) error
}

// OutboxRow is one message for one destination, as stored in durable_outbox.
type OutboxRow struct {
	Seq         int64 // assigned by the database; enqueue order
	ID          string
	Destination string
	Topic       string
	Key         string
	Headers     map[string]string
	Payload     []byte
	CreatedAt   time.Time
	DeliverAt   time.Time // zero: now
	ExpiresAt   time.Time // zero: never
	Attempts    int
	LockedBy    string
	LockedUntil time.Time
	LastError   string
	SentAt      time.Time
}

// OutboxQuery filters ListOutbox. Zero fields do not filter.
type OutboxQuery struct {
	Destination string
	IDs         []string
	Limit       int // 0: no limit
}
