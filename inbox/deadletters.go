package inbox

import (
	"context"
	"time"

	"github.com/durable-go/durable/deadletter"
)

// DeadLetterFilter selects the inbox's dead letters. Zero fields do not
// filter, except IncludeReplayed: by default only pending dead letters
// match.
type DeadLetterFilter struct {
	Source string   // the sending node
	Topic  string   // the message's topic
	Reason string   // one of deadletter's inbox reasons
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

func (f DeadLetterFilter) query() deadletter.Query {
	return deadletter.Query{
		Side: deadletter.SideInbox, Source: f.Source, Topic: f.Topic, Reason: f.Reason, IDs: f.IDs, Since: f.Since, Before: f.Before,
		IncludeReplayed: f.IncludeReplayed, Limit: f.Limit,
	}
}

// deadLetters is the dead-letter store the shortcuts below use.
func (ib *Inbox[TTx]) deadLetters() *deadletter.Store {
	s, _ := deadletter.New(ib.d, nil) // ib.d is never nil; nil Config is valid
	return s
}

// DeadLetters returns the inbox's dead letters matching f, oldest first. It
// is deadletter.Store.List on the inbox side.
func (ib *Inbox[TTx]) DeadLetters(ctx context.Context, f DeadLetterFilter) ([]deadletter.DeadLetter, error) {
	return ib.deadLetters().List(ctx, f.query())
}

// DeadLetter returns the dead letter of message id from source, replayed or
// not, or an error matching ErrNotFound. An empty source matches any: when
// several sources sent the id, the oldest dead letter is returned. It is
// deadletter.Store.Get on the inbox side.
func (ib *Inbox[TTx]) DeadLetter(ctx context.Context, source, id string) (*deadletter.DeadLetter, error) {
	return ib.deadLetters().Get(ctx, deadletter.SideInbox, source, id)
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
// It is deadletter.Store.Replay on the inbox side, which also wakes this
// inbox's workers.
func (ib *Inbox[TTx]) Replay(ctx context.Context, f DeadLetterFilter) (int, error) {
	n, err := ib.deadLetters().Replay(ctx, f.query())
	if n > 0 {
		ib.wakeAll()
	}
	return n, err
}

// PurgeDeadLetters deletes the dead letters matching f and returns how
// many. Without a Limit it deletes in statements of 1,000 rows until none
// match. A purged message is forgotten: a resend of it is stored and
// handled again. It is deadletter.Store.Purge on the inbox side.
func (ib *Inbox[TTx]) PurgeDeadLetters(ctx context.Context, f DeadLetterFilter) (int, error) {
	return ib.deadLetters().Purge(ctx, f.query())
}
