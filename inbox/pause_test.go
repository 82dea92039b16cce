package inbox

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// TestPauseQueue: while an inbox queue is paused in durable_pauses, Deliver
// still stores its messages (and handles none inline) and no worker claims
// them; resuming the queue gets them handled; the handled and
// dead-lettered counts reach durable_throughput.
func TestPauseQueue(t *testing.T) {
	each(t, testPauseQueue[pgx.Tx], testPauseQueue[*sql.Tx])
}

func testPauseQueue[TTx any](t *testing.T, f *fixture[TTx]) {
	ctx := context.Background()
	cfg := fastConfig(t)
	cfg.Inline = true
	cfg.Queues = []Queue{{Name: "slow", Topics: []string{"t.slow"}}}
	cfg.ThroughputFlush = 20 * time.Millisecond
	ib, mux := newInbox(t, f, cfg)
	var (
		mu      sync.Mutex
		handled []string
	)
	h := func(_ context.Context, _ TTx, m *Message) error {
		mu.Lock()
		handled = append(handled, m.ID)
		mu.Unlock()
		return nil
	}
	mux.HandleFunc("t.fast", h)
	mux.HandleFunc("t.slow", h)
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(handled)
	}
	// waitPolls waits for two more looks at the pauses: the second began
	// after the first ended, so the inbox has seen the table as it is now,
	// and a poll interval passed in which its workers could have claimed.
	waitPolls := func() {
		t.Helper()
		n := ib.pauses.Polls()
		waitFor(t, "two looks at the pauses", 30*time.Second, func() bool { return ib.pauses.Polls() >= n+2 })
	}
	for _, q := range []string{DefaultQueue, "slow"} {
		if ok, err := f.d.Pause(ctx, dialects.Pause{Kind: dialects.PauseQueue, Name: q, PausedBy: "test"}); err != nil || !ok {
			t.Fatalf("Pause(%s) = %v, %v", q, ok, err)
		}
	}
	// A destination of the same name is another pause.
	if _, err := f.d.Pause(ctx, dialects.Pause{Kind: dialects.PauseDestination, Name: "t.fast"}); err != nil {
		t.Fatal(err)
	}
	stop := start(t, ib)
	waitPolls()

	res := deliver(t, ib, batch("orders", envelope(1, "t.fast"), envelope(2, "t.fast"), envelope(3, "t.slow"), envelope(4, "t.none")))
	if got := statuses(res, 4); !slices.Equal(got, []transport.Status{transport.Accepted, transport.Accepted, transport.Accepted, transport.Accepted}) {
		t.Fatalf("Deliver while paused: %v, want every message accepted", got)
	}
	waitPolls()
	if st := stats(t, ib); st.Ready != 4 || st.Handled != 0 || st.Running != 0 || count() != 0 {
		t.Fatalf("while paused: %+v, %d handled; want 4 ready, none handled", st.Counts, count())
	}

	if ok, err := f.d.Resume(ctx, dialects.PauseQueue, DefaultQueue); err != nil || !ok {
		t.Fatalf("Resume(default) = %v, %v", ok, err)
	}
	waitFor(t, "the default queue's messages", 30*time.Second, func() bool {
		st := stats(t, ib)
		return st.Handled == 2 && st.Dead == 1
	})
	waitPolls()
	if st := stats(t, ib); st.Ready != 1 || st.Queues["slow"].Ready != 1 || count() != 2 {
		t.Fatalf("with slow still paused: %+v, %d handled; want t.slow's message ready", st.Counts, count())
	}

	if ok, err := f.d.Resume(ctx, dialects.PauseQueue, "slow"); err != nil || !ok {
		t.Fatalf("Resume(slow) = %v, %v", ok, err)
	}
	waitFor(t, "every message handled", 30*time.Second, func() bool { return stats(t, ib).Handled == 3 })
	stop() // flushes the last counts

	got, err := f.d.ListThroughput(ctx, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	sums := map[string]int64{}
	for _, c := range got {
		sums[c.Kind+" "+c.Name] += c.Count
	}
	var have []string
	for k, n := range sums {
		have = append(have, fmt.Sprintf("%s %d", k, n))
	}
	slices.Sort(have)
	if want := []string{"dead_lettered t.none 1", "handled t.fast 2", "handled t.slow 1"}; !slices.Equal(have, want) {
		t.Fatalf("throughput %v, want %v", have, want)
	}
}
