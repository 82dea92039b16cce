package durabletest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/durabletest"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/transport"
)

// newInbox returns an inbox on f with fast retries and the test handlers:
//
//	ok      records an effect
//	flaky   fails on its first two attempts, then records an effect
//	bad     fails for good (inbox.Permanent)
//	broken  always fails
//	order   decodes a JSON payload (decode_error otherwise)
//
// and the Mux that holds them.
func newInbox[TTx any](t *testing.T, f *fixture[TTx], cfg inbox.Config) (*inbox.Inbox[TTx], *inbox.Mux[TTx]) {
	t.Helper()
	cfg.Logger = quietLogger()
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 3
	}
	if cfg.Backoff == nil {
		cfg.Backoff = func(int) time.Duration { return 0 }
	}
	mux := inbox.NewMux[TTx]()
	mux.HandleFunc("ok", func(ctx context.Context, tx TTx, m *inbox.Message) error {
		return f.effect(ctx, tx, m.ID)
	})
	mux.HandleFunc("flaky", func(ctx context.Context, tx TTx, m *inbox.Message) error {
		if err := f.effect(ctx, tx, m.ID); err != nil {
			return err
		}
		if m.Attempt < 3 {
			return fmt.Errorf("flaky attempt %d", m.Attempt) // rolls back the effect
		}
		return nil
	})
	mux.HandleFunc("bad", func(ctx context.Context, tx TTx, m *inbox.Message) error {
		return inbox.Permanent(errors.New("bad order"))
	})
	mux.HandleFunc("broken", func(ctx context.Context, tx TTx, m *inbox.Message) error {
		return errors.New("always broken")
	})
	type order struct{ ID string }
	mux.Handle("order", inbox.JSON(func(ctx context.Context, tx TTx, m *inbox.Message, o order) error {
		return f.effect(ctx, tx, o.ID)
	}))
	ib, err := inbox.New(f.d, mux, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ib, mux
}

func TestWork(t *testing.T) { each(t, testWork, testWork) }

// requireStopped fails t if ib's Run has not returned: a Run in progress
// makes another return ErrRunning, while one on an ended context returns
// nil at once.
func requireStopped[TTx any](t *testing.T, ib *inbox.Inbox[TTx]) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ib.Run(ctx); err != nil {
		t.Fatalf("the inbox still runs after Work returned: %v", err)
	}
}

