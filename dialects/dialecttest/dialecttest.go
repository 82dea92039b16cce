// Package dialecttest is the conformance suite every durable dialect must
// pass. A dialect's tests call Run with a Harness that opens fresh databases
// of that dialect:
//
//	func TestConformance(t *testing.T) {
//		dialecttest.Run(t, dialecttest.Harness[pgx.Tx]{
//			Open:           func(t *testing.T) dialects.Dialect[pgx.Tx] { ... },
//			OpenUnmigrated: func(t *testing.T) dialects.Dialect[pgx.Tx] { ... },
//		})
//	}
//
// The suite covers every storage operation of dialects.Dialect and is
// extended whenever the contract grows. Harness.OpenUnmigrated is used only
// by the subtests that check the schema errors.
//
// A dialect outside this module can run the suite, but passing it does not
// bring that dialect under durable's compatibility promise: Dialect may
// gain methods in a minor release (see "Outside implementations" in package
// dialects).
package dialecttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/transport"
)

// Harness opens databases of the dialect under test.
type Harness[TTx any] struct {
	// Open returns a dialect on a fresh, migrated database private to t.
	Open func(t *testing.T) dialects.Dialect[TTx]
	// OpenUnmigrated returns a dialect on a fresh database where no durable
	// migration ran.
	OpenUnmigrated func(t *testing.T) dialects.Dialect[TTx]
}

// Run runs the whole conformance suite as subtests of t: the enqueue path
// and the schema check, then the relay's operations (subtests Relay/…), the
// inbox's (Inbox/…), the dead letters of both sides (DeadLetters/…) and the
// leases (Lease/…).
func Run[TTx any](t *testing.T, h Harness[TTx]) {
	t.Helper()
	s := suite[TTx]{h: h}
	t.Run("TxLifecycle", s.txLifecycle)
	t.Run("CheckSchema", s.checkSchema)
	t.Run("Unmigrated", s.unmigrated)
	t.Run("InsertCommitRoundTrip", s.insertCommitRoundTrip)
	t.Run("InsertRollback", s.insertRollback)
	t.Run("InsertDefaults", s.insertDefaults)
	t.Run("InsertEmpty", s.insertEmpty)
	t.Run("EnqueueOrder", s.enqueueOrder)
	t.Run("DuplicateCommitted", s.duplicateCommitted)
	t.Run("DuplicateWithinCall", s.duplicateWithinCall)
	t.Run("SameIDOtherDestination", s.sameIDOtherDestination)
	t.Run("LargeBatch", s.largeBatch)
	t.Run("ListOutboxFilters", s.listFilters)
	t.Run("Notify", s.notify)
	t.Run("ListOutboxTx", s.listOutboxTx)
	t.Run("Relay", relaySuite[TTx]{h: h}.run)
	t.Run("Inbox", inboxSuite[TTx]{h: h}.run)
	t.Run("DeadLetters", deadLetterSuite[TTx]{h: h}.run)
	t.Run("Lease", leaseSuite[TTx]{h: h}.run)
	t.Run("Nodes", nodeSuite[TTx]{h: h}.run)
	t.Run("Control", controlSuite[TTx]{h: h}.run)
}

type suite[TTx any] struct{ h Harness[TTx] }

// Timeout bounds each subtest's database work: a bound on hangs, not on
// speed (a loaded machine under -race is slow).
const Timeout = 3 * time.Minute

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	t.Cleanup(cancel)
	return ctx
}

