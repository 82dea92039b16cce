package inbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
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

func TestMux(t *testing.T) {
	m := NewMux[int]()
	var trace []string
	mw := func(name string) Middleware[int] {
		return func(next Handler[int]) Handler[int] {
			return HandlerFunc[int](func(ctx context.Context, tx int, msg *Message) error {
				trace = append(trace, name+">")
				err := next.HandleMessage(ctx, tx, msg)
				trace = append(trace, "<"+name)
				return err
			})
		}
	}
	m.Use(mw("outer"))
	m.HandleFunc("a", func(ctx context.Context, tx int, msg *Message) error {
		trace = append(trace, "a")
		return nil
	})
	m.Use(mw("inner")) // applies to handlers registered before, too
	m.Handle("b", HandlerFunc[int](func(ctx context.Context, tx int, msg *Message) error {
		trace = append(trace, "b")
		return errors.New("b failed")
	}))
	if err := m.HandleMessage(context.Background(), 1, &Message{Envelope: transport.Envelope{Topic: "a"}}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"outer>", "inner>", "a", "<inner", "<outer"}; !slices.Equal(trace, want) {
		t.Fatalf("trace %v, want %v", trace, want)
	}
	// A *Mux is a Handler: mounted under a topic of another Mux, it routes
	// what that Mux hands it.
	outer := NewMux[int]()
	outer.Handle("b", m)
	if err := outer.HandleMessage(context.Background(), 1, &Message{Envelope: transport.Envelope{Topic: "b"}}); err == nil || err.Error() != "b failed" {
		t.Fatalf("b = %v", err)
	}
	err := m.HandleMessage(context.Background(), 1, &Message{Envelope: transport.Envelope{Topic: "c"}})
	if !errors.Is(err, ErrNoHandler) || !strings.Contains(err.Error(), `"c"`) {
		t.Fatalf("unknown topic = %v", err)
	}
	if got := m.Topics(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("Topics %v", got)
	}
	var zero Mux[int] // the zero Mux is ready to use
	zero.Use(mw("z"))
	zero.HandleFunc("q", okInt)
	if err := zero.HandleMessage(context.Background(), 1, &Message{Envelope: transport.Envelope{Topic: "q"}}); err != nil {
		t.Fatalf("zero Mux: %v", err)
	}
	var nilMux *Mux[int]
	if err := nilMux.HandleMessage(context.Background(), 1, &Message{Envelope: transport.Envelope{Topic: "a"}}); !errors.Is(err, ErrNoHandler) {
		t.Fatalf("nil Mux = %v", err)
	}
	for name, f := range map[string]func(){
		"duplicate":   func() { m.HandleFunc("a", func(context.Context, int, *Message) error { return nil }) },
		"empty topic": func() { m.Handle("", HandlerFunc[int](nil)) },
		"nil handler": func() { m.Handle("x", nil) },
		"nil func":    func() { m.HandleFunc("y", nil) },
		"nil use":     func() { m.Use(nil) },
		"zero dup":    func() { var z Mux[int]; z.HandleFunc("q", okInt); z.HandleFunc("q", okInt) },
	} {
		func() {
			defer func() {
				if p := recover(); p == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

func okInt(context.Context, int, *Message) error { return nil }

func TestJSON(t *testing.T) {
	h := JSON(func(ctx context.Context, tx int, m *Message, v order) error {
		if v.N != 7 {
			return errors.New("wrong value")
		}
		return nil
	})
	if err := h.HandleMessage(context.Background(), 0, &Message{Envelope: transport.Envelope{Payload: []byte(`{"n":7}`)}}); err != nil {
		t.Fatal(err)
	}
	err := h.HandleMessage(context.Background(), 0, &Message{Envelope: transport.Envelope{Payload: []byte(`{`)}})
	var de *DecodeError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "cannot decode payload") {
		t.Fatalf("bad payload = %v", err)
	}
}

func TestErrors(t *testing.T) {
	if Permanent(nil) != nil {
		t.Fatal("Permanent(nil) != nil")
	}
	base := errors.New("base")
	if p := Permanent(base); !errors.Is(p, base) || p.Error() != "base" {
		t.Fatalf("Permanent = %v", p)
	}
	var r *retryError
	if !errors.As(Retry(-time.Second), &r) || r.after != 0 {
		t.Fatal("Retry with a negative delay")
	}
	long := strings.Repeat("é", maxErrorBytes)
	if s := errorText(errors.New(long)); len(s) > maxErrorBytes+20 || !strings.HasSuffix(s, "(truncated)") || !strings.HasPrefix(s, "é") {
		t.Fatalf("errorText of a long error: %d bytes", len(s))
	}
	if s := errorText(errors.New("a\x00b\xffc")); s != "a\uFFFDb\uFFFDc" {
		t.Fatalf("errorText = %q", s)
	}
	if s := errorText(errors.New("")); s == "" {
		t.Fatal("errorText of an empty message is empty")
	}
}

func TestBackoff(t *testing.T) {
	for attempt, base := range map[int]time.Duration{1: 2 * time.Second, 2: 4 * time.Second, 5: 32 * time.Second, 20: time.Hour, 0: 2 * time.Second} {
		for range 20 {
			d := DefaultBackoff(attempt)
			if d < base*3/4 || d > base*5/4 {
				t.Fatalf("DefaultBackoff(%d) = %v, want %v ± 25%%", attempt, d, base)
			}
		}
	}
}

func TestNewValidation(t *testing.T) {
	f := openSQLite(t)
	if _, err := New[*sql.Tx](nil, nil, nil); err == nil {
		t.Fatal("New(nil) = nil error")
	}
	for name, c := range map[string]Config{
		"negative":         {BatchSize: -1},
		"negative lease":   {Lease: -time.Second},
		"queue no topics":  {Queues: []Queue{{Name: "q"}}},
		"topic twice":      {Queues: []Queue{{Topics: []string{"a"}}, {Name: "b", Topics: []string{"a"}}}},
		"name twice":       {Queues: []Queue{{Name: "q", Topics: []string{"a"}}, {Name: "q", Topics: []string{"b"}}}},
		"default name":     {Queues: []Queue{{Name: "default", Topics: []string{"a"}}}},
		"empty topic":      {Queues: []Queue{{Topics: []string{""}}}},
		"negative topic":   {Topics: map[string]TopicPolicy{"a": {MaxAttempts: -1}}},
		"negative workers": {Queues: []Queue{{Topics: []string{"a"}, Concurrency: -1}}},
	} {
		if _, err := New(f.d, nil, &c); err == nil {
			t.Errorf("%s: New = nil error", name)
		}
	}
	ib, err := New(f.d, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q := ib.queues[0]; q.concurrency != 1 || q.batch != DefaultBatchSize || ib.cfg.Retention != DefaultRetention ||
		ib.cfg.MaxAttempts != DefaultMaxAttempts || ib.cfg.Lease != DefaultLease || ib.Name() == "" {
		t.Fatalf("defaults on SQLite: %+v, %+v", q, ib.cfg)
	}
	p := ib.policy("x")
	if p.maxAttempts != DefaultMaxAttempts || p.timeout != DefaultHandlerTimeout {
		t.Fatalf("default policy %+v", p)
	}
	ib, err = New(f.d, nil, &Config{MaxAttempts: 3, Topics: map[string]TopicPolicy{"x": {MaxAttempts: 7}}, Queues: []Queue{{Topics: []string{"x", "y"}, Concurrency: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	if p := ib.policy("x"); p.maxAttempts != 7 || p.timeout != DefaultHandlerTimeout {
		t.Fatalf("topic policy %+v", p)
	}
	if p := ib.policy("y"); p.maxAttempts != 3 {
		t.Fatalf("policy of y %+v", p)
	}
	if len(ib.queues) != 2 || ib.queues[0].name != "x" || ib.queues[0].concurrency != 2 || !slices.Equal(ib.queues[1].exclude, []string{"x", "y"}) {
		t.Fatalf("queues %+v %+v", ib.queues[0], ib.queues[1])
	}
}

func TestRunErrors(t *testing.T) {
	f := openSQLite(t)
	ib, _ := newInbox(t, f, nil)
	start(t, ib)
	waitFor(t, "Run to start", 30*time.Second, ib.running.Load)
	if err := ib.Run(context.Background()); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run = %v, want ErrRunning", err)
	}
	// An unmigrated database: Run returns the schema error.
	g := openSQLite(t)
	g.db.exec(t, `DROP TABLE durable_schema_version`)
	ib2, _ := newInbox(t, g, nil)
	if err := ib2.Run(context.Background()); !errors.Is(err, dialects.ErrSchema) {
		t.Fatalf("Run on an unmigrated database = %v, want ErrSchema", err)
	}
}

// TestQueues: a topic with a queue of its own does not hold the others back.
func TestQueues(t *testing.T) {
	each(t, testQueues[pgx.Tx], testQueues[*sql.Tx])
}

func testQueues[TTx any](t *testing.T, f *fixture[TTx]) {
	cfg := fastConfig(t)
	cfg.Queues = []Queue{{Name: "slow", Topics: []string{"slow"}, Concurrency: 1}}
	ib, mux := newInbox(t, f, cfg)
	release := make(chan struct{})
	var slowRan atomic.Bool
	mux.HandleFunc("slow", func(ctx context.Context, tx TTx, m *Message) error {
		slowRan.Store(true)
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return effect(f)(ctx, tx, m)
	})
	mux.HandleFunc("fast", effect(f))
	deliver(t, ib, batch("orders", envelope(1, "slow")))
	start(t, ib)
	waitFor(t, "the slow handler to start", 60*time.Second, slowRan.Load)
	if f.name == "sqlite" {
		// One writer: the slow batch holds the only connection.
		close(release)
	}
	deliver(t, ib, batch("orders", envelope(2, "fast"), envelope(3, "fast")))
	waitFor(t, "the fast messages", 60*time.Second, func() bool { return f.db.int(t, `SELECT count(*) FROM effects`) >= 2 })
	if f.name != "sqlite" {
		if n := f.db.int(t, `SELECT count(*) FROM effects WHERE id = $1`, envelope(1, "").ID); n != 0 {
			t.Fatal("the slow message finished first")
		}
		close(release)
	}
	settled(t, ib, 60*time.Second)
	assertEffectsOnce(t, f, []string{envelope(1, "").ID, envelope(2, "").ID, envelope(3, "").ID})
}

// TestRetention: handled messages are kept for the dedupe window, then
// deleted in batches; a duplicate arriving after the window is stored and
// handled again (documented behaviour).
func TestRetention(t *testing.T) {
	each(t, testRetention[pgx.Tx], testRetention[*sql.Tx])
}

func testRetention[TTx any](t *testing.T, f *fixture[TTx]) {
	// The window is an hour, so that the messages are surely inside it
	// however slow the machine; a second inbox on the same tables, whose
	// window is a second, deletes them once they are surely past it.
	cfg := fastConfig(t)
	cfg.Retention = time.Hour
	cfg.CleanupInterval = time.Hour // by hand below
	ib, mux := newInbox(t, f, cfg)
	mux.HandleFunc("t", effect(f))
	shortCfg := fastConfig(t)
	shortCfg.Retention = time.Second
	shortCfg.CleanupInterval = time.Hour
	short, _ := newInbox(t, f, shortCfg)
	deliver(t, ib, batch("orders", envelope(1, "t"), envelope(2, "t")))
	stop := start(t, ib)
	settled(t, ib, 60*time.Second)
	stop()
	ctx := context.Background()
	if n, err := ib.Cleanup(ctx); err != nil || n != 0 {
		t.Fatalf("Cleanup inside the window = %d, %v; want 0", n, err)
	}
	if s := statuses(deliver(t, ib, batch("orders", envelope(1, "t"))), 1); s[0] != transport.Duplicate {
		t.Fatalf("resend inside the window: %v", s[0])
	}
	deleted := 0
	waitFor(t, "Cleanup with a window of a second to delete the 2 handled messages", 60*time.Second, func() bool {
		n, err := short.Cleanup(ctx)
		if err != nil {
			t.Fatalf("Cleanup after the window: %v", err)
		}
		deleted += n
		return deleted >= 2
	})
	if deleted != 2 {
		t.Fatalf("Cleanup after the window deleted %d, want 2", deleted)
	}
	if n := f.db.int(t, `SELECT count(*) FROM durable_inbox`); n != 0 {
		t.Fatalf("%d rows left", n)
	}
	if s := statuses(deliver(t, ib, batch("orders", envelope(1, "t"))), 1); s[0] != transport.Accepted {
		t.Fatalf("resend after the window: %v, want accepted", s[0])
	}
	start(t, ib)
	settled(t, ib, 60*time.Second)
	if n := f.db.int(t, `SELECT count(*) FROM effects WHERE id = $1`, envelope(1, "").ID); n != 2 {
		t.Fatalf("effects of a resend after the window: %d, want 2", n)
	}
}

// TestDeliverWakes: a Deliver wakes an idle worker long before its poll.
func TestDeliverWakes(t *testing.T) {
	f := openSQLite(t)
	cfg := fastConfig(t)
	cfg.PollInterval = time.Hour
	cfg.RescueInterval = time.Hour
	ib, mux := newInbox(t, f, cfg)
	claims := &claimCounter[*sql.Tx]{InboxStore: ib.store}
	ib.store = claims
	mux.HandleFunc("t", effect(f))
	start(t, ib)
	// The only worker found nothing and goes idle until a wake-up: the
	// next poll is an hour away.
	waitFor(t, "the worker's first claim", 30*time.Second, func() bool { return claims.n.Load() >= 1 })
	deliver(t, ib, batch("orders", envelope(1, "t")))
	waitFor(t, "the woken worker", 30*time.Second, func() bool { return f.db.int(t, `SELECT count(*) FROM effects`) == 1 })
}

func TestMessageFields(t *testing.T) {
	f := openSQLite(t)
	ib, mux := newInbox(t, f, nil)
	got := make(chan Message, 2)
	mux.HandleFunc("t", func(ctx context.Context, tx *sql.Tx, m *Message) error {
		got <- *m
		if m.Attempt == 1 {
			return errors.New("first")
		}
		return nil
	})
	e := envelope(1, "t")
	e.Key = "k"
	e.ExpiresAt = time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	e.CreatedAt = time.Date(2026, 1, 2, 3, 4, 5, 6_000_000, time.UTC)
	e.Headers = nil
	deliver(t, ib, batch("orders", e))
	start(t, ib)
	m1, m2 := recv(t, "the first attempt", got), recv(t, "the second attempt", got)
	if m1.ID != e.ID || m1.Source != "orders" || m1.Topic != "t" || m1.Key != "k" || m1.Headers == nil || len(m1.Headers) != 0 ||
		string(m1.Payload) != string(e.Payload) || !m1.CreatedAt.Equal(e.CreatedAt) || !m1.ExpiresAt.Equal(e.ExpiresAt) ||
		m1.ReceivedAt.IsZero() || m1.Attempt != 1 || m1.LastError != "" || !m1.ReplayedAt.IsZero() {
		t.Fatalf("first attempt's message %+v", m1)
	}
	if m2.Attempt != 2 || m2.LastError != "first" {
		t.Fatalf("second attempt's message: attempt %d, last error %q", m2.Attempt, m2.LastError)
	}
}

// TestRunWaitsForDatabase: Run on a database that does not answer
// (connection refused) waits for it instead of failing; a context that
// ends meanwhile is a graceful stop.
func TestRunWaitsForDatabase(t *testing.T) {
	pool, _ := testdb.UnreachablePostgres(t)
	ib, err := New(pgDialect(t, pool), nil, fastConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := ib.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil: it waits for the database until its context ends", err)
	}
	if ctx.Err() == nil {
		t.Fatal("Run returned before its context ended")
	}
}

// TestMuxUnmatched: the unmatched handler takes the topics without a handler of their own,
// inside the middleware, and only those.
func TestMuxUnmatched(t *testing.T) {
	m := NewMux[int]()
	var trace []string
	m.HandleFunc("a", func(ctx context.Context, tx int, msg *Message) error {
		trace = append(trace, "a:"+msg.Topic)
		return nil
	})
	if m.HandlesUnmatched() {
		t.Fatal("HandlesUnmatched before HandleUnmatched")
	}
	m.HandleUnmatchedFunc(func(ctx context.Context, tx int, msg *Message) error {
		trace = append(trace, "unmatched:"+msg.Topic)
		return nil
	})
	m.Use(func(next Handler[int]) Handler[int] { // added after: wraps it too
		return HandlerFunc[int](func(ctx context.Context, tx int, msg *Message) error {
			trace = append(trace, "mw")
			return next.HandleMessage(ctx, tx, msg)
		})
	})
	for _, topic := range []string{"a", "b", "c.d"} {
		if err := m.HandleMessage(context.Background(), 1, &Message{Envelope: transport.Envelope{Topic: topic}}); err != nil {
			t.Fatalf("%s: %v", topic, err)
		}
	}
	if want := []string{"mw", "a:a", "mw", "unmatched:b", "mw", "unmatched:c.d"}; !slices.Equal(trace, want) {
		t.Fatalf("trace %v, want %v", trace, want)
	}
	if _, ok := m.Handler("zzz"); !ok || !m.HandlesUnmatched() {
		t.Fatal("Handler of an unknown topic: none, with an unmatched handler registered")
	}
	if got := m.Topics(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("Topics %v, want only the registered topic", got)
	}
	for name, f := range map[string]func(){
		"second":   func() { m.HandleUnmatchedFunc(func(context.Context, int, *Message) error { return nil }) },
		"nil":      func() { NewMux[int]().HandleUnmatched(nil) },
		"nil func": func() { NewMux[int]().HandleUnmatchedFunc(nil) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

// TestInboxHandlers: an inbox hands every message to a Handler that is not
// a Mux, inline too (it takes every topic); an inbox without a handler
// dead-letters what it gets with reason no_handler.
func TestInboxHandlers(t *testing.T) {
	for _, inline := range []bool{false, true} {
		t.Run(fmt.Sprintf("HandlerFunc/inline=%v", inline), func(t *testing.T) {
			f := openSQLite(t)
			cfg := fastConfig(t)
			cfg.Inline = inline
			var mu sync.Mutex
			var topics []string
			ib, err := New(f.d, HandlerFunc[*sql.Tx](func(ctx context.Context, tx *sql.Tx, m *Message) error {
				mu.Lock()
				defer mu.Unlock()
				topics = append(topics, m.Topic)
				return nil
			}), cfg)
			if err != nil {
				t.Fatal(err)
			}
			start(t, ib)
			if inline {
				waitFor(t, "inline handling to start", 30*time.Second, ib.inline.Load)
			}
			a, b := envelope(1, "a"), envelope(2, "b.c")
			deliver(t, ib, batch("orders", a, b))
			if inline {
				for _, id := range []string{a.ID, b.ID} {
					if r := row(t, ib, "orders", id); r.State != dialects.InboxStateHandled {
						t.Fatalf("%s after an inline delivery: %s, want handled", id, r.State)
					}
				}
			}
			if st := settled(t, ib, 60*time.Second); st.Handled != 2 || st.Dead != 0 {
				t.Fatalf("stats %+v, want 2 handled", st.Counts)
			}
			mu.Lock()
			defer mu.Unlock()
			slices.Sort(topics)
			if !slices.Equal(topics, []string{"a", "b.c"}) {
				t.Fatalf("the handler saw %v", topics)
			}
		})
	}
	t.Run("nil", func(t *testing.T) {
		f := openSQLite(t)
		cfg := fastConfig(t)
		cfg.Inline = true
		ib, err := New(f.d, nil, cfg)
		if err != nil {
			t.Fatal(err)
		}
		start(t, ib)
		deliver(t, ib, batch("orders", envelope(1, "a")))
		if st := settled(t, ib, 60*time.Second); st.Counts != (Counts{Dead: 1}) {
			t.Fatalf("stats %+v, want 1 dead", st.Counts)
		}
		if dl := deadLetters(t, ib, DeadLetterFilter{}); len(dl) != 1 || dl[0].Reason != deadletter.ReasonNoHandler {
			t.Fatalf("dead letters %+v, want one no_handler", dl)
		}
	})
}
