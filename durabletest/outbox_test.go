package durabletest_test

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/durabletest"
	"github.com/durable-go/durable/outbox"
)

// enqueue enqueues msgs in one transaction and commits it.
func enqueue[TTx any](t *testing.T, d dialects.Dialect[TTx], msgs ...*outbox.Message) {
	t.Helper()
	ctx := ctxFor(t)
	ob, tx := begin(t, d)
	if err := ob.Enqueue(ctx, tx, msgs...); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
}

// begin returns an outbox on d and a transaction, rolled back at cleanup
// unless committed.
func begin[TTx any](t *testing.T, d dialects.Dialect[TTx]) (*outbox.Outbox[TTx], TTx) {
	t.Helper()
	ob, err := outbox.New(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := d.Begin(ctxFor(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Rollback(context.Background(), tx) })
	return ob, tx
}

// contains fails t unless msg holds every part.
func contains(t *testing.T, msg string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("failure message does not hold %q:\n%s", p, msg)
		}
	}
}

func TestRequireEnqueued(t *testing.T) { each(t, testRequireEnqueued, testRequireEnqueued) }

func testRequireEnqueued[TTx any](t *testing.T, f *fixture[TTx]) {
	ctx := ctxFor(t)
	expires := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	later := time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond)
	placed := &outbox.Message{ID: "order-1", Destination: "billing", Topic: "order.placed", Key: "customer-7",
		Headers: map[string]string{"content-type": "application/json"}, Payload: []byte(`{"order": 1, "total": 4200}`), ExpiresAt: expires}
	cancelled := &outbox.Message{Destination: "billing", Topic: "order.cancelled", Payload: []byte(`{"order":2}`), DeliverAt: later}
	shipped := &outbox.Message{Destination: "shipping", Topic: "order.placed", Payload: []byte{0xff, 0}}
	enqueue(t, f.d, placed, cancelled, shipped)

	m := durabletest.RequireEnqueued(ctx, t, f.d, durabletest.Want{Destination: "billing", Topic: "order.placed"})
	if m.ID != "order-1" || m.Destination != "billing" || m.Topic != "order.placed" || m.Key != "customer-7" ||
		string(m.Payload) != string(placed.Payload) || !maps.Equal(m.Headers, placed.Headers) ||
		!m.DeliverAt.IsZero() || !m.ExpiresAt.Equal(expires) {
		t.Errorf("RequireEnqueued returned %+v, want the message enqueued as %+v", m, placed)
	}
	m = durabletest.RequireEnqueued(ctx, t, f.d, durabletest.Want{Topic: "order.cancelled"})
	if m.ID != cancelled.ID || !m.DeliverAt.Equal(later) || m.Headers != nil || !m.ExpiresAt.IsZero() {
		t.Errorf("RequireEnqueued returned %+v, want id %s (written back by Enqueue), DeliverAt %v, no headers", m, cancelled.ID, later)
	}
	for _, c := range []struct {
		name string
		want durabletest.Want
		id   string
	}{
		{"JSON, other key order and spacing", durabletest.Want{JSON: map[string]any{"total": 4200, "order": 1}}, placed.ID},
		{"JSON struct", durabletest.Want{JSON: struct {
			Order int `json:"order"`
		}{2}}, cancelled.ID},
		{"Payload bytes", durabletest.Want{Destination: "shipping", Payload: []byte{0xff, 0}}, shipped.ID},
		{"Headers", durabletest.Want{Headers: map[string]string{"content-type": "application/json"}}, placed.ID},
		{"ID and Key", durabletest.Want{ID: "order-1", Key: "customer-7"}, placed.ID},
	} {
		if m := durabletest.RequireEnqueued(ctx, t, f.d, c.want); m.ID != c.id {
			t.Errorf("%s: RequireEnqueued(%v) returned %s, want %s", c.name, c.want, m.ID, c.id)
		}
	}

	// The failures, each with a message that says what the outbox holds.
	msg := mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireEnqueued(ctx, tb, f.d, durabletest.Want{Destination: "billing", Topic: "order.shipped"})
	})
	contains(t, msg, `RequireEnqueued: no outbox message matches Want{Destination: "billing", Topic: "order.shipped"}`,
		"the outbox holds 3:", `1. id "order-1" → "billing", topic "order.placed", key "customer-7"`,
		`topic "order.placed", want "order.shipped"`, `destination "shipping", want "billing"`, cancelled.ID)
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireEnqueued(ctx, tb, f.d, durabletest.Want{Topic: "order.placed"})
	})
	contains(t, msg, `2 outbox messages match Want{Topic: "order.placed"}, want exactly one`, `id "order-1"`, shipped.ID)
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireEnqueued(ctx, tb, f.d, durabletest.Want{Destination: "billing", JSON: map[string]int{"order": 1, "total": 1}})
	})
	contains(t, msg, `want JSON {"order":1,"total":1}`)
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireEnqueued(ctx, tb, f.d, durabletest.Want{Destination: "shipping", JSON: 1})
	})
	contains(t, msg, `payload 0xff00 is not JSON`, `Want{Destination: "shipping", JSON: 1}`)
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireEnqueued(ctx, tb, f.d, durabletest.Want{Headers: map[string]string{"content-type": "text/plain"}})
	})
	contains(t, msg, `header "content-type" is "application/json", want "text/plain"`, `no header "content-type", want "text/plain"`)
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireEnqueued(ctx, tb, f.d, durabletest.Want{Payload: []byte("nope")})
	})
	contains(t, msg, `payload "{\"order\": 1, \"total\": 4200}", want "nope"`)
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireEnqueued(ctx, tb, f.d, durabletest.Want{JSON: make(chan int)})
	})
	contains(t, msg, "Want.JSON cannot be encoded")
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireEnqueued(ctx, tb, nil, durabletest.Want{})
	})
	contains(t, msg, "RequireEnqueued: nil dialect")
}

