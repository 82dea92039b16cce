package outbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/outbox"
)

// target is one dialect under test: open returns a fresh migrated (or not)
// database private to the test.
type target[TTx any] struct {
	name string
	open func(t *testing.T, migrated bool) dialects.Dialect[TTx]
}

// runAll runs one generic test against every dialect and constructor: pgx
// pool, Postgres through database/sql, and SQLite.
func runAll(t *testing.T, pg func(*testing.T, target[pgxTx]), pgsql func(*testing.T, target[sqlTx]), sq func(*testing.T, target[sqlTx])) {
	t.Run(pgxTarget.name, func(t *testing.T) { pg(t, pgxTarget) })
	t.Run(pgSQLTarget.name, func(t *testing.T) { pgsql(t, pgSQLTarget) })
	t.Run(sqliteTarget.name, func(t *testing.T) { sq(t, sqliteTarget) })
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func msg(i int) *outbox.Message {
	return &outbox.Message{
		Destination: "billing",
		Topic:       "order.placed",
		Key:         fmt.Sprintf("order-%d", i%10),
		Headers:     map[string]string{"n": fmt.Sprint(i)},
		Payload:     []byte(fmt.Sprintf("payload-%d-\x00\xff", i)),
	}
}

// enqueueTx runs Enqueue in a new transaction and commits or rolls back.
func enqueueTx[TTx any](t *testing.T, ob *outbox.Outbox[TTx], commit bool, msgs ...*outbox.Message) error {
	t.Helper()
	ctx := ctxT(t)
	d := ob.Dialect().(dialects.TxBeginner[TTx])
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if err := ob.Enqueue(ctx, tx, msgs...); err != nil {
		if rerr := d.Rollback(ctx, tx); rerr != nil {
			t.Fatalf("Rollback: %v", rerr)
		}
		return err
	}
	if !commit {
		return d.Rollback(ctx, tx)
	}
	return d.Commit(ctx, tx)
}

func rowsOf[TTx any](t *testing.T, d dialects.Dialect[TTx]) []dialects.OutboxRow {
	t.Helper()
	rows, err := d.ListOutbox(ctxT(t), dialects.OutboxQuery{})
	if err != nil {
		t.Fatalf("ListOutbox: %v", err)
	}
	return rows
}

func newOutbox[TTx any](t *testing.T, d dialects.Dialect[TTx], cfg *outbox.Config) *outbox.Outbox[TTx] {
	t.Helper()
	ob, err := outbox.New(d, cfg)
	if err != nil {
		t.Fatalf("outbox.New: %v", err)
	}
	return ob
}

func testRollbackCommit[TTx any](t *testing.T, tg target[TTx]) {
	d := tg.open(t, true)
	ob := newOutbox(t, d, nil)
	if err := enqueueTx(t, ob, false, msg(1), msg(2)); err != nil {
		t.Fatal(err)
	}
	if n := len(rowsOf(t, d)); n != 0 {
		t.Fatalf("after rollback: %d rows, want 0", n)
	}
	want := []*outbox.Message{msg(1), msg(2), msg(3)}
	want[2].ID = "caller-chosen-id"
	want[2].DeliverAt = time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	want[2].ExpiresAt = want[2].DeliverAt.Add(time.Hour)
	want[1].Payload = nil
	want[1].Headers = nil
	if err := enqueueTx(t, ob, true, want...); err != nil {
		t.Fatal(err)
	}
	got := rowsOf(t, d)
	if len(got) != len(want) {
		t.Fatalf("after commit: %d rows, want %d", len(got), len(want))
	}
	for i, m := range want {
		g := got[i]
		if g.ID != m.ID || g.Destination != m.Destination || g.Topic != m.Topic || g.Key != m.Key ||
			!bytes.Equal(g.Payload, m.Payload) || len(g.Headers) != len(m.Headers) || g.Headers["n"] != m.Headers["n"] {
			t.Errorf("row %d = %+v, want %+v", i, g, m)
		}
		if !m.DeliverAt.IsZero() && !g.DeliverAt.Equal(m.DeliverAt) {
			t.Errorf("row %d DeliverAt %v, want %v", i, g.DeliverAt, m.DeliverAt)
		}
		if !m.ExpiresAt.IsZero() && !g.ExpiresAt.Equal(m.ExpiresAt) {
			t.Errorf("row %d ExpiresAt %v, want %v", i, g.ExpiresAt, m.ExpiresAt)
		}
	}
	for i := range 2 {
		u, err := uuid.Parse(want[i].ID)
		if err != nil || u.Version() != 7 {
			t.Errorf("generated id %q is not a UUIDv7 (%v)", want[i].ID, err)
		}
	}
	if want[2].ID != "caller-chosen-id" {
		t.Errorf("caller id overwritten: %q", want[2].ID)
	}
}

func testManyInOneCall[TTx any](t *testing.T, tg target[TTx]) {
	d := tg.open(t, true)
	ob := newOutbox(t, d, nil)
	msgs := make([]*outbox.Message, 10_000)
	for i := range msgs {
		msgs[i] = msg(i)
	}
	if err := enqueueTx(t, ob, true, msgs...); err != nil {
		t.Fatal(err)
	}
	got := rowsOf(t, d)
	if len(got) != len(msgs) {
		t.Fatalf("%d rows, want %d", len(got), len(msgs))
	}
	for i := range msgs {
		if got[i].ID != msgs[i].ID || !bytes.Equal(got[i].Payload, msgs[i].Payload) {
			t.Fatalf("row %d: id %s payload %q, want %s %q", i, got[i].ID, got[i].Payload, msgs[i].ID, msgs[i].Payload)
		}
	}
}

func testBadInput[TTx any](t *testing.T, tg target[TTx]) {
	d := tg.open(t, true)
	ob := newOutbox(t, d, &outbox.Config{Destinations: []string{"billing", "shipping"}, MaxPayloadBytes: 1000, MaxHeaderBytes: 100})
	long := strings.Repeat("x", 256)
	cases := []struct {
		name  string
		mod   func(m *outbox.Message)
		is    error
		field string
	}{
		{"empty destination", func(m *outbox.Message) { m.Destination = "" }, outbox.ErrInvalidMessage, "Destination"},
		{"empty topic", func(m *outbox.Message) { m.Topic = "" }, outbox.ErrInvalidMessage, "Topic"},
		{"unknown destination", func(m *outbox.Message) { m.Destination = "nowhere" }, outbox.ErrUnknownDestination, "Destination"},
		{"oversized payload", func(m *outbox.Message) { m.Payload = make([]byte, 1001) }, outbox.ErrTooLarge, "Payload"},
		{"oversized headers", func(m *outbox.Message) { m.Headers = map[string]string{"h": strings.Repeat("v", 100)} }, outbox.ErrTooLarge, "Headers"},
		{"long topic", func(m *outbox.Message) { m.Topic = long }, outbox.ErrTooLarge, "Topic"},
		{"long id", func(m *outbox.Message) { m.ID = long }, outbox.ErrTooLarge, "ID"},
		{"NUL in key", func(m *outbox.Message) { m.Key = "a\x00b" }, outbox.ErrInvalidMessage, "Key"},
		{"invalid UTF-8 topic", func(m *outbox.Message) { m.Topic = "\xff\xfe" }, outbox.ErrInvalidMessage, "Topic"},
		{"empty header name", func(m *outbox.Message) { m.Headers = map[string]string{"": "v"} }, outbox.ErrInvalidMessage, "Headers"},
		{"expires before deliver", func(m *outbox.Message) {
			m.DeliverAt = time.Now().Add(time.Hour)
			m.ExpiresAt = time.Now()
		}, outbox.ErrInvalidMessage, "ExpiresAt"},
		{"deliver in year 10000", func(m *outbox.Message) { m.DeliverAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, outbox.ErrInvalidMessage, "DeliverAt"},
		{"NUL in header value", func(m *outbox.Message) { m.Headers = map[string]string{"h": "\x00"} }, outbox.ErrInvalidMessage, "Headers"},
	}
	for _, c := range cases {
		good, bad := msg(1), msg(2)
		c.mod(bad)
		err := enqueueTx(t, ob, true, good, bad)
		var ve *outbox.ValidationError
		if !errors.Is(err, c.is) || !errors.Is(err, outbox.ErrInvalidMessage) || !errors.As(err, &ve) {
			t.Errorf("%s: err = %v, want errors.Is %v", c.name, err, c.is)
			continue
		}
		if ve.Index != 1 || ve.Field != c.field {
			t.Errorf("%s: ValidationError{Index %d, Field %q}, want {1, %q}", c.name, ve.Index, ve.Field, c.field)
		}
		if good.ID != "" {
			t.Errorf("%s: the valid message of a refused call got an id", c.name)
		}
	}
	if err := enqueueTx(t, ob, true, msg(1), nil); !errors.Is(err, outbox.ErrInvalidMessage) {
		t.Errorf("nil message: %v", err)
	}
	if n := len(rowsOf(t, d)); n != 0 {
		t.Fatalf("refused calls wrote %d rows, want 0", n)
	}

	// Duplicate id: the second call fails whole and writes nothing.
	first := msg(1)
	first.ID = "order-42"
	if err := enqueueTx(t, ob, true, first); err != nil {
		t.Fatal(err)
	}
	again, other := msg(2), msg(3)
	again.ID = "order-42"
	err := enqueueTx(t, ob, true, other, again)
	var de *dialects.DuplicateError
	if !errors.Is(err, outbox.ErrDuplicateID) || !errors.As(err, &de) || de.ID != "order-42" {
		t.Fatalf("duplicate id: err = %v, want ErrDuplicateID for order-42", err)
	}
	if rows := rowsOf(t, d); len(rows) != 1 || rows[0].ID != "order-42" {
		t.Fatalf("after duplicate: rows %v, want only order-42", rows)
	}
	// The same id to another destination is a different message.
	again.Destination = "shipping"
	if err := enqueueTx(t, ob, true, again); err != nil {
		t.Fatalf("same id, other destination: %v", err)
	}
}

func testUnmigrated[TTx any](t *testing.T, tg target[TTx]) {
	d := tg.open(t, false)
	ob := newOutbox(t, d, nil)
	if err := ob.CheckSchema(ctxT(t)); !errors.Is(err, outbox.ErrSchema) || !strings.Contains(err.Error(), "0001_init") {
		t.Fatalf("CheckSchema on an unmigrated database = %v, want ErrSchema naming 0001_init", err)
	}
	if err := enqueueTx(t, ob, true, msg(1)); !errors.Is(err, outbox.ErrSchema) {
		t.Fatalf("Enqueue on an unmigrated database = %v, want ErrSchema", err)
	}
}

func testConcurrent[TTx any](t *testing.T, tg target[TTx]) {
	d := tg.open(t, true)
	ob := newOutbox(t, d, nil)
	const workers, each = 8, 100
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				if err := enqueueTx(t, ob, true, msg(w*each+i)); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent enqueue: %v", err)
	}
	if n := len(rowsOf(t, d)); n != workers*each {
		t.Fatalf("%d rows, want %d", n, workers*each)
	}
}

func TestRollbackAndCommit(t *testing.T) {
	runAll(t, testRollbackCommit[pgxTx], testRollbackCommit[sqlTx], testRollbackCommit[sqlTx])
}

func TestManyInOneCall(t *testing.T) {
	runAll(t, testManyInOneCall[pgxTx], testManyInOneCall[sqlTx], testManyInOneCall[sqlTx])
}

func TestBadInput(t *testing.T) {
	runAll(t, testBadInput[pgxTx], testBadInput[sqlTx], testBadInput[sqlTx])
}

func TestUnmigrated(t *testing.T) {
	runAll(t, testUnmigrated[pgxTx], testUnmigrated[sqlTx], testUnmigrated[sqlTx])
}

func TestConcurrentEnqueue(t *testing.T) {
	runAll(t, testConcurrent[pgxTx], testConcurrent[sqlTx], testConcurrent[sqlTx])
}

func TestNewConfig(t *testing.T) {
	if _, err := outbox.New[sqlTx](nil, nil); err == nil {
		t.Error("New(nil dialect) succeeded")
	}
	d := sqliteTarget.open(t, true)
	if _, err := outbox.New(d, &outbox.Config{Notify: true}); err == nil || !strings.Contains(err.Error(), "cannot notify") {
		t.Errorf("Notify on sqlite: %v", err)
	}
	if _, err := outbox.New(d, &outbox.Config{Destinations: []string{""}}); err == nil {
		t.Error("empty destination name in config accepted")
	}
	if _, err := outbox.New(d, &outbox.Config{MaxPayloadBytes: -1}); err == nil {
		t.Error("negative limit accepted")
	}
	ob, err := outbox.New(d, &outbox.Config{NewID: func() (string, error) { return "", nil }})
	if err != nil {
		t.Fatal(err)
	}
	if err := enqueueTx(t, ob, true, msg(1)); err == nil || !strings.Contains(err.Error(), "NewID") {
		t.Errorf("empty generated id: %v", err)
	}
}
