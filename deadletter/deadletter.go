// Package deadletter is the operators' API for durable's dead letters, of
// both sides: the messages the relay could not deliver (SideOutbox: expired,
// rejected by the peer) and those the inbox could not process (SideInbox:
// the handler failed, no handler, expired). Both sides share one table,
// durable_dead_letters, and this one API: List, Get, Replay and Purge.
//
// A Store needs only the dialect's dead-letter methods
// (dialects.DeadLetterStore), which every dialect has, whatever its
// transaction type:
//
//	d, err := postgres.New(pool, nil)
//	store, err := deadletter.New(d, nil)
//	dead, err := store.List(ctx, deadletter.Query{Side: deadletter.SideInbox, Topic: "billing"})
//	n, err := store.Replay(ctx, deadletter.Query{Side: deadletter.SideInbox, IDs: []string{id}})
//
// The types are those of package dialects, under shorter names: a
// DeadLetter is a dialects.DeadLetterRow, a Query a dialects.DeadLetterQuery.
//
// A running inbox or outbox need not be told of a replay: their workers and
// relays find the replayed messages at their next poll.
// inbox.Inbox.Replay and outbox.Outbox.Replay, shortcuts over this package
// fixed to their side, also wake the workers or relays of their own process
// at once.
package deadletter

import (
	"context"
	"errors"
	"fmt"

	"github.com/durable-go/durable/dialects"
)

// DeadLetter is a dead letter of either side: the whole message, its
// reason, the attempts made and every error (see dialects.DeadLetterRow).
type DeadLetter = dialects.DeadLetterRow

// AttemptError is one entry of a dead letter's error history, oldest first.
type AttemptError = dialects.AttemptError

// Query selects dead letters: Side, then any of the other fields. Zero
// fields do not filter, except IncludeReplayed: by default only pending dead
// letters match (see dialects.DeadLetterQuery).
type Query = dialects.DeadLetterQuery

// Sides of a dead letter (DeadLetter.Side, Query.Side).
const (
	// SideOutbox: a message the relay never delivered.
	SideOutbox = dialects.SideOutbox
	// SideInbox: a message the inbox received and could not process.
	SideInbox = dialects.SideInbox
)

// Reasons of a dead letter (DeadLetter.Reason, Query.Reason).
const (
	// ReasonHandlerError (inbox): the handler failed on every attempt.
	ReasonHandlerError = dialects.ReasonHandlerError
	// ReasonDecodeError (inbox): the handler could not decode the payload.
	ReasonDecodeError = dialects.ReasonDecodeError
	// ReasonNoHandler (inbox): no handler for the message's topic.
	ReasonNoHandler = dialects.ReasonNoHandler
	// ReasonExpired (both sides): the message's ExpiresAt passed before it
	// was sent (outbox) or handled (inbox).
	ReasonExpired = dialects.ReasonExpired
	// ReasonPermanent (inbox): the handler failed for good.
	ReasonPermanent = dialects.ReasonPermanent
	// ReasonRejected (outbox): the peer refused the message, or the
	// transport the whole batch, for good.
	ReasonRejected = dialects.ReasonRejected
)

// Reasons lists the reasons a dead letter of side may have, in the order
// the documentation gives them; nil for an unknown side.
func Reasons(side string) []string {
	switch side {
	case SideInbox:
		return []string{ReasonHandlerError, ReasonPermanent, ReasonDecodeError, ReasonNoHandler, ReasonExpired}
	case SideOutbox:
		return []string{ReasonExpired, ReasonRejected}
	}
	return nil
}

// ErrNotFound is returned by Get for a dead letter that does not exist.
var ErrNotFound = errors.New("durable/deadletter: not found")

// ErrSide is returned for a Query or a Get whose side is neither SideInbox
// nor SideOutbox.
var ErrSide = errors.New("durable/deadletter: side must be " + SideInbox + " or " + SideOutbox)

// DefaultPurgeBatch is Config.PurgeBatch's default.
const DefaultPurgeBatch = 1000

