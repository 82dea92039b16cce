// Package purge deletes dead letters in bounded statements, for the
// PurgeDeadLetters of both the inbox and the outbox.
package purge

import (
	"context"

	"github.com/durable-go/durable/dialects"
)

// Batch bounds one statement of DeadLetters when the query has no limit.
const Batch = 1000

// Purger is the dialect operation DeadLetters repeats.
type Purger interface {
	PurgeDeadLetters(ctx context.Context, q dialects.DeadLetterQuery) (int, error)
}

// DeadLetters deletes the dead letters matching q and returns how many. With
// q.Limit set it is one statement of that many; without, it deletes in
// statements of Batch rows until one deletes fewer, so that no statement
// holds locks (or, on SQLite, the only writer) for long.
func DeadLetters(ctx context.Context, d Purger, q dialects.DeadLetterQuery) (int, error) {
	if q.Limit > 0 {
		return d.PurgeDeadLetters(ctx, q)
	}
	q.Limit = Batch
	total := 0
	for {
		n, err := d.PurgeDeadLetters(ctx, q)
		total += n
		if err != nil || n < Batch {
			return total, err
		}
	}
}
