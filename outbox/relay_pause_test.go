package outbox_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// pauseCounter wraps a dialect and counts the ListPauses calls that
// returned: each is one look of a relay at durable_pauses.
type pauseCounter[TTx any] struct {
	dialects.Dialect[TTx]
	polls atomic.Int64
}

func (c *pauseCounter[TTx]) ListPauses(ctx context.Context) ([]dialects.Pause, error) {
	p, err := c.Dialect.ListPauses(ctx)
	c.polls.Add(1)
	return p, err
}

// waitPolls waits until the relay has looked at the pauses twice more: the
// second look began after the first ended, so after waitPolls returns, the
// relay has seen what the table held when it was called, and one poll
// interval has passed in which its lanes could have claimed.
func (c *pauseCounter[TTx]) waitPolls(t *testing.T) {
	t.Helper()
	n := c.polls.Load()
	waitUntil(t, "two looks at the pauses", 30*time.Second, func() bool { return c.polls.Load() >= n+2 })
}

// TestRelayPause: a destination paused in durable_pauses gets nothing sent
// (its rows stay in the outbox, unattempted, an expired one too) while
// another destination flows; once resumed, everything is delivered (the
// expired message dead-lettered), and the relay's throughput counters reach
// durable_throughput.
func TestRelayPause(t *testing.T) {
	runRelayTargets(t, testRelayPause[pgxTx], testRelayPause[sqlTx])
}

func testRelayPause[TTx any](t *testing.T, tg target[TTx]) {
	d := tg.open(t, true)
	ctx := ctxT(t)
	pc := &pauseCounter[TTx]{Dialect: d}
	rcv := newReceiver()
	srv := startServer(t, rcv)
	ob := newOutbox(t, d, nil)
	log, sink := newLog()
	cfg := fastRelay(log)
	cfg.Outbox = ob
	cfg.ThroughputFlush = 20 * time.Millisecond
	client := newClient(t, srv.addr)
	relay := newRelay(t, pc, map[string]transport.Sender{"billing": client, "audit": client}, cfg)
	if ok, err := d.Pause(ctx, dialects.Pause{Kind: dialects.PauseDestination, Name: "billing", PausedBy: "test", Reason: "maintenance"}); err != nil || !ok {
		t.Fatalf("Pause = %v, %v", ok, err)
	}
	// A queue of the same name is another pause: it does not stop the relay.
	if _, err := d.Pause(ctx, dialects.Pause{Kind: dialects.PauseQueue, Name: "audit"}); err != nil {
		t.Fatal(err)
	}
	stop := start(t, relay)
	pc.waitPolls(t)

	for i := 1; i <= 5; i++ {
		mustEnqueue(t, ob, relayMsg("billing", i))
	}
	for i := 1; i <= 3; i++ {
		mustEnqueue(t, ob, relayMsg("audit", i))
	}
	// An expired message of the paused destination waits with the others
	// (and, never attempted, does not count as enqueued).
	expired := relayMsg("billing", 6)
	expired.ExpiresAt = time.Now().Add(-time.Second)
	mustEnqueue(t, ob, expired)
	rcv.waitDistinct(t, 3, 30*time.Second)
	// The receiver has audit's 3; their rows leave the outbox once the
	// relay has read the acknowledgement.
	waitUntil(t, "audit's rows acknowledged and deleted", 30*time.Second, func() bool {
		return !slices.ContainsFunc(rowsOf(t, d), func(r dialects.OutboxRow) bool { return r.Destination == "audit" })
	})
	pc.waitPolls(t)
	if _, counts := rcv.snapshot(); len(counts) != 3 || counts[relayMsg("billing", 1).ID] != 0 {
		t.Fatalf("received %v while billing was paused, want the 3 audit messages only", counts)
	}
	rows := rowsOf(t, d)
	if len(rows) != 6 {
		t.Fatalf("%d rows in the outbox while billing is paused, want its 6", len(rows))
	}
	if dl := deadLettersOf(t, d); len(dl) != 0 {
		t.Fatalf("%d dead letters while billing is paused, want none", len(dl))
	}
	for _, r := range rows {
		if r.Destination != "billing" || r.SendAttempt != 0 || r.LeaseToken != "" {
			t.Fatalf("row %s of %s: attempts %d, lease %q; want billing's, never claimed", r.ID, r.Destination, r.SendAttempt, r.LeaseToken)
		}
	}
	st, err := relay.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Destinations["billing"].PausedByOperator || st.Destinations["audit"].PausedByOperator || st.Destinations["billing"].Unsent != 6 {
		t.Fatalf("stats while paused: %+v", st.Destinations)
	}
	if n := sink.count("INFO durable/outbox: relay: destination paused by an operator", "destination=billing", "paused_by=test", "reason=maintenance"); n != 1 {
		t.Fatalf("%d log lines about the pause, want 1:\n%s", n, sink.dump())
	}

	if ok, err := d.Resume(ctx, dialects.PauseDestination, "billing"); err != nil || !ok {
		t.Fatalf("Resume = %v, %v", ok, err)
	}
	rcv.waitDistinct(t, 8, 30*time.Second)
	waitUntil(t, "an empty outbox", 30*time.Second, func() bool { return unsent(t, d) == 0 })
	if dl := deadLettersOf(t, d); len(dl) != 1 || dl[0].ID != expired.ID || dl[0].Reason != dialects.ReasonExpired {
		t.Fatalf("dead letters after the resume: %+v, want the expired message", dl)
	}
	if n := sink.count("INFO durable/outbox: relay: destination resumed by an operator", "destination=billing"); n != 1 {
		t.Fatalf("%d log lines about the resume, want 1:\n%s", n, sink.dump())
	}
	stop() // flushes the last counts

	got, err := d.ListThroughput(ctx, time.Now().Add(-time.Hour))
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
	want := []string{"enqueued audit 3", "enqueued billing 5", "sent audit 3", "sent billing 5"}
	if !slices.Equal(have, want) {
		t.Fatalf("throughput %v, want %v", have, want)
	}
}
