package inbox

import (
	"context"
	"database/sql"
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestStatsPerTopicAndQueue: Stats counts per topic and per queue of the
// inbox's Config (every queue, the empty ones too, and "default" for the
// topics no Queue lists), and the totals are their sums.
func TestStatsPerTopicAndQueue(t *testing.T) {
	each(t, testStatsPerTopicAndQueue[pgx.Tx], testStatsPerTopicAndQueue[*sql.Tx])
}

func testStatsPerTopicAndQueue[TTx any](t *testing.T, f *fixture[TTx]) {
	cfg := fastConfig(t)
	cfg.Queues = []Queue{{Name: "billing", Topics: []string{"order.placed", "refund.issued"}}, {Topics: []string{"idle"}}}
	ib, mux := newInbox(t, f, cfg)
	mux.HandleFunc("order.placed", effect(f))
	mux.HandleFunc("refund.issued", func(context.Context, TTx, *Message) error {
		return Permanent(errors.New("refused"))
	})
	if s := stats(t, ib); s.Counts != (Counts{}) || s.Topics != nil ||
		!maps.Equal(s.Queues, map[string]Counts{"billing": {}, "idle": {}, "default": {}}) {
		t.Fatalf("stats of an empty inbox %+v", s)
	}
	// audit has no handler and is not due for an hour: it stays ready.
	audit1, audit2 := envelope(5, "audit"), envelope(6, "audit")
	audit1.DeliverAt, audit2.DeliverAt = time.Now().Add(time.Hour), time.Now().Add(time.Hour)
	deliver(t, ib, batch("orders", envelope(1, "order.placed"), envelope(2, "order.placed"), envelope(3, "order.placed"),
		envelope(4, "refund.issued"), audit1, audit2))
	began := time.Now()
	stop := start(t, ib)
	waitFor(t, "the due messages to settle", 60*time.Second, func() bool {
		s := stats(t, ib)
		return s.Handled == 3 && s.Dead == 1
	})
	stop()

	s := stats(t, ib)
	slack := func(c Counts) Counts { return lastMinuteSlack(Stats{Counts: c}, began).Counts }
	if got, want := slack(s.Counts), (Counts{Ready: 2, Handled: 3, Dead: 1, HandledLastMinute: 3}); got != want {
		t.Errorf("totals %+v, want %+v", got, want)
	}
	wantTopics := map[string]Counts{
		"order.placed":  {Handled: 3, HandledLastMinute: 3},
		"refund.issued": {Dead: 1},
		"audit":         {Ready: 2},
	}
	wantQueues := map[string]Counts{
		"billing": {Handled: 3, Dead: 1, HandledLastMinute: 3},
		"idle":    {},
		"default": {Ready: 2},
	}
	for name, c := range []struct {
		got, want map[string]Counts
	}{{s.Topics, wantTopics}, {s.Queues, wantQueues}} {
		got := make(map[string]Counts, len(c.got))
		for k, v := range c.got {
			got[k] = slack(v)
		}
		if !maps.Equal(got, c.want) {
			t.Errorf("%s: %+v, want %+v", []string{"topics", "queues"}[name], got, c.want)
		}
	}
}