func TestRequireNotEnqueued(t *testing.T) { each(t, testRequireNotEnqueued, testRequireNotEnqueued) }

func testRequireNotEnqueued[TTx any](t *testing.T, f *fixture[TTx]) {
	ctx := ctxFor(t)
	// A rolled back transaction leaves nothing.
	ob, tx := begin(t, f.d)
	if err := ob.Enqueue(ctx, tx, &outbox.Message{ID: "rolled-back", Destination: "billing", Topic: "order.placed"}); err != nil {
		t.Fatal(err)
	}
	if err := f.d.Rollback(ctx, tx); err != nil {
		t.Fatal(err)
	}
	durabletest.RequireNotEnqueued(ctx, t, f.d, durabletest.Want{Topic: "order.placed"})
	msg := mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireEnqueued(ctx, tb, f.d, durabletest.Want{Topic: "order.placed"})
	})
	contains(t, msg, "the outbox is empty")

	enqueue(t, f.d, &outbox.Message{ID: "committed", Destination: "billing", Topic: "order.placed"})
	durabletest.RequireNotEnqueued(ctx, t, f.d, durabletest.Want{Topic: "order.cancelled"})
	durabletest.RequireNotEnqueued(ctx, t, f.d, durabletest.Want{Destination: "shipping"})
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireNotEnqueued(ctx, tb, f.d, durabletest.Want{Topic: "order.placed"})
	})
	contains(t, msg, `RequireNotEnqueued: 1 outbox message(s) match Want{Topic: "order.placed"}, want none`, `id "committed"`)
}

func TestRequireManyEnqueued(t *testing.T) { each(t, testRequireManyEnqueued, testRequireManyEnqueued) }

func testRequireManyEnqueued[TTx any](t *testing.T, f *fixture[TTx]) {
	ctx := ctxFor(t)
	enqueue(t, f.d,
		&outbox.Message{ID: "a", Destination: "billing", Topic: "x", Key: "1"},
		&outbox.Message{ID: "b", Destination: "billing", Topic: "y"},
		&outbox.Message{ID: "c", Destination: "billing", Topic: "x", Key: "2"},
	)
	enqueue(t, f.d, &outbox.Message{ID: "d", Destination: "shipping", Topic: "x"})

	x := durabletest.Want{Destination: "billing", Topic: "x"}
	got := durabletest.RequireManyEnqueued(ctx, t, f.d, []durabletest.Want{x, {Topic: "y"}, x})
	if len(got) != 3 || got[0].ID != "a" || got[1].ID != "b" || got[2].ID != "c" || got[2].Key != "2" {
		t.Errorf("RequireManyEnqueued returned %v, want a, b, c", got)
	}
	got = durabletest.RequireManyEnqueued(ctx, t, f.d, []durabletest.Want{{Topic: "y"}, {Destination: "shipping"}})
	if len(got) != 2 || got[0].ID != "b" || got[1].ID != "d" {
		t.Errorf("RequireManyEnqueued across destinations returned %v, want b, d", got)
	}

	msg := mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireManyEnqueued(ctx, tb, f.d, []durabletest.Want{{Topic: "y"}, x, x})
	})
	contains(t, msg, `message 1 does not match wants[0]: topic "x", want "y"`, "want, in enqueue order:", `1. Want{Topic: "y"}`,
		`1. id "a" → "billing", topic "x", key "1"`)
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireManyEnqueued(ctx, tb, f.d, []durabletest.Want{x})
	})
	contains(t, msg, "2 outbox messages match them, want 1")
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireManyEnqueued(ctx, tb, f.d, []durabletest.Want{{Topic: "z"}})
	})
	contains(t, msg, "0 outbox messages match them, want 1", "any of them, in enqueue order: none")
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireManyEnqueued(ctx, tb, f.d, nil)
	})
	contains(t, msg, "no Want given")
}