// insert runs InsertOutbox in its own transaction and commits.
func insert[TTx any](t *testing.T, d dialects.Dialect[TTx], rows ...dialects.OutboxRow) {
	t.Helper()
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if err := d.InsertOutbox(ctx, tx, rows); err != nil {
		_ = d.Rollback(ctx, tx)
		t.Fatalf("InsertOutbox: %v", err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

func list[TTx any](t *testing.T, d dialects.Dialect[TTx], q dialects.OutboxQuery) []dialects.OutboxRow {
	t.Helper()
	rows, err := d.ListOutbox(ctxFor(t), q)
	if err != nil {
		t.Fatalf("ListOutbox: %v", err)
	}
	return rows
}

// Row returns a valid outbox row with distinct, non-trivial field values.
func Row(i int, destination string) dialects.OutboxRow {
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return dialects.OutboxRow{
		Envelope: transport.Envelope{
			ID:        fmt.Sprintf("msg-%06d", i),
			Topic:     "topic.created",
			Key:       fmt.Sprintf("key-%d", i%7),
			Headers:   map[string]string{"trace": fmt.Sprintf("t-%d", i), "ünïcode": "✓ \"quoted\" \\ slash"},
			Payload:   []byte{0, 1, 2, 0xff, byte(i), byte(i >> 8), 0, '\'', '"', '\\'},
			CreatedAt: base.Add(time.Duration(i) * time.Millisecond),
			DeliverAt: base.Add(time.Duration(i)*time.Millisecond + time.Second),
			ExpiresAt: base.Add(24 * time.Hour),
		},
		Destination: destination,
	}
}

func (s suite[TTx]) txLifecycle(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := d.Rollback(ctx, tx); err != nil {
		t.Fatalf("Rollback after Commit = %v, want nil", err)
	}
	tx, err = d.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if err := d.Rollback(ctx, tx); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if err := d.Rollback(ctx, tx); err != nil {
		t.Fatalf("second Rollback = %v, want nil", err)
	}
	if d.Name() != "postgres" && d.Name() != "sqlite" {
		t.Fatalf("Name() = %q", d.Name())
	}
}

func (s suite[TTx]) checkSchema(t *testing.T) {
	d := s.h.Open(t)
	if err := d.CheckSchema(ctxFor(t)); err != nil {
		t.Fatalf("CheckSchema on a migrated database: %v", err)
	}
}

func (s suite[TTx]) unmigrated(t *testing.T) {
	d := s.h.OpenUnmigrated(t)
	ctx := ctxFor(t)
	err := d.CheckSchema(ctx)
	assertSchemaError(t, "CheckSchema", err, d.Name())

	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	defer func() { _ = d.Rollback(ctx, tx) }()
	err = d.InsertOutbox(ctx, tx, []dialects.OutboxRow{Row(1, "billing")})
	assertSchemaError(t, "InsertOutbox", err, d.Name())
}

func assertSchemaError(t *testing.T, op string, err error, dialect string) {
	t.Helper()
	if !errors.Is(err, dialects.ErrSchema) {
		t.Fatalf("%s on an unmigrated database = %v, want errors.Is ErrSchema", op, err)
	}
	var se *dialects.SchemaError
	if !errors.As(err, &se) {
		t.Fatalf("%s: %v is not a *SchemaError", op, err)
	}
	if se.Have != 0 || se.Want != dialects.SchemaVersion || se.Dialect != dialect {
		t.Fatalf("%s: SchemaError = %+v, want Have 0, Want %d, Dialect %q", op, se, dialects.SchemaVersion, dialect)
	}
	if m := se.Missing(); len(m) == 0 || m[0] != "0001_init" {
		t.Fatalf("%s: Missing() = %v, want it to start with 0001_init", op, m)
	}
	if !bytes.Contains([]byte(se.Error()), []byte("0001_init")) {
		t.Fatalf("%s: message %q does not name the missing migration", op, se.Error())
	}
}

// Equal reports the first difference between two stored rows, comparing
// every field the caller supplies (times at millisecond precision).
func Equal(got, want dialects.OutboxRow) error {
	switch {
	case got.ID != want.ID:
		return fmt.Errorf("ID %q, want %q", got.ID, want.ID)
	case got.Destination != want.Destination:
		return fmt.Errorf("%s: Destination %q, want %q", want.ID, got.Destination, want.Destination)
	case got.Topic != want.Topic:
		return fmt.Errorf("%s: Topic %q, want %q", want.ID, got.Topic, want.Topic)
	case got.Key != want.Key:
		return fmt.Errorf("%s: Key %q, want %q", want.ID, got.Key, want.Key)
	case !bytes.Equal(got.Payload, want.Payload):
		return fmt.Errorf("%s: Payload %x, want %x", want.ID, got.Payload, want.Payload)
	}
	if !maps.Equal(got.Headers, want.Headers) {
		return fmt.Errorf("%s: Headers %v, want %v", want.ID, got.Headers, want.Headers)
	}
	for _, c := range []struct {
		name      string
		got, want time.Time
	}{
		{"CreatedAt", got.CreatedAt, want.CreatedAt},
		{"DeliverAt", got.DeliverAt, want.DeliverAt},
		{"ExpiresAt", got.ExpiresAt, want.ExpiresAt},
	} {
		if !c.got.Truncate(time.Millisecond).Equal(c.want.Truncate(time.Millisecond)) {
			return fmt.Errorf("%s: %s %v, want %v", want.ID, c.name, c.got, c.want)
		}
	}
	if got.SendAttempt != 0 || got.LeaseToken != "" || !got.LockedUntil.IsZero() || !got.SentAt.IsZero() || got.LastError != "" {
		return fmt.Errorf("%s: a new row has delivery state %+v", want.ID, got)
	}
	if got.Seq <= 0 {
		return fmt.Errorf("%s: Seq %d, want > 0", want.ID, got.Seq)
	}
	return nil
}

func (s suite[TTx]) insertCommitRoundTrip(t *testing.T) {
	d := s.h.Open(t)
	want := []dialects.OutboxRow{Row(1, "billing"), Row(2, "billing"), Row(3, "shipping")}
	want[1].Headers = nil
	want[1].Key = ""
	want[2].Payload = []byte{}
	insert(t, d, want...)
	got := list(t, d, dialects.OutboxQuery{})
	if len(got) != len(want) {
		t.Fatalf("ListOutbox returned %d rows, want %d", len(got), len(want))
	}
	for i := range want {
		w := want[i]
		if w.Headers == nil {
			w.Headers = map[string]string{}
		}
		if err := Equal(got[i], w); err != nil {
			t.Errorf("row %d: %v", i, err)
		}
	}
}

func (s suite[TTx]) insertRollback(t *testing.T) {
	d := s.h.Open(t)
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.InsertOutbox(ctx, tx, []dialects.OutboxRow{Row(1, "billing"), Row(2, "billing")}); err != nil {
		t.Fatal(err)
	}
	if err := d.Rollback(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if got := list(t, d, dialects.OutboxQuery{}); len(got) != 0 {
		t.Fatalf("after rollback ListOutbox returned %d rows, want 0", len(got))
	}
}

func (s suite[TTx]) insertDefaults(t *testing.T) {
	d := s.h.Open(t)
	before := time.Now().Add(-2 * time.Second)
	insert(t, d, dialects.OutboxRow{Envelope: transport.Envelope{ID: "a", Topic: "t", Payload: []byte("x")}, Destination: "billing"})
	after := time.Now().Add(2 * time.Second)
	got := list(t, d, dialects.OutboxQuery{})
	if len(got) != 1 {
		t.Fatalf("got %d rows, want 1", len(got))
	}
	r := got[0]
	for name, ts := range map[string]time.Time{"CreatedAt": r.CreatedAt, "DeliverAt": r.DeliverAt} {
		if ts.Before(before) || ts.After(after) {
			t.Errorf("default %s = %v, want about now", name, ts)
		}
	}
	if !r.ExpiresAt.IsZero() {
		t.Errorf("default ExpiresAt = %v, want zero (never)", r.ExpiresAt)
	}
	if r.Key != "" || len(r.Headers) != 0 {
		t.Errorf("defaults: Key %q Headers %v, want empty", r.Key, r.Headers)
	}
}

func (s suite[TTx]) insertEmpty(t *testing.T) {
	d := s.h.Open(t)
	insert(t, d)
	if got := list(t, d, dialects.OutboxQuery{}); len(got) != 0 {
		t.Fatalf("got %d rows, want 0", len(got))
	}
}

func (s suite[TTx]) enqueueOrder(t *testing.T) {
	d := s.h.Open(t)
	var want []string
	for i := range 5 {
		// IDs deliberately not in lexical order.
		rows := []dialects.OutboxRow{Row(100-i, "billing"), Row(200+i, "billing")}
		insert(t, d, rows...)
		want = append(want, rows[0].ID, rows[1].ID)
	}
	got := list(t, d, dialects.OutboxQuery{Destination: "billing"})
	if len(got) != len(want) {
		t.Fatalf("got %d rows, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].ID != want[i] {
			t.Fatalf("row %d is %s, want %s (enqueue order)", i, got[i].ID, want[i])
		}
		if i > 0 && got[i].Seq <= got[i-1].Seq {
			t.Fatalf("seq not increasing: %d then %d", got[i-1].Seq, got[i].Seq)
		}
	}
}

// assertDuplicate checks a failed InsertOutbox: a *DuplicateError naming
// dupID, the transaction still usable, and nothing of the call written.
func (s suite[TTx]) assertDuplicate(t *testing.T, d dialects.Dialect[TTx], call []dialects.OutboxRow, dupID string, rowsBefore int) {
	t.Helper()
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = d.InsertOutbox(ctx, tx, call)
	if !errors.Is(err, dialects.ErrDuplicateID) {
		_ = d.Rollback(ctx, tx)
		t.Fatalf("InsertOutbox with a duplicate = %v, want errors.Is ErrDuplicateID", err)
	}
	var de *dialects.DuplicateError
	if !errors.As(err, &de) || de.ID != dupID || de.Destination != "billing" {
		_ = d.Rollback(ctx, tx)
		t.Fatalf("error %v: want *DuplicateError for id %q destination billing", err, dupID)
	}
	// The transaction is still usable and holds nothing of the failed call.
	probe := Row(999, "billing")
	probe.ID = "probe-after-duplicate"
	if err := d.InsertOutbox(ctx, tx, []dialects.OutboxRow{probe}); err != nil {
		_ = d.Rollback(ctx, tx)
		t.Fatalf("tx unusable after DuplicateError: %v", err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatalf("Commit after DuplicateError: %v", err)
	}
	got := list(t, d, dialects.OutboxQuery{})
	if len(got) != rowsBefore+1 || got[len(got)-1].ID != probe.ID {
		t.Fatalf("after a failed call: %d rows, want %d (the earlier ones plus %s)", len(got), rowsBefore+1, probe.ID)
	}
}

func (s suite[TTx]) duplicateCommitted(t *testing.T) {
	d := s.h.Open(t)
	insert(t, d, Row(1, "billing"), Row(2, "billing"))
	// New rows before and after the duplicate: none of them may stay.
	s.assertDuplicate(t, d, []dialects.OutboxRow{Row(10, "billing"), Row(2, "billing"), Row(11, "billing")}, Row(2, "").ID, 2)
}

func (s suite[TTx]) duplicateWithinCall(t *testing.T) {
	d := s.h.Open(t)
	s.assertDuplicate(t, d, []dialects.OutboxRow{Row(1, "billing"), Row(2, "billing"), Row(1, "billing")}, Row(1, "").ID, 0)
}

func (s suite[TTx]) sameIDOtherDestination(t *testing.T) {
	d := s.h.Open(t)
	insert(t, d, Row(1, "billing"), Row(1, "shipping"))
	if got := list(t, d, dialects.OutboxQuery{IDs: []string{Row(1, "").ID}}); len(got) != 2 {
		t.Fatalf("got %d rows for one id on two destinations, want 2", len(got))
	}
}

// LargeBatchSize is how many rows LargeBatch writes in one call.
const LargeBatchSize = 10_000

func (s suite[TTx]) largeBatch(t *testing.T) {
	d := s.h.Open(t)
	rows := make([]dialects.OutboxRow, LargeBatchSize)
	for i := range rows {
		rows[i] = Row(i, "billing")
	}
	insert(t, d, rows...)
	got := list(t, d, dialects.OutboxQuery{})
	if len(got) != len(rows) {
		t.Fatalf("got %d rows, want %d", len(got), len(rows))
	}
	for i := range rows {
		if err := Equal(got[i], rows[i]); err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
	}
	// A duplicate at the end of a large call still writes nothing.
	more := make([]dialects.OutboxRow, LargeBatchSize)
	for i := range more {
		more[i] = Row(LargeBatchSize+i, "billing")
	}
	more[len(more)-1] = Row(5, "billing")
	s.assertDuplicate(t, d, more, Row(5, "").ID, LargeBatchSize)
}

func (s suite[TTx]) listFilters(t *testing.T) {
	d := s.h.Open(t)
	insert(t, d, Row(1, "billing"), Row(2, "shipping"), Row(3, "billing"), Row(4, "billing"))
	if got := list(t, d, dialects.OutboxQuery{Destination: "shipping"}); len(got) != 1 || got[0].ID != Row(2, "").ID {
		t.Fatalf("Destination filter: %v", ids(got))
	}
	if got := list(t, d, dialects.OutboxQuery{IDs: []string{Row(3, "").ID, Row(4, "").ID}}); len(got) != 2 || got[0].ID != Row(3, "").ID {
		t.Fatalf("IDs filter: %v", ids(got))
	}
	if got := list(t, d, dialects.OutboxQuery{Destination: "billing", Limit: 2}); len(got) != 2 || got[1].ID != Row(3, "").ID {
		t.Fatalf("Limit: %v", ids(got))
	}
	if got := list(t, d, dialects.OutboxQuery{Destination: "nowhere"}); len(got) != 0 {
		t.Fatalf("unknown destination: %v", ids(got))
	}
}

func ids(rows []dialects.OutboxRow) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.ID + "@" + r.Destination
	}
	return out
}

func (s suite[TTx]) notify(t *testing.T) {
	d := s.h.Open(t)
	n, ok := d.(dialects.Notifier[TTx])
	if !ok {
		t.Skipf("%s does not implement dialects.Notifier", d.Name())
	}
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.InsertOutbox(ctx, tx, []dialects.OutboxRow{Row(1, "billing")}); err != nil {
		t.Fatal(err)
	}
	if err := n.NotifyOutbox(ctx, tx, []string{"billing", "billing", "shipping"}); err != nil {
		t.Fatalf("NotifyOutbox: %v", err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
}

// listOutboxTx checks dialects.OutboxTxLister: in the caller's transaction,
// the rows it enqueued are listed with the committed ones, every field as
// stored and in enqueue order, with ListOutbox's filters; after a rollback
// they are gone.
func (s suite[TTx]) listOutboxTx(t *testing.T) {
	d := s.h.Open(t)
	l, ok := d.(dialects.OutboxTxLister[TTx])
	if !ok {
		t.Skipf("%s does not implement dialects.OutboxTxLister", d.Name())
	}
	committed := Row(1, "billing")
	insert(t, d, committed)
	ctx := ctxFor(t)
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Rollback(ctx, tx) }()
	pending := []dialects.OutboxRow{Row(2, "billing"), Row(3, "shipping"), Row(4, "billing")}
	if err := d.InsertOutbox(ctx, tx, pending); err != nil {
		t.Fatalf("InsertOutbox: %v", err)
	}
	listTx := func(q dialects.OutboxQuery) []dialects.OutboxRow {
		t.Helper()
		rows, err := l.ListOutboxTx(ctx, tx, q)
		if err != nil {
			t.Fatalf("ListOutboxTx(%+v): %v", q, err)
		}
		return rows
	}
	all := listTx(dialects.OutboxQuery{})
	want := append([]dialects.OutboxRow{committed}, pending...)
	if len(all) != len(want) {
		t.Fatalf("ListOutboxTx in the enqueueing transaction: %v, want the committed row and the 3 of the transaction", ids(all))
	}
	for i := range want {
		if err := Equal(all[i], want[i]); err != nil {
			t.Errorf("row %d: %v", i, err)
		}
	}
	if got := listTx(dialects.OutboxQuery{Destination: "shipping"}); len(got) != 1 || got[0].ID != Row(3, "").ID {
		t.Fatalf("Destination filter: %v", ids(got))
	}
	if got := listTx(dialects.OutboxQuery{IDs: []string{Row(4, "").ID, Row(2, "").ID}}); len(got) != 2 || got[0].ID != Row(2, "").ID || got[1].ID != Row(4, "").ID {
		t.Fatalf("IDs filter: %v, want msg-000002 then msg-000004", ids(got))
	}
	if got := listTx(dialects.OutboxQuery{Destination: "billing", Limit: 2}); len(got) != 2 || got[0].ID != committed.ID || got[1].ID != Row(2, "").ID {
		t.Fatalf("Limit: %v", ids(got))
	}
	if err := d.Rollback(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if got := list(t, d, dialects.OutboxQuery{}); len(got) != 1 || got[0].ID != committed.ID {
		t.Fatalf("after the rollback ListOutbox returned %v, want only the committed row", ids(got))
	}
	tx2, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Rollback(ctx, tx2) }()
	got, err := l.ListOutboxTx(ctx, tx2, dialects.OutboxQuery{})
	if err != nil {
		t.Fatalf("ListOutboxTx: %v", err)
	}
	if len(got) != 1 || got[0].ID != committed.ID {
		t.Fatalf("ListOutboxTx in a new transaction after the rollback: %v, want only the committed row", ids(got))
	}
}
