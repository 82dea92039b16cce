package dialects

import (
	"context"
	"time"
)

// Relayer is the storage contract of the relay (outbox.Relay): claiming due
// outbox rows with a lease, and settling each claimed row once the peer
// answered. It is part of RelayStore, the role outbox.NewRelay takes, and
// of Dialect.
//
// # Leases
//
// ClaimOutbox leases rows to a token chosen by the caller, unique per claim.
// Every later operation on those rows (AckOutbox, ReleaseOutbox,
// DeadLetterOutbox) names the token and changes only rows still leased to it
// and not yet sent: once a lease expired and another claim took the row, the
// stale token changes nothing. Rows are named by Seq inside that guard; Seq
// alone is not an identity (SQLite reuses the seq of a deleted last row).
//
// # Time
//
// Due dates, expiry and lease ends are judged by the database's clock, never
// by the caller's: durations are passed, not instants.
type Relayer interface {
	// ClaimOutbox leases up to c.Limit rows of c.Destination to c.Token for
	// c.Lease and returns them in enqueue (seq) order.
	//
	// A row is claimed when it is unsent, due (deliver_at ≤ now), not leased
	// (no lease, or one that expired) and not waiting for a retry
	// (ReleaseOutbox with a delay), and, when it has an ordering key, when it
	// is the oldest unsent row of its (destination, key): a row whose key has
	// an earlier row in flight, waiting for a retry or scheduled later is held
	// back, so that rows sharing a key are never in flight together and leave
	// in enqueue order. Where rows can commit out of seq order (Postgres), a
	// row is also held back while a later unexpired row of its key is in
	// flight or waiting for a retry, which happens when the earlier row's
	// transaction committed after the later one was claimed. Claims by
	// concurrent callers never return the same row (FOR UPDATE SKIP LOCKED
	// on Postgres; one writer on SQLite).
	//
	// Keyed rows are reached through their keys, a bounded number of keys
	// per claim. A claim takes, oldest (lowest seq) first and up to c.Limit
	// in all, the due unkeyed rows and the heads (oldest unsent row) of at
	// most min(c.Limit, 1000) ordering keys of the destination, each when
	// claimable as above. Those keys are visited in key order among the
	// keys that have an unsent row, round robin: starting after the last
	// key the destination's previous claim visited, or at the first key
	// when that claim visited fewer keys than its maximum (it reached the
	// last key; a claim does not wrap around within itself). So a claim's
	// cost is bounded by its limit, whatever one key's backlog (a key costs
	// a few index probes, never a scan of its rows), and with more keys
	// than a claim visits, every key gets its turn, whichever keys keep
	// receiving rows. A turn is a visit, not a row: a visited key whose head
	// is in flight, waiting for a retry or scheduled later yields nothing,
	// and a claimable head is not taken when c.Limit older candidates
	// (unkeyed rows or other heads) fill the claim; it waits for its key's
	// next turn. A claim can therefore return fewer than c.Limit rows while
	// keys it did not visit have claimable heads.
	//
	// Where the previous claim stopped is kept per destination in the
	// memory of the dialect value (dialects/internal/keyscan): not shared
	// between processes nor persisted, it starts at the first key. It moves
	// when the claim has read its keys, before the rows are leased, and not
	// when another claim of the destination moved it meanwhile. An
	// ExpiredOnly claim visits no keys and leaves it alone.
	//
	// Claiming counts an attempt (SendAttempt+1) and clears nothing else. A row
	// whose ExpiresAt has passed is claimed too, with Expired set and its
	// attempts unchanged: the caller must not send it, and moves it to the
	// dead letters with DeadLetterOutbox (reason "expired").
	ClaimOutbox(ctx context.Context, c OutboxClaim) ([]ClaimedRow, error)

	// AckOutbox records that the peer acknowledged the rows with the given
	// seqs: it deletes them, or, with retain, stamps sent_at (now) and ends
	// the lease, keeping the row until PurgeOutbox removes it. One statement.
	// Only rows leased to token and unsent are touched; the result counts
	// them.
	AckOutbox(ctx context.Context, token string, seqs []int64, retain bool) (int, error)

	// ReleaseOutbox ends the lease of the given rows so that they can be
	// claimed again: at once when r.RetryAfter is zero, otherwise only after
	// that delay (a row waiting for a retry also holds back the later rows of
	// its ordering key). r.Error, when not empty, becomes last_error;
	// r.Unsent undoes the attempt counted by the claim, for rows that were
	// never handed to a transport. Only rows leased to token and unsent are
	// touched; the result counts them.
	ReleaseOutbox(ctx context.Context, token string, seqs []int64, r OutboxRelease) (int, error)

	// DeadLetterOutbox moves rows leased to token into durable_dead_letters
	// (side "outbox"), each with its reason and error, and deletes them from
	// the outbox, atomically. The dead letter keeps the whole message, the
	// attempts made and the error; a message of the same id and destination
	// already in the dead letters (a replayed message that failed again) is
	// updated in place, its errors appended. The result counts the rows
	// moved.
	DeadLetterOutbox(ctx context.Context, token string, letters []OutboxDeadLetter) (int, error)

	// OutboxStats returns, per destination with unsent rows or pending
	// outbox dead letters, the backlog, its age and the dead letters, in
	// destination order.
	OutboxStats(ctx context.Context) ([]OutboxStats, error)

	// OutboxDestinations returns the destinations that have unsent rows, in
	// order. It reads an index, not the rows, so it is cheap on a large
	// backlog.
	OutboxDestinations(ctx context.Context) ([]string, error)

	// PurgeOutbox deletes up to limit rows that were sent (retained by
	// AckOutbox) longer than age ago, oldest first, and returns how many it
	// deleted. Callers repeat it while it returns limit.
	PurgeOutbox(ctx context.Context, age time.Duration, limit int) (int, error)
}

