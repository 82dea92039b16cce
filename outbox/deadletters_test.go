package outbox_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
)

// TestOutboxDeadLetters: messages the peer rejects become outbox dead
// letters, listed and looked up through the Outbox; Replay puts them back
// for the relay, which sends them again at once (woken in process, its
// poll is a minute); a replayed dead letter is not replayed twice; purge
// deletes them.
func TestOutboxDeadLetters(t *testing.T) {
	runRelayTargets(t, testOutboxDeadLetters[pgxTx], testOutboxDeadLetters[sqlTx])
}

func testOutboxDeadLetters[TTx any](t *testing.T, tg target[TTx]) {
	d := tg.open(t, true)
	ctx := ctxT(t)
	var mu sync.Mutex
	refuse := map[string]bool{relayMsg("billing", 1).ID: true, relayMsg("billing", 3).ID: true}
	rcv := newReceiver()
	rcv.decide = func(b *transport.Batch) (transport.Result, error) {
		mu.Lock()
		defer mu.Unlock()
		res := transport.Result{Outcomes: make([]transport.Outcome, len(b.Envelopes))}
		for i, e := range b.Envelopes {
			if refuse[e.ID] {
				res.Outcomes[i] = transport.Outcome{Status: transport.Rejected, Reason: "unknown customer"}
			}
		}
		return res, nil
	}
	srv := startServer(t, rcv)
	ob := newOutbox(t, d, nil)
	cfg := fastRelay(nil)
	cfg.PollInterval = time.Minute
	cfg.Outbox = ob
	relay := newRelay(t, d, map[string]transport.Sender{"billing": newClient(t, srv.addr)}, cfg)

	// Committed before the relay starts, so that its first claim takes them
	// whatever the machine's speed: an Enqueue racing the relay's start
	// may wake it before it subscribed and commit after its first claim,
	// and then nothing would look again for the minute-long poll.
	var msgs []*outbox.Message
	for i := range 4 {
		msgs = append(msgs, relayMsg("billing", i))
	}
	mustEnqueue(t, ob, msgs...)
	start(t, relay)
	rcv.waitDistinct(t, 2, 30*time.Second)
	waitUntil(t, "an empty outbox", 30*time.Second, func() bool { return unsent(t, d) == 0 })

	dl, err := ob.DeadLetters(ctx, outbox.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 2 || dl[0].ID != msgs[1].ID || dl[1].ID != msgs[3].ID {
		t.Fatalf("dead letters = %+v, want %s and %s", dl, msgs[1].ID, msgs[3].ID)
	}
	for _, l := range dl {
		if l.Destination != "billing" || l.Reason != deadletter.ReasonRejected || l.LastError != "unknown customer" ||
			l.Attempts != 1 || len(l.Errors) != 1 || l.Errors[0].Error != "unknown customer" || !l.Pending() ||
			l.Topic != "test.relay" || l.Headers["i"] == "" || len(l.Payload) == 0 {
			t.Fatalf("dead letter %+v", l)
		}
	}
	one, err := ob.DeadLetter(ctx, "billing", msgs[3].ID)
	if err != nil || one.ID != msgs[3].ID {
		t.Fatalf("DeadLetter = %+v, %v", one, err)
	}
	if _, err := ob.DeadLetter(ctx, "other", msgs[3].ID); !errors.Is(err, outbox.ErrNotFound) {
		t.Fatalf("DeadLetter of another destination = %v, want ErrNotFound", err)
	}
	if got, err := ob.DeadLetters(ctx, outbox.DeadLetterFilter{Reason: deadletter.ReasonExpired}); err != nil || len(got) != 0 {
		t.Fatalf("expired dead letters = %d, %v; want none", len(got), err)
	}

	// The peer accepts them now.
	mu.Lock()
	clear(refuse)
	mu.Unlock()
	n, err := ob.Replay(ctx, outbox.DeadLetterFilter{IDs: []string{msgs[1].ID}})
	if err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v; want 1", n, err)
	}
	rcv.waitDistinct(t, 3, 30*time.Second) // within the minute-long poll: woken by Replay
	n, err = ob.Replay(ctx, outbox.DeadLetterFilter{Destination: "billing"})
	if err != nil || n != 1 {
		t.Fatalf("Replay of the rest = %d, %v; want 1 (the other one)", n, err)
	}
	rcv.waitDistinct(t, 4, 30*time.Second)
	if n, err := ob.Replay(ctx, outbox.DeadLetterFilter{}); err != nil || n != 0 {
		t.Fatalf("second Replay = %d, %v; want 0", n, err)
	}
	waitUntil(t, "an empty outbox", 30*time.Second, func() bool { return unsent(t, d) == 0 })
	_, counts := rcv.snapshot()
	for _, m := range msgs {
		if counts[m.ID] != 1 {
			t.Fatalf("%s received %d times, want 1", m.ID, counts[m.ID])
		}
	}

	if pending, err := ob.DeadLetters(ctx, outbox.DeadLetterFilter{}); err != nil || len(pending) != 0 {
		t.Fatalf("pending dead letters after the replays = %d, %v; want 0", len(pending), err)
	}
	all, err := ob.DeadLetters(ctx, outbox.DeadLetterFilter{IncludeReplayed: true})
	if err != nil || len(all) != 2 || all[0].ReplayedAt.IsZero() || all[1].ReplayedAt.IsZero() || all[0].Pending() {
		t.Fatalf("dead letters after the replays = %+v, %v", all, err)
	}
	if n, err := ob.PurgeDeadLetters(ctx, outbox.DeadLetterFilter{}); err != nil || n != 0 {
		t.Fatalf("purge of pending ones = %d, %v; want 0", n, err)
	}
	if n, err := ob.PurgeDeadLetters(ctx, outbox.DeadLetterFilter{IncludeReplayed: true}); err != nil || n != 2 {
		t.Fatalf("purge = %d, %v; want 2", n, err)
	}
	if left := deadLettersOf(t, d); len(left) != 0 {
		t.Fatalf("dead letters after purge: %d", len(left))
	}
}
