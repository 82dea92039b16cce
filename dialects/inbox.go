package dialects

import (
	"context"
	"time"

	"github.com/durable-go/durable/transport"
)

// InboxStore is the storage contract of the inbox (package inbox): storing
// delivered messages keyed by (source, id), leasing them to workers, settling
// each one in the worker's transaction, rescuing expired leases, retention,
// statistics. It is part of InboxDialect, the role inbox.New takes, and of
// Dialect, whose dead-letter methods serve the inbox's dead letters too.
// Listing the inbox's rows is Inspector's ListInbox.
//
// Methods that take a TTx run in the caller's transaction and never commit or
// roll it back; the others are one statement or one transaction of their own.
//
// # Leases and fencing
//
// ClaimInbox leases ready rows to a token chosen by the caller, unique per
// claim, and counts an attempt. The worker then opens its batch transaction
// and calls LockInbox, which returns the rows still leased to that token and
// makes sure nobody else changes them until the transaction ends (row locks
// on Postgres; the write lock of the immediate transaction on SQLite). Only
// for those rows does it run handlers, and FinishInbox settles them, again
// guarded by state 'running' and the token. A worker whose lease expired and
// was rescued (RescueInbox) or claimed again therefore changes nothing: its
// token no longer matches. RescueInbox skips rows locked by a live batch, so
// a lease only needs to cover the time from claim to lock.
//
// Rows are named by (source, id) with the token; never by seq alone, which
// SQLite reuses after the last row is deleted.
//
// # Time
//
// On Postgres every instant (run_at, lease ends, handled_at, error times,
// expiry) is taken from the database's clock and callers pass durations. On
// SQLite, an embedded database, the process clock is the database's clock.
//
// # Dead letters
//
// FinishInbox moves a message that failed for good to durable_dead_letters
// (SideInbox, an empty destination); see DeadLetterRow.
type InboxStore[TTx any] interface {
	// InsertInbox stores rows in tx, keyed by (source, id), with one
	// multi-row statement (chunks of them on SQLite) and ON CONFLICT DO
	// NOTHING, in the order given (seq follows it). It reports for each row
	// whether it was stored: false for a row whose (source, id) is in the
	// inbox already, in the inbox's dead letters, or earlier in rows. A
	// stored row is ready, with zero attempts; zero CreatedAt and RunAt mean
	// now, zero ExpiresAt never, nil Headers none. tx stays usable after
	// duplicates.
	//
	// A row whose State is InboxStateHandled asks to be stored handled at
	// once (one attempt, HandledAt now), for a caller that runs its handler
	// in tx before it commits (the inbox's inline handling). It is, when
	// it is due (RunAt not after now), not expired, and no other unfinished
	// row of its (source, key) is in the inbox; otherwise it is stored
	// ready. The rows of the same call are not part of that check (on
	// Postgres they are one statement), so a caller asks it for at most
	// the first row of a key in rows. A row stored handled keeps its
	// LeaseToken (if not empty) as its lease token, so that FinishInbox
	// with that token can still settle it otherwise (retried, dead) in tx
	// when its handler fails; a row stored ready has none. InsertInbox sets
	// the State of every stored row to what it stored (InboxStateReady or
	// InboxStateHandled). The other fields of rows are ignored.
	InsertInbox(ctx context.Context, tx TTx, rows []InboxRow) ([]bool, error)

	// ClaimInbox leases up to c.Limit due ready rows (run_at ≤ now) to
	// c.Token for c.Lease, in one statement of its own, and returns them in
	// seq order with their new state: running, Attempts counted (+1), the
	// lease set. Concurrent claims never return the same row (FOR UPDATE
	// SKIP LOCKED on Postgres; one writer on SQLite).
	//
	// A row with an ordering key is claimed only when it is the oldest row
	// of its (source, key) not yet handled: rows sharing a key are never
	// leased together and are processed in seq order; a row waiting for a
	// retry holds the later ones back. A row whose ExpiresAt has passed is
	// claimed with Expired set and its attempt not counted; the caller
	// dead-letters it.
	ClaimInbox(ctx context.Context, c InboxClaim) ([]InboxRow, error)

	// LockInbox returns, of keys, those still running under token, and holds
	// them for tx: until tx ends, nobody else changes them. It is the first
	// statement of a worker's batch transaction.
	LockInbox(ctx context.Context, tx TTx, token string, keys []InboxKey) ([]InboxKey, error)

	// InboxSavepoint runs one step of the per-message savepoint protocol in
	// tx (see SavepointAction).
	InboxSavepoint(ctx context.Context, tx TTx, a SavepointAction) error

	// FinishInbox settles claimed rows in tx, in bulk (one statement on
	// Postgres), guarded by state 'running' and token, and returns how many
	// rows it changed; a row leased to another token or no longer running
	// is left alone and not counted. A row InsertInbox stored handled under
	// token (its LeaseToken) is settled too: that is how a caller handling
	// rows inline retries or dead-letters those whose handler failed. See
	// InboxOutcome.
	FinishInbox(ctx context.Context, tx TTx, token string, outcomes []InboxOutcome) (int, error)

	// RescueInbox makes up to limit running rows whose lease expired ready
	// again (run_at now, lease cleared), recording the expiry as their
	// last_error and in their error history ("lease of <worker> expired
	// before it finished": it ends with RescuedError), and returns how many
	// it rescued. The attempt stays counted. Rows held by a live batch
	// transaction (LockInbox) are skipped.
	RescueInbox(ctx context.Context, limit int) (int, error)

	// PurgeInbox deletes up to limit handled rows whose handled_at is more
	// than age ago, oldest first, through the handled_at index, and returns
	// how many it deleted. Callers repeat it while it returns limit.
	PurgeInbox(ctx context.Context, age time.Duration, limit int) (int, error)

	// InboxStats counts the inbox's rows by state, the rows handled in the
	// last minute and the pending dead letters, in total and per topic. It
	// reads the whole inbox table.
	InboxStats(ctx context.Context) (InboxStats, error)
}