func testWork[TTx any](t *testing.T, f *fixture[TTx]) {
	ctx := ctxFor(t)
	ib, _ := newInbox(t, f, inbox.Config{NoHandlerGrace: -1})
	res := durabletest.Work(ctx, t, ib,
		&inbox.Message{Envelope: transport.Envelope{ID: "m-ok", Topic: "ok"}},
		&inbox.Message{Envelope: transport.Envelope{Topic: "flaky"}},
		&inbox.Message{Envelope: transport.Envelope{ID: "m-bad", Topic: "bad"}},
		&inbox.Message{Envelope: transport.Envelope{ID: "m-broken", Topic: "broken"}},
		&inbox.Message{Envelope: transport.Envelope{ID: "m-nobody", Topic: "nobody"}},
		&inbox.Message{Envelope: transport.Envelope{ID: "m-ok", Topic: "ok"}, Source: "elsewhere"},
		&inbox.Message{Envelope: transport.Envelope{ID: "m-expired", Topic: "ok", ExpiresAt: time.Now().Add(-time.Minute)}},
		&inbox.Message{Envelope: transport.Envelope{ID: "m-order", Topic: "order", Payload: []byte(`{"ID":"order-9"}`)}},
		&inbox.Message{Envelope: transport.Envelope{ID: "m-garbled", Topic: "order", Payload: []byte(`{"ID":`)}},
	)
	requireStopped(t, ib)
	if len(res) != 9 {
		t.Fatalf("Work returned %d results, want 9", len(res))
	}
	flakyID := res[1].ID
	if !strings.HasPrefix(flakyID, "durabletest-") {
		t.Errorf("a message without an ID got %q, want a made-up durabletest-… id", flakyID)
	}
	for i, want := range []durabletest.Result{
		{Source: "durabletest", ID: "m-ok", Topic: "ok", State: durabletest.Handled, Attempts: 1},
		{Source: "durabletest", ID: flakyID, Topic: "flaky", State: durabletest.Handled, Attempts: 3, LastError: "flaky attempt 2"},
		{Source: "durabletest", ID: "m-bad", Topic: "bad", State: durabletest.DeadLettered, Attempts: 1, Reason: deadletter.ReasonPermanent, LastError: "bad order"},
		{Source: "durabletest", ID: "m-broken", Topic: "broken", State: durabletest.DeadLettered, Attempts: 3, Reason: deadletter.ReasonHandlerError, LastError: "always broken"},
		{Source: "durabletest", ID: "m-nobody", Topic: "nobody", State: durabletest.DeadLettered, Reason: deadletter.ReasonNoHandler, LastError: "no handler"},
		{Source: "elsewhere", ID: "m-ok", Topic: "ok", State: durabletest.Handled, Attempts: 1},
		{Source: "durabletest", ID: "m-expired", Topic: "ok", State: durabletest.DeadLettered, Reason: deadletter.ReasonExpired, LastError: "expired"},
		{Source: "durabletest", ID: "m-order", Topic: "order", State: durabletest.Handled, Attempts: 1},
		{Source: "durabletest", ID: "m-garbled", Topic: "order", State: durabletest.DeadLettered, Attempts: 1, Reason: deadletter.ReasonDecodeError, LastError: "cannot decode payload"},
	} {
		got := res[i]
		if got.Source != want.Source || got.ID != want.ID || got.Topic != want.Topic || got.State != want.State ||
			got.Reason != want.Reason || got.Duplicate || !strings.Contains(got.LastError, want.LastError) || (want.LastError == "") != (got.LastError == "") {
			t.Errorf("result %d = %+v, want %+v", i, got, want)
		}
		// Expired and unhandled messages count no attempt on some paths;
		// check the attempts of the others exactly.
		if want.Reason != deadletter.ReasonExpired && want.Reason != deadletter.ReasonNoHandler && got.Attempts != want.Attempts {
			t.Errorf("result %d (%s): %d attempts, want %d", i, want.ID, got.Attempts, want.Attempts)
		}
	}
	if errs := res[1].Errors; len(errs) != 2 || errs[0].Attempt != 1 || errs[0].Error != "flaky attempt 1" || errs[1].Attempt != 2 {
		t.Errorf("flaky's errors = %+v, want attempts 1 and 2", errs)
	}
	if errs := res[3].Errors; len(errs) != 3 || errs[2].Attempt != 3 {
		t.Errorf("broken's errors = %+v, want 3 attempts", errs)
	}
	// The handlers' writes committed with their messages, once each;
	// the failed attempts' writes were rolled back.
	for id, want := range map[string]int{"m-ok": 2, flakyID: 1, "m-expired": 0, "order-9": 1} {
		if n := f.effects(t, id); n != want {
			t.Errorf("%d effects of %s, want %d", n, id, want)
		}
	}

	// A resend is a duplicate: reported with the outcome of the first
	// delivery, and not handled again.
	res = durabletest.Work(ctx, t, ib, &inbox.Message{Envelope: transport.Envelope{ID: "m-ok", Topic: "ok"}}, &inbox.Message{Envelope: transport.Envelope{ID: "m-bad", Topic: "bad"}})
	if !res[0].Duplicate || res[0].State != durabletest.Handled || !res[1].Duplicate || res[1].State != durabletest.DeadLettered {
		t.Errorf("Work of resent messages = %+v, want duplicates, handled and dead-lettered", res)
	}
	if n := f.effects(t, "m-ok"); n != 2 {
		t.Errorf("after a resend %d effects of m-ok, want still 2", n)
	}
}

// Work stops at ctx's deadline, says where the messages are and why, and
// stops the inbox it started (TestMain checks for leaked goroutines).
func TestWorkTimeout(t *testing.T) { each(t, testWorkTimeout, testWorkTimeout) }

