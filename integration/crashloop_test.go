package integration

import (
	"context"
	crand "crypto/rand"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/integration/internal/faultproxy"
	"github.com/durable-go/durable/integration/internal/history"
	"github.com/durable-go/durable/integration/internal/proc"
	"github.com/durable-go/durable/outbox"
)

// TestKillingHandler: a message whose handler kills the receiving process
// every time it runs (a fatal error, an exit, the OOM killer) ends in the
// dead letters after MaxAttempts, and the messages sent with it are handled
// once each: the receiver, restarted after every death as a supervisor
// would, dies once in the inline delivery (which counts no attempt), then
// once per worker attempt: the first in the worker's batch of all 21
// messages, the others with the killer alone, since a batch that holds
// messages whose last attempt was lost runs them one at a time. Were a
// resend handled inline again, the receiver would die at every resend,
// forever; were the batch run whole again, every message of it would run
// out of attempts with the killer.
func TestKillingHandler(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes for about 20s; runs without -short")
	}
	const (
		normal      = 20
		maxAttempts = 3
	)
	bin := helperBinary(t)
	orders := openSide(t, "sqlite", "orders", ordersTables)
	billing := openSide(t, "sqlite", "billing", billingTables)
	secret := crand.Text()

	// The messages, committed before anything runs: normal ones and one
	// killer, in one transaction, so that they travel in one batch.
	d, err := sqlite.New(orders.db, nil)
	if err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.New(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tx, err := orders.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	killer := "killer-1"
	var ids []string
	for i := range normal + 1 {
		id, kind, payload := fmt.Sprintf("normal-%02d", i), "normal", fmt.Sprintf(`{"seq":%d,"writer":"test"}`, i)
		if i == normal/2 {
			id, kind, payload = killer, "killer", `{"seq":0,"writer":"test","kill":true}`
		} else {
			ids = append(ids, id)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, kind, key, seq) VALUES (?, ?, '', ?)`, id, kind, i); err != nil {
			t.Fatal(err)
		}
		if err := ob.Enqueue(ctx, tx, &outbox.Message{ID: id, Destination: "billing", Topic: "order.placed", Payload: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	deaths := 0
	startReceiver := func(n int) (*proc.Process, string) {
		p := proc.Start(t, bin, proc.Options{
			Name: fmt.Sprintf("billing#%d", n),
			Args: []string{"-role", "receiver", "-dialect", "sqlite", "-dsn", billing.dsn, "-secret", secret,
				"-inline", "on", "-max-attempts", fmt.Sprint(maxAttempts),
				"-fail", "0", "-swallow", "0", "-panic", "0", "-slow", "0"},
			OnLine: func(_, line string) {
				if strings.HasPrefix(line, "DIE killer "+killer) {
					mu.Lock()
					deaths++
					mu.Unlock()
				}
			},
		})
		ready, err := p.WaitReady(time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return p, ready.Get("addr")
	}
	receiver, addr := startReceiver(1)
	proxy, err := faultproxy.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	sender := proc.Start(t, bin, proc.Options{
		Name: "orders",
		Args: []string{"-role", "sender", "-dialect", "sqlite", "-dsn", orders.dsn, "-peer", proxy.Addr(), "-secret", secret, "-rate", "0"},
	})
	if _, err := sender.WaitReady(time.Minute); err != nil {
		t.Fatal(err)
	}
	defer sender.Stop(stopTimeout)

	// Supervise the receiver until the killer is dead-lettered and every
	// other message has its effect.
	done := func() bool {
		var dead int
		if err := billing.db.QueryRow(`SELECT count(*) FROM durable_dead_letters WHERE id = ?`, killer).Scan(&dead); err != nil {
			t.Fatal(err)
		}
		effects, err := history.CountEffectsSQL(ctx, billing.db, "effects", "message_id")
		if err != nil {
			t.Fatal(err)
		}
		return dead == 1 && len(effects) >= normal
	}
	starts := 1
	deadline := time.Now().Add(3 * time.Minute) // a bound on a hang, not on speed
	for !done() {
		if time.Now().After(deadline) {
			t.Fatalf("after 3 minutes and %d receiver starts (%d deaths in the killer's handler): the killer is not dead-lettered, or messages are missing", starts, deaths)
		}
		select {
		case <-receiver.Done():
			if starts > 2*maxAttempts+2 {
				t.Fatalf("the receiver died %d times in the killer's handler: it is run again and again", deaths)
			}
			starts++
			receiver, addr = startReceiver(starts)
			proxy.SetTarget(addr)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := receiver.Stop(stopTimeout); err != nil {
		t.Logf("receiver stop: %v", err)
	}

	mu.Lock()
	died := deaths
	mu.Unlock()
	// Once inline, then once per worker attempt.
	if died != 1+maxAttempts {
		t.Errorf("the receiver died %d times in the killer's handler, want %d (once inline, then once per attempt)", died, 1+maxAttempts)
	}
	var reason, lastErr string
	var attempts int
	if err := billing.db.QueryRow(`SELECT reason, attempts, last_error FROM durable_dead_letters WHERE id = ?`, killer).Scan(&reason, &attempts, &lastErr); err != nil {
		t.Fatal(err)
	}
	if reason != "handler_error" || !strings.Contains(lastErr, "gave up") {
		t.Errorf("killer dead letter: reason %q, attempts %d, last error %q; want handler_error, gave up", reason, attempts, lastErr)
	}
	effects, err := history.CountEffectsSQL(ctx, billing.db, "effects", "message_id")
	if err != nil {
		t.Fatal(err)
	}
	if effects[killer] != 0 {
		t.Errorf("the killer has %d effects, want 0: it died before its transaction committed", effects[killer])
	}
	for _, id := range ids {
		if effects[id] != 1 {
			t.Errorf("%s has %d effects, want 1", id, effects[id])
		}
	}
	var otherDead int
	if err := billing.db.QueryRow(`SELECT count(*) FROM durable_dead_letters WHERE id <> ?`, killer).Scan(&otherDead); err != nil {
		t.Fatal(err)
	}
	if otherDead != 0 {
		t.Errorf("%d other messages were dead-lettered", otherDead)
	}
}
