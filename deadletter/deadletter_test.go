package deadletter_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/durable-go/durable/deadletter"
	"github.com/durable-go/durable/dialects"
	"github.com/durable-go/durable/dialects/postgres"
	"github.com/durable-go/durable/dialects/sqlite"
	"github.com/durable-go/durable/internal/testdb"
	"github.com/durable-go/durable/migrations"
)

func openPostgres(t *testing.T) dialects.Dialect[*sql.Tx] {
	u, _ := testdb.PostgresSchema(t)
	db, err := sql.Open("pgx", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	for _, stmt := range testdb.UpSQL(t, migrations.Postgres) {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	d, err := postgres.NewSQL(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func openSQLite(t *testing.T) dialects.Dialect[*sql.Tx] {
	db, err := sql.Open("sqlite", sqlite.DSN(testdb.SQLitePath(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	for _, stmt := range testdb.UpSQL(t, migrations.SQLite) {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	d, err := sqlite.New(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// each runs test on Postgres and on SQLite.
func each(t *testing.T, test func(t *testing.T, d dialects.Dialect[*sql.Tx])) {
	t.Run("postgres", func(t *testing.T) { test(t, openPostgres(t)) })
	t.Run("sqlite", func(t *testing.T) { test(t, openSQLite(t)) })
}

// letter is a dead letter to seed: its message id and reason.
type letter struct{ id, reason string }

// seedOutbox enqueues letters for dest and moves them to the dead letters,
// one at a time, so that they are recorded in this order.
func seedOutbox(t *testing.T, d dialects.Dialect[*sql.Tx], dest string, letters ...letter) {
	t.Helper()
	ctx := context.Background()
	rows := make([]dialects.OutboxRow, len(letters))
	for i, l := range letters {
		r := &rows[i]
		r.ID, r.Destination, r.Topic, r.Payload = l.id, dest, "invoice.created", []byte(`{"n":1}`)
		r.CreatedAt, r.DeliverAt = time.Now(), time.Now().Add(-time.Second)
	}
	inTx(t, d, func(tx *sql.Tx) error { return d.InsertOutbox(ctx, tx, rows) })
	token := "test-" + dest
	claimed, err := d.ClaimOutbox(ctx, dialects.OutboxClaim{Destination: dest, Token: token, Limit: len(letters) + 1, Lease: time.Minute})
	if err != nil || len(claimed) != len(letters) {
		t.Fatalf("claimed %d rows of %s, %v; want %d", len(claimed), dest, err, len(letters))
	}
	for i, r := range claimed {
		n, err := d.DeadLetterOutbox(ctx, token, []dialects.OutboxDeadLetter{{Seq: r.Seq, Reason: letters[i].reason, Error: "refused " + r.ID}})
		if err != nil || n != 1 {
			t.Fatalf("DeadLetterOutbox(%s/%s) = %d, %v", dest, r.ID, n, err)
		}
	}
}

// seedInbox stores letters from source and moves them to the dead letters,
// one at a time, so that they are recorded in this order.
func seedInbox(t *testing.T, d dialects.Dialect[*sql.Tx], source string, letters ...letter) {
	t.Helper()
	ctx := context.Background()
	rows := make([]dialects.InboxRow, len(letters))
	for i, l := range letters {
		r := &rows[i]
		r.Source, r.ID, r.Topic, r.Payload, r.CreatedAt = source, l.id, "order.placed", []byte(`{"n":2}`), time.Now()
	}
	inTx(t, d, func(tx *sql.Tx) error {
		_, err := d.InsertInbox(ctx, tx, rows)
		return err
	})
	for i, l := range letters {
		token := "test-" + source + "-" + l.id
		claimed, err := d.ClaimInbox(ctx, dialects.InboxClaim{Token: token, Worker: "test", Limit: 1, Lease: time.Minute})
		if err != nil || len(claimed) != 1 || claimed[0].ID != l.id {
			t.Fatalf("claim %d: %d rows, %v; want %s", i, len(claimed), err, l.id)
		}
		inTx(t, d, func(tx *sql.Tx) error {
			n, err := d.FinishInbox(ctx, tx, token, []dialects.InboxOutcome{{Source: source, ID: l.id, Kind: dialects.InboxDead, Reason: l.reason, Error: "failed " + l.id}})
			if err == nil && n != 1 {
				t.Errorf("FinishInbox(%s/%s) = %d", source, l.id, n)
			}
			return err
		})
	}
}

func inTx(t *testing.T, d dialects.Dialect[*sql.Tx], f func(tx *sql.Tx) error) {
	t.Helper()
	ctx := context.Background()
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := f(tx); err != nil {
		_ = d.Rollback(ctx, tx)
		t.Fatal(err)
	}
	if err := d.Commit(ctx, tx); err != nil {
		t.Fatal(err)
	}
}

// seedBoth records four outbox dead letters (three for billing, one for
// shipping) and three inbox dead letters (two from orders, one from web).
func seedBoth(t *testing.T, d dialects.Dialect[*sql.Tx]) {
	t.Helper()
	seedOutbox(t, d, "billing", letter{"o1", deadletter.ReasonRejected}, letter{"o2", deadletter.ReasonExpired}, letter{"o3", deadletter.ReasonRejected})
	seedOutbox(t, d, "shipping", letter{"o4", deadletter.ReasonRejected})
	seedInbox(t, d, "orders", letter{"i1", deadletter.ReasonHandlerError}, letter{"i2", deadletter.ReasonNoHandler})
	seedInbox(t, d, "web", letter{"i3", deadletter.ReasonPermanent})
}

// keys names dead letters side:peer/id, in order.
func keys(dls []deadletter.DeadLetter) []string {
	out := make([]string, len(dls))
	for i, dl := range dls {
		peer := dl.Source
		if dl.Side == deadletter.SideOutbox {
			peer = dl.Destination
		}
		out[i] = dl.Side + ":" + peer + "/" + dl.ID
	}
	return out
}

func list(t *testing.T, s *deadletter.Store, q deadletter.Query) []string {
	t.Helper()
	dls, err := s.List(context.Background(), q)
	if err != nil {
		t.Fatalf("List(%+v): %v", q, err)
	}
	return keys(dls)
}

func wantKeys(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) && (len(got) != 0 || len(want) != 0) {
		t.Fatalf("%s = %q, want %q", what, got, want)
	}
}

// TestList: List returns the dead letters of one side, oldest first,
// filtered by peer, reason and id, with the whole message and its error.
func TestList(t *testing.T) {
	each(t, func(t *testing.T, d dialects.Dialect[*sql.Tx]) {
		seedBoth(t, d)
		s, err := deadletter.New(d, nil)
		if err != nil {
			t.Fatal(err)
		}
		wantKeys(t, "outbox", list(t, s, deadletter.Query{Side: deadletter.SideOutbox}),
			"outbox:billing/o1", "outbox:billing/o2", "outbox:billing/o3", "outbox:shipping/o4")
		wantKeys(t, "inbox", list(t, s, deadletter.Query{Side: deadletter.SideInbox}),
			"inbox:orders/i1", "inbox:orders/i2", "inbox:web/i3")
		wantKeys(t, "billing rejected", list(t, s, deadletter.Query{Side: deadletter.SideOutbox, Destination: "billing", Reason: deadletter.ReasonRejected}),
			"outbox:billing/o1", "outbox:billing/o3")
		wantKeys(t, "orders i2", list(t, s, deadletter.Query{Side: deadletter.SideInbox, Source: "orders", IDs: []string{"i2", "i3"}}),
			"inbox:orders/i2")
		wantKeys(t, "limit", list(t, s, deadletter.Query{Side: deadletter.SideOutbox, Limit: 2}),
			"outbox:billing/o1", "outbox:billing/o2")

		dls, err := s.List(context.Background(), deadletter.Query{Side: deadletter.SideOutbox, IDs: []string{"o2"}})
		if err != nil || len(dls) != 1 {
			t.Fatalf("List o2 = %d, %v", len(dls), err)
		}
		if dl := dls[0]; dl.Topic != "invoice.created" || string(dl.Payload) != `{"n":1}` || dl.Reason != deadletter.ReasonExpired ||
			dl.LastError != "refused o2" || !dl.Pending() || !dl.ReplayedAt.IsZero() || dl.Source != "" {
			t.Fatalf("o2 = %+v", dl)
		}

		for _, side := range []string{"", "both"} {
			if _, err := s.List(context.Background(), deadletter.Query{Side: side}); !errors.Is(err, deadletter.ErrSide) {
				t.Fatalf("List(side %q) = %v, want ErrSide", side, err)
			}
		}
	})
}

// TestGet: Get finds one dead letter by side, peer and id; another side or
// peer does not match.
func TestGet(t *testing.T) {
	each(t, func(t *testing.T, d dialects.Dialect[*sql.Tx]) {
		seedBoth(t, d)
		s, err := deadletter.New(d, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		dl, err := s.Get(ctx, deadletter.SideInbox, "orders", "i1")
		if err != nil {
			t.Fatal(err)
		}
		if dl.Side != deadletter.SideInbox || dl.Source != "orders" || dl.Destination != "" || dl.Topic != "order.placed" ||
			string(dl.Payload) != `{"n":2}` || dl.Reason != deadletter.ReasonHandlerError || dl.Attempts != 1 ||
			dl.LastError != "failed i1" || len(dl.Errors) != 1 || dl.Errors[0].Attempt != 1 || dl.Errors[0].Error != "failed i1" {
			t.Fatalf("Get i1 = %+v", dl)
		}
		if dl, err := s.Get(ctx, deadletter.SideOutbox, "", "o4"); err != nil || dl.Destination != "shipping" || dl.Reason != deadletter.ReasonRejected {
			t.Fatalf("Get o4 = %+v, %v", dl, err)
		}
		for _, c := range []struct{ side, peer, id string }{
			{deadletter.SideOutbox, "", "i1"},        // an inbox id on the outbox side
			{deadletter.SideInbox, "web", "i1"},      // another source
			{deadletter.SideOutbox, "billing", "o4"}, // another destination
			{deadletter.SideInbox, "", "nope"},
		} {
			if _, err := s.Get(ctx, c.side, c.peer, c.id); !errors.Is(err, deadletter.ErrNotFound) {
				t.Fatalf("Get(%s, %s, %s) = %v, want ErrNotFound", c.side, c.peer, c.id, err)
			}
		}
		if _, err := s.Get(ctx, "", "", "i1"); !errors.Is(err, deadletter.ErrSide) {
			t.Fatalf("Get without a side = %v, want ErrSide", err)
		}
	})
}

// TestReplay: Replay puts the matching pending dead letters of one side
// back into the outbox or the inbox, once; the dead letters stay, no longer
// pending.
func TestReplay(t *testing.T) {
	each(t, func(t *testing.T, d dialects.Dialect[*sql.Tx]) {
		seedBoth(t, d)
		s, err := deadletter.New(d, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		q := deadletter.Query{Side: deadletter.SideOutbox, Destination: "billing", Reason: deadletter.ReasonRejected}
		if n, err := s.Replay(ctx, q); err != nil || n != 2 {
			t.Fatalf("Replay outbox = %d, %v; want 2", n, err)
		}
		if n, err := s.Replay(ctx, q); err != nil || n != 0 {
			t.Fatalf("Replay outbox again = %d, %v; want 0", n, err)
		}
		rows, err := d.ListOutbox(ctx, dialects.OutboxQuery{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range rows {
			got = append(got, r.Destination+"/"+r.ID)
		}
		wantKeys(t, "outbox rows", got, "billing/o1", "billing/o3")
		wantKeys(t, "pending outbox", list(t, s, deadletter.Query{Side: deadletter.SideOutbox}),
			"outbox:billing/o2", "outbox:shipping/o4")
		wantKeys(t, "all outbox", list(t, s, deadletter.Query{Side: deadletter.SideOutbox, IncludeReplayed: true}),
			"outbox:billing/o1", "outbox:billing/o2", "outbox:billing/o3", "outbox:shipping/o4")
		if dl, err := s.Get(ctx, deadletter.SideOutbox, "billing", "o1"); err != nil || dl.Pending() || dl.ReplayedAt.IsZero() {
			t.Fatalf("o1 after replay = %+v, %v", dl, err)
		}

		// IncludeReplayed does not replay twice.
		if n, err := s.Replay(ctx, deadletter.Query{Side: deadletter.SideInbox, Source: "orders", IncludeReplayed: true}); err != nil || n != 2 {
			t.Fatalf("Replay inbox = %d, %v; want 2", n, err)
		}
		if n, err := s.Replay(ctx, deadletter.Query{Side: deadletter.SideInbox, IncludeReplayed: true}); err != nil || n != 1 {
			t.Fatalf("Replay inbox again = %d, %v; want 1 (web/i3)", n, err)
		}
		in, err := d.ListInbox(ctx, dialects.InboxQuery{})
		if err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		for _, r := range in {
			got = append(got, r.Source+"/"+r.ID+"/"+r.State)
		}
		wantKeys(t, "inbox rows", got, "orders/i1/ready", "orders/i2/ready", "web/i3/ready")
		wantKeys(t, "pending inbox", list(t, s, deadletter.Query{Side: deadletter.SideInbox}))

		if _, err := s.Replay(ctx, deadletter.Query{}); !errors.Is(err, deadletter.ErrSide) {
			t.Fatalf("Replay without a side = %v, want ErrSide", err)
		}
	})
}

// TestPurge: Purge deletes the matching dead letters of one side only, in
// statements of Config.PurgeBatch without a limit, or one of Limit.
func TestPurge(t *testing.T) {
	each(t, func(t *testing.T, d dialects.Dialect[*sql.Tx]) {
		seedBoth(t, d)
		seedInbox(t, d, "web", letter{"i4", deadletter.ReasonExpired}, letter{"i5", deadletter.ReasonDecodeError})
		s, err := deadletter.New(d, &deadletter.Config{PurgeBatch: 2})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if n, err := s.Purge(ctx, deadletter.Query{Side: deadletter.SideOutbox, Limit: 1}); err != nil || n != 1 {
			t.Fatalf("Purge outbox limit 1 = %d, %v", n, err)
		}
		wantKeys(t, "outbox", list(t, s, deadletter.Query{Side: deadletter.SideOutbox}),
			"outbox:billing/o2", "outbox:billing/o3", "outbox:shipping/o4")
		// Five inbox dead letters, batches of 2: three statements.
		if n, err := s.Purge(ctx, deadletter.Query{Side: deadletter.SideInbox}); err != nil || n != 5 {
			t.Fatalf("Purge inbox = %d, %v; want 5", n, err)
		}
		wantKeys(t, "inbox", list(t, s, deadletter.Query{Side: deadletter.SideInbox, IncludeReplayed: true}))
		wantKeys(t, "outbox after inbox purge", list(t, s, deadletter.Query{Side: deadletter.SideOutbox}),
			"outbox:billing/o2", "outbox:billing/o3", "outbox:shipping/o4")
		if _, err := s.Purge(ctx, deadletter.Query{Side: "Inbox"}); !errors.Is(err, deadletter.ErrSide) {
			t.Fatalf("Purge of side Inbox = %v, want ErrSide", err)
		}
	})
}

// TestNew: New refuses a nil dialect and a negative batch.
func TestNew(t *testing.T) {
	if _, err := deadletter.New(nil, nil); err == nil {
		t.Fatal("New(nil) succeeded")
	}
	if _, err := deadletter.New(openSQLite(t), &deadletter.Config{PurgeBatch: -1}); err == nil {
		t.Fatal("New with PurgeBatch -1 succeeded")
	}
}
