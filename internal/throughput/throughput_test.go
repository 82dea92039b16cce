package throughput

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
)

type adder struct {
	fail  bool
	calls [][]dialects.Throughput
}

func (a *adder) AddThroughput(_ context.Context, counts []dialects.Throughput) error {
	if a.fail {
		return errors.New("database down")
	}
	a.calls = append(a.calls, counts)
	return nil
}

// TestCounter: counts add up per minute, kind and name; a failed flush
// keeps them for the next; nothing to write is no call.
func TestCounter(t *testing.T) {
	a := &adder{fail: true}
	c := New(a, slog.New(slog.NewTextHandler(io.Discard, nil)))
	now := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	c.now = func() time.Time { return now }
	c.Add(dialects.ThroughputSent, "billing", 2)
	c.Add(dialects.ThroughputSent, "billing", 3)
	c.Add(dialects.ThroughputSent, "", 3)     // no name: not counted
	c.Add(dialects.ThroughputSent, "crm", 0)  // nothing
	c.Add(dialects.ThroughputSent, "crm", -1) // nothing
	c.Flush(context.Background())
	now = now.Add(time.Minute)
	c.Add(dialects.ThroughputSent, "billing", 1)
	a.fail = false
	c.Flush(context.Background())
	c.Flush(context.Background())
	if len(a.calls) != 1 {
		t.Fatalf("%d writes, want 1", len(a.calls))
	}
	got := a.calls[0]
	slices.SortFunc(got, func(x, y dialects.Throughput) int { return x.Minute.Compare(y.Minute) })
	want := []dialects.Throughput{
		{Minute: time.Date(2026, 5, 6, 7, 8, 0, 0, time.UTC), Kind: "sent", Name: "billing", Count: 5},
		{Minute: time.Date(2026, 5, 6, 7, 9, 0, 0, time.UTC), Kind: "sent", Name: "billing", Count: 1},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("wrote %+v, want %+v", got, want)
	}
	var nilCounter *Counter
	nilCounter.Add("sent", "x", 1)
	nilCounter.Flush(context.Background())
}
