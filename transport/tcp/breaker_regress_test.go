package tcp

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/durable-go/durable/transport"
)

// TestBreakerReopensDuringProbe (found in review): the circuit reopens between the probe's
// successful PING and the probe goroutine's end. Before the fix the probe ended anyway and no new one
// started, so the circuit stayed open for good with PingInterval < 0; now a probe runs until it sees
// the circuit closed. The logger widens the window: it sleeps while logging "circuit closed", which
// runs with c.mu held, so the failure that reopens the circuit queues behind it.
type slowCloseLog struct {
	slog.Handler
	once sync.Once
}

func (h *slowCloseLog) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "circuit closed") {
		// Widen the (real, but narrow) window between succeeded() and the probe's deferred
		// probing=false. succeeded() holds c.mu here, so failures queue up behind it.
		h.once.Do(func() { time.Sleep(800 * time.Millisecond) })
	}
	return h.Handler.Handle(ctx, r)
}

func TestBreakerReopensDuringProbe(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	h := transport.HandlerFunc(func(ctx context.Context, b *transport.Batch) (transport.Result, error) {
		if strings.HasPrefix(b.Envelopes[0].ID, "slow") {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return transport.Result{}, nil
	})
	srv := startServer(t, h, ServerConfig{})
	base, bsink := newLog(t)
	log := slog.New(&slowCloseLog{Handler: base.Handler()})
	t0 := time.Now()
	defer func() { t.Logf("t=%v log:\n%s", time.Since(t0), bsink.dump()) }()
	c := newClient(t, srv.addr, ClientConfig{Logger: log, AckTimeout: 500 * time.Millisecond, BreakerThreshold: 1,
		BackoffMin: 100 * time.Millisecond, BackoffMax: 100 * time.Millisecond, PingInterval: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // bounds a hang only
	defer cancel()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { c.Send(ctx, oneBatch("slow1")) }) // times out at ~500ms: circuit opens, probe PINGs at ~550-600ms
	time.Sleep(400 * time.Millisecond)
	wg.Go(func() { c.Send(ctx, oneBatch("slow2")) }) // times out at ~900ms, inside the window (~600ms..~1400ms)
	wg.Wait()
	// With the fix a probe runs until the circuit is closed, so a Send succeeds in the end; the
	// deadline only bounds the wait (the sends' short AckTimeout may expire on a loaded machine,
	// which reopens the circuit for another probe).
	deadline := time.Now().Add(time.Minute)
	var err error
	for time.Now().Before(deadline) {
		if _, err = c.Send(ctx, oneBatch("ok")); err == nil {
			t.Logf("ok at %v", time.Since(t0))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.mu.Lock()
	open, probing := c.open, c.probing
	c.mu.Unlock()
	t.Fatalf("Send still failing after 1m: %v (open=%v probing=%v)", err, open, probing)
}