func TestRequireEnqueuedTx(t *testing.T) { each(t, testRequireEnqueuedTx, testRequireEnqueuedTx) }

func testRequireEnqueuedTx[TTx any](t *testing.T, f *fixture[TTx]) {
	ctx := ctxFor(t)
	enqueue(t, f.d, &outbox.Message{ID: "before", Destination: "billing", Topic: "order.placed"})
	ob, tx := begin(t, f.d)
	if err := ob.Enqueue(ctx, tx,
		&outbox.Message{ID: "in-tx", Destination: "billing", Topic: "order.paid", Payload: []byte(`{"order":3}`)},
		&outbox.Message{ID: "in-tx-2", Destination: "shipping", Topic: "order.paid"},
	); err != nil {
		t.Fatal(err)
	}
	m := durabletest.RequireEnqueuedTx(ctx, t, f.d, tx, durabletest.Want{Destination: "billing", Topic: "order.paid", JSON: map[string]int{"order": 3}})
	if m.ID != "in-tx" {
		t.Errorf("RequireEnqueuedTx returned %s, want in-tx", m.ID)
	}
	got := durabletest.RequireManyEnqueuedTx(ctx, t, f.d, tx, []durabletest.Want{{Destination: "billing"}, {Destination: "billing"}})
	if len(got) != 2 || got[0].ID != "before" || got[1].ID != "in-tx" {
		t.Errorf("RequireManyEnqueuedTx returned %v, want before, in-tx", got)
	}
	durabletest.RequireNotEnqueuedTx(ctx, t, f.d, tx, durabletest.Want{Topic: "order.refunded"})
	msg := mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireNotEnqueuedTx(ctx, tb, f.d, tx, durabletest.Want{ID: "in-tx-2"})
	})
	contains(t, msg, "RequireNotEnqueuedTx: 1 outbox message(s) match", `id "in-tx-2"`)
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireEnqueuedTx(ctx, tb, f.d, tx, durabletest.Want{Topic: "order.refunded"})
	})
	contains(t, msg, "the outbox, as the transaction sees it, holds 3:", `id "in-tx"`)
	if !f.sqlite {
		// Outside the transaction, nothing of it is visible yet. (On
		// SQLite the read would wait for the transaction's connection.)
		durabletest.RequireNotEnqueued(ctx, t, f.d, durabletest.Want{Topic: "order.paid"})
	}
	if err := f.d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	durabletest.RequireEnqueued(ctx, t, f.d, durabletest.Want{ID: "in-tx"})

	// A dialect without dialects.OutboxTxLister is refused clearly.
	plain := struct{ dialects.Dialect[TTx] }{f.d}
	_, tx = begin(t, f.d)
	msg = mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireEnqueuedTx(ctx, tb, plain, tx, durabletest.Want{})
	})
	contains(t, msg, "RequireEnqueuedTx: the", "cannot read the outbox in a transaction: it does not implement dialects.OutboxTxLister")
}

// On SQLite, a read outside a transaction that is still open waits for its
// connection: the failure says so and points to the Tx variant.
func TestRequireEnqueuedWaitsOnSQLite(t *testing.T) {
	f := openSQLite(t, true)
	bg := ctxFor(t)
	tx, err := f.d.Begin(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.d.Rollback(bg, tx) }()
	ctx, cancel := context.WithTimeout(bg, 200*time.Millisecond)
	defer cancel()
	msg := mustFail(t, func(tb durabletest.TB) {
		durabletest.RequireEnqueued(ctx, tb, f.d, durabletest.Want{})
	})
	contains(t, msg, "cannot read the outbox", "deadline exceeded", "Tx variant")
}

// A TB whose Fatalf returns gets nil from the helpers.
func TestFatalfThatReturns(t *testing.T) {
	f := openSQLite(t, true)
	tb := &fakeTB{returns: true}
	if m := durabletest.RequireEnqueued(ctxFor(t), tb, f.d, durabletest.Want{}); m != nil || !tb.failed {
		t.Fatalf("RequireEnqueued on an empty outbox = %v, failed %v; want nil and a failure", m, tb.failed)
	}
	tb = &fakeTB{returns: true}
	if ms := durabletest.RequireManyEnqueued(ctxFor(t), tb, f.d, []durabletest.Want{{}}); ms != nil || !tb.failed {
		t.Fatalf("RequireManyEnqueued on an empty outbox = %v, failed %v; want nil and a failure", ms, tb.failed)
	}
	tb = &fakeTB{returns: true}
	var d dialects.Dialect[pgx.Tx]
	if m := durabletest.RequireEnqueuedTx(ctxFor(t), tb, d, nil, durabletest.Want{}); m != nil || tb.msg != "durabletest: RequireEnqueuedTx: nil dialect" {
		t.Fatalf("RequireEnqueuedTx with a nil dialect = %v, %q", m, tb.msg)
	}
}
