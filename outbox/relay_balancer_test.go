package outbox_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable/outbox"
	"github.com/durable-go/durable/transport"
	"github.com/durable-go/durable/transport/tcp"
)

// TestRelayBalancer: a relay sending through a tcp.Balancer over three instances of the peer,
// which share one store (the receiver, deduplicating by id like an inbox), delivers every
// keyed message and keeps each key's order while one instance is closed mid-run.
func TestRelayBalancer(t *testing.T) {
	t.Run("postgres", func(t *testing.T) { t.Parallel(); testRelayBalancer(t, pgxWide) })
	t.Run("sqlite", func(t *testing.T) { t.Parallel(); testRelayBalancer(t, sqliteTarget) })
}

// countingHandler counts the batches an instance was given before handing them to the
// shared store.
type countingHandler struct {
	h transport.Handler
	n atomic.Int64
}

func (c *countingHandler) Deliver(ctx context.Context, b *transport.Batch) (transport.Result, error) {
	c.n.Add(int64(len(b.Envelopes)))
	return c.h.Deliver(ctx, b)
}

func testRelayBalancer[TTx any](t *testing.T, tg target[TTx]) {
	const total, keys, chunk = 300, 6, 30
	d := tg.open(t, true)
	store := newReceiver()
	var insts [3]*countingHandler
	var srvs [3]*server
	var addrs []string
	for i := range insts {
		insts[i] = &countingHandler{h: store}
		srvs[i] = startServer(t, insts[i])
		addrs = append(addrs, srvs[i].addr)
	}
	b, err := tcp.NewBalancer(addrs, &tcp.ClientConfig{
		NodeID: "sender", Logger: quiet, BackoffMin: 5 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	}, &tcp.BalancerConfig{Name: "billing", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("Balancer.Close: %v", err)
		}
	})
	ob := newOutbox(t, d, notifyConfig(d))
	cfg := fastRelay(nil)
	cfg.Outbox = ob
	relay := newRelay(t, d, map[string]transport.Sender{"billing": b}, cfg)
	stop := start(t, relay)

	enqueue := func(from, to int) {
		for i := from; i < to; i += chunk {
			var msgs []*outbox.Message
			for j := i; j < i+chunk; j++ {
				m := relayMsg("billing", j)
				m.Key = fmt.Sprintf("key-%d", j%keys)
				msgs = append(msgs, m)
			}
			mustEnqueue(t, ob, msgs...)
		}
	}
	enqueue(0, total/2)
	store.waitDistinct(t, total/3, 60*time.Second)
	if insts[2].n.Load() == 0 {
		t.Fatalf("instance 2 got nothing of the first %d messages (instances got %d, %d)", total/3, insts[0].n.Load(), insts[1].n.Load())
	}
	srvs[2].close()
	before := insts[0].n.Load() + insts[1].n.Load()
	enqueue(total/2, total)
	store.waitDistinct(t, total, 60*time.Second)
	waitUntil(t, "an empty outbox", 30*time.Second, func() bool { return unsent(t, d) == 0 })
	stop()

	if after := insts[0].n.Load() + insts[1].n.Load(); after-before < total/2 {
		t.Fatalf("the live instances got %d envelopes after the close, want at least %d", after-before, total/2)
	}
	got, counts := store.snapshot()
	if len(counts) != total {
		t.Fatalf("%d distinct ids stored, want %d", len(counts), total)
	}
	// Each id stored once: a second delivery is only a resend of a batch whose ACK the closed
	// instance never sent, answered Duplicate.
	first := map[string]bool{}
	last := map[string]int{}
	dups := 0
	for _, g := range got {
		if first[g.env.ID] {
			dups++
			if g.env.SendAttempt < 2 {
				t.Fatalf("%s delivered again on its first send attempt", g.env.ID)
			}
			continue
		}
		first[g.env.ID] = true
		var i int
		if _, err := fmt.Sscanf(g.env.ID, "billing-%d", &i); err != nil {
			t.Fatal(err)
		}
		if prev, ok := last[g.env.Key]; ok && i <= prev {
			t.Fatalf("key %s: message %d stored after %d", g.env.Key, i, prev)
		}
		last[g.env.Key] = i
	}
	if n := len(rowsOf(t, d)); n != 0 {
		t.Fatalf("%d rows left", n)
	}
	t.Logf("instances got %d, %d, %d envelopes; %d resent after the close", insts[0].n.Load(), insts[1].n.Load(), insts[2].n.Load(), dups)
}
