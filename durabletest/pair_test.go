package durabletest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/durabletest"
	"github.com/durable-go/durable/inbox"
	"github.com/durable-go/durable/outbox"
)

// enqueuePgx commits msgs in one transaction of the pgx sender.
func enqueuePgx(t *testing.T, f *fixture[pgx.Tx], n *durable.Node[pgx.Tx], msgs ...*outbox.Message) {
	t.Helper()
	ctx := context.Background()
	tx, err := f.d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enqueue(ctx, tx, msgs...); err != nil {
		t.Fatal(err)
	}
	if err := f.d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
}

// TestPair: a pgx sender and a SQLite receiver (two transaction types) over
// loopback. WaitSettled returns once every message enqueued before it is
// handled or dead-lettered, and again for a second round.
func TestPair(t *testing.T) {
	sender := openPgx(t)
	receiver := openSQLite(t, true)
	mux := inbox.NewMux[*sql.Tx]()
	mux.HandleFunc("order.placed", func(ctx context.Context, tx *sql.Tx, m *inbox.Message) error {
		return receiver.effect(ctx, tx, m.ID)
	})
	mux.HandleFunc("order.poison", func(context.Context, *sql.Tx, *inbox.Message) error {
		return inbox.Permanent(errors.New("cannot bill this"))
	})
	p := durabletest.NewPair(t, sender.d, receiver.d, &durabletest.PairConfig[pgx.Tx, *sql.Tx]{
		Sender:   durable.Config[pgx.Tx]{Name: "shop", Logger: quietLogger()},
		Receiver: durable.Config[*sql.Tx]{Name: "billing", Logger: quietLogger(), Handler: mux},
	})
	p.Start()

	ctx := context.Background()
	for round := range 2 {
		var ids []string
		var msgs []*outbox.Message
		for i := range 5 {
			id := fmt.Sprintf("r%d-m%d", round, i)
			ids = append(ids, id)
			msgs = append(msgs, &outbox.Message{ID: id, Destination: "billing", Topic: "order.placed", Payload: []byte("{}")})
		}
		poison := fmt.Sprintf("r%d-poison", round)
		msgs = append(msgs, &outbox.Message{ID: poison, Destination: "billing", Topic: "order.poison", Payload: []byte("{}")})
		enqueuePgx(t, sender, p.Sender, msgs...)

		p.WaitSettled(ctx, t)
		for _, id := range ids {
			if n := receiver.effects(t, id); n != 1 {
				t.Errorf("round %d: %s has %d effects after WaitSettled, want 1", round, id, n)
			}
		}
		dead, err := p.Receiver.Inbox().DeadLetters(ctx, inbox.DeadLetterFilter{IDs: []string{poison}})
		if err != nil || len(dead) != 1 {
			t.Errorf("round %d: the poison message's dead letters = %v, %v; want one", round, dead, err)
		}
	}
}

// TestWaitSettledReports: a message that cannot settle (its topic has no
// handler at the receiver, which retries it for NoHandlerGrace) makes
// WaitSettled fail when its ctx ends, saying where the message is.
func TestWaitSettledReports(t *testing.T) {
	sender := openSQLite(t, true)
	receiver := openSQLite(t, true)
	p := durabletest.NewPair(t, sender.d, receiver.d, &durabletest.PairConfig[*sql.Tx, *sql.Tx]{
		Sender:   durable.Config[*sql.Tx]{Logger: quietLogger()},
		Receiver: durable.Config[*sql.Tx]{Logger: quietLogger()},
	})
	p.Start()
	ctx := context.Background()
	tx, err := sender.d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Sender.Enqueue(ctx, tx, &outbox.Message{ID: "lost-1", Destination: "receiver", Topic: "nobody.listens", Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	if err := sender.d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
	msg := mustFail(t, func(tb durabletest.TB) {
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		p.WaitSettled(wctx, tb)
	})
	t.Logf("WaitSettled reported: %s", msg)
	for _, want := range []string{`1 of the messages enqueued for "receiver" not settled`, "lost-1: "} {
		if !strings.Contains(msg, want) {
			t.Errorf("WaitSettled's failure %q does not contain %q", msg, want)
		}
	}
}