// Config configures a Store. The zero value (or a nil *Config) is the
// default.
type Config struct {
	// PurgeBatch bounds one delete statement of a Purge without a Limit:
	// it deletes that many rows at a time until fewer match, so that no
	// statement holds locks (or, on SQLite, the only writer) for long.
	// 0: DefaultPurgeBatch.
	PurgeBatch int
}

// Store lists, replays and purges the dead letters of both sides. It is
// safe for concurrent use; it holds no state but its dialect.
type Store struct {
	d     dialects.DeadLetterStore
	batch int
}

// New returns a Store over d (any dialect, or anything with its dead-letter
// methods). cfg may be nil for the defaults.
func New(d dialects.DeadLetterStore, cfg *Config) (*Store, error) {
	if d == nil {
		return nil, errors.New("durable/deadletter: New: nil dialect")
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.PurgeBatch < 0 {
		return nil, fmt.Errorf("durable/deadletter: New: PurgeBatch %d is negative", c.PurgeBatch)
	}
	if c.PurgeBatch == 0 {
		c.PurgeBatch = DefaultPurgeBatch
	}
	return &Store{d: d, batch: c.PurgeBatch}, nil
}

func checkSide(side string) error {
	if side != SideInbox && side != SideOutbox {
		return fmt.Errorf("%w, not %q", ErrSide, side)
	}
	return nil
}

// List returns the dead letters of q.Side matching q, oldest (first failed)
// first.
func (s *Store) List(ctx context.Context, q Query) ([]DeadLetter, error) {
	if err := checkSide(q.Side); err != nil {
		return nil, err
	}
	return s.d.ListDeadLetters(ctx, q)
}

// Get returns the dead letter of message id of side, replayed or not, or an
// error matching ErrNotFound. peer is the message's source on SideInbox
// and its destination on SideOutbox; an empty peer matches any, and when
// several peers have a dead letter of that id, the oldest is returned.
func (s *Store) Get(ctx context.Context, side, peer, id string) (*DeadLetter, error) {
	q := Query{Side: side, IDs: []string{id}, IncludeReplayed: true, Limit: 1}
	if side == SideInbox {
		q.Source = peer
	} else {
		q.Destination = peer
	}
	dl, err := s.List(ctx, q)
	if err != nil {
		return nil, err
	}
	if len(dl) == 0 {
		return nil, fmt.Errorf("%w: %s dead letter %q", ErrNotFound, side, id)
	}
	return &dl[0], nil
}

// Replay puts the pending dead letters of q.Side matching q back where they
// came from, in one transaction, and returns how many it replayed:
//
//   - SideInbox: back into the inbox as fresh messages: ready now, attempt
//     count reset, no expiry (replaying is a decision to process the
//     message), the error history kept.
//   - SideOutbox: back into the outbox as fresh rows for their destination:
//     due now, attempt count reset, no expiry, the original CreatedAt and ID
//     kept, so the peer's inbox still recognizes a message it had stored.
//
// The dead letter stays for the record, stamped replayed_at. q.IncludeReplayed
// is ignored: a dead letter replayed and not failed since is not replayed
// again, so replaying twice does not duplicate; neither is one whose
// message is back in the inbox or outbox already. A replayed message that
// fails again updates its dead letter, which is pending again. A replayed
// inbox message with an ordering key joins the end of its key's queue.
func (s *Store) Replay(ctx context.Context, q Query) (int, error) {
	if err := checkSide(q.Side); err != nil {
		return 0, err
	}
	q.IncludeReplayed = false
	return s.d.ReplayDeadLetters(ctx, q)
}

// Purge deletes the dead letters of q.Side matching q and returns how many.
// With q.Limit set it is one statement of at most that many, oldest first;
// without, it deletes Config.PurgeBatch rows at a time until fewer match. A
// purged inbox message is forgotten: a resend of it is stored and handled
// again.
func (s *Store) Purge(ctx context.Context, q Query) (int, error) {
	if err := checkSide(q.Side); err != nil {
		return 0, err
	}
	if q.Limit > 0 {
		return s.d.PurgeDeadLetters(ctx, q)
	}
	q.Limit = s.batch
	total := 0
	for {
		n, err := s.d.PurgeDeadLetters(ctx, q)
		total += n
		if err != nil || n < s.batch {
			return total, err
		}
	}
}
