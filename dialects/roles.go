package dialects

import "context"

// The roles of Dialect: each consumer takes the one it calls (see "Roles" in
// the package doc). Every Dialect implements all of them.

// TxBeginner is the transaction lifecycle of a dialect's database, part of
// InboxDialect (the inbox's batch and inline transactions) and of Dialect.
type TxBeginner[TTx any] interface {
	// Begin starts a transaction on the dialect's database.
	Begin(ctx context.Context) (TTx, error)
	// Commit commits tx.
	Commit(ctx context.Context, tx TTx) error
	// Rollback rolls tx back. Rolling back a finished transaction is not an
	// error.
	Rollback(ctx context.Context, tx TTx) error
}

// Enqueuer is the role outbox.New takes: what an Outbox calls. Enqueue
// needs Name, CheckSchema and InsertOutbox; the dead-letter methods serve
// Outbox.DeadLetters, Replay and PurgeDeadLetters.
type Enqueuer[TTx any] interface {
	// Name is the dialect's name; see Dialect.
	Name() string
	// CheckSchema verifies the migrations; see Dialect.
	CheckSchema(ctx context.Context) error

	// InsertOutbox writes rows to durable_outbox in tx, all or nothing. A
	// row whose (Destination, ID) already exists makes the whole call fail
	// with a *DuplicateError (errors.Is ErrDuplicateID) and leaves tx usable,
	// with nothing of the call written.
	InsertOutbox(ctx context.Context, tx TTx, rows []OutboxRow) error

	DeadLetterStore
}

// RelayStore is the role outbox.NewRelay takes: what a Relay calls. It does
// not depend on the transaction type: the relay claims and settles rows in
// statements of its own. Leaser and PurgeDeadLetters serve the relay's
// housekeeping, OutboxStats (in Relayer) its Stats and metrics, NodeControl
// its pauses and throughput counters.
type RelayStore interface {
	// CheckSchema verifies the migrations; see Dialect.
	CheckSchema(ctx context.Context) error

	Relayer
	Leaser
	NodeControl

	// PurgeDeadLetters deletes dead letters; see Dialect.
	PurgeDeadLetters(ctx context.Context, q DeadLetterQuery) (int, error)
}

// InboxDialect is the role inbox.New takes: what an Inbox calls. Leaser and
// PurgeDeadLetters serve its housekeeping, NodeControl its pauses and
// throughput counters; ListDeadLetters and
// ReplayDeadLetters its DeadLetters and Replay.
type InboxDialect[TTx any] interface {
	// Name is the dialect's name; see Dialect.
	Name() string
	// CheckSchema verifies the migrations; see Dialect.
	CheckSchema(ctx context.Context) error

	TxBeginner[TTx]
	InboxStore[TTx]
	Leaser
	NodeControl

	DeadLetterStore
}

// NodeDialect is the role durable.NewNode takes: what its outbox, relay and
// inbox take, and the Registry of its incarnations.
type NodeDialect[TTx any] interface {
	Enqueuer[TTx]
	RelayStore
	InboxDialect[TTx]
	Registry
}

// Inspector reads the outbox and the inbox for inspection, tools and tests,
// never on a hot path; durabletest's helpers take it.
type Inspector interface {
	// Name is the dialect's name; see Dialect.
	Name() string

	// ListOutbox returns outbox rows in enqueue order, for inspection and
	// tests. It is not the relay's claim path.
	ListOutbox(ctx context.Context, q OutboxQuery) ([]OutboxRow, error)

	// ListInbox returns the inbox rows matching q in seq order, for
	// inspection, tools and tests.
	ListInbox(ctx context.Context, q InboxQuery) ([]InboxRow, error)
}
