// Package dialects defines the storage contract between durable's outbox and
// inbox and a concrete database. It is the only layer that holds SQL.
//
// A Dialect is generic over the transaction type of its driver, so that
// outbox.Enqueue and inbox handlers take exactly the user's transaction type,
// checked by the compiler:
//
//	postgres.New(pool, nil)  // Dialect[pgx.Tx]   (pgx/v5 pool)
//	postgres.NewSQL(db, nil) // Dialect[*sql.Tx]  (pgx stdlib driver)
//	sqlite.New(db, nil)      // Dialect[*sql.Tx]  (modernc.org/sqlite)
//
// # Roles
//
// Dialect is the implementer's checklist: everything a dialect of this
// module implements, and what the conformance suite in package dialecttest
// checks. Consumers do not take all of it. Each takes the role it calls,
// composed of the named parts of Dialect, so that what a component needs of
// the database reads off its signature and a wrapper (for tests or
// observation) implements no more than that:
//
//	outbox.New             Enqueuer[TTx]      Name, CheckSchema, InsertOutbox, the dead letters
//	outbox.NewRelay        RelayStore         CheckSchema, Relayer, Leaser, NodeControl, PurgeDeadLetters
//	inbox.New              InboxDialect[TTx]  Name, CheckSchema, TxBeginner, InboxStore, Leaser, NodeControl, the dead letters
//	durable.NewNode        NodeDialect[TTx]   the three above and Registry
//	durabletest.Require*   Inspector          Name, ListOutbox, ListInbox
//
// Inspector's listings serve tests, tools and examples, never a hot path.
// Controller (pauses, the audit, throughput counters) serves operators'
// tools: the CLI through dsn.Admin, and a console.
// The Tx variants of durabletest's helpers take the Enqueuer of the
// transaction's type (and find OutboxTxLister on it), and durabletest.NewPair,
// which runs two Nodes and inspects both sides, the whole Dialect.
//
// Every Dialect plays every role, so a dialect of this module fits every
// consumer, and the transaction type is inferred from it:
// outbox.New(d, nil) with d a *postgres.Dialect is an Outbox[pgx.Tx].
//
// # Capabilities
//
// What not every database can do is optional, in capability interfaces that
// callers discover by type assertion, as database/sql does with its driver
// interfaces: Notifier (wake relays at commit), Listener (receive those
// wake-ups), OutboxTxLister (read the outbox inside the caller's
// transaction, for test helpers such as durabletest.RequireEnqueuedTx),
// DurableBeginner (a transaction whose commit reaches the disk, where
// ordinary commits may not), TxGuard (a transaction a handler cannot end)
// and TxWatcher (a transaction that reports its first use). The Postgres
// dialects implement Notifier, Listener and OutboxTxLister, the pgx one
// TxGuard and TxWatcher too; SQLite OutboxTxLister and DurableBeginner.
//
// # Outside implementations
//
// Dialect and its roles are implemented only inside this module, by the
// dialects of packages postgres and sqlite. An implementation elsewhere is
// possible (dialecttest is public and checks one) but is not covered by
// durable's compatibility promise: methods may be added to Dialect and to
// its roles, and their contracts refined, in minor releases, so an outside
// implementation can break on upgrade. A wrapper that embeds a dialect of
// this module and overrides some of its methods keeps compiling.
//
// Every dialect passes the conformance suite in package dialecttest.
package dialects

import (
	"context"
	"time"

	"github.com/durable-go/durable/transport"
)

// SchemaVersion is the migration version this build of durable needs. A
// dialect refuses to work against a database whose durable_schema_version
// table is missing or older (see SchemaError), and works against a newer
// one.
//
// Compatibility promise: a migration never breaks the build of the release
// before it. A migration adds (tables, nullable or defaulted columns,
// indexes); what the previous release still reads or writes is removed only
// by a migration of a later release, once no build in use needs it. So a
// rolling deploy runs the migrations first, then replaces the nodes one at
// a time, old and new builds working side by side on the same database.
const SchemaVersion = 4

// migrationNames lists the migration names, index i holding version i+1.
var migrationNames = []string{"0001_init", "0002_outbox_claim", "0003_nodes", "0004_control"}

// MigrationNames returns the names of durable's migrations, index i holding
// version i+1, up to SchemaVersion. The slice is a copy the caller may keep
// or change.
func MigrationNames() []string {
	return append([]string(nil), migrationNames...)
}