// OutboxClaim asks ClaimOutbox for rows.
type OutboxClaim struct {
	Destination string
	// Token identifies this claim: it becomes locked_by of every claimed row
	// and guards every later change to them. It must be unique per claim
	// (across processes too), and not empty.
	Token string
	// Limit bounds the number of rows claimed; it must be positive.
	Limit int
	// Lease is how long the rows stay leased (locked_until = now + Lease);
	// it must be positive.
	Lease time.Duration
	// ExpiredOnly claims only the rows whose ExpiresAt has passed (all of
	// them Expired), due or not and whatever their ordering key: an expired
	// message is never sent, so it holds no place in its key's order. The
	// relay claims them so for the destinations it has no Sender for, to
	// move them to the dead letters all the same.
	ExpiredOnly bool
}

// ClaimedRow is a row returned by ClaimOutbox.
type ClaimedRow struct {
	OutboxRow
	// Expired reports that ExpiresAt had passed at claim time (by the
	// database's clock): the row must not be sent, and its attempt was not
	// counted.
	Expired bool
}

// OutboxRelease says how ReleaseOutbox ends a lease.
type OutboxRelease struct {
	// RetryAfter is how long the rows wait before they can be claimed again;
	// zero: at once.
	RetryAfter time.Duration
	// Error becomes the rows' last_error when not empty.
	Error string
	// Unsent undoes the attempt counted by the claim: the rows were never
	// handed to a transport (the relay stopped first).
	Unsent bool
}

// OutboxDeadLetter is one row for DeadLetterOutbox.
type OutboxDeadLetter struct {
	Seq    int64
	Reason string // ReasonExpired or ReasonRejected
	Error  string // why, e.g. the peer's reason; becomes last_error
}

// OutboxStats is the backlog of one destination, as OutboxStats reports it.
// Counts are of unsent rows, except DeadLetters.
type OutboxStats struct {
	Destination string
	Unsent      int64         // every unsent row
	Leased      int64         // leased by a relay now (in flight)
	Retrying    int64         // waiting for a retry after a failed send
	Scheduled   int64         // deliver_at still in the future
	OldestAge   time.Duration // now - created_at of the oldest unsent row; 0: none
	// DeadLetters counts the destination's pending outbox dead letters
	// (never replayed, or failed again since).
	DeadLetters int64
}
