package outbox

import (
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
)

// TestNextShare: the linger's multiple follows the spread of the claimed
// rows' creation times: 1 for one relay that lingers, toward n when each
// claim takes 1/n of the linger's rows, never past maxShare; retries say
// nothing, and neither do the rows of one transaction (one creation time),
// which move it back toward 1.
func TestNextShare(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)
	rows := func(spread time.Duration, attempt int) []dialects.ClaimedRow {
		var out []dialects.ClaimedRow
		for _, d := range []time.Duration{0, spread / 2, spread} {
			var r dialects.ClaimedRow
			r.CreatedAt, r.SendAttempt = base.Add(d), attempt
			out = append(out, r)
		}
		return out
	}
	const linger = 20 * time.Millisecond
	for _, c := range []struct {
		name   string
		share  float64
		linger time.Duration
		rows   []dialects.ClaimedRow
		want   float64
	}{
		{"one relay: spread of a linger", 1, linger, rows(linger, 1), 1},
		{"one relay: spread of two lingers", 1, linger, rows(2*linger, 1), 1},
		{"four relays: a quarter of the linger", 1, linger, rows(linger/4, 1), 2.5},
		{"settled at four", 4, linger, rows(linger, 1), 4},
		{"falls back when alone again", 4, linger, rows(4*linger, 1), 2.5},
		{"bounded", 6, linger, rows(linger/10, 1), maxShare},
		{"retries only", 3, linger, rows(time.Millisecond, 2), 1},
		{"one transaction's rows", 1, linger, rows(0, 1), 1},
		{"one transaction's rows, after four relays", 4, linger, rows(0, 1), 2.5},
		{"no linger", 3, 0, rows(time.Millisecond, 1), 1},
	} {
		if got := nextShare(c.share, c.linger, c.rows); got != c.want {
			t.Errorf("%s: nextShare(%v, %v) = %v, want %v", c.name, c.share, c.linger, got, c.want)
		}
	}
}
