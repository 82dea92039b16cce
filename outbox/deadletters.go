package outbox

import (
	"context"
	"time"

	"github.com/durable-go/durable/deadletter"
)

// ErrNotFound is returned by DeadLetter for a message that is not in the
// outbox's dead letters. It is deadletter.ErrNotFound.
var ErrNotFound = deadletter.ErrNotFound

// DeadLetterFilter selects the outbox's dead letters. Zero fields do not
// filter, except IncludeReplayed: by default only pending dead letters
// match.
type DeadLetterFilter struct {
	Destination string   // the peer the message was for
	Topic       string   // the message's topic
	Reason      string   // deadletter.ReasonExpired or deadletter.ReasonRejected
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

func (f DeadLetterFilter) query() deadletter.Query {
	return deadletter.Query{
		Side: deadletter.SideOutbox, Destination: f.Destination, Topic: f.Topic, Reason: f.Reason, IDs: f.IDs,
		Since: f.Since, Before: f.Before, IncludeReplayed: f.IncludeReplayed, Limit: f.Limit,
	}
}

// deadLetters is the dead-letter store the shortcuts below use.
func (o *Outbox[TTx]) deadLetters() *deadletter.Store {
	s, _ := deadletter.New(o.d, nil) // o.d is never nil; nil Config is valid
	return s
}

// DeadLetters returns the outbox's dead letters matching f, oldest first.
// It is deadletter.Store.List on the outbox side.
func (o *Outbox[TTx]) DeadLetters(ctx context.Context, f DeadLetterFilter) ([]deadletter.DeadLetter, error) {
	return o.deadLetters().List(ctx, f.query())
}

// DeadLetter returns the dead letter of message id for destination,
// replayed or not, or an error matching ErrNotFound. An empty destination
// matches any: when several destinations have the id, the oldest dead
// letter is returned. It is deadletter.Store.Get on the outbox side.
func (o *Outbox[TTx]) DeadLetter(ctx context.Context, destination, id string) (*deadletter.DeadLetter, error) {
	return o.deadLetters().Get(ctx, deadletter.SideOutbox, destination, id)
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
	n, err := o.deadLetters().Replay(ctx, f.query())
	if n > 0 {
		o.subs.wake(f.Destination)
	}
	return n, err
}

// PurgeDeadLetters deletes the outbox's dead letters matching f and returns
// how many. Without a Limit it deletes in statements of 1,000 rows until
// none match.
func (o *Outbox[TTx]) PurgeDeadLetters(ctx context.Context, f DeadLetterFilter) (int, error) {
	return o.deadLetters().Purge(ctx, f.query())
}
