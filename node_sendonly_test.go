package durable_test

import (
	"context"
	"database/sql"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/transport"
)

// inboxWatch wraps a dialect and counts the calls of a running inbox into
// it: the schema check made from package inbox (the first thing Inbox.Run
// does, before it starts anything, even with its context ended) and the
// inbox's claims, rescues and purges. It stays at zero on a node whose inbox
// never ran.
type inboxWatch struct {
	dialects.Dialect[*sql.Tx]
	calls atomic.Int64
}

func (w *inboxWatch) CheckSchema(ctx context.Context) error {
	if calledFromInbox() {
		w.calls.Add(1)
	}
	return w.Dialect.CheckSchema(ctx)
}

func (w *inboxWatch) ClaimInbox(ctx context.Context, c dialects.InboxClaim) ([]dialects.InboxRow, error) {
	w.calls.Add(1)
	return w.Dialect.ClaimInbox(ctx, c)
}

func (w *inboxWatch) RescueInbox(ctx context.Context, limit int) (int, error) {
	w.calls.Add(1)
	return w.Dialect.RescueInbox(ctx, limit)
}

func (w *inboxWatch) PurgeInbox(ctx context.Context, age time.Duration, limit int) (int, error) {
	w.calls.Add(1)
	return w.Dialect.PurgeInbox(ctx, age, limit)
}

// calledFromInbox reports whether a function of package inbox is on the
// caller's stack.
func calledFromInbox() bool {
	pc := make([]uintptr, 64)
	frames := runtime.CallersFrames(pc[:runtime.Callers(2, pc)])
	for {
		f, more := frames.Next()
		if strings.HasPrefix(f.Function, "github.com/durable-go/durable/inbox.") {
			return true
		}
		if !more {
			return false
		}
	}
}

// startRun runs n until stop is called, which returns Run's error.
func startRun(n *durable.Node[*sql.Tx]) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	return func() error {
		cancel()
		return <-done
	}
}

// storeOne stores one message for topic in n's inbox, as a delivery from
// "orders" would, without a worker or inline handling (n is not running).
func storeOne(t *testing.T, n *durable.Node[*sql.Tx], id, topic string) {
	t.Helper()
	res, err := n.Inbox().Deliver(context.Background(), &transport.Batch{Source: "orders", Envelopes: []transport.Envelope{
		{ID: id, Topic: topic, Payload: []byte("1"), CreatedAt: time.Now(), SendAttempt: 1},
	}})
	if err != nil || res.Outcome(0).Status != transport.Accepted {
		t.Fatalf("Deliver = %+v, %v; want the message stored", res, err)
	}
}

