package inbox

import (
	"context"
	"database/sql"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/transport"
)

// TestLeaseFencing: worker A's lease expires before it handles its batch;
// B rescues the message, claims it and completes it; A's late attempt then
// runs no handler and changes nothing.
func TestLeaseFencing(t *testing.T) {
	each(t, testLeaseFencing[pgx.Tx], testLeaseFencing[*sql.Tx])
}

func testLeaseFencing[TTx any](t *testing.T, f *fixture[TTx]) {
	cfg := fastConfig(t)
	cfg.Lease = 30 * time.Millisecond
	a, aMux := newInbox(t, f, cfg)
	var aCalls atomic.Int32
	aMux.HandleFunc("t", func(ctx context.Context, tx TTx, m *Message) error {
		aCalls.Add(1)
		return effect(f)(ctx, tx, m)
	})
	b, bMux := newInbox(t, f, fastConfig(t))
	bMux.HandleFunc("t", effect(f))
	deliver(t, a, batch("orders", envelope(1, "t")))
	id := envelope(1, "").ID

	ctx := context.Background()
	q := a.queues[len(a.queues)-1]
	tokenA, claimed, err := a.claim(ctx, q, "A")
	if err != nil || len(claimed) != 1 {
		t.Fatalf("A's claim: %d rows, %v", len(claimed), err)
	}
	// A stalls past its lease: B's Rescue finds nothing until the lease
	// has expired, then exactly the one message.
	rescued := 0
	waitFor(t, "A's lease to expire and B to rescue the message", 30*time.Second, func() bool {
		n, err := b.Rescue(ctx)
		if err != nil {
			t.Fatalf("B's Rescue: %v", err)
		}
		rescued += n
		return rescued > 0
	})
	if rescued != 1 {
		t.Fatalf("B's Rescue = %d; want 1", rescued)
	}
	if n := b.processOnce(t); n != 1 {
		t.Fatalf("B claimed %d, want 1", n)
	}
	a.process(ctx, q, "A", tokenA, claimed) // A wakes up
	if aCalls.Load() != 0 {
		t.Fatal("A ran its handler on a message it no longer leased")
	}
	assertEffectsOnce(t, f, []string{id})
	r := row(t, a, "orders", id)
	if r.State != dialects.InboxStateHandled || r.Attempts != 2 || r.LeaseToken != "" || len(r.Errors) != 1 ||
		r.Errors[0].Error != "lease of A expired before it finished" {
		t.Fatalf("row after B's completion and A's late attempt: %+v", r)
	}
	// A's late settlement through the store, of every kind, changes nothing.
	tx, err := f.d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n, err := a.store.FinishInbox(ctx, tx, tokenA, []dialects.InboxOutcome{
		{Source: "orders", ID: id, Kind: dialects.InboxDead, Reason: deadletter.ReasonHandlerError, Error: "late"}})
	if err != nil || n != 0 {
		t.Fatalf("A's late FinishInbox = %d, %v; want 0", n, err)
	}
	if err := f.d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if r2 := row(t, a, "orders", id); r2.State != dialects.InboxStateHandled || len(deadLetters(t, a, DeadLetterFilter{})) != 0 {
		t.Fatalf("A's late outcome changed the row: %+v", r2)
	}
}

// TestLeaseExpiresDuringHandler: on Postgres a batch transaction locks its
// rows, so a lease that expires while the handler runs is not rescued and
// nobody else handles the message.
func TestLeaseExpiresDuringHandler(t *testing.T) {
	f := openPgx(t, "")
	cfg := fastConfig(t)
	cfg.Lease = 20 * time.Millisecond
	a, aMux := newInbox(t, f, cfg)
	entered, release := make(chan struct{}), make(chan struct{})
	aMux.HandleFunc("t", func(ctx context.Context, tx pgx.Tx, m *Message) error {
		close(entered)
		<-release
		return effect(f)(ctx, tx, m)
	})
	b, bMux := newInbox(t, f, fastConfig(t))
	bMux.HandleFunc("t", effect(f))
	deliver(t, a, batch("orders", envelope(1, "t")))
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.processOnce(t)
	}()
	recv(t, "A's handler to start", entered)
	time.Sleep(50 * time.Millisecond) // A's lease expires while its handler runs
	// A Rescue that waited for A's lock would wait until release is
	// closed below, far past this deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n, err := b.Rescue(ctx); err != nil || n != 0 {
		t.Errorf("Rescue beside a live batch = %d, %v; want 0 without waiting", n, err)
	}
	if n := b.processOnce(t); n != 0 {
		t.Errorf("B claimed %d messages A is handling", n)
	}
	close(release)
	<-done
	assertEffectsOnce(t, f, []string{envelope(1, "").ID})
	if r := row(t, a, "orders", envelope(1, "").ID); r.State != dialects.InboxStateHandled || r.Attempts != 1 {
		t.Fatalf("row %+v", r)
	}
}

