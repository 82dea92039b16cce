package outbox_test

// Regression tests of two relay bugs found in review (session 4).

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
)

// funcSender is an in-process transport.Sender.
type funcSender func(ctx context.Context, b *transport.Batch) (transport.Result, error)

func (f funcSender) Send(ctx context.Context, b *transport.Batch) (transport.Result, error) {
	return f(ctx, b)
}

// TestRelaySameIDTokens: two relays configured with the same ID (a
// StatefulSet pod name, a static name in a config file shared by replicas)
// hand out the same lease tokens ("ID/1", "ID/2", ...), so the lease guard
// no longer tells them apart: a stale relay whose lease expired releases a
// row that the other relay re-claimed and is sending right now.
func TestRelaySameIDTokens(t *testing.T) {
	t.Run("same-id", func(t *testing.T) { testSameID(t, "billing-relay", "billing-relay") })
	// Control: with distinct IDs the lease guard works (this subtest passes).
	t.Run("distinct-ids", func(t *testing.T) { testSameID(t, "relay-a", "relay-b") })
}

func testSameID(t *testing.T, id1, id2 string) {
	d := sqliteTarget.open(t, true)
	ob := newOutbox(t, d, nil)
	mustEnqueue(t, ob, relayMsg("billing", 1))

	var (
		s1entered  = make(chan struct{})
		r2sending  = make(chan struct{})
		s1go       = make(chan struct{})
		s1returned = make(chan struct{})
		finish2    = make(chan struct{})
		calls1     atomic.Int32
	)
	// Relay 1's peer answers late: the process stalled (GC, VM pause, a
	// slow network) past its lease; it then reports a retryable failure.
	s1 := funcSender(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		if calls1.Add(1) > 1 {
			<-ctx.Done()
			return transport.Result{}, ctx.Err()
		}
		close(s1entered)
		<-s1go
		defer close(s1returned)
		return transport.Result{}, errors.New("ack timeout (late)")
	})
	s2 := funcSender(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		close(r2sending)
		select {
		case <-finish2:
		case <-ctx.Done():
			return transport.Result{}, ctx.Err()
		}
		return transport.Result{}, nil
	})
	cfg := func(id string) *outbox.RelayConfig {
		c := fastRelay(nil)
		c.ID = id
		c.PollInterval = time.Hour
		c.RetryMin, c.RetryMax = 2*time.Second, 4*time.Second
		return c
	}
	// Relay 1's lease is short: the test waits it out.
	cfg1 := cfg(id1)
	cfg1.Lease = time.Second
	cfg1.SendTimeout = 400 * time.Millisecond
	// Relay 2's lease and send outlast the test's checks, however slow the
	// machine: its row must stay leased to it until the test lets s2 answer.
	cfg2 := cfg(id2)
	// s1 ignores its context until told to answer, and s2 answers when told
	// to: each cleanup is registered after its relay's start, so that it
	// runs before that relay's stop.
	var s1once, s2once sync.Once
	r1 := newRelay(t, d, map[string]transport.Sender{"billing": s1}, cfg1)
	start(t, r1)
	t.Cleanup(func() { s1once.Do(func() { close(s1go) }) })
	within(t, s1entered, "relay 1's send")
	time.Sleep(1200 * time.Millisecond) // relay 1's lease expires
	r2 := newRelay(t, d, map[string]transport.Sender{"billing": s2}, cfg2)
	start(t, r2)
	t.Cleanup(func() { s2once.Do(func() { close(finish2) }) })
	select {
	case <-r2sending:
	case <-time.After(30 * time.Second):
		t.Fatal("relay 2 did not take over the expired lease within 30s")
	}
	rows := rowsOf(t, d)
	if len(rows) != 1 {
		t.Fatalf("rows %+v", rows)
	}
	t.Logf("row leased by relay 2 with token %q", rows[0].LeaseToken)
	s1once.Do(func() { close(s1go) })
	within(t, s1returned, "relay 1's late send to return")
	// Relay 1 now releases "its" row with the token it claimed it with,
	// and then counts it retried. Relay 2's lease and send outlast this.
	waitUntil(t, "relay 1 to release its row after the late failure", 30*time.Second, func() bool {
		st, err := r1.Stats(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		return st.Retried > 0
	})
	rows = rowsOf(t, d)
	if len(rows) != 1 || rows[0].LeaseToken == "" {
		t.Fatalf("while relay 2 is still sending the row, it is no longer leased to it: %+v\n"+
			"(relay 1, whose lease had expired, released it with the token both relays used)", rows)
	}
}

// TestRelayKeyLateCommitPostgres: on Postgres an earlier row (lower seq)
// of a key whose transaction commits after a later row of the same key was
// claimed is itself claimed while the later one is still in flight: two rows
// of one key in flight together, against dialects.Relayer's contract.
func TestRelayKeyLateCommitPostgres(t *testing.T) {
	d := pgxWide.open(t, true)
	ctx := ctxT(t)
	ob := newOutbox(t, d, nil)

	a := relayMsg("billing", 1)
	a.Key = "order-42"
	b := relayMsg("billing", 2)
	b.Key = "order-42"
	tx1, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A test that fails before the commit must not leave tx1 holding a
	// connection: closing the pool at cleanup would wait for it forever.
	t.Cleanup(func() { _ = d.Rollback(context.Background(), tx1) })
	if err := ob.Enqueue(ctx, tx1, a); err != nil { // seq n, not committed yet
		t.Fatal(err)
	}
	mustEnqueue(t, ob, b) // seq n+1, committed

	var (
		mu       sync.Mutex
		inflight = map[string]int{}
		overlap  []string
		bIn      = make(chan struct{})
		bOnce    sync.Once
		releaseB = make(chan struct{})
		relOnce  sync.Once
	)
	t.Cleanup(func() { relOnce.Do(func() { close(releaseB) }) })
	s := funcSender(func(ctx context.Context, bt *transport.Batch) (transport.Result, error) {
		mu.Lock()
		for _, e := range bt.Envelopes {
			inflight[e.Key]++
			if inflight[e.Key] > 1 {
				overlap = append(overlap, e.ID)
			}
		}
		mu.Unlock()
		defer func() {
			mu.Lock()
			for _, e := range bt.Envelopes {
				inflight[e.Key]--
			}
			mu.Unlock()
		}()
		for _, e := range bt.Envelopes {
			if e.ID == b.ID {
				bOnce.Do(func() { close(bIn) })
				select {
				case <-releaseB:
				case <-ctx.Done():
					return transport.Result{}, ctx.Err()
				}
			}
		}
		return transport.Result{}, nil
	})
	cfg := fastRelay(nil)
	relay := newRelay(t, d, map[string]transport.Sender{"billing": s}, cfg)
	start(t, relay)
	within(t, bIn, "B to be sent")
	if err := d.Commit(ctx, tx1); err != nil { // A becomes visible while B is in flight
		t.Fatal(err)
	}
	// Several polls, in which A must not be sent while B is in flight (B's
	// send and lease, from fastRelay, outlast this however slow the
	// machine). A slow machine polls fewer times: it may miss the bug,
	// never fail spuriously.
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	ov := append([]string(nil), overlap...)
	mu.Unlock()
	relOnce.Do(func() { close(releaseB) })
	waitUntil(t, "an empty outbox", 30*time.Second, func() bool { return unsent(t, d) == 0 })
	if len(ov) > 0 {
		t.Fatalf("rows of key %q in flight together: %v was sent while %s (same key) was still in flight", a.Key, ov, b.ID)
	}
}
