package purge

import (
	"context"
	"errors"
	"testing"

	"github.com/durable-go/durable/dialects"
)

// table is a Purger over a count of matching rows, failing at a given call.
type table struct {
	rows    int
	calls   []int // the limit of each call
	failAt  int   // 1-based call that fails; 0: none
	failErr error
}

func (tb *table) PurgeDeadLetters(_ context.Context, q dialects.DeadLetterQuery) (int, error) {
	tb.calls = append(tb.calls, q.Limit)
	if len(tb.calls) == tb.failAt {
		return 0, tb.failErr
	}
	n := min(q.Limit, tb.rows)
	tb.rows -= n
	return n, nil
}

func TestDeadLetters(t *testing.T) {
	ctx := context.Background()
	tb := &table{rows: 2*Batch + 500}
	if n, err := DeadLetters(ctx, tb, dialects.DeadLetterQuery{}); err != nil || n != 2*Batch+500 || len(tb.calls) != 3 || tb.rows != 0 {
		t.Fatalf("no limit: %d, %v after calls %v (%d left); want every row in 3 statements of %d", n, err, tb.calls, tb.rows, Batch)
	}
	tb = &table{rows: Batch}
	if n, err := DeadLetters(ctx, tb, dialects.DeadLetterQuery{}); err != nil || n != Batch || len(tb.calls) != 2 {
		t.Fatalf("exactly one batch: %d, %v after calls %v; want a second statement that finds none", n, err, tb.calls)
	}
	tb = &table{rows: 50}
	if n, err := DeadLetters(ctx, tb, dialects.DeadLetterQuery{Limit: 7}); err != nil || n != 7 || len(tb.calls) != 1 || tb.calls[0] != 7 {
		t.Fatalf("limit 7: %d, %v after calls %v; want one statement of 7", n, err, tb.calls)
	}
	boom := errors.New("boom")
	tb = &table{rows: 3 * Batch, failAt: 2, failErr: boom}
	if n, err := DeadLetters(ctx, tb, dialects.DeadLetterQuery{}); !errors.Is(err, boom) || n != Batch {
		t.Fatalf("failing second statement: %d, %v; want %d and the error", n, err, Batch)
	}
}