// TestThreeInstances: three inboxes with pools of their own on one Postgres
// database work 30,000 messages, delivered to all of them with resends:
// every effect exactly once, none lost.
func TestThreeInstances(t *testing.T) {
	const (
		instances = 3
		messages  = 30_000
		perBatch  = 1000
	)
	u, _ := testdb.PostgresSchema(t)
	var ibs []*Inbox[pgx.Tx]
	var calls [instances]atomic.Int64
	var f *fixture[pgx.Tx]
	for i := range instances {
		pool := testdb.OpenPostgres(t, u+"&pool_max_conns=8", i == 0)
		if i == 0 {
			db := pgxRaw{pool}
			db.exec(t, effectsTable)
			f = &fixture[pgx.Tx]{d: pgDialect(t, pool), db: db, txExec: pgxExec}
		}
		cfg := fastConfig(t)
		cfg.Name = fmt.Sprintf("instance-%d", i)
		mux := NewMux[pgx.Tx]()
		ib, err := New(pgDialect(t, pool), mux, cfg)
		if err != nil {
			t.Fatal(err)
		}
		mux.HandleFunc("t", func(ctx context.Context, tx pgx.Tx, m *Message) error {
			calls[i].Add(1)
			_, err := tx.Exec(ctx, `INSERT INTO effects (id) VALUES ($1)`, m.ID)
			return err
		})
		ibs = append(ibs, ib)
	}
	for _, ib := range ibs {
		start(t, ib)
	}
	// Deliver every batch to one instance and resend a third of them to
	// another, from three senders at once, while the workers run.
	var wg sync.WaitGroup
	ids := make([]string, 0, messages)
	for i := range messages {
		ids = append(ids, envelope(i, "").ID)
	}
	errs := make(chan error, instances)
	for s := range instances {
		wg.Go(func() {
			for b := s; b < messages/perBatch; b += instances {
				envs := make([]transport.Envelope, perBatch)
				for i := range envs {
					envs[i] = envelope(b*perBatch+i, "t")
				}
				if _, err := ibs[b%instances].Deliver(context.Background(), batch("orders", envs...)); err != nil {
					errs <- err
					return
				}
				if b%3 == 0 {
					res, err := ibs[(b+1)%instances].Deliver(context.Background(), batch("orders", envs...))
					if err != nil {
						errs <- err
						return
					}
					for i := range envs {
						if res.Outcome(i).Status != transport.Duplicate {
							errs <- fmt.Errorf("resend of batch %d, envelope %d: %v", b, i, res.Outcome(i).Status)
							return
						}
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	began := time.Now()
	waitFor(t, "30,000 handled messages", 120*time.Second, func() bool {
		n := int64(0)
		for i := range calls {
			n += calls[i].Load()
		}
		return n >= messages
	})
	t.Logf("handled 30,000 messages %v after the last delivery", time.Since(began))
	st := settled(t, ibs[0], 60*time.Second)
	// On a slow machine the first messages may be handled more than a
	// minute before the last.
	if st.HandledLastMinute > st.Handled || st.HandledLastMinute == 0 {
		t.Fatalf("stats %+v: handled in the last minute out of range", st)
	}
	st.HandledLastMinute = 0
	if st.Counts != (Counts{Handled: messages}) {
		t.Fatalf("stats %+v", st)
	}
	assertEffectsOnce(t, f, ids)
	total := int64(0)
	for i := range calls {
		n := calls[i].Load()
		if n == 0 {
			t.Errorf("instance %d handled nothing: the instances do not share the work", i)
		}
		total += n
	}
	if total != messages {
		t.Fatalf("handlers ran %d times for %d messages", total, messages)
	}
}

// TestPerKeyOrder: with 16 workers and random transient failures, messages
// sharing a key are handled one at a time and in order, each exactly once.
func TestPerKeyOrder(t *testing.T) {
	t.Run("postgres-pgx", func(t *testing.T) { testPerKeyOrder(t, openPgx(t, "&pool_max_conns=24")) })
	t.Run("sqlite", func(t *testing.T) { testPerKeyOrder(t, openSQLite(t)) })
}

func testPerKeyOrder[TTx any](t *testing.T, f *fixture[TTx]) {
	keys, perKey := 20, 25
	if raceEnabled && f.name == "sqlite" {
		keys, perKey = 10, 12 // still 16 workers; modernc is slow under -race
	}
	cfg := fastConfig(t)
	cfg.Concurrency = 16
	cfg.BatchSize = 8
	cfg.MaxAttempts = 100
	ib, mux := newInbox(t, f, cfg)
	var (
		mu       sync.Mutex
		rnd      = mrand.New(mrand.NewPCG(1, 2))
		inFlight = map[string]bool{}
		failures atomic.Int32
	)
	mux.HandleFunc("t", func(ctx context.Context, tx TTx, m *Message) error {
		mu.Lock()
		if inFlight[m.Key] {
			mu.Unlock()
			t.Errorf("two messages of key %s at once", m.Key)
			return Permanent(fmt.Errorf("concurrent key"))
		}
		inFlight[m.Key] = true
		fail := rnd.IntN(5) == 0
		mu.Unlock()
		defer func() {
			mu.Lock()
			delete(inFlight, m.Key)
			mu.Unlock()
		}()
		if err := f.txExec(ctx, tx, `INSERT INTO effects (id, k, n) VALUES ($1, $2, $3)`, m.ID, m.Key, m.Headers["n"]); err != nil {
			return err
		}
		if fail {
			failures.Add(1)
			return fmt.Errorf("transient failure")
		}
		return nil
	})
	start(t, ib)
	began := time.Now()
	// Batches interleave the keys; each key's messages arrive in order.
	var ids []string
	for round := range perKey {
		envs := make([]transport.Envelope, 0, keys)
		for k := range keys {
			e := envelope(round*keys+k, "t")
			e.Key = "key-" + strconv.Itoa(k)
			e.Headers = map[string]string{"n": strconv.Itoa(round)}
			envs = append(envs, e)
			ids = append(ids, e.ID)
		}
		deliver(t, ib, batch("orders", envs...))
	}
	st := lastMinuteSlack(settled(t, ib, 120*time.Second), began)
	if st.Counts != (Counts{Handled: int64(keys * perKey), HandledLastMinute: int64(keys * perKey)}) {
		t.Fatalf("stats %+v", st)
	}
	if failures.Load() == 0 {
		t.Fatal("no transient failure happened; the test proves nothing")
	}
	assertEffectsOnce(t, f, ids)
	want := make([]string, perKey)
	for i := range want {
		want[i] = strconv.Itoa(i)
	}
	for k := range keys {
		got := f.db.strings(t, `SELECT CAST(n AS text) FROM effects WHERE k = $1 ORDER BY seq`, "key-"+strconv.Itoa(k))
		if !slices.Equal(got, want) {
			t.Fatalf("key-%d handled in order %v, want %v", k, got, want)
		}
	}
}

// TestShutdown: cancelling Run lets the running handler finish, releases
// the messages of its batch that had not started (their attempt not
// counted), and Run returns nil; a new Run handles them.
func TestShutdown(t *testing.T) {
	each(t, testShutdown[pgx.Tx], testShutdown[*sql.Tx])
}

func testShutdown[TTx any](t *testing.T, f *fixture[TTx]) {
	cfg := fastConfig(t)
	cfg.Concurrency = 1
	ib, mux := newInbox(t, f, cfg)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	mux.HandleFunc("t", func(ctx context.Context, tx TTx, m *Message) error {
		once.Do(func() {
			close(entered)
			<-release
		})
		return effect(f)(ctx, tx, m)
	})
	var envs []transport.Envelope
	var ids []string
	for i := range 5 {
		envs = append(envs, envelope(i, "t"))
		ids = append(ids, envs[i].ID)
	}
	deliver(t, ib, batch("orders", envs...))
	stop := start(t, ib)
	recv(t, "the first handler to start", entered)
	stopped := make(chan struct{})
	go func() {
		stop()
		close(stopped)
	}()
	time.Sleep(50 * time.Millisecond) // Run must not return while the handler runs
	select {
	case <-stopped:
		t.Fatal("Run returned while a handler was running")
	default:
	}
	close(release)
	recv(t, "Run to return", stopped)
	assertEffectsOnce(t, f, ids[:1])
	for _, id := range ids[1:] {
		if r := row(t, ib, "orders", id); r.State != dialects.InboxStateReady || r.Attempts != 0 || r.LeaseToken != "" {
			t.Fatalf("unstarted message after shutdown: %+v", r)
		}
	}
	start(t, ib)
	settled(t, ib, 60*time.Second)
	assertEffectsOnce(t, f, ids)
}

// TestBrokenBatch: a handler whose timeout interrupts a statement (pgx then
// closes the connection, and with it the batch transaction), and a handler
// that ends the transaction itself. The batch is retried without the
// culprit's attempt going unrecorded; the others are handled once.
func TestBrokenBatch(t *testing.T) {
	t.Run("postgres-pgx", func(t *testing.T) {
		f := openPgx(t, "")
		testBrokenBatch(t, f, `SELECT pg_sleep(10)`, func(ctx context.Context, tx pgx.Tx) error { return tx.Rollback(ctx) })
	})
	t.Run("postgres-sql", func(t *testing.T) {
		f := openPgSQL(t)
		testBrokenBatch(t, f, `SELECT pg_sleep(10)`, func(ctx context.Context, tx *sql.Tx) error { return tx.Rollback() })
	})
	t.Run("sqlite", func(t *testing.T) {
		f := openSQLite(t)
		testBrokenBatch(t, f, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT count(*) FROM c`,
			func(ctx context.Context, tx *sql.Tx) error { return tx.Rollback() })
	})
}

func testBrokenBatch[TTx any](t *testing.T, f *fixture[TTx], slowQuery string, endTx func(context.Context, TTx) error) {
	cfg := fastConfig(t)
	cfg.MaxAttempts = 2
	// Only the slow handler is meant to time out: the others keep the
	// default of 30s, which a loaded machine does not reach.
	cfg.Topics = map[string]TopicPolicy{"slow": {HandlerTimeout: 300 * time.Millisecond}}
	cfg.Concurrency = 1
	ib, mux := newInbox(t, f, cfg)
	mux.HandleFunc("ok", effect(f))
	mux.HandleFunc("slow", func(ctx context.Context, tx TTx, m *Message) error {
		return f.txExec(ctx, tx, slowQuery)
	})
	mux.HandleFunc("rogue", func(ctx context.Context, tx TTx, m *Message) error {
		if err := effect(f)(ctx, tx, m); err != nil {
			return err
		}
		return endTx(ctx, tx)
	})
	deliver(t, ib, batch("orders", envelope(1, "ok"), envelope(2, "slow"), envelope(3, "ok"), envelope(4, "rogue"), envelope(5, "ok")))
	began := time.Now()
	start(t, ib)
	st := lastMinuteSlack(settled(t, ib, 120*time.Second), began)
	if st.Counts != (Counts{Handled: 3, Dead: 2, HandledLastMinute: 3}) {
		t.Fatalf("stats %+v, want 3 handled, 2 dead", st)
	}
	assertEffectsOnce(t, f, []string{envelope(1, "").ID, envelope(3, "").ID, envelope(5, "").ID})
	for _, id := range []string{envelope(1, "").ID, envelope(3, "").ID, envelope(5, "").ID} {
		if r := row(t, ib, "orders", id); r.Attempts != 1 || len(r.Errors) != 0 {
			t.Fatalf("innocent message %s: attempts %d errors %v; want 1, none", id, r.Attempts, r.Errors)
		}
	}
	for _, id := range []string{envelope(2, "").ID, envelope(4, "").ID} {
		dl, err := ib.DeadLetter(context.Background(), "orders", id)
		if err != nil || dl.Reason != deadletter.ReasonHandlerError || dl.Attempts != 2 || len(dl.Errors) != 2 {
			t.Fatalf("culprit %s: %+v, %v", id, dl, err)
		}
	}
}