// States of durable_inbox.state.
const (
	InboxStateReady   = "ready"   // waiting for run_at, then for a worker
	InboxStateRunning = "running" // leased to a worker
	InboxStateHandled = "handled" // done; kept for the dedupe window
)

// InboxRow is a row of durable_inbox: the envelope as delivered
// (transport.Envelope, embedded), and what the inbox keeps besides.
//
// Two envelope fields are the sender's and are not stored: DeliverAt
// becomes the first RunAt (Inbox.Deliver sets it so), and SendAttempt is
// dropped, the inbox counting its own Attempts. Rows read back have both
// zero.
type InboxRow struct {
	transport.Envelope
	Seq        int64 // assigned by the database; arrival order
	Source     string
	ReceivedAt time.Time
	State      string // InboxStateReady, InboxStateRunning or InboxStateHandled
	// Attempts counts the handler attempts at the receiver (not the
	// sender's SendAttempt).
	Attempts int
	// RunAt is the receiver's own schedule: the earliest next handler
	// attempt (the run_at column). The sender's DeliverAt is the first
	// one; retries and snoozes move it. For InsertInbox, zero is now.
	RunAt       time.Time
	LeaseToken  string // the claim's token (InboxClaim.Token)
	LockedBy    string // the claiming worker's name (InboxClaim.Worker)
	LockedUntil time.Time
	LastError   string
	Errors      []AttemptError
	HandledAt   time.Time
	ReplayedAt  time.Time // zero: not a replay

	// Expired is set by ClaimInbox when ExpiresAt had passed at claim time
	// (by the database's clock): the row must not be handled.
	Expired bool
}

// InboxKey names an inbox row.
type InboxKey struct {
	Source string
	ID     string
}

// InboxClaim asks ClaimInbox for rows.
type InboxClaim struct {
	// Token identifies this claim and guards every later change to the
	// claimed rows. It must be unique per claim, across processes too, and
	// not empty.
	Token string
	// Worker names the claimer; it becomes locked_by.
	Worker string
	// Limit bounds the number of rows claimed; it must be positive.
	Limit int
	// Lease is how long the rows stay leased (locked_until = now + Lease);
	// it must be positive.
	Lease time.Duration
	// Topics, when not empty, restricts the claim to these topics.
	Topics []string
	// ExcludeTopics are never claimed.
	ExcludeTopics []string
}

// RescuedError ends the last_error RescueInbox records: a row whose
// last_error ends with it lost its last attempt to a worker that died or
// stalled past its lease, whatever the handler would have done.
const RescuedError = " expired before it finished"

// InboxOutcomeKind says how FinishInbox settles a row.
type InboxOutcomeKind uint8

const (
	// InboxHandled: state handled, handled_at now, lease cleared.
	InboxHandled InboxOutcomeKind = iota + 1
	// InboxRetry: state ready, run_at now + RetryAfter, lease cleared.
	InboxRetry
	// InboxDead: moved to durable_dead_letters with Reason, deleted from the
	// inbox, in tx.
	InboxDead
)

// InboxOutcome settles one claimed row.
type InboxOutcome struct {
	Source string
	ID     string
	Kind   InboxOutcomeKind
	// Error, when not empty, becomes last_error and is appended to the
	// error history with the row's attempt number and the time.
	Error string
	// RetryAfter delays the next attempt of an InboxRetry.
	RetryAfter time.Duration
	// UndoAttempt takes back the attempt the claim counted (InboxRetry): the
	// message was not tried (released at shutdown) or asked to be tried
	// later without a failure (a snooze).
	UndoAttempt bool
	// Reason is the dead-letter reason of an InboxDead.
	Reason string
}

// SavepointAction is a step of the per-message savepoint protocol a worker
// follows in its batch transaction: a savepoint before each handler, so a
// failing handler is rolled back alone. Combined steps cost one round trip.
type SavepointAction uint8

const (
	// SavepointSet establishes the savepoint.
	SavepointSet SavepointAction = iota + 1
	// SavepointRelease releases it, keeping the work done since.
	SavepointRelease
	// SavepointReleaseSet releases it and establishes it again.
	SavepointReleaseSet
	// SavepointRollback rolls back to it; the savepoint stays established.
	SavepointRollback
)

// InboxQuery filters ListInbox. Zero fields do not filter.
type InboxQuery struct {
	Source string
	IDs    []string
	State  string
	Limit  int // 0: no limit
}

// InboxCounts counts inbox rows; the groups do not overlap.
type InboxCounts struct {
	Ready    int64 // ready, never attempted
	Retrying int64 // ready, attempted before
	Running  int64 // leased to a worker
	Handled  int64 // kept for the dedupe window
	Dead     int64 // pending inbox dead letters

	// HandledLastMinute counts the handled rows whose handled_at is less
	// than a minute ago (by the database's clock): the inbox's recent
	// throughput. They are among Handled, not a group of their own.
	HandledLastMinute int64
}

// InboxStats counts the inbox's rows: the embedded InboxCounts are the
// totals, Topics the same counts per topic.
type InboxStats struct {
	InboxCounts
	// Topics maps each topic with at least one inbox row or pending dead
	// letter to its counts, which add up to the totals; nil when there is
	// none.
	Topics map[string]InboxCounts
}