// TestNodeSendOnlyRunsNoInbox: a node with peers but no listener and no
// handlers sends over TCP and runs no part of its inbox: once its Run
// returned (which waits for every part it started), the inbox has not so
// much as checked the schema, nor claimed, rescued or purged anything, and a
// message stored in its inbox is still waiting, untouched.
func TestNodeSendOnlyRunsNoInbox(t *testing.T) {
	_, billingD := openSQLite(t)
	ordersDB, ordersD := openSQLite(t)
	ln := listener(t)
	billingMux := inbox.NewMux[*sql.Tx]()
	billing, err := durable.NewNode(billingD, fastConfig(durable.Config[*sql.Tx]{Handler: billingMux, Name: "billing", Listener: ln}))
	if err != nil {
		t.Fatal(err)
	}
	h, ids := handled()
	billingMux.HandleFunc("order.placed", h)
	runNode(t, billing)

	watch := &inboxWatch{Dialect: ordersD}
	orders, err := durable.NewNode[*sql.Tx](watch, fastConfig(durable.Config[*sql.Tx]{
		Name: "orders", Peers: map[string]durable.Peer{"billing": {Addr: ln.Addr().String()}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	storeOne(t, orders, "left-over", "refund.issued")
	stop := startRun(orders)
	m := enqueueOne(t, ordersDB, orders)
	// The relay sent it, so Run got past its start and launched its parts.
	if id := receive(t, ids, "billing to handle the message"); id != m.ID {
		t.Fatalf("billing handled %q, want %q", id, m.ID)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run = %v after a graceful stop", err)
	}
	if c := watch.calls.Load(); c != 0 {
		t.Errorf("the send-only node's inbox made %d calls (schema check, claims, rescues, purges), want none: its inbox ran", c)
	}
	st, err := orders.Inbox().Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Ready != 1 || st.Retrying+st.Running+st.Handled+st.Dead != 0 {
		t.Errorf("inbox of the send-only node: %+v, want the stored message waiting, untouched", st)
	}
}

// TestNodeInboxRunsWithListenerOrHandlers: the counterpart of
// TestNodeSendOnlyRunsNoInbox, which also shows that inboxWatch sees a
// running inbox. A node that listens runs its inbox without a Handler; a
// node with a Handler and no listener runs its workers, which handle what
// is stored in its inbox.
func TestNodeInboxRunsWithListenerOrHandlers(t *testing.T) {
	t.Run("listener, no handlers", func(t *testing.T) {
		_, d := openSQLite(t)
		watch := &inboxWatch{Dialect: d}
		n, err := durable.NewNode[*sql.Tx](watch, fastConfig(durable.Config[*sql.Tx]{Name: "billing", Listener: listener(t)}))
		if err != nil {
			t.Fatal(err)
		}
		stop := startRun(n)
		// Ready needs the listener's address, which Run sets after its
		// start and right before it launches its parts.
		waitFor(t, "the node to be ready", func() (bool, error) { return n.Ready(context.Background()) == nil, nil })
		if err := stop(); err != nil {
			t.Fatalf("Run = %v after a graceful stop", err)
		}
		if watch.calls.Load() == 0 {
			t.Error("the listening node's inbox made no call: it did not run")
		}
	})
	t.Run("handlers, no listener", func(t *testing.T) {
		_, d := openSQLite(t)
		mux := inbox.NewMux[*sql.Tx]()
		n, err := durable.NewNode(d, fastConfig(durable.Config[*sql.Tx]{Handler: mux, Name: "billing"}))
		if err != nil {
			t.Fatal(err)
		}
		h, ids := handled()
		mux.HandleFunc("order.placed", h)
		storeOne(t, n, "stored-1", "order.placed")
		runNode(t, n)
		if id := receive(t, ids, "a worker to handle the stored message"); id != "stored-1" {
			t.Fatalf("handled %q, want stored-1", id)
		}
	})
	t.Run("only an unmatched handler, no listener", func(t *testing.T) {
		_, d := openSQLite(t)
		mux := inbox.NewMux[*sql.Tx]()
		n, err := durable.NewNode(d, fastConfig(durable.Config[*sql.Tx]{Handler: mux, Name: "billing"}))
		if err != nil {
			t.Fatal(err)
		}
		h, ids := handled()
		mux.HandleUnmatchedFunc(h)
		storeOne(t, n, "stored-2", "learned.at.runtime")
		runNode(t, n)
		if id := receive(t, ids, "a worker to handle the stored message"); id != "stored-2" {
			t.Fatalf("handled %q, want stored-2", id)
		}
	})
	t.Run("a Handler that is not a Mux, no listener", func(t *testing.T) {
		_, d := openSQLite(t)
		h, ids := handled()
		n, err := durable.NewNode(d, fastConfig(durable.Config[*sql.Tx]{Name: "billing", Handler: inbox.HandlerFunc[*sql.Tx](h)}))
		if err != nil {
			t.Fatal(err)
		}
		storeOne(t, n, "stored-3", "any.topic")
		runNode(t, n)
		if id := receive(t, ids, "a worker to handle the stored message"); id != "stored-3" {
			t.Fatalf("handled %q, want stored-3", id)
		}
	})
}