// Dialect is the storage contract of durable for one database driver, with
// TTx the driver's transaction type: the implementer's checklist, composed
// of the named parts each consumer takes (see "Roles" in the package doc).
//
// Methods that take a TTx run inside the caller's transaction and never
// commit or roll it back. Methods without a TTx use their own connection or
// transaction.
type Dialect[TTx any] interface {
	// Name is the dialect's name: "postgres" or "sqlite".
	Name() string

	// CheckSchema verifies that the durable migrations ran up to
	// SchemaVersion. It returns a *SchemaError (errors.Is ErrSchema) that
	// names the missing migration and how to apply it.
	CheckSchema(ctx context.Context) error

	// TxBeginner holds the transaction lifecycle: Begin, Commit and
	// Rollback.
	TxBeginner[TTx]

	// Enqueuer holds the enqueue path (InsertOutbox; see outbox.Outbox).
	Enqueuer[TTx]

	// Relayer holds the relay's operations: claiming outbox rows with a
	// lease and settling them (see outbox.Relay).
	Relayer

	// InboxStore holds the inbox's operations: storing delivered messages,
	// leasing them to workers and settling them (see inbox.Inbox).
	InboxStore[TTx]

	// Leaser holds the named leases that let one process at a time do work
	// such as the housekeeping (see dialects.Leaser).
	Leaser

	// Registry holds the running incarnations (durable_nodes) and
	// releases the claims of those that are gone (see durable.Node).
	Registry

	// Inspector holds the listings of the outbox and the inbox, for
	// inspection, tools and tests (ListOutbox, ListInbox).
	Inspector

	// DeadLetterStore holds the dead letters both sides write: listing,
	// counting, replaying and purging them (see package deadletter).
	DeadLetterStore

	// Controller holds the operators' part: pauses of destinations and
	// inbox queues that every node obeys, the audit of operator actions
	// and the per-minute throughput counters.
	Controller

	// NodeControl holds what the relay and the inbox call of it (and the
	// throughput housekeeping).
	NodeControl
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

// OutboxTxLister is implemented by dialects that can read durable_outbox in
// the caller's transaction, which sees the rows that transaction enqueued
// before it commits (ListOutbox, on a connection of its own, sees only
// committed rows, and on SQLite, whose dialect has one connection, waits for
// the caller's transaction to end). Test helpers discover it by type
// assertion (durabletest.RequireEnqueuedTx). Every dialect of this module
// implements it.
type OutboxTxLister[TTx any] interface {
	// ListOutboxTx returns the outbox rows matching q that tx sees, in
	// enqueue (seq) order, as ListOutbox does. It never commits or rolls
	// back tx; on Postgres an error (a missing schema) leaves tx aborted.
	ListOutboxTx(ctx context.Context, tx TTx, q OutboxQuery) ([]OutboxRow, error)
}

// TxGuard is implemented by dialects whose transaction type can be wrapped
// so that a handler cannot end the transaction the inbox runs it in:
// GuardTx returns tx as a handler sees it, everything passed through but
// Commit and Rollback, which return ErrHandlerEndsTx. The inbox hands
// handlers the guarded transaction. A handler that ended it would commit or
// undo the writes of the handlers before it in the batch, whose messages
// the inbox then runs again. The pgx dialect implements it (pgx.Tx is an
// interface); database/sql's *sql.Tx is a struct that cannot be wrapped, so
// there the rule is only documented.
type TxGuard[TTx any] interface {
	GuardTx(tx TTx) TTx
}

// TxWatcher is implemented by dialects that can tell when a handler first
// sends something through its transaction. WatchTx returns tx guarded as
// GuardTx does, and calls first, once, before the first statement, batch,
// copy, prepare, nested Begin, large-object or Conn use of the returned
// transaction; if first fails, that call returns its error instead of
// running (Conn and LargeObjects, which return no error, run anyway). The
// inbox sets a handler's savepoint there, so that a handler that never
// uses its transaction costs no savepoint round trip. The pgx dialect
// implements it.
type TxWatcher[TTx any] interface {
	WatchTx(tx TTx, first func(context.Context) error) TTx
}

// DurableBeginner is implemented by dialects whose ordinary commits may not
// survive a power loss or an operating system crash, such as SQLite in WAL
// mode with synchronous=NORMAL, which syncs the log to disk only at
// checkpoints. BeginDurable starts a transaction whose commit reaches the
// disk before Commit returns.
//
// The inbox stores a delivered batch in such a transaction, because the
// acknowledgement that follows its commit lets the sender delete its copy:
// a commit lost afterwards would lose the message. Other transactions do not
// need it (what they write is lost together with what caused it, and done
// again).
type DurableBeginner[TTx any] interface {
	// BeginDurable starts the transaction. End it with the dialect's Commit
	// or Rollback (not the driver's own), which also restore the
	// connection's usual setting.
	BeginDurable(ctx context.Context) (TTx, error)
}

// OutboxRow is one message for one destination, as stored in durable_outbox:
// the envelope the relay sends (transport.Envelope, embedded), and what the
// outbox keeps besides.
//
// Of the envelope, InsertOutbox stores everything but SendAttempt (a new row
// has made no attempt); a zero CreatedAt or DeliverAt is stored as the
// database's now.
// SendAttempt is the attempts column: the number of the latest send
// attempt, 0 before the first; ClaimOutbox counts the claim's attempt, so
// a claimed row's Envelope is ready to send as it is.
type OutboxRow struct {
	transport.Envelope
	Seq         int64 // assigned by the database; enqueue order
	Destination string
	// LeaseToken is the token of the relay claim that leases the row
	// (OutboxClaim.Token), "" when not leased. Its column is named
	// locked_by, for compatibility with the schema's first version.
	LeaseToken  string
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
