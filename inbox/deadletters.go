package inbox

import (
	"context"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/purge"
)

// DeadLetter is a message the inbox could not process, as kept in
// durable_dead_letters (side "inbox"): the whole message, why it failed,
// and every attempt's error.
type DeadLetter struct {
	// Source and ID identify the message; Topic, Key, Headers, Payload,
	// CreatedAt and ExpiresAt are as received.
	Source    string
	ID        string
	Topic     string
	Key       string
	Headers   map[string]string
	Payload   []byte
	CreatedAt time.Time
	ExpiresAt time.Time // zero: never
	// Reason is one of the Reason constants.
	Reason string
	// Attempts is how many attempts the message had when it failed for good.
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

// AttemptError is one entry of a message's error history.
type AttemptError struct {
	Attempt int       // the attempt's number, from 1 (0: failed before any attempt, e.g. expired)
	At      time.Time // when it failed
	Error   string    // the error's text (at most 8 KiB)
}

// DeadLetterFilter selects the inbox's dead letters. Zero fields do not
// filter, except IncludeReplayed: by default only pending dead letters
// match.
type DeadLetterFilter struct {
	Source string   // the sending node
	Topic  string   // the message's topic
	Reason string   // one of the Reason constants
	IDs    []string // any of these message ids
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
		Side: dialects.SideInbox, Source: f.Source, Topic: f.Topic, Reason: f.Reason, IDs: f.IDs, Since: f.Since, Before: f.Before,
		IncludeReplayed: f.IncludeReplayed, Limit: f.Limit,
	}
}

// DeadLetters returns the dead letters matching f, oldest first.
func (ib *Inbox[TTx]) DeadLetters(ctx context.Context, f DeadLetterFilter) ([]DeadLetter, error) {
	rows, err := ib.d.ListDeadLetters(ctx, f.query())
	if err != nil {
		return nil, err
	}
	out := make([]DeadLetter, len(rows))
	for i, r := range rows {
		out[i] = DeadLetter{
			Source: r.Source, ID: r.ID, Topic: r.Topic, Key: r.Key, Headers: r.Headers, Payload: r.Payload,
			CreatedAt: r.CreatedAt, ExpiresAt: r.ExpiresAt, Reason: r.Reason, Attempts: r.Attempts,
			LastError: r.LastError, FirstFailedAt: r.FirstFailedAt, FailedAt: r.FailedAt, ReplayedAt: r.ReplayedAt,
		}
		for _, e := range r.Errors {
			out[i].Errors = append(out[i].Errors, AttemptError(e))
		}
	}
	return out, nil
}

// DeadLetter returns the dead letter of message id from source, replayed or
// not, or an error matching ErrNotFound. An empty source matches any: when
// several sources sent the id, the oldest dead letter is returned.
func (ib *Inbox[TTx]) DeadLetter(ctx context.Context, source, id string) (*DeadLetter, error) {
	dl, err := ib.DeadLetters(ctx, DeadLetterFilter{Source: source, IDs: []string{id}, IncludeReplayed: true})
	if err != nil {
		return nil, err
	}
	if len(dl) == 0 {
		return nil, ErrNotFound
	}
	return &dl[0], nil
}

// Replay puts the pending dead letters matching f back into the inbox, in
// one transaction, as fresh messages: ready now, attempt count reset, no
// expiry (replaying is a decision to process the message), the error
// history kept. It records replayed_at on the inbox row and on the dead
// letter, which stays for the record, and returns how many messages it
// replayed. IncludeReplayed is ignored: a dead letter replayed and not
// failed since is not replayed again, so replaying twice does not
// duplicate. A replayed message that fails again updates its dead letter
// and is pending again.
//
// A replayed message with an ordering key joins the end of its key's queue.
func (ib *Inbox[TTx]) Replay(ctx context.Context, f DeadLetterFilter) (int, error) {
	q := f.query()
	q.IncludeReplayed = false
	n, err := ib.d.ReplayDeadLetters(ctx, q)
	if n > 0 {
		ib.wakeAll()
	}
	return n, err
}

// PurgeDeadLetters deletes the dead letters matching f and returns how
// many. Without a Limit it deletes in statements of 1,000 rows until none
// match. A purged message is forgotten: a resend of it is stored and
// handled again.
func (ib *Inbox[TTx]) PurgeDeadLetters(ctx context.Context, f DeadLetterFilter) (int, error) {
	return purge.DeadLetters(ctx, ib.d, f.query())
}
