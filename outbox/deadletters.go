package outbox

import (
	"context"
	"errors"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/purge"
)

// Dead-letter reasons of the outbox side, as stored in
// durable_dead_letters.reason (the dialects package lists those of both
// sides).
const (
	// ReasonExpired: the message's ExpiresAt passed before its peer
	// acknowledged it.
	ReasonExpired = dialects.ReasonExpired
	// ReasonRejected: the peer refused the message (a Rejected outcome in
	// its answer) or the whole batch for good (a permanent send error).
	ReasonRejected = dialects.ReasonRejected
)

// ErrNotFound is returned by DeadLetter for a message that is not in the
// outbox's dead letters.
var ErrNotFound = errors.New("durable/outbox: not found")

// DeadLetter is a message the relay could not deliver, as kept in
// durable_dead_letters (side "outbox"): the whole message, why it failed,
// and the errors of its attempts.
type DeadLetter struct {
	// Destination and ID identify the message; Topic, Key, Headers,
	// Payload, CreatedAt and ExpiresAt are as enqueued.
	Destination string
	ID          string
	Topic       string
	Key         string
	Headers     map[string]string
	Payload     []byte
	CreatedAt   time.Time
	ExpiresAt   time.Time // zero: never
	// Reason is ReasonExpired or ReasonRejected.
	Reason string
	// Attempts is how many sends were tried (across replays).
	Attempts int
	// LastError is the error that sent the message here.
	LastError string
	// Errors is the error history, oldest first, across replays.
	Errors []AttemptError
	// FirstFailedAt is the first failure; FailedAt the one that sent the
	// message here (the latest).
	FirstFailedAt time.Time
	FailedAt      time.Time
	// ReplayedAt is when the message was last replayed; zero if never. A
	// dead letter replayed after its last failure is no longer pending.
	ReplayedAt time.Time
}

// Pending reports whether the dead letter awaits a decision: it was never
// replayed, or it failed again after its last replay.
func (d *DeadLetter) Pending() bool { return d.ReplayedAt.IsZero() || d.ReplayedAt.Before(d.FailedAt) }

// AttemptError is one entry of a dead letter's error history.
type AttemptError struct {
	Attempt int       // the attempt's number, from 1; 0 where unknown
	At      time.Time // when it failed; zero where unknown
	Error   string    // the error's text
}

// DeadLetterFilter selects the outbox's dead letters. Zero fields do not
// filter, except IncludeReplayed: by default only pending dead letters
// match.
type DeadLetterFilter struct {
	Destination string   // the peer the message was for
	Topic       string   // the message's topic
	Reason      string   // ReasonExpired or ReasonRejected
	IDs         []string // any of these message ids
	// Since matches dead letters that failed at or after it.
	Since time.Time
	// Before matches dead letters that failed before it.
	Before time.Time
	// IncludeReplayed also matches dead letters replayed since they last
	// failed.
	IncludeReplayed bool
	// Limit bounds how many match, oldest first; 0: no limit.
	Limit int
}

func (f DeadLetterFilter) query() dialects.DeadLetterQuery {
	return dialects.DeadLetterQuery{
		Side: dialects.SideOutbox, Destination: f.Destination, Topic: f.Topic, Reason: f.Reason, IDs: f.IDs,
		Since: f.Since, Before: f.Before, IncludeReplayed: f.IncludeReplayed, Limit: f.Limit,
	}
}

// DeadLetters returns the outbox's dead letters matching f, oldest first.
func (o *Outbox[TTx]) DeadLetters(ctx context.Context, f DeadLetterFilter) ([]DeadLetter, error) {
	rows, err := o.d.ListDeadLetters(ctx, f.query())
	if err != nil {
		return nil, err
	}
	out := make([]DeadLetter, len(rows))
	for i, r := range rows {
		out[i] = DeadLetter{
			Destination: r.Destination, ID: r.ID, Topic: r.Topic, Key: r.Key, Headers: r.Headers, Payload: r.Payload,
			CreatedAt: r.CreatedAt, ExpiresAt: r.ExpiresAt, Reason: r.Reason, Attempts: r.Attempts,
			LastError: r.LastError, FirstFailedAt: r.FirstFailedAt, FailedAt: r.FailedAt, ReplayedAt: r.ReplayedAt,
		}
		for _, e := range r.Errors {
			out[i].Errors = append(out[i].Errors, AttemptError(e))
		}
	}
	return out, nil
}

// DeadLetter returns the dead letter of message id for destination,
// replayed or not, or an error matching ErrNotFound. An empty destination
// matches any: when the id was dead-lettered for several destinations, the
// oldest one is returned.
func (o *Outbox[TTx]) DeadLetter(ctx context.Context, destination, id string) (*DeadLetter, error) {
	dl, err := o.DeadLetters(ctx, DeadLetterFilter{Destination: destination, IDs: []string{id}, IncludeReplayed: true})
	if err != nil {
		return nil, err
	}
	if len(dl) == 0 {
		return nil, ErrNotFound
	}
	return &dl[0], nil
}

// Replay puts the pending dead letters matching f back into the outbox, in
// one transaction, as fresh rows for their destination: due now, attempt
// count reset, no expiry (replaying is a decision to send the message), the
// original CreatedAt and ID kept, so the peer's inbox still recognizes a
// message it had stored. A relay of this process is woken at once; on
// Postgres the replay also sends a NOTIFY per destination at commit, which
// wakes the relays of other processes; otherwise they find the rows at their
// next poll. It records replayed_at on the dead letter, which stays for the
// record, and returns how many messages it replayed.
//
// IncludeReplayed is ignored: a dead letter replayed and not failed since
// is not replayed again, so replaying twice does not duplicate; neither is
// one whose (destination, ID) is in the outbox already. A replayed message
// that fails again adds its errors to the same dead letter, which is
// pending again.
//
// Replay does not check the destinations against Config.Destinations: a
// destination no relay serves keeps its rows in the outbox (see Relay,
// expiry of destinations without a Sender).
func (o *Outbox[TTx]) Replay(ctx context.Context, f DeadLetterFilter) (int, error) {
	q := f.query()
	q.IncludeReplayed = false
	n, err := o.d.ReplayDeadLetters(ctx, q)
	if n > 0 {
		o.subs.wake(f.Destination)
	}
	return n, err
}

// PurgeDeadLetters deletes the outbox's dead letters matching f and returns
// how many. Without a Limit it deletes in statements of 1,000 rows until
// none match.
func (o *Outbox[TTx]) PurgeDeadLetters(ctx context.Context, f DeadLetterFilter) (int, error) {
	return purge.DeadLetters(ctx, o.d, f.query())
}
