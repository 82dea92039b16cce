package dialects

import (
	"context"
	"time"
)

// Sides of durable_dead_letters.side.
const (
	// SideOutbox: a message the relay never delivered.
	SideOutbox = "outbox"
	// SideInbox: a message the inbox received and could not process.
	SideInbox = "inbox"
)

// Reasons of durable_dead_letters.reason (the table's check constraint
// lists them).
const (
	// ReasonHandlerError (inbox): the handler failed on every attempt.
	ReasonHandlerError = "handler_error"
	// ReasonDecodeError (inbox): the handler could not decode the payload.
	ReasonDecodeError = "decode_error"
	// ReasonNoHandler (inbox): no handler for the message's topic.
	ReasonNoHandler = "no_handler"
	// ReasonExpired (both sides): ExpiresAt passed before the message was
	// sent (outbox) or handled (inbox).
	ReasonExpired = "expired"
	// ReasonPermanent (inbox): the handler failed for good.
	ReasonPermanent = "permanent"
	// ReasonRejected (outbox): refused for good by the peer or the
	// transport.
	ReasonRejected = "rejected"
)

// DeadLetterRow is a row of durable_dead_letters, of either side: a message
// the relay could not deliver (SideOutbox) or one the inbox could not process
// (SideInbox), with the whole message, its reason, the attempts made and
// every error. Both sides share the table, this row type, the error history
// (AttemptError) and the filter (DeadLetterQuery).
//
// A dead letter is named by (side, source, destination, id), the table's
// unique index: an outbox dead letter by its destination (its source is
// empty), an inbox dead letter by its source (its destination is empty). A
// message that fails again after a replay updates its dead letter in place.
//
// A dead letter is pending while it was never replayed or failed again after
// its last replay (replayed_at IS NULL OR replayed_at < failed_at). Only
// inbox dead letters are replayed (ReplayDeadLetters), so an outbox dead
// letter is always pending. A message whose (source, id) is among the inbox
// dead letters was received before: InsertInbox does not store it again.
type DeadLetterRow struct {
	Seq           int64  // assigned by the database; the order of first failure
	Side          string // SideOutbox or SideInbox
	ID            string
	Source        string // inbox side: the sending node; empty on the outbox side
	Destination   string // outbox side: the peer it was for; empty on the inbox side
	Topic         string
	Key           string
	Headers       map[string]string
	Payload       []byte
	CreatedAt     time.Time
	ExpiresAt     time.Time // zero: never
	Reason        string    // one of the Reason constants
	Attempts      int
	LastError     string
	Errors        []AttemptError
	FirstFailedAt time.Time
	FailedAt      time.Time
	ReplayedAt    time.Time // zero: never replayed
}

// Pending reports whether the dead letter awaits a decision: it was never
// replayed, or it failed again after its last replay.
func (r *DeadLetterRow) Pending() bool {
	return r.ReplayedAt.IsZero() || r.ReplayedAt.Before(r.FailedAt)
}

// AttemptError is one entry of an error history: the errors column of
// durable_inbox and durable_dead_letters, a JSON array of objects with these
// fields. An inbox row's history moves with it to the dead letters.
type AttemptError struct {
	Attempt int       `json:"attempt"` // from 1; 0: before any attempt
	At      time.Time `json:"at"`      // zero where unknown (an outbox retry error)
	Error   string    `json:"error"`
}

// DeadLetterQuery selects dead letters for ListDeadLetters, ReplayDeadLetters
// and PurgeDeadLetters. Zero fields do not filter, except IncludeReplayed:
// without it only pending dead letters match.
type DeadLetterQuery struct {
	Side        string // SideOutbox or SideInbox
	Source      string // the sending node (inbox side)
	Destination string // the peer (outbox side)
	Topic       string
	Reason      string
	IDs         []string  // any of these message ids
	Since       time.Time // failed_at ≥ Since
	Before      time.Time // failed_at < Before
	// IncludeReplayed also matches dead letters that were replayed and have
	// not failed since.
	IncludeReplayed bool
	Limit           int // 0: no limit; otherwise the first matches in the list's order
	// ErrorContains matches dead letters whose last error contains it,
	// ignoring case (an empty string does not filter).
	ErrorContains string
	// AfterSeq and BeforeSeq are keyset cursors: only dead letters with
	// seq > AfterSeq (when not 0) and seq < BeforeSeq (when not 0) match.
	AfterSeq  int64
	BeforeSeq int64
	// Descending lists newest first (by seq descending) and makes Limit
	// take the newest matches, for ListDeadLetters; replay and purge ignore
	// it and take the oldest.
	Descending bool
}

// DeadLetterStore is the dialect's part for the dead letters of both sides,
// embedded in Dialect. It is all that package deadletter needs, so tools
// that only inspect, count, replay or purge dead letters depend on these four
// methods and on no transaction type.
type DeadLetterStore interface {
	// ListDeadLetters returns the dead letters of either side matching q,
	// in the order they were first recorded (seq), for inspection, tools
	// and tests. See DeadLetterQuery for what matches.
	ListDeadLetters(ctx context.Context, q DeadLetterQuery) ([]DeadLetterRow, error)

	// ReplayDeadLetters puts the pending dead letters of one side matching
	// q (at most q.Limit, oldest first, when it is set) back where they
	// came from, in one transaction, stamps replayed_at on each dead letter
	// it replayed and returns how many. q.Side chooses the side (empty:
	// SideInbox); q.IncludeReplayed is ignored.
	//
	// SideInbox: back into the inbox as fresh messages: ready, attempts 0,
	// run_at and replayed_at now, no expiry (a replay is a decision to
	// process the message), the error history kept. A dead letter whose
	// (source, id) is in the inbox already is not replayed.
	//
	// SideOutbox: back into the outbox as fresh rows for their destination:
	// due now, attempts 0, unleased, no expiry, the original created_at
	// kept; the relay sends them again. A dead letter whose (destination,
	// id) has a row in the outbox already is not replayed. If the message
	// fails again, the relay's dead-letter move adds the new errors to the
	// same dead letter, which is pending again.
	//
	// A dead letter already replayed and not failed since is not pending,
	// so replaying twice does not duplicate.
	ReplayDeadLetters(ctx context.Context, q DeadLetterQuery) (int, error)

	// PurgeDeadLetters deletes the dead letters matching q (at most
	// q.Limit, oldest first, when it is set) in one statement and returns
	// how many it deleted.
	PurgeDeadLetters(ctx context.Context, q DeadLetterQuery) (int, error)

	// CountDeadLetters returns how many dead letters match q, the filter
	// of ListDeadLetters without q.Limit and the cursors (AfterSeq,
	// BeforeSeq): what "everything matching" replays or purges.
	CountDeadLetters(ctx context.Context, q DeadLetterQuery) (int, error)
}