func testWorkTimeout[TTx any](t *testing.T, f *fixture[TTx]) {
	// A backoff of an hour: the broken message fails exactly once, however
	// long the test takes.
	ib, _ := newInbox(t, f, inbox.Config{Backoff: func(int) time.Duration { return time.Hour }, PollInterval: 50 * time.Millisecond})
	// The deadline passes once the inbox got where the test needs it (m-ok
	// handled, m-broken's first attempt failed) and Work had time to read
	// that, rather than after a fixed time a slow machine may need more of.
	ctx := newExpiringCtx(ctxFor(t))
	var expired time.Time
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		defer func() { expired = time.Now(); ctx.expire() }()
		for limit := time.Now().Add(time.Minute); time.Now().Before(limit); time.Sleep(20 * time.Millisecond) {
			if st, err := ib.Stats(ctx); err == nil && st.Handled == 1 && st.Retrying == 1 {
				// Many of Work's polls (every 20ms) read this state.
				time.Sleep(time.Second)
				return
			}
		}
		t.Errorf("after a minute the inbox had not handled m-ok and failed m-broken once")
	}()
	msg := mustFail(t, func(tb durabletest.TB) {
		durabletest.Work(ctx, tb, ib, &inbox.Message{Envelope: transport.Envelope{ID: "m-ok", Topic: "ok"}}, &inbox.Message{Envelope: transport.Envelope{ID: "m-broken", Topic: "broken"}})
	})
	<-watched
	contains(t, msg, "durabletest: Work: context deadline exceeded while waiting; not yet handled or dead-lettered:",
		`durabletest/m-broken (topic "broken"): ready, attempt 1 failed: always broken; next attempt at`, "Config.Backoff")
	if strings.Contains(msg, "m-ok") {
		t.Errorf("the failure lists the handled message:\n%s", msg)
	}
	requireStopped(t, ib)
	// Work gives up at the deadline, not after its messages' next attempt
	// (an hour away); a bound on a hang, not on speed.
	if d := time.Since(expired); d > 30*time.Second {
		t.Errorf("Work took %v to give up after its deadline", d)
	}
	// The inbox was stopped: it can run again.
	res := durabletest.Work(ctxFor(t), t, ib, &inbox.Message{Envelope: transport.Envelope{ID: "m-later", Topic: "ok"}})
	if res[0].State != durabletest.Handled {
		t.Errorf("Work after a timeout = %+v, want handled", res[0])
	}
}

// expiringCtx is a context whose deadline the test sets off: expire closes
// Done, and Err is then context.DeadlineExceeded, as at a real deadline.
// Values come from the parent; its cancellation is not passed on.
type expiringCtx struct {
	context.Context
	done chan struct{}
	once sync.Once
}

func newExpiringCtx(parent context.Context) *expiringCtx {
	return &expiringCtx{Context: parent, done: make(chan struct{})}
}

func (c *expiringCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *expiringCtx) Done() <-chan struct{}       { return c.done }
func (c *expiringCtx) expire()                     { c.once.Do(func() { close(c.done) }) }

func (c *expiringCtx) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// When the inbox runs already, Work delivers to it and waits for its
// workers.
func TestWorkRunningInbox(t *testing.T) { each(t, testWorkRunningInbox, testWorkRunningInbox) }

