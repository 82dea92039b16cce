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
// # One contract
//
// Dialect is the one interface a dialect implements: the enqueue path
// (InsertOutbox), the relay's operations (Relayer, embedded), the inbox's
// (InboxStore, embedded), the leases of the housekeeping (Leaser, embedded)
// and the dead letters both sides write (ListDeadLetters,
// ReplayDeadLetters, PurgeDeadLetters). outbox.New, outbox.NewRelay and
// inbox.New all take a Dialect, so a dialect that lacks an operation fails
// to compile rather than at run time. Relayer, InboxStore and Leaser are
// named parts of Dialect, for documentation and for callers that need only
// one of them.
//
// What not every database can do is optional, in capability interfaces that
// callers discover by type assertion, as database/sql does with its driver
// interfaces: Notifier (wake relays at commit) and Listener (receive those
// wake-ups). The Postgres dialects implement both; SQLite neither.
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

	// Relayer holds the relay's operations: claiming outbox rows with a
	// lease and settling them (see outbox.Relay).
	Relayer

	// InboxStore holds the inbox's operations: storing delivered messages,
	// leasing them to workers and settling them (see inbox.Inbox).
	InboxStore[TTx]

	// Leaser holds the named leases that let one process at a time do work
	// such as the housekeeping (see dialects.Leaser).
	Leaser

	// ListDeadLetters returns the dead letters of either side matching q,
	// in the order they were first recorded (seq), for inspection, tools
	// and tests. See DeadLetterQuery for what matches.
	ListDeadLetters(ctx context.Context, q DeadLetterQuery) ([]DeadLetterRow, error)

	// ReplayDeadLetters puts the pending inbox dead letters matching q (at
	// most q.Limit, oldest first, when it is set) back into the inbox as
	// fresh messages, in one transaction: ready, attempts 0, run_at and
	// replayed_at now, no expiry (a replay is a decision to process the
	// message), the error history kept. It stamps replayed_at on each dead
	// letter it replayed and returns how many. Only the inbox side can be
	// replayed: q.Side must be empty or SideInbox, and q.IncludeReplayed is
	// ignored. A dead letter already replayed and not failed since is not
	// pending, so replaying twice does not duplicate; neither does a dead
	// letter whose (source, id) is in the inbox already.
	ReplayDeadLetters(ctx context.Context, q DeadLetterQuery) (int, error)

	// PurgeDeadLetters deletes the dead letters matching q (at most
	// q.Limit, oldest first, when it is set) in one statement and returns
	// how many it deleted.
	PurgeDeadLetters(ctx context.Context, q DeadLetterQuery) (int, error)
}

// Notifier is implemented by dialects that can wake relays at commit time
// (Postgres NOTIFY). Callers discover it by type assertion.
type Notifier[TTx any] interface {
	// NotifyOutbox queues a wake-up for the relays of the given destinations
	// that the database delivers when tx commits, and never if it rolls back.
	NotifyOutbox(ctx context.Context, tx TTx, destinations []string) error
}

// Listener is implemented by dialects whose database can push wake-ups to
// relays (Postgres LISTEN on the channel NotifyOutbox writes to). Relays
// discover it by type assertion. Wake-ups are hints: they are lost while the
// listening connection is down, so a relay polls as well.
type Listener interface {
	// ListenOutbox holds a connection of its own that listens for outbox
	// notifications until ctx ends, then returns nil. For each notification
	// it calls wake with the destination it names. After every (re)connect it
	// calls wake("") — any destination — because notifications sent while it
	// was disconnected are lost. A failed or broken connection is reported to
	// report (when not nil) and opened again with exponential backoff and
	// jitter. wake and report are called from one goroutine and must not
	// block.
	ListenOutbox(ctx context.Context, wake func(destination string), report func(error)) error
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