func testWorkRunningInbox[TTx any](t *testing.T, f *fixture[TTx]) {
	ib, mux := newInbox(t, f, inbox.Config{Inline: true})
	ran := make(chan struct{})
	mux.HandleFunc("probe", func(context.Context, TTx, *inbox.Message) error {
		close(ran)
		return nil
	})
	ctx, stop := context.WithCancel(ctxFor(t))
	done := make(chan error, 1)
	go func() { done <- ib.Run(ctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	// The inbox runs once it handled a message.
	if _, err := ib.Deliver(ctx, &transport.Batch{Source: "test", Envelopes: []transport.Envelope{{ID: "probe", Topic: "probe"}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
	case <-ctx.Done():
		t.Fatal("the inbox did not handle the probe")
	}
	res := durabletest.Work(ctxFor(t), t, ib, &inbox.Message{Envelope: transport.Envelope{ID: "m-1", Topic: "ok"}}, &inbox.Message{Envelope: transport.Envelope{ID: "m-2", Topic: "flaky"}})
	if res[0].State != durabletest.Handled || res[1].State != durabletest.Handled || res[1].Attempts != 3 {
		t.Errorf("Work on a running inbox = %+v, want both handled, the flaky one in 3 attempts", res)
	}
	if n := f.effects(t, "m-1"); n != 1 {
		t.Errorf("%d effects of m-1, want 1", n)
	}
}

func TestWorkFailures(t *testing.T) {
	f := openSQLite(t, true)
	ib, _ := newInbox(t, f, inbox.Config{})
	ctx := ctxFor(t)
	msg := mustFail(t, func(tb durabletest.TB) {
		durabletest.Work(ctx, tb, ib, &inbox.Message{Envelope: transport.Envelope{ID: "m-1", Topic: "bad\xff"}})
	})
	contains(t, msg, `Work: Deliver rejected message 0 (source "durabletest", id "m-1"): Topic is not valid UTF-8`)
	msg = mustFail(t, func(tb durabletest.TB) { durabletest.Work(ctx, tb, ib) })
	contains(t, msg, "Work: no message to deliver")
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.Work(ctx, tb, ib, &inbox.Message{Envelope: transport.Envelope{Topic: "ok"}}, nil)
	})
	contains(t, msg, "Work: message 1 is nil")
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.Work[int](ctx, tb, nil, &inbox.Message{Envelope: transport.Envelope{Topic: "ok"}})
	})
	contains(t, msg, "Work: nil inbox")

	// A database without durable's schema.
	bare := openSQLite(t, false)
	ib, _ = newInbox(t, bare, inbox.Config{})
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.Work(ctx, tb, ib, &inbox.Message{Envelope: transport.Envelope{Topic: "ok"}})
	})
	contains(t, msg, "Work: Deliver the batch of durabletest:", "schema")

	// An inbox on a dialect that is no dialects.Inspector: Work cannot
	// read what became of the messages.
	only, err := inbox.New(struct{ dialects.InboxDialect[*sql.Tx] }{f.d}, nil, &inbox.Config{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.Work(ctx, tb, only, &inbox.Message{Envelope: transport.Envelope{Topic: "ok"}})
	})
	contains(t, msg, "Work: cannot read the inbox: the inbox's dialect (struct { dialects.InboxDialect[*database/sql.Tx] }) cannot list the inbox: it does not implement dialects.Inspector")

	// A TB whose Fatalf returns: Work returns nil after stopping the
	// inbox (TestMain checks for leaked goroutines).
	ib, _ = newInbox(t, f, inbox.Config{Backoff: inbox.DefaultBackoff})
	tb := &fakeTB{returns: true}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if res := durabletest.Work(short, tb, ib, &inbox.Message{Envelope: transport.Envelope{Topic: "broken"}}); res != nil || !tb.failed {
		t.Errorf("Work with a returning Fatalf = %v, failed %v; want nil and a failure", res, tb.failed)
	}
	requireStopped(t, ib)
}

// TestWorkUnmatched: an inbox whose Mux has only an unmatched handler handles messages of any
// topic, inline and by its workers, instead of retrying them as without a handler.
func TestWorkUnmatched(t *testing.T) {
	for _, inline := range []bool{false, true} {
		t.Run(fmt.Sprintf("inline=%v", inline), func(t *testing.T) {
			f := openSQLite(t, true)
			var topics []string
			mux := inbox.NewMux[*sql.Tx]()
			mux.HandleUnmatchedFunc(func(ctx context.Context, tx *sql.Tx, m *inbox.Message) error {
				topics = append(topics, m.Topic)
				return f.effect(ctx, tx, m.ID)
			})
			ib, err := inbox.New(f.d, mux, &inbox.Config{Logger: quietLogger(), Inline: inline, MaxAttempts: 1})
			if err != nil {
				t.Fatal(err)
			}
			res := durabletest.Work(context.Background(), t, ib,
				&inbox.Message{Envelope: transport.Envelope{ID: "m1", Topic: "learned.at.runtime", Payload: []byte("{}")}},
				&inbox.Message{Envelope: transport.Envelope{ID: "m2", Topic: "another.one", Payload: []byte("{}")}})
			for _, r := range res {
				if r.State != durabletest.Handled || r.Attempts != 1 || f.effects(t, r.ID) != 1 {
					t.Errorf("%s: %s after %d attempts (%s), %d effects; want handled once", r.ID, r.State, r.Attempts, r.LastError, f.effects(t, r.ID))
				}
			}
			slices.Sort(topics)
			if !slices.Equal(topics, []string{"another.one", "learned.at.runtime"}) {
				t.Errorf("the unmatched handler saw %v", topics)
			}
		})
	}
}
